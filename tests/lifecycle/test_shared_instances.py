"""Two and three real proxy processes (uvicorn) against one real redis-server, and against
a real 3-master Redis Cluster: the rate limit holds exactly across them, a provider one
cools is skipped by the others, one's MISS is another's HIT. Killing and pausing Redis
mid-run fails no request, and everything shared resumes by itself."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping

import httpx
import pytest

from tests.conftest import CALLER_KEY, chat_body
from tests.fake_upstream import FakeUpstream
from tests.processes import REPO_ROOT
from tests.redis_server import RedisServer, free_port, running_redis
from tests.servers import ServerThread, serve_fleet

READY_TIMEOUT = 30.0
PIDS: dict[str, int] = {}
"""Each running proxy's process id, by its URL."""


@contextlib.contextmanager
def proxies(count: int, env: Mapping[str, str]) -> Iterator[list[str]]:
    """``count`` uvicorn processes serving tests/redis_process_app.py, started together."""
    started: list[tuple[subprocess.Popen[bytes], int, tempfile._TemporaryFileWrapper[bytes]]]
    started = []
    child = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **env}
    try:
        for _ in range(count):
            port = free_port()
            log = tempfile.NamedTemporaryFile(prefix="asgi_autoproxy-proxy-")  # noqa: SIM115
            command = [
                sys.executable, "-m", "uvicorn", "tests.redis_process_app:app",
                "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
            ]  # fmt: skip
            process = subprocess.Popen(command, cwd=REPO_ROOT, env=child, stdout=log, stderr=log)
            started.append((process, port, log))
        deadline = time.monotonic() + READY_TIMEOUT
        for process, port, log in started:
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    pytest.fail(f"proxy process exited:\n{log.read().decode(errors='replace')}")
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), timeout=0.5),
                ):
                    break
                assert time.monotonic() < deadline, "proxy process did not start listening"
                time.sleep(0.05)
        for process, port, _ in started:
            PIDS[f"http://127.0.0.1:{port}"] = process.pid
        yield [f"http://127.0.0.1:{port}" for _, port, _ in started]
    finally:
        for process, _, _ in started:
            process.terminate()
        for process, _, log in started:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
            log.close()


def post(url: str, key: str = CALLER_KEY, **body: object) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/proxy/auto",
        json=chat_body(**body),  # type: ignore[arg-type]
        headers={"authorization": f"Bearer {key}"},
        timeout=15,
    )


@pytest.fixture(scope="module")
def _fleet() -> Iterator[list[tuple[FakeUpstream, ServerThread]]]:
    with serve_fleet(FakeUpstream, 2) as fleet:
        yield fleet


def test_the_rate_limit_holds_exactly_across_three_processes(
    upstream: FakeUpstream, upstream_url: str, redis_url: str
) -> None:
    env = {
        "ASGI_AUTOPROXY_TEST_UPSTREAM": upstream_url,
        "ASGI_AUTOPROXY_TEST_REDIS": redis_url,
        "ASGI_AUTOPROXY_TEST_PREFIX": f"rate-{time.monotonic_ns()}:",
        "ASGI_AUTOPROXY_TEST_RATE": "0.01,5",  # bursts of 5, then one per 100 s
        "ASGI_AUTOPROXY_TEST_TIMEOUT": "2",
    }
    with proxies(3, env) as urls:
        # All at once, spread over the three: exactly 5 get through, whichever they reach.
        with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
            futures = [pool.submit(post, urls[i % 3], content=f"burst {i}") for i in range(12)]
            statuses = sorted(f.result(timeout=30).status_code for f in futures)
        assert statuses == [200] * 5 + [429] * 7
        # One by one, too: a second caller's 5, on whichever process.
        other = [post(urls[i % 3], "sk-second-caller", content=f"o{i}") for i in range(8)]
        assert [r.status_code for r in other] == [200] * 5 + [429] * 3
        assert int(other[-1].headers["retry-after"]) > 60
    assert upstream.calls == 10


def test_a_provider_cooled_by_one_process_is_skipped_by_the_others(
    _fleet: list[tuple[FakeUpstream, ServerThread]], redis_url: str
) -> None:
    (flaky, flaky_server), (steady, steady_server) = _fleet
    flaky.reset()
    steady.reset()
    flaky.overrides = {"status": 503}
    env = {
        "ASGI_AUTOPROXY_TEST_UPSTREAMS": (
            f"flaky={flaky_server.url}/v1,steady={steady_server.url}/v1"
        ),
        "ASGI_AUTOPROXY_TEST_REDIS": redis_url,
        "ASGI_AUTOPROXY_TEST_PREFIX": f"cool-{time.monotonic_ns()}:",
        "ASGI_AUTOPROXY_TEST_COOLDOWN": "2,60",
        "ASGI_AUTOPROXY_TEST_TIMEOUT": "2",
    }
    with proxies(3, env) as (a, b, c):
        for i in range(2):  # A: flaky fails twice, A fails over to steady
            assert post(a, content=f"a{i}").status_code == 200
        assert flaky.calls == 2
        time.sleep(0.3)  # the others' mirrors refresh at most every 0.1 s
        for i, url in enumerate((b, c, b, c)):
            response = post(url, content=f"bc{i}")
            assert response.status_code == 200
            assert response.headers["x-bt-used-endpoint"] == "steady"
        assert flaky.calls == 2  # never tried by B or C
    assert steady.calls == 6


def test_miss_on_one_process_is_hit_on_the_others(
    upstream: FakeUpstream, upstream_url: str, redis_url: str
) -> None:
    env = {
        "ASGI_AUTOPROXY_TEST_UPSTREAM": upstream_url,
        "ASGI_AUTOPROXY_TEST_REDIS": redis_url,
        "ASGI_AUTOPROXY_TEST_PREFIX": f"hit-{time.monotonic_ns()}:",
        "ASGI_AUTOPROXY_TEST_TIMEOUT": "2",
    }
    with proxies(3, env) as (a, b, c):
        first = post(a, content="cached across processes", temperature=0)
        assert first.headers["x-bt-cached"] == "MISS"
        for url in (b, c):
            again = post(url, content="cached across processes", temperature=0)
            assert again.headers["x-bt-cached"] == "HIT"
            assert again.json() == first.json()
    assert upstream.calls == 1


@pytest.mark.slow
def test_killing_and_pausing_redis_fails_no_request_and_sharing_resumes(
    upstream: FakeUpstream, upstream_url: str
) -> None:
    with running_redis() as own:
        env = {
            "ASGI_AUTOPROXY_TEST_UPSTREAM": upstream_url,
            "ASGI_AUTOPROXY_TEST_REDIS": own.url,
            "ASGI_AUTOPROXY_TEST_RATE": "0.01,2",  # bursts of 2, kept in Redis
        }
        with proxies(2, env) as urls:
            failures: list[str] = []
            served = [0]
            stop = threading.Event()

            def load(url: str) -> None:
                i = 0
                while not stop.is_set():
                    i += 1
                    try:  # a new caller each time: the limit is checked, never reached
                        key = f"sk-load-{threading.get_ident()}-{i}"
                        response = post(url, key, content=f"load {i % 7}", temperature=0)
                    except httpx.HTTPError as exc:
                        failures.append(f"{url}: {exc!r}")
                        continue
                    if response.status_code != 200:
                        failures.append(f"{url}: {response.status_code} {response.text}")
                    served[0] += 1

            threads = [threading.Thread(target=load, args=(url,)) for url in urls * 2]
            for thread in threads:
                thread.start()
            try:
                time.sleep(1.0)
                own.kill()
                time.sleep(1.5)
                own.start()  # same port, empty
                time.sleep(1.5)
                own.pause()  # SIGSTOP: connections open, nothing answers
                time.sleep(1.5)
                own.resume()
                time.sleep(1.5)
            finally:
                stop.set()
                for thread in threads:
                    thread.join(timeout=30)
            assert not failures, failures[:5]
            assert served[0] > 20

            # Everything shared resumes by itself: the rate limit ...
            deadline = time.monotonic() + 15
            while True:
                key = f"sk-after-{time.monotonic_ns()}"
                statuses = [post(url, key).status_code for url in (*urls, urls[0])]
                if statuses == [200, 200, 429]:  # a burst of 2 across both: shared again
                    break
                assert time.monotonic() < deadline, statuses
            # ... and the cache: A's MISS is B's HIT again.
            while True:
                prompt = f"after the outage {time.monotonic_ns()}"
                first = post(urls[0], content=prompt, temperature=0)
                time.sleep(0.05)
                second = post(urls[1], content=prompt, temperature=0)
                if (first.headers["x-bt-cached"], second.headers["x-bt-cached"]) == (
                    "MISS",
                    "HIT",
                ):
                    break
                assert time.monotonic() < deadline, "the cache was never shared again"
                time.sleep(0.2)


def _stream(url: str, body: dict[str, object], out: dict[str, object]) -> None:
    """Stream one answer; note when its first body byte came, its bytes and headers."""
    with (
        httpx.Client(timeout=30) as http,
        http.stream(
            "POST",
            f"{url}/v1/proxy/auto",
            json=body,
            headers={"authorization": f"Bearer {CALLER_KEY}"},
        ) as response,
    ):
        out["status"], out["cached"] = response.status_code, response.headers.get("x-bt-cached")
        data = b""
        for chunk in response.iter_raw():
            if chunk and "first" not in out:
                out["first"] = time.monotonic()
            data += chunk
        out["data"] = data


def _stream_quietly(url: str, body: dict[str, object], out: dict[str, object]) -> None:
    """``_stream`` for a client whose server is killed under it."""
    with contextlib.suppress(httpx.HTTPError):
        _stream(url, body, out)


def _streams(urls: list[str], body: dict[str, object], count: int) -> list[dict[str, object]]:
    """``count`` identical streams spread over ``urls``, the first one started first."""
    results: list[dict[str, object]] = [{} for _ in range(count)]
    threads = [
        threading.Thread(target=_stream, args=(urls[i % len(urls)], body, results[i]))
        for i in range(count)
    ]
    threads[0].start()
    for thread in threads[1:]:
        time.sleep(0.05)
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_identical_streams_across_processes_make_one_upstream_call(
    upstream: FakeUpstream, upstream_url: str, redis_url: str
) -> None:
    env = {
        "ASGI_AUTOPROXY_TEST_UPSTREAM": upstream_url,
        "ASGI_AUTOPROXY_TEST_REDIS": redis_url,
        "ASGI_AUTOPROXY_TEST_PREFIX": f"streams-{time.monotonic_ns()}:",
        "ASGI_AUTOPROXY_TEST_TIMEOUT": "2",
    }
    body = chat_body(
        "one stream for every process", temperature=0, stream=True,
        fake={"gate_before_first": True, "chunks": 6, "delay": 0.02},
    )  # fmt: skip
    with proxies(3, env) as urls:
        results: list[dict[str, object]] = []
        runner = threading.Thread(target=lambda: results.extend(_streams(urls, body, 8)))
        runner.start()
        deadline = time.monotonic() + 20
        while not upstream.parked:  # the leader's upstream call waits at the gate
            assert time.monotonic() < deadline, "no upstream call started"
            time.sleep(0.01)
        time.sleep(1.0)  # every follower has joined (each started 50 ms after the last)
        upstream.open_gate()
        runner.join(timeout=60)
        assert upstream.calls == 1
        assert [r["status"] for r in results] == [200] * 8
        # One leader (whichever process took the lock first); the others followed it.
        [leader] = [r for r in results if r["cached"] == "MISS"]
        followers = [r for r in results if r is not leader]
        assert {f["cached"] for f in followers} == {"HIT"}
        whole = leader["data"]
        assert isinstance(whole, bytes) and whole.endswith(b"data: [DONE]\n\n")
        assert all(f["data"] == whole for f in followers)
        first = float(leader["first"])  # type: ignore[arg-type]
        lags = [float(f["first"]) - first for f in followers]  # type: ignore[arg-type]
        assert max(lags) <= 0.05, [round(lag, 4) for lag in lags]
        # Stored once, whole: a later request on any process is a plain hit.
        later: dict[str, object] = {}
        _stream(urls[2], body, later)
        assert later["cached"] == "HIT" and later["data"] == whole
    assert upstream.calls == 1


@pytest.mark.parametrize("fate", ["killed", "stopped"])
def test_followers_go_alone_when_the_leading_process_dies_or_stalls(
    upstream: FakeUpstream, upstream_url: str, server: RedisServer, fate: str
) -> None:
    env = {
        "ASGI_AUTOPROXY_TEST_UPSTREAM": upstream_url,
        "ASGI_AUTOPROXY_TEST_REDIS": server.url,
        "ASGI_AUTOPROXY_TEST_PREFIX": f"orphans-{time.monotonic_ns()}:",
        "ASGI_AUTOPROXY_TEST_TIMEOUT": "2",
    }
    body = chat_body(
        f"a leader that {fate}", temperature=0, stream=True,
        fake={"gate_before_first": True, "chunks": 4},
    )  # fmt: skip
    with proxies(2, env) as (a, b):
        leader_pid = PIDS[a]
        lead: dict[str, object] = {}
        follow: dict[str, object] = {}
        leading = threading.Thread(target=_stream_quietly, args=(a, body, lead))
        leading.start()
        deadline = time.monotonic() + 20
        while not upstream.parked:
            assert time.monotonic() < deadline, "the leader never called upstream"
            time.sleep(0.01)
        following = threading.Thread(target=_stream, args=(b, body, follow))
        following.start()
        time.sleep(0.5)  # B follows A's stream across processes
        os.kill(leader_pid, signal.SIGKILL if fate == "killed" else signal.SIGSTOP)
        try:
            started = time.monotonic()
            while upstream.calls < 2:  # B gives up on A and calls upstream itself
                assert time.monotonic() - started < 10, "the follower never went alone"
                time.sleep(0.02)
            assert time.monotonic() - started <= 6  # the lock's life plus a heartbeat
            upstream.open_gate()
            following.join(timeout=30)
        finally:
            if fate == "stopped":
                os.kill(leader_pid, signal.SIGCONT)
        assert follow["status"] == 200
        data = follow["data"]
        assert isinstance(data, bytes) and data.endswith(b"data: [DONE]\n\n")
        assert b"error" not in data
        leading.join(timeout=30)
