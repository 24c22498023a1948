"""Benchmark asgi_autoproxy against the upstream alone and a thin Starlette+httpx proxy.

    python bench/run.py            # full run, a few minutes
    python bench/run.py --quick    # well under a minute
    python bench/run.py --repeat 3 # every cell three times; tables show median (min-max)

Every system runs in its own uvicorn process (uvloop and httptools when installed),
started side by side for the whole run. With two or more cores, the proxy under test
is pinned alone to core 0; the fake upstream and the load generator share core 1.
CPU per request is the measured process's own utime+stime over the run divided by the
requests served; peak RSS is its VmHWM. Results go to bench/results/latest.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import http.client
import importlib.util
import inspect
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PATH = "/v1/chat/completions"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- what runs -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class System:
    key: str
    label: str
    app: str
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    needs: str | None = None  # a module that must be importable, else skipped
    needs_cache: bool = False


SYSTEMS = [
    System("direct", "upstream direct", "bench.upstream:app"),
    System("baseline", "Starlette + httpx (baseline)", "bench.baseline_app:app"),
    System(
        "baseline-dict",
        "Starlette + httpx + dict cache",
        "bench.baseline_app:app",
        {"BENCH_BASELINE_CACHE": "1"},
    ),
    System("autoproxy", "asgi_autoproxy, cache off", "bench.proxy_app:app"),
    System(
        "autoproxy-cache",
        "asgi_autoproxy, MemoryCache",
        "bench.proxy_app:app",
        {"BENCH_CACHE": "1"},
        needs_cache=True,
    ),
    System(
        "autoproxy-telemetry",
        "asgi_autoproxy, cache off, OpenTelemetry + Prometheus on",
        "bench.proxy_app:app",
        {"BENCH_TELEMETRY": "1"},
        needs="opentelemetry.sdk",
    ),
    System(
        "autoproxy-httpx",
        "asgi_autoproxy, httpx's own transport",
        "bench.proxy_app:app",
        {"BENCH_TRANSPORT": "httpx"},
    ),
    System(
        "autoproxy-httpx-aiohttp",
        "asgi_autoproxy, httpx_aiohttp transport",
        "bench.proxy_app:app",
        {"BENCH_TRANSPORT": "httpx-aiohttp"},
        needs="httpx_aiohttp",
    ),
]


@dataclasses.dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    systems: tuple[str, ...]
    prompt_bytes: int = 0
    stream: bool = False
    unique: bool = False
    route: str = PATH
    """Where the requests go; ``/v1/embeddings`` sends an embeddings body."""


MISS_SYSTEMS = (
    "direct",
    "baseline",
    "autoproxy",
    "autoproxy-telemetry",
    "autoproxy-httpx",
    "autoproxy-httpx-aiohttp",
)
SCENARIOS = [
    Scenario("miss", "Non-streaming misses (same small body)", MISS_SYSTEMS),
    Scenario(
        "unique",
        "Unique bodies: every request misses",
        ("baseline", "baseline-dict", "autoproxy", "autoproxy-cache"),
        unique=True,
    ),
    Scenario("hit", "Cache hits (same small body)", ("baseline-dict", "autoproxy-cache")),
    Scenario(
        "stream",
        "Streamed passthrough (20 chunks, 10 ms apart)",
        ("direct", "baseline", "autoproxy"),
        stream=True,
    ),
    Scenario("stream-replay", "Streamed cache replay", ("direct", "autoproxy-cache"), stream=True),
    Scenario(
        "prompt-100k",
        "100 KB prompts, misses",
        ("direct", "baseline", "autoproxy"),
        100_000,
        unique=True,
    ),
    Scenario(
        "prompt-1m",
        "1 MB prompts, misses",
        ("direct", "baseline", "autoproxy"),
        1_000_000,
        unique=True,
    ),
    Scenario("hit-1m", "1 MB prompts, cache hits", ("baseline-dict", "autoproxy-cache"), 1_000_000),
    Scenario(
        "hit-embeddings",
        "Embeddings cache hits (same small body, no temperature: cached by default)",
        ("baseline-dict", "autoproxy-cache"),
        route="/v1/embeddings",
    ),
]
QUICK = {
    "miss": ("direct", "baseline", "autoproxy", "autoproxy-telemetry"),
    "hit": ("baseline-dict", "autoproxy-cache"),
    "stream": ("direct", "baseline", "autoproxy"),
}


def body_template(scenario: Scenario, salt: str) -> bytes:
    """A chat (or embeddings) request with ``__N__`` where the load generator may put a
    counter."""
    content = f"Say hello. {salt}-__N__ "
    if scenario.route.endswith("/embeddings"):
        return json.dumps({"model": "text-embedding-3-small", "input": content}).encode()
    if scenario.prompt_bytes:
        filler = "lorem ipsum dolor sit amet "
        content += filler * (scenario.prompt_bytes // len(filler) + 1)
        content = content[: scenario.prompt_bytes]
    body: dict[str, object] = {
        "model": "gpt-4o-mini",
        "temperature": 0,
        "messages": [{"role": "user", "content": content}],
    }
    if scenario.stream:
        body["stream"] = True
    return json.dumps(body).encode()


# -- processes -----------------------------------------------------------------------


def pinned(core: int | None) -> list[str]:
    return ["taskset", "-c", str(core)] if core is not None else []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def server_flags(loop: str = "auto") -> list[str]:
    if loop == "auto":
        loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return ["--loop", loop, "--http", http]


@dataclasses.dataclass
class Running:
    system: System
    port: int
    process: subprocess.Popen[bytes]
    loop_file: Path
    idle_rss_kib: int = 0
    loop: str = "?"

    @property
    def url(self) -> str:
        return self.url_for(PATH)

    def url_for(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def start(
    system: System,
    core: int | None,
    upstream: str,
    log: Path,
    *,
    gc_freeze: bool = False,
    loop: str = "auto",
) -> Running:
    port = free_port()
    loop_file = log.with_name(f"{system.key}-{port}.loop")
    loop_file.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "BENCH_UPSTREAM": upstream,
        "BENCH_GC_FREEZE": "1" if gc_freeze else "0",
        "BENCH_LOOP_FILE": str(loop_file),
        **system.env,
    }
    command = [
        *pinned(core),
        sys.executable,
        "-m",
        "uvicorn",
        system.app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        "--lifespan",
        "on",
        "--backlog",
        "2048",
        *server_flags(loop),
    ]
    with log.open("ab") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
    return Running(system, port, process, loop_file)


def wait_ready(running: Running, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise SystemExit(f"{running.system.key} exited at start-up; see {log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", running.port)):
            # uvicorn listens only after start-up, where the app wrote its loop's class.
            loop_class = running.loop_file.read_text()  # see bench/loop_report.py
            running.loop = "uvloop" if loop_class.startswith("uvloop") else "asyncio"
            return
        time.sleep(0.05)
    raise SystemExit(f"{running.system.key} did not start within {timeout:.0f}s; see {log}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def post(port: int, body: bytes, path: str = PATH) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


# -- load ----------------------------------------------------------------------------


@dataclasses.dataclass
class Cell:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    errors: int
    cpu_ticks: int = 0
    ttfb_p50_ms: float | None = None
    ttfb_p99_ms: float | None = None


def load(
    tool: str,
    url: str,
    body_file: Path,
    concurrency: int,
    duration: float,
    scenario: Scenario,
    core: int | None,
) -> dict[str, float]:
    if tool == "wrk":
        seconds = max(1, round(duration))
        command = [
            *pinned(core),
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{seconds}s",
            "--timeout",
            "30s",
            "-s",
            str(BENCH / "wrk_post.lua"),
            url,
        ]
        env = {
            **os.environ,
            "BENCH_BODY_FILE": str(body_file),
            "BENCH_UNIQUE": "1" if scenario.unique else "0",
        }
        output = subprocess.run(command, env=env, capture_output=True, check=True, text=True)
        line = next(x for x in output.stdout.splitlines() if x.startswith("BENCHJSON "))
        raw = json.loads(line.removeprefix("BENCHJSON "))
        return {
            "requests": raw["requests"],
            "rps": raw["requests"] / (raw["duration_us"] / 1e6),
            "p50_ms": raw["p50_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000,
            "errors": raw["errors"],
        }
    command = [
        *pinned(core),
        sys.executable,
        str(BENCH / "loadgen.py"),
        url,
        "--body-file",
        str(body_file),
        "--concurrency",
        str(concurrency),
        "--duration",
        str(duration),
    ]
    if scenario.unique:
        command.append("--unique")
    if scenario.stream:
        command.append("--stream")
    output = subprocess.run(command, capture_output=True, check=True, text=True)
    result: dict[str, float] = json.loads(output.stdout.strip().splitlines()[-1])
    return result


def measure(
    running: Running,
    measured_pid: int,
    scenario: Scenario,
    body_file: Path,
    concurrency: int,
    args: argparse.Namespace,
    load_core: int | None,
) -> Cell:
    tool = "wrk" if args.wrk and not scenario.stream else "python"
    url = running.url_for(scenario.route)
    # Warm-up: connections, caches, and the cache entry the hit scenarios read.
    load(tool, url, body_file, concurrency, args.warmup, scenario, load_core)
    before = cpu_seconds(measured_pid)
    result = load(tool, url, body_file, concurrency, args.duration, scenario, load_core)
    spent = cpu_seconds(measured_pid) - before
    requests = max(1.0, float(result["requests"]))
    return Cell(
        rps=float(result["rps"]),
        p50_ms=float(result["p50_ms"]),
        p99_ms=float(result["p99_ms"]),
        cpu_us=spent * 1e6 / requests,
        errors=int(result["errors"]),
        cpu_ticks=round(spent * CLOCK_TICKS),
        ttfb_p50_ms=result.get("ttfb_p50_ms"),
        ttfb_p99_ms=result.get("ttfb_p99_ms"),
    )


# -- report --------------------------------------------------------------------------


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}"


def spread(values: Sequence[float], fmt: str) -> str:
    middle = statistics.median(values)
    if len(values) == 1:
        return format(middle, fmt)
    return f"{format(middle, fmt)} ({format(min(values), fmt)} to {format(max(values), fmt)})"


def ratio(values: Sequence[float], reference: Sequence[float] | None) -> str:
    if not reference or statistics.median(reference) == 0:
        return "-"
    return f"{statistics.median(values) / statistics.median(reference):.2f}x"


Results = dict[tuple[str, str, int], list[Cell]]


def render(
    results: Results,
    scenarios: Sequence[Scenario],
    concurrencies: Sequence[int],
    running: dict[str, Running],
    notes: list[str],
    args: argparse.Namespace,
) -> str:
    lines = [
        "# asgi_autoproxy benchmark",
        "",
        f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}",
        f"- Machine: {machine()}",
        f"- Mode: {'quick' if args.quick else 'full'}; {args.duration:g} s per cell after "
        f"{args.warmup:g} s warm-up; {args.repeat} repeat(s) (cells: median, with min to max "
        "when repeated)",
        f"- Servers: uvicorn {' '.join(server_flags(args.loop))} (event loop as the servers "
        f"reported it: {', '.join(sorted({r.loop for r in running.values()}))}); load: "
        f"{'wrk (non-streaming), ' if args.wrk else ''}bench/loadgen.py (aiohttp)"
        f"{'' if args.wrk else ' for all'}; pinning: {args.pinning}",
        "- Garbage collector: "
        + (
            "start-up heap frozen in every proxy, baselines included (--gc-freeze)"
            if args.gc_freeze
            else "Python's defaults"
        ),
        "- CPU µs/req: the measured process's utime+stime per request (for *upstream direct*, "
        "the upstream's own). Ratios compare medians with the Starlette + httpx baseline "
        "(the dict-cache baseline for hit scenarios).",
        "",
    ]
    lines += [f"> {note}" for note in notes]
    if notes:
        lines.append("")
    for scenario in scenarios:
        reference = "baseline-dict" if scenario.key.startswith("hit") else "baseline"
        cols = ["system", "c", "RPS", "p50 ms", "p99 ms"]
        if scenario.stream:
            cols += ["TTFB p50 ms", "TTFB p99 ms"]
        cols += ["CPU µs/req", "RPS vs base", "CPU vs base", "errors"]
        lines += [f"## {scenario.title}", "", "| " + " | ".join(cols) + " |"]
        lines.append("|" + "---|" * len(cols))
        for key in scenario.systems:
            for c in concurrencies:
                cells = results.get((scenario.key, key, c))
                if not cells:
                    continue
                base = results.get((scenario.key, reference, c))
                row = [running[key].system.label, str(c)]
                row += [
                    spread([x.rps for x in cells], ",.0f"),
                    spread([x.p50_ms for x in cells], ".2f"),
                    spread([x.p99_ms for x in cells], ".2f"),
                ]
                if scenario.stream:
                    row += [
                        spread([x.ttfb_p50_ms or 0 for x in cells], ".2f"),
                        spread([x.ttfb_p99_ms or 0 for x in cells], ".2f"),
                    ]
                # Few clock ticks over few requests: a rough figure, marked as such.
                rough = "~" if sum(x.cpu_ticks for x in cells) < 20 * len(cells) else ""
                row += [
                    rough + spread([x.cpu_us for x in cells], ",.0f"),
                    ratio([x.rps for x in cells], [x.rps for x in base] if base else None),
                    ratio([x.cpu_us for x in cells], [x.cpu_us for x in base] if base else None),
                    str(sum(x.errors for x in cells)),
                ]
                lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines += ["## Memory", "", "| system | idle RSS MiB | peak RSS MiB |", "|---|---|---|"]
    for proc in running.values():
        peak = memory_kib(proc.process.pid, "VmHWM") / 1024
        lines.append(f"| {proc.system.label} | {proc.idle_rss_kib / 1024:.0f} | {peak:.0f} |")
    key_cost = cache_key_cost()
    if key_cost is not None:
        parse_ms, key_ms = key_cost
        lines += [
            "",
            "## Cache key for a 1 MB body",
            "",
            f"One JSON parse: {parse_ms:.2f} ms; building the cache key from the parsed body: "
            f"{key_ms:.2f} ms ({key_ms / parse_ms:.2f}x the parse).",
            "",
        ]
    lines += [*targets(results, concurrencies, key_cost)]
    return "\n".join(lines) + "\n"


def cache_key_cost() -> tuple[float, float] | None:
    """Best-of-20 milliseconds to parse a 1 MB body, and to build its cache key (with the
    digest its plan is remembered under, where the build has one)."""
    try:
        from asgi_autoproxy import _json
        from asgi_autoproxy._cache.keys import entry_key  # type: ignore[import-not-found]
    except ImportError:
        return None
    body = body_template(Scenario("k", "", (), prompt_bytes=1_000_000), "key")

    def best(action: Callable[[], object]) -> float:
        timings = []
        for _ in range(20):
            started = time.perf_counter()
            action()
            timings.append(time.perf_counter() - started)
        return min(timings) * 1000

    def digest() -> object:  # a cached miss also files its plan under the raw body's hash
        return None

    try:
        from asgi_autoproxy._cache.remembered_plans import request_digest  # type: ignore[import-not-found]
        from asgi_autoproxy._headers import RequestHeaders  # type: ignore[import-not-found]
    except ImportError:
        pass
    else:
        headers = RequestHeaders([])

        def digest() -> object:
            return request_digest("auto", "key:x", True, headers, body)

    payload = _json.loads(body)
    parse_ms = best(lambda: _json.loads(body))
    key_ms = best(
        lambda: (
            digest(),
            entry_key(endpoint="chat", providers="bench", caller="key:x", payload=payload),
        )
    )
    return parse_ms, key_ms


def targets(
    results: Results, concurrencies: Sequence[int], key_cost: tuple[float, float] | None
) -> list[str]:
    """The issue's speed targets, checked on this run's medians."""

    def med(scenario: str, system: str, c: int, field: str) -> float | None:
        cells = results.get((scenario, system, c))
        if not cells:
            return None
        return statistics.median(float(getattr(x, field) or 0) for x in cells)

    low, high = min(concurrencies), max(concurrencies)
    checks: list[tuple[str, float | None, float | None, str]] = []

    def check(name: str, value: float | None, limit: float | None, kind: str) -> None:
        checks.append((name, value, limit, kind))

    cpu, base_cpu = (
        med("miss", "autoproxy", high, "cpu_us"),
        med("miss", "baseline", high, "cpu_us"),
    )
    check(
        f"miss CPU/req ÷ baseline at c{high}",
        cpu / base_cpu if cpu and base_cpu else None,
        0.25,
        "max",
    )
    rps_high, rps_low = med("miss", "autoproxy", high, "rps"), med("miss", "autoproxy", low, "rps")
    check(
        f"miss RPS c{high} ÷ RPS c{low}",
        rps_high / rps_low if rps_high and rps_low else None,
        0.9,
        "min",
    )
    p99, p50 = med("miss", "autoproxy", high, "p99_ms"), med("miss", "autoproxy", high, "p50_ms")
    check(f"miss p99 ÷ p50 at c{high}", p99 / p50 if p99 and p50 else None, 3.0, "max")
    hit, dict_hit = (
        med("hit", "autoproxy-cache", high, "cpu_us"),
        med("hit", "baseline-dict", high, "cpu_us"),
    )
    check(
        f"hit CPU/req ÷ dict-cache baseline at c{high}",
        hit / dict_hit if hit and dict_hit else None,
        1.5,
        "max",
    )
    embedded, chat_hit = (
        med("hit-embeddings", "autoproxy-cache", high, "cpu_us"),
        med("hit", "autoproxy-cache", high, "cpu_us"),
    )
    check(
        f"embeddings hit CPU/req ÷ chat hit CPU/req at c{high}",
        embedded / chat_hit if embedded and chat_hit else None,
        1.0,
        "max",
    )
    ttfb, direct_ttfb = (
        med("stream", "autoproxy", low, "ttfb_p50_ms"),
        med("stream", "direct", low, "ttfb_p50_ms"),
    )
    check(
        f"stream TTFB added over direct at c{low} (ms)",
        ttfb - direct_ttfb if ttfb is not None and direct_ttfb is not None else None,
        1.0,
        "max",
    )
    total, direct_total = (
        med("stream", "autoproxy", low, "p50_ms"),
        med("stream", "direct", low, "p50_ms"),
    )
    check(
        f"stream total time ÷ direct at c{low}",
        total / direct_total if total and direct_total else None,
        1.02,
        "max",
    )
    for c in (low, high):
        on, off = (
            med("miss", "autoproxy-telemetry", c, "cpu_us"),
            med("miss", "autoproxy", c, "cpu_us"),
        )
        check(
            f"miss CPU/req, telemetry on ÷ off at c{c} (issue 17)",
            on / off if on and off else None,
            1.15,
            "max",
        )
    on, off = (
        med("miss", "autoproxy-telemetry", low, "p50_ms"),
        med("miss", "autoproxy", low, "p50_ms"),
    )
    check(
        f"miss p50 latency, telemetry on ÷ off at c{low} (issue 17)",
        on / off if on and off else None,
        1.15,
        "max",
    )
    check(
        "1 MB body: cache key ÷ one JSON parse",
        key_cost[1] / key_cost[0] if key_cost else None,
        2.0,
        "max",
    )
    lines = ["## Targets (issue 7)", "", "| target | measured | limit | |", "|---|---|---|---|"]
    for name, value, limit, kind in checks:
        if value is None or limit is None:
            lines.append(f"| {name} | not measured | {limit} | - |")
            continue
        ok = value <= limit if kind == "max" else value >= limit
        sign = "≤" if kind == "max" else "≥"
        lines.append(f"| {name} | {value:.2f} | {sign} {limit} | {'pass' if ok else 'FAIL'} |")
    return lines


# -- main ----------------------------------------------------------------------------


@contextlib.contextmanager
def fleet(
    systems: Sequence[System],
    proxy_core: int | None,
    side_core: int | None,
    log: Path,
    *,
    gc_freeze: bool = False,
    loop: str = "auto",
) -> Iterator[dict[str, Running]]:
    started: dict[str, Running] = {}
    try:
        upstream_system = next(s for s in SYSTEMS if s.key == "direct")
        upstream = start(upstream_system, side_core, "http://unused", log, loop=loop)
        started["direct"] = upstream
        wait_ready(upstream, log)
        base_url = f"http://127.0.0.1:{upstream.port}/v1"
        for system in systems:
            if system.key != "direct":
                started[system.key] = start(
                    system, proxy_core, base_url, log, gc_freeze=gc_freeze, loop=loop
                )
        expected_loop = server_flags(loop)[1]
        for proc in started.values():
            wait_ready(proc, log)
            if proc.loop != expected_loop:
                raise SystemExit(f"{proc.system.key} runs {proc.loop}, not {expected_loop}")
        for proc in started.values():
            proc.idle_rss_kib = memory_kib(proc.process.pid, "VmRSS")
        yield started
    finally:
        for proc in started.values():
            proc.process.terminate()
        for proc in started.values():
            try:
                proc.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.process.kill()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a subset, 1 s per cell")
    parser.add_argument("--duration", type=float, help="seconds per cell (default 5, quick 1)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per cell")
    parser.add_argument("--repeat", type=int, default=1, help="run every cell this many times")
    parser.add_argument("--concurrency", help="comma-separated, default 1,16,64 (quick: 1,64)")
    parser.add_argument("--scenarios", help="comma-separated scenario keys")
    parser.add_argument("--systems", help="comma-separated system keys")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument(
        "--loop",
        choices=["auto", "uvloop", "asyncio"],
        default="asyncio",
        help="every server's event loop (default asyncio, as the CLI runs; auto: uvloop "
        "when installed, as plain uvicorn does)",
    )
    parser.add_argument(
        "--gc-freeze",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="every proxy, the baselines too, freezes its start-up heap, as the CLI does "
        "(default on)",
    )
    parser.add_argument("--output", type=Path, default=BENCH / "results" / "latest.md")
    args = parser.parse_args(argv)
    args.duration = args.duration or (1.0 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    default_c = "1,64" if args.quick else "1,16,64"
    args.concurrency = [int(c) for c in (args.concurrency or default_c).split(",")]
    has_wrk = shutil.which("wrk") is not None
    if args.loadgen == "wrk" and not has_wrk:
        parser.error("--loadgen wrk: wrk is not installed")
    args.wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and has_wrk)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    notes: list[str] = []
    sys.path.insert(0, str(ROOT))
    from asgi_autoproxy import AutoProxyMiddleware

    cache_supported = "cache" in inspect.signature(AutoProxyMiddleware.__init__).parameters

    selected = set(args.systems.split(",")) if args.systems else None
    systems = []
    for system in SYSTEMS:
        if selected is not None and system.key not in selected and system.key != "direct":
            continue
        if system.needs and importlib.util.find_spec(system.needs) is None:
            notes.append(f"Skipped {system.label}: {system.needs} is not installed.")
            continue
        if system.needs_cache and not cache_supported:
            notes.append(
                f"Skipped {system.label}: this build's AutoProxyMiddleware has no `cache` keyword."
            )
            continue
        systems.append(system)
    available = {s.key for s in systems}
    wanted = set(args.scenarios.split(",")) if args.scenarios else None
    scenarios = []
    for scenario in SCENARIOS:
        if wanted is not None and scenario.key not in wanted:
            continue
        if args.quick and wanted is None and scenario.key not in QUICK:
            continue
        keys = QUICK.get(scenario.key, scenario.systems) if args.quick else scenario.systems
        keys = tuple(
            k for k in keys if k in available and (selected is None or k in selected | {"direct"})
        )
        if keys:
            scenarios.append(dataclasses.replace(scenario, systems=keys))

    cores = os.cpu_count() or 1
    use_taskset = cores >= 2 and shutil.which("taskset") is not None
    proxy_core, side_core = (0, 1) if use_taskset else (None, None)
    args.pinning = (
        "proxy alone on core 0; upstream and load generator on core 1"
        if use_taskset
        else "none (needs 2+ cores and taskset)"
    )
    if use_taskset:
        os.sched_setaffinity(0, {1})
    args.output.parent.mkdir(parents=True, exist_ok=True)
    log = args.output.parent / "servers.log"
    log.write_bytes(b"")
    results: Results = {}
    salt = secrets.token_hex(4)
    with (
        tempfile.TemporaryDirectory() as tmp,
        fleet(
            systems, proxy_core, side_core, log, gc_freeze=args.gc_freeze, loop=args.loop
        ) as running,
    ):
        direct_pid = running["direct"].process.pid
        for scenario in scenarios:
            body_file = Path(tmp) / f"{scenario.key}.json"
            for round_ in range(args.repeat):
                for key in scenario.systems:
                    proc = running[key]
                    # Unique bodies never repeat, across cells and repeats alike.
                    template = body_template(scenario, f"{salt}{round_}{key}")
                    body_file.write_bytes(template)
                    probe = template.replace(b"__N__", b"probe")
                    status, _, _ = post(proc.port, probe, scenario.route)
                    if status != 200:
                        raise SystemExit(f"{key} answered {status} to the {scenario.key} probe")
                    measured = direct_pid if key == "direct" else proc.process.pid
                    for c in args.concurrency:
                        if scenario.unique:
                            body_file.write_bytes(
                                body_template(scenario, f"{salt}{round_}{key}{c}")
                            )
                        cell = measure(proc, measured, scenario, body_file, c, args, side_core)
                        results.setdefault((scenario.key, key, c), []).append(cell)
                        print(
                            f"{scenario.key:14} {key:24} c{c:<3} {cell.rps:9,.0f} rps "
                            f"p50 {cell.p50_ms:7.2f} ms p99 {cell.p99_ms:7.2f} ms "
                            f"cpu {cell.cpu_us:7,.0f} µs/req errors {cell.errors}",
                            flush=True,
                        )
        report = render(results, scenarios, args.concurrency, running, notes, args)
    args.output.write_text(report)
    cells = [
        {"scenario": sc, "system": key, "concurrency": c, **dataclasses.asdict(cell)}
        for (sc, key, c), runs in results.items()
        for cell in runs
    ]
    args.output.with_suffix(".json").write_text(json.dumps({"notes": notes, "cells": cells}))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
