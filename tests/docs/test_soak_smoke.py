"""A few seconds of the soak (bench/soak.py), so the soak itself keeps working in CI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.processes import REPO_ROOT as ROOT


@pytest.mark.slow
def test_short_soak_passes() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "bench/soak.py", "--seconds", "4", "--concurrency", "8"]
    # Seconds are too few for a memory verdict; the long run in docs/soak.md gives that.
    command += ["--rss-slack-mb", "40"]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| unexpected answers | 0 |" in done.stdout
    assert "with an injected fault" in done.stdout
    assert done.stdout.rstrip().endswith("PASS")
