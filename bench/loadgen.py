"""A closed-loop HTTP load generator on aiohttp: N workers, each sending back to back.

Prints one JSON line: requests, errors, RPS, latency p50/p99 and, for streams, time
to first body byte (TTFB) p50/p99, all in milliseconds. With ``--unique`` each body
has the ``__N__`` marker replaced by a counter, so no two requests are equal.

    python bench/loadgen.py URL --body-file F --concurrency 16 --duration 5 [--stream]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp

MARKER = b"__N__"


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


class Bodies:
    def __init__(self, template: bytes, unique: bool) -> None:
        self.unique = unique and MARKER in template
        self.fixed = template.replace(MARKER, b"0")
        self.prefix, _, self.suffix = template.partition(MARKER)
        self.count = 0

    def next(self) -> bytes:
        if not self.unique:
            return self.fixed
        self.count += 1
        return self.prefix + str(self.count).encode() + self.suffix


async def run(args: argparse.Namespace, template: bytes) -> dict[str, object]:
    bodies = Bodies(template, args.unique)
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
    latencies: list[float] = []
    ttfbs: list[float] = []
    statuses: Counter[int] = Counter()
    cached: Counter[str] = Counter()
    errors = 0
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        deadline = started + args.duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    async with session.post(args.url, data=bodies.next(), headers=headers) as r:
                        first = await r.content.readany()
                        ttfb = time.perf_counter() - sent
                        while first:
                            first = await r.content.readany()
                        statuses[r.status] += 1
                        cached[r.headers.get("x-bt-cached", "-")] += 1
                except (TimeoutError, aiohttp.ClientError):
                    errors += 1
                    continue
                done = time.perf_counter()
                latencies.append(done - sent)
                ttfbs.append(ttfb)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started
    ok = sum(n for status, n in statuses.items() if status < 400)
    return {
        "requests": len(latencies),
        "errors": errors + len(latencies) - ok,
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "ttfb_p50_ms": percentile(ttfbs, 0.50) * 1000 if args.stream else None,
        "ttfb_p99_ms": percentile(ttfbs, 0.99) * 1000 if args.stream else None,
        "cached": dict(cached),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--unique", action="store_true")
    parser.add_argument("--stream", action="store_true", help="also record TTFB")
    args = parser.parse_args()
    try:
        from uvloop import run as run_loop
    except ImportError:
        run_loop = asyncio.run  # type: ignore[assignment]
    result = run_loop(run(args, Path(args.body_file).read_bytes()))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
