"""OpenTelemetry: the request span, its attempt children, trace propagation, GenAI metrics.

Spans and metrics go to the SDK's in-memory exporters; the upstream is the real fake
upstream on 127.0.0.1, so the ``traceparent`` each attempt sends is checked where it
arrives.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from opentelemetry.trace import SpanKind, StatusCode

from asgi_autoproxy import AutoProxyMiddleware, OpenAIProvider
from tests.conftest import CALLER_KEY, MakeProxy, chat_body
from tests.fake_upstream import FakeUpstream
from tests.processes import REPO_ROOT, child_env, free_port
from tests.telemetry.otel_kit import Otel, attrs, make_otel, with_attributes

pytestmark = pytest.mark.anyio

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
CALLER_PARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
DATED = "gpt-4o-mini-2024-07-18"


@pytest.fixture
def otel() -> Otel:
    return make_otel()


@asynccontextmanager
async def serving(proxy: AutoProxyMiddleware) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(proxy) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://testserver",
            headers={"authorization": f"Bearer {CALLER_KEY}"},
            timeout=10,
        ) as http:
            yield http


def traceparent_parts(value: str) -> tuple[str, str]:
    version, trace_id, span_id, flags = value.split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled
    return trace_id, span_id


def body(content: str, **extra: Any) -> dict[str, Any]:
    """A deterministic request (temperature 0): one the cache rules apply to."""
    return chat_body(content, fake={"response_model": DATED}, **{"temperature": 0, **extra})


async def test_a_miss_gets_a_genai_span_with_one_attempt_and_its_traceparent_upstream(
    make_proxy: MakeProxy, otel: Otel, upstream: FakeUpstream
) -> None:
    async with serving(make_proxy(**otel.keywords())) as http:
        response = await http.post(
            "/v1/proxy/chat/completions",
            json=body("miss"),
            headers={"traceparent": CALLER_PARENT, "tracestate": "vendor=1"},
        )
    assert response.status_code == 200 and response.headers["x-bt-cached"] == "MISS"
    (span,) = otel.requests()
    assert span.name == "chat gpt-4o-mini"
    assert span.kind is SpanKind.SERVER
    a = attrs(span)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "gpt-4o-mini"
    assert a["gen_ai.response.model"] == DATED
    assert a["gen_ai.usage.input_tokens"] == 5
    assert a["gen_ai.usage.output_tokens"] == 3
    assert a["autoproxy.cache_status"] == "MISS"
    assert a["autoproxy.used_endpoint"] == "fake"
    assert a["http.response.status_code"] == 200
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a["autoproxy.request_id"] == response.headers["x-request-id"]
    assert "gen_ai.input.messages" not in a  # prompts stay off spans by default
    assert span.status.status_code is not StatusCode.ERROR
    # The caller's trace goes on: same trace id, the caller's span as parent.
    assert span.context is not None and span.parent is not None
    assert f"{span.context.trace_id:032x}" == CALLER_TRACE
    assert f"{span.parent.span_id:016x}" == CALLER_SPAN
    (attempt,) = otel.attempts_of(span)
    assert attempt.kind is SpanKind.CLIENT
    assert attempt.name == "chat gpt-4o-mini"
    assert attrs(attempt)["gen_ai.provider.name"] == "openai"
    assert attrs(attempt)["autoproxy.used_endpoint"] == "fake"
    assert attrs(attempt)["http.response.status_code"] == 200
    assert attrs(attempt)["autoproxy.attempt.outcome"] == "ok"
    # What arrived upstream is the attempt span's own context, and the caller's state.
    (arrived,) = upstream.requests
    trace_id, span_id = traceparent_parts(arrived.headers["traceparent"])
    assert attempt.context is not None
    assert trace_id == CALLER_TRACE
    assert span_id == f"{attempt.context.span_id:016x}"
    assert arrived.headers["tracestate"] == "vendor=1"


async def test_a_hit_is_a_span_without_an_upstream_attempt_or_usage(
    make_proxy: MakeProxy, otel: Otel, upstream: FakeUpstream
) -> None:
    async with serving(make_proxy(**otel.keywords())) as http:
        await http.post("/v1/proxy/auto", json=body("hit me"))
        otel.spans.clear()
        response = await http.post("/v1/proxy/auto", json=body("hit me"))
    assert response.headers["x-bt-cached"] == "HIT"
    assert upstream.calls == 1
    (span,) = otel.requests()
    assert span.name == "chat gpt-4o-mini"
    a = attrs(span)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "gpt-4o-mini"
    assert a["autoproxy.cache_status"] == "HIT"
    assert a["autoproxy.route"] == "auto"
    assert a["http.response.status_code"] == 200
    # Nobody upstream answered this request, and it cost no tokens.
    for absent in (
        "gen_ai.provider.name",
        "autoproxy.used_endpoint",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
    ):
        assert absent not in a
    assert otel.attempts_of(span) == []
    hits = with_attributes(otel.points("autoproxy.requests"), autoproxy__cache_status="HIT")
    assert [p.value for p in hits] == [1]


async def test_a_coalesced_follower_is_its_own_span_without_attempts(
    make_proxy: MakeProxy, otel: Otel, upstream: FakeUpstream
) -> None:
    shared = chat_body("together", stream=True, temperature=0, fake={"gate": True, "chunks": 3})
    proxy = make_proxy(**otel.keywords())
    async with serving(proxy) as http:
        answers: list[httpx.Response] = []

        async def ask() -> None:
            answers.append(await http.post("/v1/proxy/auto", json=shared))

        async with anyio.create_task_group() as group:
            group.start_soon(ask)
            with anyio.fail_after(5):
                # The leader's stream is held after one chunk.
                while not upstream.parked:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            group.start_soon(ask)
            with anyio.fail_after(5):
                # Until the follower has joined the flight.
                while proxy.cache_stats is None or proxy.cache_stats.coalesced < 1:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            upstream.open_gate()
    assert upstream.calls == 1
    assert sorted(r.headers["x-bt-cached"] for r in answers) == ["HIT", "MISS"]
    by_status = {attrs(s)["autoproxy.cache_status"]: s for s in otel.requests()}
    assert set(by_status) == {"MISS", "COALESCED"}
    follower = by_status["COALESCED"]
    a = attrs(follower)
    assert follower.name == "chat gpt-4o-mini"
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "gpt-4o-mini"
    assert a["gen_ai.request.stream"] is True
    assert a["http.response.status_code"] == 200
    assert "gen_ai.usage.input_tokens" not in a and "gen_ai.provider.name" not in a
    assert otel.attempts_of(follower) == []
    leader = by_status["MISS"]
    assert attrs(leader)["gen_ai.usage.input_tokens"] == 5
    assert len(otel.attempts_of(leader)) == 1


async def test_failover_shows_each_attempt_as_a_child_span(
    make_proxy: MakeProxy, otel: Otel, upstream: FakeUpstream, upstream_url: str
) -> None:
    down = OpenAIProvider(base_url=f"http://127.0.0.1:{free_port()}/v1", name="down")
    fake = OpenAIProvider(base_url=upstream_url, name="fake")
    proxy = make_proxy(providers=[down, fake], cooldown=None, **otel.keywords())
    async with serving(proxy) as http:
        response = await http.post("/v1/proxy/auto", json=body("fail over"))
    assert response.status_code == 200 and response.headers["x-bt-used-endpoint"] == "fake"
    (span,) = otel.requests()
    a = attrs(span)
    assert a["autoproxy.used_endpoint"] == "fake"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.response.model"] == DATED
    assert a["gen_ai.usage.input_tokens"] == 5 and a["gen_ai.usage.output_tokens"] == 3
    assert a["autoproxy.cache_status"] == "MISS"
    first, second = otel.attempts_of(span)
    assert attrs(first)["autoproxy.used_endpoint"] == "down"
    assert attrs(first)["autoproxy.attempt.outcome"] == "connect_error"
    assert attrs(first)["error.type"] == "connect_error"
    assert "http.response.status_code" not in attrs(first)
    assert first.status.status_code is StatusCode.ERROR
    assert attrs(second)["autoproxy.used_endpoint"] == "fake"
    assert attrs(second)["autoproxy.attempt.outcome"] == "ok"
    # The upstream that answered saw the second attempt's context, not the first's.
    (arrived,) = upstream.requests
    _, span_id = traceparent_parts(arrived.headers["traceparent"])
    assert second.context is not None and span_id == f"{second.context.span_id:016x}"
    outcomes = {
        (p.attributes["autoproxy.provider"], p.attributes["autoproxy.outcome"]): p.value
        for p in otel.points("autoproxy.upstream.attempts")
    }
    assert outcomes == {("down", "connect_error"): 1, ("fake", "ok"): 1}


async def test_a_stream_has_usage_time_to_first_chunk_and_no_extra_chunk(
    make_proxy: MakeProxy, otel: Otel, upstream: FakeUpstream
) -> None:
    async with serving(make_proxy(**otel.keywords())) as http:
        response = await http.post("/v1/proxy/auto", json=body("stream", stream=True))
    assert response.status_code == 200
    events = [line for line in response.text.split("\n\n") if line.startswith("data: {")]
    assert all(json.loads(e[6:])["choices"] for e in events)  # no usage-only chunk
    assert upstream.requests[0].json["stream_options"] == {"include_usage": True}
    (span,) = otel.requests()
    a = attrs(span)
    assert span.name == "chat gpt-4o-mini"
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "gpt-4o-mini"
    assert a["gen_ai.response.model"] == DATED
    assert a["gen_ai.usage.input_tokens"] == 5 and a["gen_ai.usage.output_tokens"] == 3
    assert a["autoproxy.cache_status"] == "MISS"
    assert a["autoproxy.used_endpoint"] == "fake"
    assert a["gen_ai.request.stream"] is True
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a["gen_ai.response.time_to_first_chunk"] > 0
    (first_chunk,) = otel.points("gen_ai.client.operation.time_to_first_chunk")
    assert first_chunk.count == 1
    assert first_chunk.attributes["gen_ai.request.model"] == "gpt-4o-mini"


async def test_metrics_follow_the_genai_conventions(
    make_proxy: MakeProxy, otel: Otel, upstream: FakeUpstream
) -> None:
    async with serving(make_proxy(**otel.keywords())) as http:
        await http.post("/v1/proxy/auto", json=body("metrics"))
        await http.post("/v1/proxy/auto", json=body("metrics"))  # a hit
        await http.post("/v1/proxy/auto", json={**body("random"), "temperature": 1})
    tokens = otel.points("gen_ai.client.token.usage")
    inputs = with_attributes(tokens, gen_ai__token__type="input")
    outputs = with_attributes(tokens, gen_ai__token__type="output")
    # The miss and the uncacheable one; the hit used no tokens.
    assert sum(p.sum for p in inputs) == 10 and sum(p.count for p in inputs) == 2
    assert sum(p.sum for p in outputs) == 6
    for point in inputs:
        assert point.attributes["gen_ai.operation.name"] == "chat"
        assert point.attributes["gen_ai.provider.name"] == "openai"
        assert point.attributes["gen_ai.request.model"] == "gpt-4o-mini"
        assert point.attributes["gen_ai.response.model"] == DATED
    (merged,) = inputs  # one series: the miss and the uncacheable one
    assert "autoproxy.request_id" not in merged.attributes
    durations = otel.points("gen_ai.client.operation.duration")
    assert sum(p.count for p in durations) == 3
    requests = {
        p.attributes["autoproxy.cache_status"]: p.value for p in otel.points("autoproxy.requests")
    }
    assert requests == {"MISS": 1, "HIT": 1, "SKIPPED": 1}
    for point in otel.points("autoproxy.requests"):
        assert point.attributes["autoproxy.route"] == "auto"
        assert point.attributes["autoproxy.model"] == "gpt-4o-mini"
        assert point.attributes["autoproxy.status"] == 200
        # A request id or a caller never becomes a metric attribute.
        assert not any("request_id" in k or "caller" in k for k in point.attributes)


async def test_an_upstream_error_marks_the_span(
    make_proxy: MakeProxy, otel: Otel, upstream: FakeUpstream
) -> None:
    async with serving(make_proxy(**otel.keywords())) as http:
        response = await http.post("/v1/proxy/auto", json=chat_body("x", fake={"status": 503}))
    assert response.status_code == 503
    (span,) = otel.requests()
    assert attrs(span)["error.type"] == "503"
    assert span.status.status_code is StatusCode.ERROR
    (attempt,) = otel.attempts_of(span)
    assert attrs(attempt)["autoproxy.attempt.outcome"] == "error_status"
    assert attrs(attempt)["http.response.status_code"] == 503


async def test_prompts_go_on_spans_only_when_asked(
    make_proxy: MakeProxy, otel: Otel, upstream: FakeUpstream
) -> None:
    secret_prompt = "my very private prompt"
    async with serving(make_proxy(**otel.keywords())) as http:
        await http.post("/v1/proxy/auto", json=chat_body(secret_prompt))
    for span in otel.finished():  # neither the prompt nor the (echoing) completion
        assert secret_prompt not in json.dumps({k: str(v) for k, v in attrs(span).items()})
    otel.spans.clear()
    async with serving(make_proxy(capture_content=True, **otel.keywords())) as http:
        await http.post("/v1/proxy/auto", json=chat_body(secret_prompt, temperature=1))
    (span,) = otel.requests()
    assert json.loads(attrs(span)["gen_ai.input.messages"]) == [
        {"role": "user", "content": secret_prompt}
    ]
    (choice,) = json.loads(attrs(span)["gen_ai.output.messages"])
    assert choice["message"]["content"].endswith(secret_prompt)  # the fake echoes it


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/v1/proxy/auto", chat_body("auto")),
        ("/v1/proxy/chat/completions", chat_body("chat")),
        ("/v1/proxy/completions", {"model": "davinci-002", "prompt": "complete"}),
    ],
)
@pytest.mark.parametrize("tracing", [True, False], ids=["otel", "no-otel"])
async def test_every_route_sends_a_traceparent_upstream(
    make_proxy: MakeProxy,
    otel: Otel,
    upstream: FakeUpstream,
    path: str,
    payload: dict[str, Any],
    tracing: bool,
) -> None:
    keywords = otel.keywords() if tracing else {}
    async with serving(make_proxy(**keywords)) as http:
        response = await http.post(path, json=payload, headers={"traceparent": CALLER_PARENT})
    assert response.status_code == 200
    (arrived,) = upstream.requests
    trace_id, span_id = traceparent_parts(arrived.headers["traceparent"])
    assert trace_id == CALLER_TRACE
    if tracing:  # the proxy's attempt span is the upstream call's parent
        (span,) = otel.requests()
        (attempt,) = otel.attempts_of(span)
        assert attempt.context is not None and span_id == f"{attempt.context.span_id:016x}"
    else:  # not tracing itself, the proxy passes the caller's context on as it came
        assert span_id == CALLER_SPAN
        assert otel.finished() == []


@pytest.mark.parametrize(
    "bad",
    [
        "00-zzzz651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nx-evil: 1",
        "x" * 5000,
    ],
)
async def test_a_malformed_traceparent_is_not_passed_on(
    make_proxy: MakeProxy, upstream: FakeUpstream, otel: Otel, bad: str
) -> None:
    async with serving(make_proxy(**otel.keywords())) as http:
        headers = {"traceparent": bad.replace("\r\n", " ")}
        response = await http.post("/v1/proxy/auto", json=chat_body("bad"), headers=headers)
    assert response.status_code == 200
    (arrived,) = upstream.requests
    assert "zzzz" not in arrived.headers.get("traceparent", "")
    assert "x-evil" not in arrived.headers
    (span,) = otel.requests()
    assert span.parent is None  # a new trace, not a continued one
    assert span.context is not None
    trace_id, _ = traceparent_parts(arrived.headers["traceparent"])
    assert trace_id == f"{span.context.trace_id:032x}"


async def test_the_wrapped_app_gets_the_callers_trace_context_untouched(
    make_proxy: MakeProxy, otel: Otel
) -> None:
    seen: list[dict[bytes, bytes]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            assert message["type"] == "lifespan.shutdown"
            await send({"type": "lifespan.shutdown.complete"})
            return
        seen.append(dict(scope["headers"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with serving(make_proxy(app=app, **otel.keywords())) as http:
        response = await http.get(
            "/elsewhere", headers={"traceparent": CALLER_PARENT, "tracestate": "a=b"}
        )
    assert response.status_code == 204
    assert seen[0][b"traceparent"] == CALLER_PARENT.encode()
    assert seen[0][b"tracestate"] == b"a=b"
    assert otel.finished() == []  # the app's requests are the app's to trace


def test_telemetry_keywords_are_checked_at_start_up() -> None:
    provider = OpenAIProvider(base_url="http://127.0.0.1:9/v1")

    def make(**kwargs: Any) -> None:
        AutoProxyMiddleware(lambda *a: None, providers=[provider], **kwargs)  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="capture_content puts prompts"):
        make(capture_content=True)
    with pytest.raises(ValueError, match="metrics_token guards metrics_path"):
        make(metrics_token="t")
    with pytest.raises(ValueError, match="metrics_path must start with '/'"):
        make(metrics_path="metrics")
    with pytest.raises(ValueError, match="one of the proxy's own routes"):
        make(metrics_path="/v1/proxy/models")


_OFF_CHECK = """
import sys, anyio, httpx
from asgi_autoproxy import AutoProxyMiddleware, OpenAIProvider

async def main():
    async def app(scope, receive, send):
        pass
    proxy = AutoProxyMiddleware(app, providers=[OpenAIProvider(base_url=sys.argv[1])])
    transport = httpx.ASGITransport(app=proxy)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        r = await http.post("/v1/proxy/auto", headers={"authorization": "Bearer sk-x"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
    await proxy.aclose()
    loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry", "prometheus_client")))
    print("LOADED", loaded)

anyio.run(main)
"""


def test_off_by_default_nothing_from_opentelemetry_or_prometheus_is_imported(
    upstream_url: str,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _OFF_CHECK, upstream_url],
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout


_GLOBALS_CHECK = """
import anyio, httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from asgi_autoproxy import AutoProxyMiddleware, OpenAIProvider

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

async def main():
    async def app(scope, receive, send):
        pass
    proxy = AutoProxyMiddleware(
        app, providers=[OpenAIProvider(base_url="http://127.0.0.1:9/v1")], opentelemetry=True
    )
    transport = httpx.ASGITransport(app=proxy)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        r = await http.get("/v1/proxy/models", headers={"authorization": "Bearer sk-x"})
        assert r.status_code == 200, r.text
    await proxy.aclose()
    spans = exporter.get_finished_spans()
    print("SPANS", [(s.name, s.attributes["autoproxy.route"]) for s in spans])

anyio.run(main)
"""


def test_opentelemetry_true_uses_the_global_providers() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _GLOBALS_CHECK],
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "SPANS [('models', 'models')]" in done.stdout


async def test_an_embeddings_request_is_an_embeddings_span(
    make_proxy: MakeProxy, otel: Otel, upstream: FakeUpstream
) -> None:
    body = {"model": "text-embedding-3-small", "input": ["a", "b"]}
    async with serving(make_proxy(**otel.keywords())) as http:
        response = await http.post("/v1/proxy/embeddings", json=body)
    assert response.status_code == 200, response.text
    (span,) = otel.requests()
    assert span.name == "embeddings text-embedding-3-small"
    a = attrs(span)
    assert a["gen_ai.operation.name"] == "embeddings"
    assert a["gen_ai.request.model"] == "text-embedding-3-small"
    assert a["gen_ai.response.model"] == "text-embedding-3-small"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.usage.input_tokens"] == 5
    assert a["autoproxy.route"] == "embeddings"
    (attempt,) = otel.attempts_of(span)
    assert attempt.name == "embeddings text-embedding-3-small"
    assert "stream_options" not in upstream.requests[0].json  # never on other APIs
