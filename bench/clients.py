"""Which HTTP client the package's own default should be built on: httpx or httpx2.

Each candidate makes the same upstream call, one after the other in the same process and
the same run, against ``bench/upstream.py`` under uvicorn in a child process (pinned to
another core where ``taskset`` and two cores exist). Rounds alternate the candidates so
the machine's noise falls on all of them; each cell is the median of the rounds' CPU time
of this process per request (what the proxy itself would spend on the call), with the
range of the rounds.

    python bench/clients.py              # about 40 s
    python bench/clients.py --rounds 7 --requests 3000

Candidates:
- ``httpx``            the default client on httpx's own transport (``http_transport="httpx"``)
- ``httpx2``           a plain ``httpx2.AsyncClient`` on its own transport, as httpx2 ships
- ``httpx+aiohttp``    the default client (aiohttp transport) through httpx's request path,
                       as custom providers use it
- ``direct lane``      the same client's direct lane, as the built-in providers use it
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from asgi_autoproxy._http.clients import (  # noqa: E402
    DEFAULT_LIMITS,
    DEFAULT_TIMEOUT,
    default_client_factory,
)

BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
).encode()
STREAM_BODY = BODY[:-1] + b',"stream":true}'
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench"}

Call = Callable[[bytes], Awaitable[int]]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_upstream(port: int) -> subprocess.Popen[bytes]:
    pin = ["taskset", "-c", "1"] if (os.cpu_count() or 1) >= 2 and shutil.which("taskset") else []
    args = [*pin, sys.executable, "-m", "uvicorn", "bench.upstream:app", "--port", str(port)]
    args += ["--host", "127.0.0.1", "--log-level", "warning", "--loop", "asyncio"]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the upstream did not start within 30 s")


def candidates(url: str) -> tuple[dict[str, Call], list[Any]]:
    """Each candidate's call, and the clients to close afterwards."""
    plain = default_client_factory(DEFAULT_TIMEOUT, "httpx")()
    fast = default_client_factory(DEFAULT_TIMEOUT, "aiohttp")()
    lane = fast.direct
    assert lane is not None
    calls: dict[str, Call] = {}

    async def via_httpx(body: bytes, client: Any = plain) -> int:
        request = client.build_request("POST", url, content=body, headers=HEADERS)
        response = await client.send(request, stream=True)
        async for _ in response.aiter_raw():
            pass
        await response.aclose()
        return int(response.status_code)

    async def via_fast(body: bytes) -> int:
        return await via_httpx(body, fast)

    async def via_lane(body: bytes) -> int:
        answer = await lane.post(url, HEADERS, body)
        async for _ in answer.body:
            pass
        await answer.body.aclose()
        return answer.status

    calls["httpx"] = via_httpx
    clients: list[Any] = [plain, fast]
    try:
        import httpx2
    except ImportError:
        print("httpx2 is not installed: pip install httpx2 to compare it", file=sys.stderr)
    else:
        limits = httpx2.Limits(
            max_connections=DEFAULT_LIMITS.max_connections,
            max_keepalive_connections=DEFAULT_LIMITS.max_keepalive_connections,
        )
        two = httpx2.AsyncClient(
            limits=limits, trust_env=False, timeout=httpx2.Timeout(DEFAULT_TIMEOUT.read)
        )
        clients.append(two)

        async def via_httpx2(body: bytes) -> int:
            return await via_httpx(body, two)

        calls["httpx2"] = via_httpx2
    calls["httpx+aiohttp"] = via_fast
    calls["direct lane"] = via_lane
    return calls, clients


async def cell(call: Call, body: bytes, requests: int, concurrency: int) -> float:
    """CPU µs of this process per request."""
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            assert await call(body) == 200

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - started) / requests * 1e6


async def main(args: argparse.Namespace) -> None:
    port = free_port()
    upstream = start_upstream(port)
    try:
        calls, clients = candidates(f"http://127.0.0.1:{port}/v1/chat/completions")
        cells = [("whole, c1", BODY, 1), ("whole, c64", BODY, 64), ("stream, c64", STREAM_BODY, 64)]
        results: dict[tuple[str, str], list[float]] = {}
        for call in calls.values():  # warm up: connections open, code paths hot
            await cell(call, BODY, 200, 16)
        for _ in range(args.rounds):
            for label, body, concurrency in cells:
                count = args.requests if body is BODY else max(args.requests // 4, 64)
                for name, call in calls.items():
                    used = await cell(call, body, count, concurrency)
                    results.setdefault((label, name), []).append(used)
        for client in clients:
            await client.aclose()
    finally:
        upstream.terminate()
        upstream.wait(10)
    names = list(calls)
    print(f"CPU µs per request in this process, median of {args.rounds} rounds (min to max)")
    print(f"httpx {httpx.__version__}", end="")
    if "httpx2" in sys.modules:
        print(f", httpx2 {sys.modules['httpx2'].__version__}", end="")
    print(f", Python {sys.version.split()[0]}\n")
    print("| cell | " + " | ".join(names) + " | httpx2 ÷ httpx |")
    print("|---" * (len(names) + 2) + "|")
    for label, _, _ in cells:
        row = []
        for name in names:
            values = results[(label, name)]
            row.append(f"{statistics.median(values):.0f} ({min(values):.0f} to {max(values):.0f})")
        ratio = ""
        if "httpx2" in names:
            two, one = (statistics.median(results[(label, n)]) for n in ("httpx2", "httpx"))
            ratio = f"{two / one:.2f}"
        print(f"| {label} | " + " | ".join(row) + f" | {ratio} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1500)
    asyncio.run(main(parser.parse_args()))
