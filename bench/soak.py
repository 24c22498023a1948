"""Soak: minutes of steady load mixing cache hits, misses, streams and injected faults.

    PYTHONPATH=. python bench/soak.py --seconds 300

The proxy runs under uvicorn on 127.0.0.1 in front of the fault upstream
(tests/fault_upstream.py); the load comes from this process. It passes (exit 0)
when every answer is the one expected (injected faults included: each must get its
clear error) and RSS stays flat after warm-up. Figures go to stdout, as Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import sys
import time
import tracemalloc
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

from asgi_autoproxy import AutoProxyMiddleware, Limits, MemoryCache, OpenAIProvider, RequestRecord
from tests.conftest import CALLER_KEY, inner_app
from tests.fault_upstream import FaultUpstream
from tests.faults import FAST_TIMEOUT, IDLE_TIMEOUT, check_outcome, expected, fault_body
from tests.servers import ServerThread

# What a worker does next, and how often.
OPERATIONS = {"hit": 40, "miss": 20, "stream": 20, "fault": 20}
FAULTS = {
    "reset_before_headers": 10,
    "reset_mid_body": 4,
    "reset_mid_stream": 4,
    "http_500": 10,
    "http_502": 10,
    "http_503": 10,
    "rate_limited": 10,
    "malformed_json": 10,
    "malformed_sse": 10,
    "error_event": 10,
    "no_done": 10,
    "slow_headers": 1,
    "slow_body": 1,
    "stall": 1,
}
STREAM_FAULTS = {"reset_mid_stream", "malformed_sse", "error_event", "no_done", "stall"}
HOT_PROMPTS = 50  # the "hit" prompts: after their first miss, served from cache
CACHE_ENTRIES = 500  # bounded, so unique misses evict rather than grow memory


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class Reservoir:
    """A fixed-size uniform sample, so keeping latencies does not grow memory."""

    size = 4096

    def __init__(self) -> None:
        self.seen = 0
        self.values: list[float] = []

    def add(self, value: float, rng: random.Random) -> None:
        self.seen += 1
        if len(self.values) < self.size:
            self.values.append(value)
        else:
            slot = rng.randrange(self.seen)
            if slot < self.size:
                self.values[slot] = value


@dataclass
class Tally:
    done: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    latency: dict[str, Reservoir] = field(default_factory=lambda: defaultdict(Reservoir))
    rss: list[tuple[float, float]] = field(default_factory=list)
    records: Counter[str] = field(default_factory=Counter)


async def one_request(http: httpx.AsyncClient, rng: random.Random, tally: Tally, n: int) -> None:
    operation = rng.choices(list(OPERATIONS), list(OPERATIONS.values()))[0]
    kind = "ok"
    if operation == "hit":
        body = fault_body("ok", rng.random() < 0.3, f"hot {rng.randrange(HOT_PROMPTS)}")
    elif operation == "miss":
        body = fault_body("ok", False, f"unique {n}")
    elif operation == "stream":
        body = fault_body("ok", True, f"stream {n}", chunks=rng.randint(2, 12))
    else:
        kind = rng.choices(list(FAULTS), list(FAULTS.values()))[0]
        stream = kind in STREAM_FAULTS or (kind != "reset_mid_body" and rng.random() < 0.5)
        body = fault_body(kind, stream, f"fault {n}")
    started = time.perf_counter()
    try:
        response = await http.post("/v1/proxy/auto", json=body)
        if kind == "ok":
            assert response.status_code == 200, response.text[:200]
            if body["stream"]:
                assert response.content.endswith(b"data: [DONE]\n\n")
            else:
                assert response.json()["object"] == "chat.completion"
        else:
            check_outcome(response, expected(kind, body["stream"]))
    except (AssertionError, httpx.HTTPError) as exc:
        tally.unexpected.append(f"{operation}/{kind}: {type(exc).__name__} {exc}"[:300])
    tally.latency[operation].add(time.perf_counter() - started, rng)
    tally.done[operation if kind == "ok" else f"fault:{kind}"] += 1


async def soak(
    seconds: float, concurrency: int, seed: int, warmup: float, trace_memory: bool
) -> tuple[Tally, dict[str, Any]]:
    upstream = FaultUpstream(keep_exchanges=False)
    upstream.start()
    tally = Tally()

    def count(record: RequestRecord) -> None:
        tally.records[str(record.cache)] += 1

    proxy = AutoProxyMiddleware(
        inner_app(),
        providers=[OpenAIProvider(base_url=upstream.url, name="faulty")],
        timeout=FAST_TIMEOUT,
        limits=Limits(stream_idle_timeout=IDLE_TIMEOUT),
        cache=MemoryCache(max_entries=CACHE_ENTRIES),
        on_request=count,
    )
    server = ServerThread(proxy, lifespan="on")
    server.start()
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    counter = iter(range(sys.maxsize))
    started = time.monotonic()

    async def worker(http: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            await one_request(http, rng, tally, next(counter))

    async def sample_rss() -> None:
        baseline: tracemalloc.Snapshot | None = None
        while time.monotonic() < deadline:
            if trace_memory and baseline is None and time.monotonic() - started >= warmup * seconds:
                baseline = tracemalloc.take_snapshot()
            tally.rss.append((time.monotonic() - started, rss_mb()))
            await anyio.sleep(min(1.0, seconds / 20))
        if baseline is not None:
            grown = tracemalloc.take_snapshot().compare_to(baseline, "lineno")
            print("## Allocations grown since warm-up (tracemalloc)\n")
            for stat in grown[:15]:
                print(f"    {stat}")
            print()

    try:
        async with (
            httpx.AsyncClient(
                base_url=server.url,
                headers={"authorization": f"Bearer {CALLER_KEY}"},
                timeout=30,
                limits=httpx.Limits(max_connections=concurrency),
            ) as http,
            anyio.create_task_group() as group,
        ):
            group.start_soon(sample_rss)
            for _ in range(concurrency):
                group.start_soon(worker, http)
        tally.rss.append((time.monotonic() - started, rss_mb()))
        await anyio.sleep(0.5)  # let closes reach the upstream
        stats = proxy.cache_stats
        cache = proxy.cache
        assert stats is not None and isinstance(cache, MemoryCache)
        extra = {
            "elapsed": time.monotonic() - started,
            "cache": stats,
            "entries": cache.stats.entries,
            "evictions": cache.stats.evictions,
            "upstream_open": upstream.open_connections,
            "upstream_requests": upstream.requests,
            "upstream_peer_closes": upstream.peer_closes,
        }
    finally:
        server.stop()
        upstream.stop()
    return tally, extra


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(tally: Tally, extra: dict[str, Any], warmup: float, slack_mb: float) -> bool:
    total = sum(tally.done.values())
    faults = sum(v for k, v in tally.done.items() if k.startswith("fault:"))
    elapsed = extra["elapsed"]
    cut = elapsed * warmup
    after = [mb for t, mb in tally.rss if t >= cut]
    warm = after[0] if after else tally.rss[-1][1]
    growth = max(after) - warm if after else 0.0
    slope = 0.0
    if len(after) >= 3:
        times = [t for t, _ in tally.rss if t >= cut]
        slope = statistics.linear_regression(times, after).slope * 60
    passed = not tally.unexpected and growth <= slack_mb
    print(f"## Soak: {elapsed:.0f} s, {total} requests ({total / elapsed:.0f}/s)\n")
    print("| figure | value |\n|---|---|")
    print(f"| requests | {total} ({faults} with an injected fault) |")
    print(f"| unexpected answers | {len(tally.unexpected)} |")
    stats = extra["cache"]
    print(
        f"| cache | {stats.hits} hits, {stats.misses} misses, {stats.coalesced} coalesced, "
        f"{stats.writes} writes, {extra['entries']} entries, {extra['evictions']} evicted |"
    )
    print(f"| hook records by cache status | {dict(tally.records)} |")
    for operation, sample in sorted(tally.latency.items()):
        values = sample.values
        p50, p99 = percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000
        print(f"| latency {operation} p50 / p99 | {p50:.1f} / {p99:.1f} ms |")
    print(f"| RSS start / after warm-up / end | {tally.rss[0][1]:.1f} / {warm:.1f} / ", end="")
    print(f"{tally.rss[-1][1]:.1f} MB |")
    print(f"| RSS growth after warm-up (max) | {growth:.1f} MB (limit {slack_mb:g}) |")
    print(f"| RSS trend after warm-up | {slope:+.2f} MB/min |")
    print(f"| upstream requests / hung up by proxy | {extra['upstream_requests']} / ", end="")
    print(f"{extra['upstream_peer_closes']} |")
    print(f"| upstream connections open at the end | {extra['upstream_open']} |")
    print(
        "\nfaults injected: "
        + ", ".join(f"{k[6:]}={v}" for k, v in sorted(tally.done.items()) if k.startswith("fault:"))
    )
    for line in tally.unexpected[:10]:
        print("UNEXPECTED", line)
    print("\nPASS" if passed else "\nFAIL")
    return passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=0.25, help="share of the run")
    parser.add_argument("--rss-slack-mb", type=float, default=10.0)
    parser.add_argument(
        "--trace-memory", action="store_true", help="list what grew after warm-up (slower)"
    )
    args = parser.parse_args()
    if args.trace_memory:
        tracemalloc.start()
    # Injected faults are logged as warnings by design; keep the figures readable.
    logging.getLogger("asgi_autoproxy").setLevel(logging.ERROR)
    tally, extra = asyncio.run(
        soak(args.seconds, args.concurrency, args.seed, args.warmup, args.trace_memory)
    )
    sys.exit(0 if report(tally, extra, args.warmup, args.rss_slack_mb) else 1)


if __name__ == "__main__":
    main()
