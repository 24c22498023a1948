"""The benchmark still runs: a seconds-long slice of ``bench/run.py``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import REPO_ROOT as ROOT


@pytest.mark.parametrize("gc_freeze", [False, True])
def test_bench_quick_slice_runs_and_reports(tmp_path: Path, gc_freeze: bool) -> None:
    output = tmp_path / "latest.md"
    command = [
        sys.executable,
        str(ROOT / "bench" / "run.py"),
        "--quick",
        "--scenarios=miss,stream",
        "--systems=baseline,autoproxy",
        "--concurrency=4",
        "--duration=0.5",
        "--warmup=0.2",
        "--loadgen=python",
        f"--output={output}",
        "--gc-freeze" if gc_freeze else "--no-gc-freeze",
    ]
    subprocess.run(command, cwd=ROOT, check=True, timeout=60, capture_output=True)
    cells = json.loads(output.with_suffix(".json").read_text())["cells"]
    seen = {(cell["scenario"], cell["system"]) for cell in cells}
    assert seen == {
        (scenario, system)
        for scenario in ("miss", "stream")
        for system in ("direct", "baseline", "autoproxy")
    }
    for cell in cells:
        assert cell["errors"] == 0, cell
        assert cell["rps"] > 0 and cell["p50_ms"] > 0 and cell["cpu_us"] >= 0
    streams = [cell for cell in cells if cell["scenario"] == "stream"]
    # 20 chunks 10 ms apart: a stream can take no less than ~200 ms end to end.
    assert all(cell["p50_ms"] >= 190 and cell["ttfb_p50_ms"] < 150 for cell in streams)
    report = output.read_text()
    assert "## Non-streaming misses" in report and "| asgi_autoproxy, cache off | 4 |" in report
    assert ("start-up heap frozen" in report) == gc_freeze
    # Every server, proxies included, says it ran the loop the run asked for.
    assert "--loop asyncio --http" in report
    assert "(event loop as the servers reported it: asyncio)" in report


def test_memory_bench_slice_runs_and_judges() -> None:
    command = [
        sys.executable,
        str(ROOT / "bench" / "memory.py"),
        "--requests=400",
        "--distinct=50",
        "--after=100",
        "--concurrency=4",
    ]
    result = subprocess.run(command, cwd=ROOT, timeout=90, capture_output=True, text=True)
    assert "0 errors" in result.stdout, result.stdout + result.stderr
    assert "asgi_autoproxy, MemoryCache(max_bytes=8 MiB)" in result.stdout
    # Both verdicts are printed; 400 small requests cannot grow anything by megabytes.
    assert result.stdout.count(": pass") == 2, result.stdout
    assert result.returncode == 0
