"""Run a server as a real child process (the CLI, uvicorn with an example app) and stop it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 30.0  # a cold interpreter start on a busy 2-core machine
STOP_TIMEOUT = 10.0
# Settings a developer's shell may hold that would change what the child does.
_SCRUBBED = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DJANGO_SETTINGS_MODULE")


@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_env(
    extra: Mapping[str, str] | None = None, *, checkout_on_path: bool = True
) -> dict[str, str]:
    """The test's environment minus proxy settings, with this checkout first on the path
    (or, without ``checkout_on_path``, with no ``PYTHONPATH`` at all)."""
    env = {
        k: v for k, v in os.environ.items() if k not in _SCRUBBED and not k.startswith("AUTOPROXY_")
    }
    if not checkout_on_path:
        env.pop("PYTHONPATH", None)
    else:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _wait_until_listening(server: ServerProcess, port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"server exited with {server.process.returncode} before listening:\n{server.log}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen within {READY_TIMEOUT}s:\n{server.log}")


@contextlib.contextmanager
def run_server(
    args: Sequence[str],
    *,
    port: int,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO_ROOT,
    python: str = sys.executable,
    checkout_on_path: bool = True,
) -> Iterator[ServerProcess]:
    """Start ``python <args>``, yield once it accepts connections, then terminate it."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [python, *args],
            cwd=cwd,
            env=child_env(env, checkout_on_path=checkout_on_path),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    try:
        _wait_until_listening(server, port)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
