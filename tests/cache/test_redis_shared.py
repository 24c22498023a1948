"""Two middleware processes behind one Redis: A's MISS is B's HIT, and one upstream call."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.conftest import CALLER_KEY, chat_body
from tests.fake_upstream import FakeUpstream
from tests.processes import REPO_ROOT as ROOT
from tests.redis_server import free_port, running_redis


@contextlib.contextmanager
def app_process(upstream_url: str, redis_url: str) -> Iterator[str]:
    """Serve tests/redis_process_app.py with uvicorn in its own process."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ASGI_AUTOPROXY_TEST_UPSTREAM": upstream_url,
        "ASGI_AUTOPROXY_TEST_REDIS": redis_url,
    }
    command = [
        sys.executable, "-m", "uvicorn", "tests.redis_process_app:app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 20
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    pytest.fail(f"app process exited:\n{log.read().decode(errors='replace')}")
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), timeout=0.5),
                ):
                    break
                assert time.monotonic() < deadline, "app process did not start listening"
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def test_process_a_miss_is_process_b_hit(upstream: FakeUpstream, upstream_url: str) -> None:
    prompt = "shared across processes: the Zanzibar question"
    body = chat_body(prompt, temperature=0)
    headers = {"authorization": f"Bearer {CALLER_KEY}"}
    with (
        running_redis() as server,
        redis.Redis.from_url(server.url) as raw,
        app_process(upstream_url, server.url) as a,
        app_process(upstream_url, server.url) as b,
    ):
        first = httpx.post(f"{a}/v1/proxy/auto", json=body, headers=headers, timeout=10)
        assert first.status_code == 200
        assert first.headers["x-bt-cached"] == "MISS"

        # The write may finish just after A's response: wait for it, boundedly.
        deadline = time.monotonic() + 5
        while not [k for k in raw.scan_iter(match="shared-test:*") if b":lock:" not in k]:
            assert time.monotonic() < deadline, "process A never stored the entry"
            time.sleep(0.02)

        second = httpx.post(f"{b}/v1/proxy/auto", json=body, headers=headers, timeout=10)
        assert second.status_code == 200
        assert second.headers["x-bt-cached"] == "HIT"
        assert second.json() == first.json()
        assert upstream.calls == 1

        # Encrypted at rest, end to end: no prompt, completion, model or token in Redis.
        completion = first.json()["choices"][0]["message"]["content"]
        blobs = [blob for key in raw.scan_iter(match="*") for blob in (key, raw.get(key) or b"")]
        assert blobs
        for plain in (prompt, "Zanzibar", completion, body["model"], CALLER_KEY):
            assert all(plain.encode() not in blob for blob in blobs), plain


def test_identical_requests_in_two_processes_make_one_upstream_call(
    upstream: FakeUpstream, upstream_url: str
) -> None:
    """Cross-process coalescing: B waits on A's Redis lock instead of calling upstream."""
    import concurrent.futures

    body = chat_body("coalesce me across processes", temperature=0, fake={"sleep": 0.5})
    headers = {"authorization": f"Bearer {CALLER_KEY}"}
    with (
        running_redis() as server,
        app_process(upstream_url, server.url) as a,
        app_process(upstream_url, server.url) as b,
        concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool,
    ):
        first = pool.submit(
            httpx.post, f"{a}/v1/proxy/auto", json=body, headers=headers, timeout=10
        )
        deadline = time.monotonic() + 5
        while not upstream.calls:  # A's upstream call is under way and A holds the lock
            assert time.monotonic() < deadline, "process A never called upstream"
            time.sleep(0.01)
        second = httpx.post(f"{b}/v1/proxy/auto", json=body, headers=headers, timeout=10)
        a_response = first.result(timeout=10)
    assert a_response.headers["x-bt-cached"] == "MISS"
    assert second.status_code == 200
    assert second.headers["x-bt-cached"] == "HIT"
    assert second.json() == a_response.json()
    assert upstream.calls == 1
