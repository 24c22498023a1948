"""What each speed device in the package saves over the plain anyio it replaces.

Each device is timed side by side with its plain equivalent, in the same process and
the same run, on asyncio's loop: rounds alternate the two, so that the machine's
noise falls on both. A device pays where its saving is larger than the spread of the
plain version's own rounds (the noise), and it matters where that saving is a visible
share of what a request costs (compare with bench/run.py's CPU per request).

    python bench/devices.py            # about 20 s
    python bench/devices.py --rounds 9 --uses 4000

Devices (see the modules for where each sits):
- ``TaskCancelScope``  vs ``anyio.CancelScope``          (_cancel.py)
- ``beside`` watcher   vs an anyio task group            (_cancel.py)
- ``along`` work       vs an anyio task group            (_cancel.py)
- ``idle_limit``       vs a per-chunk ``anyio.move_on_after``  (_idle_timeout.py)
- ``InFlightRequests.run`` vs an anyio cancel scope kept in a set (_shutdown.py)
- inlined sends vs two ``Call._send`` awaits (_call.py; folded back: they saved nothing)
The direct lane (built-in providers posting straight to the aiohttp transport) needs a
real upstream: bench/run.py measures it as ``autoproxy`` against
``autoproxy-httpx-aiohttp``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asgi_autoproxy._call import Call
from asgi_autoproxy._cancel import TaskCancelScope, along, beside
from asgi_autoproxy._idle_timeout import idle_limit
from asgi_autoproxy._shutdown import InFlightRequests

Use = Callable[[], Awaitable[None]]
CHUNKS = 20  # a short streamed answer's chunks, for the idle guard


async def _nothing() -> None:
    await asyncio.sleep(0)


async def _watcher() -> None:
    await asyncio.sleep(3600)


# -- each device, and its plain equivalent ---------------------------------------------


async def cancel_scope_device() -> None:
    async with TaskCancelScope():
        await _nothing()


async def cancel_scope_plain() -> None:
    with anyio.CancelScope():
        await _nothing()


async def beside_device() -> None:
    async with beside(_watcher):
        await _nothing()


async def beside_plain() -> None:
    async with anyio.create_task_group() as group:
        group.start_soon(_watcher)
        await _nothing()
        group.cancel_scope.cancel()


async def along_device() -> None:
    async with along(_nothing):
        await _nothing()


async def along_plain() -> None:
    async with anyio.create_task_group() as group:
        group.start_soon(_nothing)
        await _nothing()


async def idle_device() -> None:
    async with idle_limit(120.0) as idle:
        for _ in range(CHUNKS):
            idle.waiting()
            await _nothing()
            idle.arrived()


async def idle_plain() -> None:
    for _ in range(CHUNKS):
        with anyio.move_on_after(120.0):
            await _nothing()


_in_flight = InFlightRequests()
_scopes: set[anyio.CancelScope] = set()


async def in_flight_device() -> None:
    await _in_flight.run(_nothing())


async def in_flight_plain() -> None:
    scope = anyio.CancelScope()
    _scopes.add(scope)
    try:
        with scope:
            await _nothing()
    finally:
        _scopes.discard(scope)


async def _sink(message: Any) -> None:
    return None


async def respond_device() -> None:
    """The sends inlined, as ``Call.respond`` had them until this figure said they
    saved nothing (-0.05 µs, noise 0.35): kept here to measure again."""
    call = Call(request_id="r", send=_sink)
    call.started = True
    call.trace.status = 200
    headers: list[tuple[bytes, bytes]] = [(b"x-request-id", call.request_id.encode())]
    headers.append((b"content-length", b"2"))
    start = {"type": "http.response.start", "status": 200, "headers": headers}
    whole = {"type": "http.response.body", "body": b"{}", "more_body": False}
    if call.connected:
        try:
            await call.send(start)
            if call.connected:
                await call.send(whole)
        except OSError:
            call.gone()
    call.trace.completed = call.connected


async def respond_plain() -> None:
    """``Call.respond`` as it would read with two plain ``_send`` awaits."""
    call = Call(request_id="r", send=_sink)
    call.started = True
    call.trace.status = 200
    headers: list[tuple[bytes, bytes]] = [(b"x-request-id", call.request_id.encode())]
    headers.append((b"content-length", b"2"))
    await call._send({"type": "http.response.start", "status": 200, "headers": headers})
    await call._send({"type": "http.response.body", "body": b"{}", "more_body": False})
    call.trace.completed = call.connected


DEVICES: list[tuple[str, Use, Use]] = [
    ("TaskCancelScope", cancel_scope_device, cancel_scope_plain),
    ("beside", beside_device, beside_plain),
    ("along", along_device, along_plain),
    ("idle_limit (20 chunks)", idle_device, idle_plain),
    ("InFlightRequests.run", in_flight_device, in_flight_plain),
    ("inlined sends (folded back)", respond_device, respond_plain),
]


async def _round(use: Use, uses: int) -> float:
    """µs per use, CPU time of this process."""
    start = time.process_time()
    for _ in range(uses):
        await use()
    return (time.process_time() - start) / uses * 1e6


async def measure(rounds: int, uses: int) -> list[tuple[str, float, float, float]]:
    rows = []
    for name, device, plain in DEVICES:
        await _round(device, uses // 10)  # warm both
        await _round(plain, uses // 10)
        device_times, plain_times = [], []
        for _ in range(rounds):
            device_times.append(await _round(device, uses))
            plain_times.append(await _round(plain, uses))
        d, p = statistics.median(device_times), statistics.median(plain_times)
        noise = max(plain_times) - min(plain_times)
        rows.append((name, d, p, noise))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--uses", type=int, default=3000)
    args = parser.parse_args()
    rows = asyncio.run(measure(args.rounds, args.uses))
    print(f"Python {sys.version.split()[0]}, asyncio, median of {args.rounds} rounds")
    print("| device | device µs/use | plain µs/use | saved µs | noise µs | pays |")
    print("|---|---|---|---|---|---|")
    for name, d, p, noise in rows:
        saved = p - d
        pays = "yes" if saved > noise else "no"
        print(f"| {name} | {d:.2f} | {p:.2f} | {saved:.2f} | {noise:.2f} | {pays} |")


if __name__ == "__main__":
    main()
