"""``asgi-autoproxy --redis-url URL --workers N``: N real worker processes on one socket,
sharing the cache (and with it all shared state) through a real redis-server."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
import redis

from asgi_autoproxy.cli import build_parser
from tests.conftest import CALLER_KEY, chat_body
from tests.fake_upstream import FakeUpstream
from tests.processes import free_port, run_server
from tests.redis_server import running_redis


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry))
    return found


@pytest.mark.parametrize("given_as", ["flag", "environment"])
def test_workers_share_the_cache_through_redis(
    upstream: FakeUpstream, upstream_url: str, tmp_path: Path, given_as: str
) -> None:
    with running_redis() as server, redis.Redis.from_url(server.url) as raw:
        port = free_port()
        args = ["-m", "asgi_autoproxy", "--port", str(port), "--openai-base-url", upstream_url]
        args += ["--workers", "3"]
        env = {}
        if given_as == "flag":
            args += ["--redis-url", server.url]
        else:
            env["ASGI_AUTOPROXY_REDIS_URL"] = server.url
        with run_server(args, port=port, log_path=tmp_path / "w.log", env=env) as proxy:
            deadline = time.monotonic() + 30
            while len(children(proxy.process.pid)) < 3 or proxy.log.count("startup complete") < 3:
                assert time.monotonic() < deadline, proxy.log
                time.sleep(0.05)
            assert len(children(proxy.process.pid)) == 3

            def ask(_: int, content: str = "one answer for every worker") -> httpx.Response:
                with httpx.Client(timeout=15) as http:  # a new connection each time
                    return http.post(
                        f"{proxy.url}/v1/proxy/auto",
                        json=chat_body(content, temperature=0),
                        headers={"authorization": f"Bearer {CALLER_KEY}"},
                    )

            # Each worker connects to Redis on its first request; a connection slower
            # than the 100 ms bound on a busy machine is a miss, so warm them all first.
            with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda i: ask(i, f"warm-up {i}"), range(24)))
            upstream.reset()
            first = ask(0)
            assert first.headers["x-bt-cached"] == "MISS"
            # One at a time (each Redis command is bounded by 100 ms; a busy machine's
            # stall would be a miss), each on a new connection, which any worker may take.
            rest = [ask(i) for i in range(12)]
            assert {r.headers["x-bt-cached"] for r in rest} == {"HIT"}
            assert upstream.calls == 1
            assert list(raw.scan_iter(match="asgi_autoproxy:{*}"))  # the entry is in Redis
            proxy.process.send_signal(signal.SIGTERM)
            assert proxy.process.wait(timeout=30) == 0
        assert proxy.log.count("Finished server process") == 3
        assert "Traceback" not in proxy.log


def test_workers_and_redis_url_flags_read_their_variables() -> None:
    args = build_parser(
        {"AUTOPROXY_WORKERS": "4", "ASGI_AUTOPROXY_REDIS_URL": "redis+cluster://n1:7000"}
    ).parse_args([])
    assert (args.workers, args.redis_url) == (4, "redis+cluster://n1:7000")
    assert build_parser({}).parse_args([]).workers == 1
    assert build_parser({}).parse_args([]).redis_url is None
    with pytest.raises(SystemExit):
        build_parser({}).parse_args(["--workers", "0"])
