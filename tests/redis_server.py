"""A real redis-server on 127.0.0.1, started and stopped by the tests themselves.

The Redis tests never skip quietly: without a ``redis-server`` (or ``valkey-server``)
binary they fail and say how to install one. Set ASGI_AUTOPROXY_SKIP_REDIS=1 to skip
them on a machine without Redis; CI never sets it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

SKIP_ENV = "ASGI_AUTOPROXY_SKIP_REDIS"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_binary() -> str:
    """The server binary, or a test failure (a skip only when SKIP_ENV is set)."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name) or (
            f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None
        )
        if found:
            return found
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"redis-server not installed and {SKIP_ENV}=1")
    pytest.fail(
        "The Redis tests need a real redis-server (or valkey-server) on PATH: "
        "install it with `apt-get install -y redis-server`, or set "
        f"{SKIP_ENV}=1 to skip them locally (never in CI).",
        pytrace=False,
    )


class RedisServer:
    """One redis-server process on a fixed port that can be killed and restarted."""

    def __init__(self, binary: str, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self._dir = tempfile.mkdtemp(prefix="asgi_autoproxy-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        assert not self.running, "already running"
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir,
            "--logfile", os.path.join(self._dir, "server.log"),
        ]  # fmt: skip
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not self._answers_ping():
            if self._process.poll() is not None:
                error = self._process.stderr.read() if self._process.stderr else b""
                raise RuntimeError(f"redis-server exited at start-up: {error!r}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer PING on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), like a crash; the port is free again afterwards."""
        self._stop(signal.SIGKILL)

    def stop(self) -> None:
        self._stop(signal.SIGTERM)

    def pause(self) -> None:
        """SIGSTOP: the server hangs with its connections open, answering nothing."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def _stop(self, sig: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a paused server could not stop
            process.send_signal(sig)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if process.stderr:
            process.stderr.close()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@contextlib.contextmanager
def running_redis(port: int | None = None) -> Iterator[RedisServer]:
    server = RedisServer(find_binary(), port)
    try:
        server.start()
        yield server
    finally:
        server.close()
