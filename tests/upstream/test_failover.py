"""Several providers for one model: balancing, failover, retries, cool-down, pinning.

Every rule runs against real fake upstreams on 127.0.0.1 and counts the calls each
one received.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest

from asgi_autoproxy import AutoProxyMiddleware, Cooldown, OpenAIProvider, RetryPolicy
from asgi_autoproxy._upstream.dispatch import _retry_after
from tests.conftest import SERVER_KEY, Clock, chat_body, inner_app
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerThread, serve_fleet

pytestmark = pytest.mark.anyio

FAST_RETRY = RetryPolicy(max_retries=0, backoff=0.001, max_backoff=0.01)


@pytest.fixture(scope="module")
def _fleet() -> Iterator[list[tuple[FakeUpstream, ServerThread]]]:
    with serve_fleet(FakeUpstream, 3) as fleet:
        yield fleet


@pytest.fixture
def fleet(_fleet: list[tuple[FakeUpstream, ServerThread]]) -> list[FakeUpstream]:
    for fake, _ in _fleet:
        fake.reset()
    return [fake for fake, _ in _fleet]


@pytest.fixture
def urls(_fleet: list[tuple[FakeUpstream, ServerThread]]) -> list[str]:
    return [server.url + "/v1" for _, server in _fleet]


@pytest.fixture
def refused_url() -> str:
    """A port nothing listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def providers(urls: list[str], names: str = "abc") -> list[OpenAIProvider]:
    return [
        OpenAIProvider(base_url=url, api_key=SERVER_KEY, name=name)
        for url, name in zip(urls, names, strict=False)
    ]


@pytest.fixture
async def proxy_factory() -> AsyncIterator[Any]:
    made: list[AutoProxyMiddleware] = []

    def make(provider_list: list[OpenAIProvider], **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("retry", FAST_RETRY)
        kwargs.setdefault("allow_anonymous", True)  # server-held keys; auth is tested apart
        app = AutoProxyMiddleware(inner_app(), providers=provider_list, **kwargs)
        made.append(app)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")

    yield make
    for app in made:
        await app.aclose()


async def post(http: httpx.AsyncClient, **kwargs: Any) -> httpx.Response:
    body = kwargs.pop("json", None) or chat_body()
    return await http.post("/v1/proxy/auto", json=body, **kwargs)


def calls(fleet: list[FakeUpstream]) -> list[int]:
    return [fake.calls for fake in fleet]


@pytest.fixture
async def ordered(proxy_factory: Any, urls: list[str]) -> AsyncIterator[httpx.AsyncClient]:
    async with proxy_factory(providers(urls[:2])) as http:
        yield http


# -- ordered failover -------------------------------------------------------------------


async def test_primary_answers_and_backup_is_not_called(
    ordered: httpx.AsyncClient, fleet: list[FakeUpstream]
) -> None:
    response = await post(ordered)
    assert response.status_code == 200
    assert response.headers["x-bt-used-endpoint"] == "a"
    assert calls(fleet) == [1, 0, 0]


@pytest.mark.parametrize("status", [429, 500, 502, 503, 529])
async def test_fails_over_on_429_and_5xx(
    ordered: httpx.AsyncClient, fleet: list[FakeUpstream], status: int
) -> None:
    fleet[0].overrides = {"status": status}
    response = await post(ordered)
    assert response.status_code == 200
    assert response.headers["x-bt-used-endpoint"] == "b"
    assert response.json()["choices"][0]["message"]["content"] == "echo #1: hello"
    assert calls(fleet) == [1, 1, 0]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
async def test_other_4xx_is_the_answer_without_failover(
    ordered: httpx.AsyncClient, fleet: list[FakeUpstream], status: int
) -> None:
    fleet[0].overrides = {"status": status}
    response = await post(ordered)
    assert response.status_code == status
    assert response.json()["error"]["message"] == f"upstream says {status}"
    assert response.headers["x-bt-used-endpoint"] == "a"
    assert calls(fleet) == [1, 0, 0]


async def test_fails_over_on_connection_refused(
    proxy_factory: Any, urls: list[str], refused_url: str, fleet: list[FakeUpstream]
) -> None:
    async with proxy_factory(providers([refused_url, urls[1]])) as http:
        response = await post(http)
    assert response.status_code == 200
    assert response.headers["x-bt-used-endpoint"] == "b"
    assert calls(fleet) == [0, 1, 0]


async def test_fails_over_on_timeout(
    proxy_factory: Any, urls: list[str], fleet: list[FakeUpstream]
) -> None:
    fleet[0].overrides = {"sleep": 2.0}
    async with proxy_factory(providers(urls[:2]), timeout=0.3) as http:
        started = time.monotonic()
        response = await post(http)
    assert response.status_code == 200
    assert response.headers["x-bt-used-endpoint"] == "b"
    assert time.monotonic() - started < 1.5
    assert calls(fleet) == [1, 1, 0]


async def test_when_all_fail_the_last_upstream_error_comes_back(
    ordered: httpx.AsyncClient, fleet: list[FakeUpstream]
) -> None:
    fleet[0].overrides = {"status": 503}
    fleet[1].overrides = {"status": 502}
    response = await post(ordered)
    assert response.status_code == 502
    assert response.json()["error"]["message"] == "upstream says 502"
    assert response.headers["x-bt-used-endpoint"] == "b"
    assert calls(fleet) == [1, 1, 0]


async def test_when_none_is_reachable_the_error_names_every_provider(
    proxy_factory: Any, refused_url: str
) -> None:
    dead = [OpenAIProvider(base_url=refused_url, api_key=SERVER_KEY, name=n) for n in ("x", "y")]
    async with proxy_factory(dead) as http:
        response = await post(http)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_unreachable"
    assert "'x'" in error["message"] and "'y'" in error["message"]
    assert SERVER_KEY not in response.text


# -- retries ----------------------------------------------------------------------------


async def test_retries_make_extra_passes_over_all_providers(
    proxy_factory: Any, urls: list[str], fleet: list[FakeUpstream]
) -> None:
    fleet[0].overrides = {"status": 503}
    fleet[1].overrides = {"status": 500}
    retry = RetryPolicy(max_retries=2, backoff=0.001, max_backoff=0.01)
    async with proxy_factory(providers(urls[:2]), retry=retry, cooldown=None) as http:
        response = await post(http)
    assert response.status_code == 500
    assert calls(fleet) == [3, 3, 0]


async def test_a_retry_succeeds_once_the_upstream_recovers(
    proxy_factory: Any, urls: list[str], fleet: list[FakeUpstream]
) -> None:
    fleet[0].overrides = {"status": 503, "headers": {"retry-after": "0.3"}}
    retry = RetryPolicy(max_retries=3, backoff=0.001, max_backoff=0.001)

    async def heal() -> None:
        # The fake recovers while the proxy waits out the Retry-After.
        await anyio.sleep(0.1)
        fleet[0].overrides = {}

    http = proxy_factory(providers(urls[:1]), retry=retry)
    async with http, anyio.create_task_group() as group:
        group.start_soon(heal)
        response = await post(http)
    assert response.status_code == 200
    assert calls(fleet)[0] == 2


async def test_retry_after_is_honoured(
    proxy_factory: Any, urls: list[str], fleet: list[FakeUpstream]
) -> None:
    fleet[0].overrides = {"status": 429, "headers": {"retry-after": "0.4"}}
    retry = RetryPolicy(max_retries=1, backoff=0.001, max_backoff=0.001)
    async with proxy_factory(providers(urls[:1]), retry=retry) as http:
        started = time.monotonic()
        response = await post(http)
        elapsed = time.monotonic() - started
    assert response.status_code == 429
    assert response.headers["retry-after"] == "0.4"
    assert calls(fleet)[0] == 2
    assert 0.4 <= elapsed < 2.0


async def test_retry_after_is_capped(
    proxy_factory: Any, urls: list[str], fleet: list[FakeUpstream]
) -> None:
    fleet[0].overrides = {"status": 503, "headers": {"retry-after": "120"}}
    retry = RetryPolicy(max_retries=1, backoff=0.001, max_backoff=0.001, max_retry_after=0.1)
    async with proxy_factory(providers(urls[:1]), retry=retry) as http:
        started = time.monotonic()
        response = await post(http)
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert calls(fleet)[0] == 2
    assert 0.1 <= elapsed < 2.0


async def test_no_attempt_starts_after_the_deadline(
    proxy_factory: Any, urls: list[str], fleet: list[FakeUpstream]
) -> None:
    fleet[0].overrides = {"status": 503}
    retry = RetryPolicy(max_retries=50, backoff=0.05, max_backoff=0.05, deadline=0.3)
    async with proxy_factory(providers(urls[:1]), retry=retry, cooldown=None) as http:
        started = time.monotonic()
        response = await post(http)
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert 2 <= calls(fleet)[0] < 50
    assert elapsed < 1.5


def test_retry_after_parses_seconds_and_http_dates() -> None:
    assert _retry_after([("retry-after", "7")]) == 7.0
    assert _retry_after([("retry-after", "soon")]) is None
    assert _retry_after([]) is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    parsed = _retry_after([("retry-after", future)])
    assert parsed is not None and 55 < parsed <= 60
    past = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert _retry_after([("retry-after", past)]) == 0.0


def test_bad_policies_fail_at_start_up() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError, match="after_failures"):
        Cooldown(after_failures=0)
    with pytest.raises(ValueError, match="load_balancing"):
        AutoProxyMiddleware(
            inner_app(),
            providers=[OpenAIProvider(name="a")],
            load_balancing="random",  # type: ignore[arg-type]
        )
    with pytest.raises(ValueError, match="unknown providers"):
        AutoProxyMiddleware(inner_app(), providers=[OpenAIProvider(name="a")], weights={"b": 1})


# -- streams ----------------------------------------------------------------------------


def stream_body() -> dict[str, Any]:
    return chat_body(stream=True, fake={"chunks": 3})


def data_events(text: str) -> list[Any]:
    events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


async def test_stream_fails_over_on_status_before_any_byte(
    ordered: httpx.AsyncClient, fleet: list[FakeUpstream]
) -> None:
    fleet[0].overrides = {"status": 503}
    response = await post(ordered, json=stream_body())
    assert response.status_code == 200
    assert response.headers["x-bt-used-endpoint"] == "b"
    events = data_events(response.text)
    assert events[-1] == "[DONE]" and len(events) == 4
    assert calls(fleet) == [1, 1, 0]


async def test_stream_fails_over_on_an_error_event_before_any_data(
    ordered: httpx.AsyncClient, fleet: list[FakeUpstream]
) -> None:
    fleet[0].overrides = {"error_event_after": 0}
    response = await post(ordered, json=stream_body())
    assert response.status_code == 200
    assert response.headers["x-bt-used-endpoint"] == "b"
    events = data_events(response.text)
    assert all("error" not in e for e in events if e != "[DONE]")
    assert events[-1] == "[DONE]"
    assert calls(fleet) == [1, 1, 0]


async def test_stream_error_after_data_reaches_client_without_failover(
    ordered: httpx.AsyncClient, fleet: list[FakeUpstream]
) -> None:
    fleet[0].overrides = {"error_event_after": 2}
    response = await post(ordered, json=stream_body())
    events = data_events(response.text)
    assert [e["choices"][0]["delta"]["content"] for e in events[:2]] == ["tok0 ", "tok1 "]
    assert events[2]["error"]["message"] == "overloaded mid-stream"
    assert response.headers["x-bt-used-endpoint"] == "a"
    assert calls(fleet) == [1, 0, 0]


async def test_stream_with_only_failing_upstreams_ends_in_an_error_event(
    ordered: httpx.AsyncClient, fleet: list[FakeUpstream]
) -> None:
    fleet[0].overrides = {"error_event_after": 0}
    fleet[1].overrides = {"error_event_after": 0}
    response = await post(ordered, json=stream_body())
    events = data_events(response.text)
    assert events == [{"error": {"message": "overloaded mid-stream", "type": "server_error"}}]
    assert calls(fleet) == [1, 1, 0]


# -- balancing --------------------------------------------------------------------------


async def test_round_robin_alternates(
    proxy_factory: Any, urls: list[str], fleet: list[FakeUpstream]
) -> None:
    async with proxy_factory(providers(urls), load_balancing="round_robin") as http:
        used = [(await post(http)).headers["x-bt-used-endpoint"] for _ in range(6)]
    assert used == ["a", "b", "c", "a", "b", "c"]
    assert calls(fleet) == [2, 2, 2]


async def test_round_robin_skips_a_failing_provider(
    proxy_factory: Any, urls: list[str], fleet: list[FakeUpstream]
) -> None:
    fleet[1].overrides = {"status": 500}
    async with proxy_factory(providers(urls), load_balancing="round_robin", cooldown=None) as http:
        used = [(await post(http)).headers["x-bt-used-endpoint"] for _ in range(3)]
    assert used == ["a", "c", "c"]
    assert calls(fleet) == [1, 1, 2]


async def test_weighted_spreads_by_weight(
    proxy_factory: Any, urls: list[str], fleet: list[FakeUpstream]
) -> None:
    async with proxy_factory(
        providers(urls[:2]), load_balancing="weighted", weights={"a": 3, "b": 1}
    ) as http:
        for _ in range(60):
            assert (await post(http)).status_code == 200
    first, second, _ = calls(fleet)
    assert first + second == 60
    # 45 expected, standard deviation 3.4: the bounds are over 4 of them away.
    assert 30 < first < 59


async def test_weight_zero_is_a_standby(
    proxy_factory: Any, urls: list[str], fleet: list[FakeUpstream]
) -> None:
    async with proxy_factory(
        providers(urls[:2]), load_balancing="weighted", weights={"a": 0}
    ) as http:
        for _ in range(10):
            await post(http)
        assert calls(fleet) == [0, 10, 0]
        fleet[1].overrides = {"status": 503}
        response = await post(http)
    assert response.headers["x-bt-used-endpoint"] == "a"
    assert calls(fleet) == [1, 11, 0]


# -- cool-down --------------------------------------------------------------------------


async def test_a_provider_that_keeps_failing_is_cooled_down(
    proxy_factory: Any, urls: list[str], fleet: list[FakeUpstream]
) -> None:
    clock = Clock(1000.0)
    cooldown = Cooldown(after_failures=2, seconds=30, clock=clock)
    fleet[0].overrides = {"status": 503}
    async with proxy_factory(providers(urls[:2]), cooldown=cooldown) as http:
        for _ in range(2):
            assert (await post(http)).headers["x-bt-used-endpoint"] == "b"
        assert calls(fleet) == [2, 2, 0]
        # Cooled down: the next requests skip it.
        for _ in range(3):
            assert (await post(http)).headers["x-bt-used-endpoint"] == "b"
        assert calls(fleet) == [2, 5, 0]
        # After the pause it gets one more chance; one failure cools it down again.
        clock.now += 31
        await post(http)
        await post(http)
        assert calls(fleet) == [3, 7, 0]
        # Healthy again: it is the primary once more.
        clock.now += 31
        fleet[0].overrides = {}
        response = await post(http)
    assert response.headers["x-bt-used-endpoint"] == "a"
    assert calls(fleet) == [4, 7, 0]


async def test_a_cooled_down_provider_is_still_tried_when_it_is_the_last_one(
    proxy_factory: Any, urls: list[str], fleet: list[FakeUpstream]
) -> None:
    cooldown = Cooldown(after_failures=1, seconds=30, clock=Clock(1000.0))
    fleet[0].overrides = {"status": 503}
    async with proxy_factory(providers(urls[:1]), cooldown=cooldown) as http:
        statuses = [(await post(http)).status_code for _ in range(3)]
    assert statuses == [503, 503, 503]
    assert calls(fleet)[0] == 3


async def test_a_success_resets_the_failure_count(
    proxy_factory: Any, urls: list[str], fleet: list[FakeUpstream]
) -> None:
    cooldown = Cooldown(after_failures=2, seconds=30, clock=Clock(1000.0))
    async with proxy_factory(providers(urls[:2]), cooldown=cooldown) as http:
        for _ in range(3):
            fleet[0].overrides = {"status": 500}
            await post(http)
            fleet[0].overrides = {}
            assert (await post(http)).headers["x-bt-used-endpoint"] == "a"
    assert calls(fleet) == [6, 3, 0]


# -- pinning by name --------------------------------------------------------------------


async def test_endpoint_name_header_picks_the_provider(
    ordered: httpx.AsyncClient, fleet: list[FakeUpstream]
) -> None:
    response = await post(ordered, headers={"x-bt-endpoint-name": "b"})
    assert response.status_code == 200
    assert response.headers["x-bt-used-endpoint"] == "b"
    assert calls(fleet) == [0, 1, 0]


async def test_a_pinned_provider_does_not_fail_over(
    ordered: httpx.AsyncClient, fleet: list[FakeUpstream]
) -> None:
    fleet[1].overrides = {"status": 503}
    response = await post(ordered, headers={"x-bt-endpoint-name": "b"})
    assert response.status_code == 503
    assert calls(fleet) == [0, 1, 0]


async def test_unknown_endpoint_name_is_a_clear_400(
    ordered: httpx.AsyncClient, fleet: list[FakeUpstream]
) -> None:
    response = await post(ordered, headers={"x-bt-endpoint-name": "nope"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unknown_endpoint_name"
    # The header's value is never echoed (a pasted key would come back); the choices are.
    assert "nope" not in error["message"] and "'a', 'b'" in error["message"]
    assert calls(fleet) == [0, 0, 0]


async def test_used_endpoint_header_is_on_streams(
    ordered: httpx.AsyncClient, fleet: list[FakeUpstream]
) -> None:
    response = await post(ordered, json=stream_body())
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-bt-used-endpoint"] == "a"


async def test_failed_answers_release_their_connections(
    proxy_factory: Any, urls: list[str], fleet: list[FakeUpstream]
) -> None:
    # One pooled connection: a failed answer left open would starve the next request.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    timeout = httpx.Timeout(5.0, pool=1.0)
    fleet[0].overrides = {"status": 503}
    async with (
        httpx.AsyncClient(limits=limits, timeout=timeout) as shared,
        proxy_factory(providers(urls[:2]), http_client=shared, cooldown=None) as http,
    ):
        statuses = [(await post(http)).status_code for _ in range(5)]
        streamed = await post(http, json=stream_body())
    assert statuses == [200] * 5
    assert data_events(streamed.text)[-1] == "[DONE]"
    assert calls(fleet) == [6, 6, 0]
