"""Redis-backed cache and limits against the in-memory ones, side by side in one run.

    python bench/shared.py             # about 1 minute
    python bench/shared.py --duration 10 --concurrency 1 16

Starts a redis-server on a free loopback port, the fake upstream, and two proxies: one
with ``MemoryCache`` and a per-process ``RateLimit``, one with ``RedisCache`` and the
same ``RateLimit`` kept in Redis (one GCRA script per request). Each serves cache hits
(the same body) and misses (unique bodies), at each concurrency, alternately, so both
see the same machine. Targets (issue 16): a Redis hit costs at most 2x an in-memory
hit, a Redis miss at most 1.2x a miss without Redis, in p50 latency.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import (
    SYSTEMS,
    Scenario,
    System,
    body_template,
    cpu_seconds,
    free_port,
    load,
    start,
    wait_ready,
)

MEMORY = System(
    "memory",
    "MemoryCache + RateLimit in process",
    "bench.proxy_app:app",
    {"BENCH_CACHE": "1", "BENCH_RATE_LIMIT": "1"},
)
HIT = Scenario("hit", "Cache hits (same small body)", ())
MISS = Scenario("miss-unique", "Unique bodies: every request misses", (), unique=True)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while (
            subprocess.run(
                ["redis-cli", "-p", str(port), "ping"], capture_output=True, check=False
            ).stdout.strip()
            != b"PONG"
        ):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    logdir = Path(tempfile.mkdtemp(prefix="bench-shared-"))
    log = logdir / "servers.log"
    direct = next(s for s in SYSTEMS if s.key == "direct")
    results: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    with redis_server() as url:
        on_redis = System(
            "redis",
            "RedisCache + RateLimit in Redis",
            "bench.proxy_app:app",
            {"BENCH_REDIS": url, "BENCH_RATE_LIMIT": "1"},
        )
        upstream = start(direct, None, "http://unused", log)
        wait_ready(upstream, log)
        base_url = f"http://127.0.0.1:{upstream.port}/v1"
        proxies = [start(system, None, base_url, log) for system in (MEMORY, on_redis)]
        try:
            for proxy in proxies:
                wait_ready(proxy, log)
            for scenario in (HIT, MISS):
                body = logdir / f"{scenario.key}.json"
                body.write_bytes(body_template(scenario, f"salt{time.monotonic_ns()}"))
                for concurrency in args.concurrency:
                    for _ in range(args.rounds):  # alternate: both see the same machine
                        for proxy in proxies:
                            load(
                                "python", proxy.url, body, concurrency, args.warmup, scenario, None
                            )
                            before = cpu_seconds(proxy.process.pid)
                            cell = load(
                                "python",
                                proxy.url,
                                body,
                                concurrency,
                                args.duration,
                                scenario,
                                None,
                            )
                            cell["cpu_us"] = (
                                (cpu_seconds(proxy.process.pid) - before)
                                * 1e6
                                / (max(1.0, float(cell["requests"])))
                            )
                            key = (scenario.key, proxy.system.key, concurrency)
                            results.setdefault(key, []).append(cell)
        finally:
            for running in (*proxies, upstream):
                running.process.terminate()
                running.process.wait(timeout=10)
    report: dict[str, object] = {"rows": [], "ratios": []}
    print("| scenario | c | system | p50 ms | p99 ms | RPS | CPU µs/req | errors |")
    print("|---|---|---|---|---|---|---|---|")
    med: dict[tuple[str, str, int], float] = {}
    for (scenario_key, system, concurrency), cells in sorted(results.items()):
        p50 = statistics.median(c["p50_ms"] for c in cells)
        med[(scenario_key, system, concurrency)] = p50
        row = {
            "scenario": scenario_key,
            "concurrency": concurrency,
            "system": system,
            "p50_ms": p50,
            "p99_ms": statistics.median(c["p99_ms"] for c in cells),
            "rps": statistics.median(c["rps"] for c in cells),
            "cpu_us": statistics.median(c["cpu_us"] for c in cells),
            "errors": sum(int(c["errors"]) for c in cells),
        }
        report["rows"].append(row)  # type: ignore[attr-defined]
        print(
            f"| {scenario_key} | {concurrency} | {system} | {row['p50_ms']:.3f} | "
            f"{row['p99_ms']:.3f} | {row['rps']:.0f} | {row['cpu_us']:.0f} | {row['errors']} |"
        )
    print()
    status = 0
    for scenario_key, limit in (("hit", 2.0), ("miss-unique", 1.2)):
        for concurrency in args.concurrency:
            ratio = (
                med[(scenario_key, "redis", concurrency)]
                / med[(scenario_key, "memory", concurrency)]
            )
            ok = ratio <= limit
            status |= 0 if ok else 1
            report["ratios"].append(  # type: ignore[attr-defined]
                {
                    "scenario": scenario_key,
                    "concurrency": concurrency,
                    "ratio": ratio,
                    "limit": limit,
                }
            )
            print(
                f"{scenario_key} c{concurrency}: Redis p50 / in-memory p50 = {ratio:.2f} "
                f"(target <= {limit}) {'OK' if ok else 'MISSED'}"
            )
    (logdir / "shared.json").write_text(json.dumps(report, indent=2))
    print(f"\nraw results: {logdir / 'shared.json'}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
