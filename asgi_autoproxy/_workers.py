"""``asgi-autoproxy --workers N``: N server processes on one listening socket.

The parent binds the socket once and starts N copies of the command, each told to serve
the inherited socket (``--fd``) as a single worker; the kernel spreads connections over
them. A SIGTERM or Ctrl+C reaches every worker, which drains as a single process does,
and the parent exits once they all have. What the workers share is what their Redis
shares (``--redis-url``); without one each keeps its own cache and state.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType


def listen(host: str, port: int) -> socket.socket:
    """The listening socket the workers share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_workers(count: int, argv: Sequence[str], host: str, port: int) -> int:
    """Serve with ``count`` worker processes; returns the worst worker's exit code."""
    sock = listen(host, port)
    fd = sock.fileno()
    command = [sys.executable, "-m", "asgi_autoproxy", *argv, "--workers", "1", "--fd", str(fd)]
    workers = [subprocess.Popen(command, pass_fds=(fd,)) for _ in range(count)]

    forwarded: set[int] = set()

    def forward(signum: int, _frame: FrameType | None) -> None:
        forwarded.add(-signum)
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                worker.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        codes = [worker.wait() for worker in workers]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    # uvicorn ends by raising the signal it shut down for again: that is a clean exit.
    return max((0 if code in forwarded else code for code in codes), key=abs)
