"""The on_request hook, the request log and the request id."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest

from asgi_autoproxy import AutoProxyMiddleware, RequestRecord, TokenUsage
from tests.conftest import CALLER_KEY, MakeProxy, chat_body
from tests.fault_upstream import FaultUpstream
from tests.faults import asgi_client, fault_body, faulty_proxy

pytestmark = pytest.mark.anyio


@pytest.fixture
async def records(fault_upstream: FaultUpstream) -> AsyncIterator[list[RequestRecord]]:
    seen: list[RequestRecord] = []
    yield seen


@pytest.fixture
async def proxy(
    fault_upstream: FaultUpstream, records: list[RequestRecord]
) -> AsyncIterator[AutoProxyMiddleware]:
    app = faulty_proxy(fault_upstream.url, on_request=records.append)
    yield app
    await app.aclose()


async def test_miss_then_hit_records(
    proxy: AutoProxyMiddleware, records: list[RequestRecord]
) -> None:
    body = fault_body("ok", False, "count me")
    async with asgi_client(proxy) as http:
        first = await http.post("/v1/proxy/auto", json=body, headers={"x-request-id": "r-1"})
        second = await http.post("/v1/proxy/chat/completions", json=body)
    miss, hit = records
    assert miss.request_id == "r-1" == first.headers["x-request-id"]
    assert (miss.method, miss.route, miss.endpoint, miss.model) == (
        "POST",
        "auto",
        "chat",
        "gpt-4o-mini",
    )
    assert (miss.provider, miss.status, miss.cache, miss.stream) == ("faulty", 200, "MISS", False)
    assert miss.usage == TokenUsage(prompt_tokens=11, completion_tokens=2, total_tokens=13)
    assert miss.latency_s > 0 and miss.ttfb_s is None
    assert miss.error is None and not miss.client_disconnected
    assert hit.request_id == second.headers["x-request-id"]
    assert (hit.route, hit.provider, hit.status, hit.cache) == ("chat", None, 200, "HIT")
    assert hit.usage is None  # nothing was billed upstream for a hit
    for record in records:
        assert CALLER_KEY not in repr(record)


async def test_stream_record_has_ttfb_and_usage_from_the_last_chunk(
    proxy: AutoProxyMiddleware, records: list[RequestRecord]
) -> None:
    body = fault_body("ok", True, "stream me", chunks=4, delay=0.02)
    body["stream_options"] = {"include_usage": True}
    async with asgi_client(proxy) as http:
        response = await http.post("/v1/proxy/auto", json=body)
    assert response.content.endswith(b"data: [DONE]\n\n")
    (record,) = records
    assert record.stream and record.status == 200 and record.cache == "MISS"
    assert record.usage == TokenUsage(prompt_tokens=11, completion_tokens=4, total_tokens=15)
    assert record.ttfb_s is not None
    assert 0 < record.ttfb_s < record.latency_s
    assert record.latency_s >= 0.06  # four chunks 0.02 s apart


async def test_not_cacheable_and_coalesced_records(
    proxy: AutoProxyMiddleware, records: list[RequestRecord]
) -> None:
    random_body = {**fault_body("ok", False, "random"), "temperature": 1}
    shared = fault_body("ok", True, "shared", chunks=5, delay=0.05)
    async with asgi_client(proxy) as http:
        await http.post("/v1/proxy/auto", json=random_body)

        async def leader() -> None:
            await http.post("/v1/proxy/auto", json=shared)

        async with anyio.create_task_group() as group:
            group.start_soon(leader)
            await anyio.sleep(0.1)  # the leader's stream is under way
            await http.post("/v1/proxy/auto", json=shared)
    assert records[0].cache is None
    assert sorted(str(r.cache) for r in records[1:]) == ["COALESCED", "MISS"]
    follower = next(r for r in records if r.cache == "COALESCED")
    assert follower.usage is None and follower.provider is None and follower.status == 200


async def test_error_records_carry_the_error_code(
    proxy: AutoProxyMiddleware, records: list[RequestRecord]
) -> None:
    async with asgi_client(proxy) as http:
        await http.post("/v1/proxy/auto", json=fault_body("refused", False))
        await http.post("/v1/proxy/auto", json=fault_body("no_done", True))
        await http.post("/v1/proxy/auto", content=b"{not json")
        await http.get("/v1/proxy/models")
    refused, broken, invalid, models = records
    assert (refused.status, refused.error, refused.model) == (
        502,
        "upstream_unreachable",
        "refused-model",
    )
    assert (broken.status, broken.error, broken.provider) == (
        200,
        "upstream_stream_error",
        "faulty",
    )
    assert (invalid.status, invalid.error, invalid.endpoint) == (400, "invalid_json", None)
    assert (models.method, models.route, models.status, models.cache) == (
        "GET",
        "models",
        200,
        None,
    )


async def test_async_hook_is_awaited(fault_upstream: FaultUpstream) -> None:
    seen: list[str] = []

    async def hook(record: RequestRecord) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(record.request_id)

    app = faulty_proxy(fault_upstream.url, on_request=hook)
    async with asgi_client(app) as http:
        response = await http.post("/v1/proxy/auto", json=fault_body("ok", False))
    await app.aclose()
    assert seen == [response.headers["x-request-id"]]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_failing_hook_is_logged_and_the_request_still_served(
    fault_upstream: FaultUpstream, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    def broken(record: RequestRecord) -> None:
        raise RuntimeError("hook bug")

    async def broken_async(record: RequestRecord) -> None:
        raise RuntimeError("hook bug")

    app = faulty_proxy(fault_upstream.url, on_request=broken if kind == "sync" else broken_async)
    async with asgi_client(app) as http:
        whole = await http.post("/v1/proxy/auto", json=fault_body("ok", False, kind))
        streamed = await http.post("/v1/proxy/auto", json=fault_body("ok", True, kind))
    await app.aclose()
    assert whole.status_code == 200 and whole.json()["object"] == "chat.completion"
    assert streamed.content.endswith(b"data: [DONE]\n\n")
    failures = [r for r in caplog.records if "on_request hook failed" in r.getMessage()]
    assert len(failures) == 2
    assert failures[0].exc_info is not None and "hook bug" in str(failures[0].exc_info[1])


def test_hook_must_be_callable() -> None:
    with pytest.raises(TypeError, match="on_request must be a callable"):
        faulty_proxy("http://127.0.0.1:1/v1", on_request="print")


async def test_request_log_event_has_the_record_fields(
    proxy: AutoProxyMiddleware, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asgi_autoproxy")
    async with asgi_client(proxy) as http:
        await http.post(
            "/v1/proxy/auto", json=fault_body("ok", False), headers={"x-request-id": "logged"}
        )
    (event,) = [r for r in caplog.records if r.name == "asgi_autoproxy.requests"]
    assert event.levelno == logging.INFO
    fields = event.__dict__
    assert fields["request_id"] == "logged"
    assert (fields["model"], fields["provider"], fields["status"]) == ("gpt-4o-mini", "faulty", 200)
    assert (fields["cache_status"], fields["total_tokens"]) == ("MISS", 13)
    assert fields["latency_s"] > 0
    assert "gpt-4o-mini" in event.getMessage() and "status=200" in event.getMessage()
    assert CALLER_KEY not in event.getMessage() and CALLER_KEY not in repr(fields)


@pytest.mark.parametrize(
    "given",
    ["", "has space", "x" * 129, "ünïcode".encode(), "semi;colon"],
    ids=lambda v: repr(v)[:12],
)
async def test_unusable_request_id_is_replaced(make_proxy: MakeProxy, given: str | bytes) -> None:
    app = make_proxy()
    async with asgi_client(app) as http:
        response = await http.post(
            "/v1/proxy/auto", json=chat_body(), headers={"x-request-id": given}
        )
    generated = response.headers["x-request-id"]
    assert generated != given and len(generated) == 32 and int(generated, 16) >= 0


async def test_error_answers_carry_the_request_id(make_proxy: MakeProxy) -> None:
    app = make_proxy()
    async with asgi_client(app) as http:
        bad = await http.post(
            "/v1/proxy/auto", content=b"[]", headers={"x-request-id": "bad-body-1"}
        )
        wrong = await http.get("/v1/proxy/auto", headers={"x-request-id": "wrong-verb"})
    assert (bad.status_code, bad.headers["x-request-id"]) == (400, "bad-body-1")
    assert (wrong.status_code, wrong.headers["x-request-id"]) == (405, "wrong-verb")
