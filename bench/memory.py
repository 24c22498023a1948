"""Memory under a cache that fills up: 100k requests over 10k distinct prompts.

Issue 7's memory target: after 100k requests over 10k distinct cached entries, the
proxy's RSS stays within the baseline's RSS plus the cache's ``max_bytes`` plus 30 MiB,
and stays flat afterwards. The baseline (Starlette + httpx, no cache) serves the same
load in the same run; every RSS is read from /proc (VmRSS).

    python bench/memory.py                 # 100k + 50k requests, max_bytes 8 MiB
    python bench/memory.py --requests 20000 --distinct 2000   # a quicker look
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import SYSTEMS, Running, memory_kib, start, wait_ready

MIB = 1024 * 1024


async def drive(url: str, requests: int, distinct: int, offset: int, concurrency: int) -> int:
    """Send ``requests`` deterministic chat requests cycling over ``distinct`` prompts."""
    errors = 0
    counter = iter(range(offset, offset + requests))
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            nonlocal errors
            for number in counter:
                body = {
                    "model": "gpt-4o-mini",
                    "temperature": 0,
                    "messages": [{"role": "user", "content": f"prompt {number % distinct} " * 8}],
                }
                async with session.post(url, json=body) as response:
                    await response.read()
                    errors += response.status != 200

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return errors


def rss_mib(running: Running) -> float:
    return memory_kib(running.process.pid, "VmRSS") / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--distinct", type=int, default=10_000)
    parser.add_argument("--after", type=int, default=50_000, help="requests after, for flatness")
    parser.add_argument("--max-bytes-mib", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    systems = {s.key: s for s in SYSTEMS}
    log = Path(tempfile.mkdtemp()) / "servers.log"
    cores = (0, 1) if len(__import__("os").sched_getaffinity(0)) >= 2 else (None, None)
    upstream = start(systems["direct"], cores[1], "http://unused", log)
    wait_ready(upstream, log)
    upstream_url = f"http://127.0.0.1:{upstream.port}/v1"
    rows: list[str] = []
    verdicts: list[bool] = []
    try:
        baseline = start(systems["baseline"], cores[0], upstream_url, log)
        wait_ready(baseline, log)
        base_idle = rss_mib(baseline)
        asyncio.run(drive(baseline.url, args.requests, args.distinct, 0, args.concurrency))
        base_loaded = rss_mib(baseline)
        baseline.process.terminate()
        baseline.process.wait(10)

        cache_system = systems["autoproxy-cache"]
        env = {**cache_system.env, "BENCH_CACHE_MAX_BYTES": str(args.max_bytes_mib * MIB)}
        proxy = start(
            type(cache_system)(cache_system.key, cache_system.label, cache_system.app, env),
            cores[0],
            upstream_url,
            log,
        )
        wait_ready(proxy, log)
        idle = rss_mib(proxy)
        started = time.monotonic()
        errors = asyncio.run(drive(proxy.url, args.requests, args.distinct, 0, args.concurrency))
        loaded = rss_mib(proxy)
        errors += asyncio.run(
            drive(proxy.url, args.after, args.distinct, args.requests, args.concurrency)
        )
        after = rss_mib(proxy)
        took = time.monotonic() - started
        proxy.process.terminate()
        proxy.process.wait(10)
    finally:
        with contextlib.suppress(Exception):
            upstream.process.terminate()

    limit = base_loaded + args.max_bytes_mib + 30
    verdicts.append(loaded <= limit)
    verdicts.append(after - loaded <= 5)
    rows.append("| system | idle RSS MiB | after load MiB | after more load MiB |")
    rows.append("|---|---|---|---|")
    rows.append(f"| Starlette + httpx (baseline) | {base_idle:.0f} | {base_loaded:.0f} | |")
    rows.append(
        f"| asgi_autoproxy, MemoryCache(max_bytes={args.max_bytes_mib} MiB) "
        f"| {idle:.0f} | {loaded:.0f} | {after:.0f} |"
    )
    print(
        f"{args.requests:,} requests over {args.distinct:,} distinct prompts, then "
        f"{args.after:,} more; {errors} errors; {took:.0f} s for the proxy's part\n"
    )
    print("\n".join(rows))
    print(
        f"\nafter load: {loaded:.0f} MiB <= baseline {base_loaded:.0f} + max_bytes "
        f"{args.max_bytes_mib} + 30 = {limit:.0f} MiB: {'pass' if verdicts[0] else 'FAIL'}"
    )
    flat = "pass" if verdicts[1] else "FAIL"
    print(f"flat afterwards (grew {after - loaded:+.1f} MiB, <= 5): {flat}")
    return 0 if all(verdicts) and not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
