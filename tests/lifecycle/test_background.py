"""TaskCancelScope and beside: the pieces that stop a request's upstream call when its
caller leaves, on asyncio's own task cancel and, off asyncio, on anyio's scope."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import anyio
import pytest

from asgi_autoproxy import _cancel as background
from asgi_autoproxy._cancel import TaskCancelScope, beside

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["task", "anyio"])
def scope_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Both ways the scope can work: the task's own cancel, and anyio's scope (trio's)."""
    if request.param == "anyio":
        monkeypatch.setattr(background, "current_asyncio_task", lambda: None)
    yield request.param


async def test_cancel_from_another_task_ends_the_block_quietly(scope_kind: str) -> None:
    reached_end = False
    async with TaskCancelScope() as scope:
        asyncio.get_running_loop().call_later(0.01, scope.cancel)
        await asyncio.sleep(5)
        reached_end = True
    assert scope.cancelled and not reached_end
    await asyncio.sleep(0)  # nothing left pending on the task


async def test_a_block_left_alone_runs_to_its_end(scope_kind: str) -> None:
    async with TaskCancelScope() as scope:
        await asyncio.sleep(0.001)
    assert not scope.cancelled


async def test_cancel_after_the_block_does_nothing(scope_kind: str) -> None:
    async with TaskCancelScope() as scope:
        await asyncio.sleep(0)
    scope.cancel()
    await asyncio.sleep(0.001)  # would raise CancelledError if the late cancel had landed
    assert not scope.cancelled


async def test_a_cancel_never_awaited_in_the_block_does_not_leak_out(scope_kind: str) -> None:
    # Cancelled by the task itself with no wait left in the block (a send that failed
    # on the last byte): the request is still pending when the block ends.
    async with TaskCancelScope() as scope:
        scope.cancel()
    await asyncio.sleep(0.001)
    assert scope.cancelled


async def test_an_exception_after_the_cancel_is_not_swallowed(scope_kind: str) -> None:
    with pytest.raises(LookupError):
        async with TaskCancelScope() as scope:
            scope.cancel()
            raise LookupError("raised before the cancel landed")
    await asyncio.sleep(0.001)


async def test_someone_elses_cancel_goes_on_even_when_ours_came_too() -> None:
    entered = asyncio.Event()
    scopes: list[TaskCancelScope] = []

    async def request() -> None:
        async with TaskCancelScope() as scope:
            scopes.append(scope)
            entered.set()
            await asyncio.sleep(5)

    task = asyncio.ensure_future(request())
    await entered.wait()
    scopes[0].cancel()
    task.cancel()  # a server shutting down, say
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_someone_elses_cancel_goes_on_when_ours_never_landed() -> None:
    entered = asyncio.Event()

    async def request() -> None:
        async with TaskCancelScope() as scope:
            entered.set()
            scope.cancel()  # pending: no wait follows in the block
            asyncio.current_task().cancel()  # type: ignore[union-attr]

    task = asyncio.ensure_future(request())
    await entered.wait()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_someone_elses_cancel_alone_goes_on() -> None:
    entered = asyncio.Event()

    async def request() -> None:
        async with TaskCancelScope():
            entered.set()
            await asyncio.sleep(5)

    task = asyncio.ensure_future(request())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_beside_runs_the_helper_once_the_block_waits_and_cancels_it_after() -> None:
    events: list[str] = []
    stopped = asyncio.Event()

    async def helper() -> None:
        events.append("helper started")
        try:
            await asyncio.sleep(5)
        finally:
            stopped.set()

    async with beside(helper):
        events.append("block started")  # before the helper: it starts on the next turn
        await asyncio.sleep(0.001)
        events.append("block waited")
    with anyio.fail_after(1):
        await stopped.wait()
    assert events == ["block started", "helper started", "block waited"]


async def test_beside_a_block_that_never_waits_never_starts_the_helper() -> None:
    started: list[str] = []

    async def helper() -> None:
        started.append("helper")

    async with beside(helper):
        pass
    await asyncio.sleep(0.001)
    assert started == []


async def test_beside_off_asyncio_uses_a_task_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(background, "on_asyncio", lambda: False)
    stopped = anyio.Event()

    async def helper() -> None:
        try:
            await anyio.sleep(5)
        finally:
            stopped.set()

    async with beside(helper):
        await anyio.sleep(0.001)
    assert stopped.is_set()


async def test_beside_off_asyncio_lets_the_blocks_exception_out_bare(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A task group would wrap it in an ExceptionGroup, which no caller's except expects.
    monkeypatch.setattr(background, "on_asyncio", lambda: False)

    async def helper() -> None:
        await anyio.sleep(5)

    with pytest.raises(LookupError, match="from the block"):
        async with beside(helper):
            await anyio.sleep(0.001)
            raise LookupError("from the block")
