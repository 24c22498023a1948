"""Prometheus: the figures at ``metrics_path``, its token, and several processes.

The in-process tests scrape through the ASGI app; the others run real uvicorn servers
(child processes) against the real fake upstream, sharing one multiprocess directory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from prometheus_client.parser import text_string_to_metric_families

from asgi_autoproxy import AutoProxyMiddleware
from asgi_autoproxy._telemetry.labels import MAX_MODELS, OTHER_MODEL, ModelLabels
from tests.conftest import CALLER_KEY, MakeProxy, chat_body
from tests.fake_upstream import FakeUpstream
from tests.processes import free_port, run_server

pytestmark = pytest.mark.anyio

TOKEN = "metrics-token-0123456789"


@asynccontextmanager
async def serving(proxy: AutoProxyMiddleware) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(proxy) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://testserver",
            headers={"authorization": f"Bearer {CALLER_KEY}"},
        ) as http:
            yield http


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def total(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> float:
    return sum(v for (n, _), v in found.items() if n == name)


async def test_metrics_count_requests_tokens_attempts_and_cache(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    async with serving(make_proxy(metrics_path="/metrics")) as http:
        body = chat_body("count me", temperature=0)
        await http.post("/v1/proxy/auto", json=body)
        await http.post("/v1/proxy/auto", json=body)  # a hit
        await http.post("/v1/proxy/chat/completions", json=chat_body("s", stream=True))
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    found = samples(response.text)
    requests = "autoproxy_requests_total"
    miss = {"route": "auto", "model": "gpt-4o-mini", "provider": "fake", "status": "200"}
    assert value(found, requests, **miss, cache="MISS") == 1
    assert value(found, requests, **{**miss, "provider": "none"}, cache="HIT") == 1
    streamed = {**miss, "route": "chat", "cache": "SKIPPED"}
    assert value(found, requests, **streamed) == 1
    assert value(found, "autoproxy_tokens_total", model="gpt-4o-mini", type="input") == 10
    assert value(found, "autoproxy_tokens_total", model="gpt-4o-mini", type="output") == 6
    assert value(found, "autoproxy_upstream_attempts_total", provider="fake", outcome="ok") == 2
    assert value(found, "autoproxy_request_duration_seconds_count", route="auto", cache="HIT") == 1
    assert (
        value(found, "autoproxy_time_to_first_chunk_seconds_count", route="chat", cache="SKIPPED")
        == 1
    )
    assert value(found, "autoproxy_cache_entries") == 1
    # Labels stay low-cardinality: never a request id or a caller.
    label_names = {name for _, labels in found for name, _ in labels}
    assert label_names <= {"route", "model", "provider", "status", "cache", "type", "outcome", "le"}
    assert CALLER_KEY not in response.text


async def test_the_metrics_endpoint_is_guarded_by_its_own_token(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    async with serving(make_proxy(metrics_path="/metrics", metrics_token=TOKEN)) as http:
        anonymous = await http.get("/metrics")  # the caller's proxy key is not the token
        wrong = await http.get("/metrics", headers={"authorization": "Bearer nope-nope"})
        right = await http.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
        post = await http.post("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
        elsewhere = await http.get("/metricsx")
    for refused in (anonymous, wrong):
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert "nope-nope" not in refused.text and TOKEN not in refused.text
    assert right.status_code == 200 and "autoproxy_requests_total" in right.text
    assert post.status_code == 405 and post.headers["allow"] == "GET"
    assert elsewhere.text == "inner app" or elsewhere.status_code == 404  # the app's


async def test_metrics_are_off_by_default(make_proxy: MakeProxy) -> None:
    async with serving(make_proxy()) as http:
        response = await http.get("/metrics")
    assert "autoproxy_" not in response.text  # the wrapped app answered


def test_model_labels_are_bounded() -> None:
    labels = ModelLabels()
    names = [labels(f"model-{n}") for n in range(MAX_MODELS + 50)]
    assert len(set(names)) == MAX_MODELS + 1
    assert names[-1] == OTHER_MODEL
    assert labels("model-0") == "model-0"  # the ones seen first keep their name


def _scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    # A new connection each time, so a multi-worker server may hand it to any worker.
    with httpx.Client(headers={"authorization": f"Bearer {TOKEN}"}) as http:
        response = http.get(f"{url}/metrics", headers={"connection": "close"})
    assert response.status_code == 200, response.text
    return samples(response.text)


def _ask(url: str, count: int, tag: str) -> None:
    for n in range(count):
        with httpx.Client(headers={"authorization": f"Bearer {CALLER_KEY}"}) as http:
            body = chat_body(f"{tag}-{n}", temperature=0)
            response = http.post(f"{url}/v1/proxy/auto", json=body, timeout=10)
        assert response.status_code == 200, response.text


def _server(tmp_path: Path, name: str, upstream_url: str, workers: int = 1) -> object:
    port = free_port()
    args = ["-m", "uvicorn", "tests.telemetry.metrics_app:app", "--port", str(port)]
    if workers > 1:
        args += ["--workers", str(workers)]
    env = {
        "TEST_UPSTREAM_URL": upstream_url,
        "TEST_METRICS_TOKEN": TOKEN,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
    }
    return run_server(args, port=port, log_path=tmp_path / f"{name}.log", env=env)


@pytest.mark.slow
def test_a_real_server_serves_metrics(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    (tmp_path / "prometheus").mkdir()
    with _server(tmp_path, "one", upstream_url) as server:  # type: ignore[attr-defined]
        _ask(server.url, 3, "one")
        found = _scrape(server.url)
    assert total(found, "autoproxy_requests_total") == 3
    assert value(found, "autoproxy_upstream_attempts_total", provider="fake", outcome="ok") == 3
    assert value(found, "autoproxy_cache_entries") == 3


@pytest.mark.slow
def test_processes_sharing_a_directory_report_the_sum(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    (tmp_path / "prometheus").mkdir()
    with (
        _server(tmp_path, "a", upstream_url) as a,  # type: ignore[attr-defined]
        _server(tmp_path, "b", upstream_url) as b,  # type: ignore[attr-defined]
    ):
        _ask(a.url, 2, "a")
        _ask(b.url, 3, "b")
        from_a, from_b = _scrape(a.url), _scrape(b.url)
    for found in (from_a, from_b):  # whichever process is scraped, it reports both
        assert total(found, "autoproxy_requests_total") == 5
        assert value(found, "autoproxy_tokens_total", model="gpt-4o-mini", type="input") == 25
        assert value(found, "autoproxy_cache_entries") == 5  # live processes, summed


@pytest.mark.slow
def test_several_workers_report_every_request(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    (tmp_path / "prometheus").mkdir()
    with _server(tmp_path, "workers", upstream_url, workers=2) as server:  # type: ignore[attr-defined]
        _ask(server.url, 6, "w")
        scrapes = [_scrape(server.url) for _ in range(4)]
    for found in scrapes:
        assert total(found, "autoproxy_requests_total") == 6
        assert total(found, "autoproxy_upstream_attempts_total") == 6
