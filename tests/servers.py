"""Run an ASGI app under a real uvicorn server on 127.0.0.1, in a background thread."""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import uvicorn


class ServerThread:
    def __init__(self, app: Any, *, lifespan: str = "off") -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan=lifespan,
            loop="asyncio",
            http="h11",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


@contextlib.contextmanager
def serve(app: Any, *, lifespan: str = "off") -> Iterator[ServerThread]:
    server = ServerThread(app, lifespan=lifespan)
    server.start()
    try:
        yield server
    finally:
        server.stop()


T = TypeVar("T")


@contextlib.contextmanager
def serve_fleet(make: Callable[[], T], count: int) -> Iterator[list[tuple[T, ServerThread]]]:
    """``count`` fresh apps from ``make``, each served on its own port."""
    fleet: list[tuple[T, ServerThread]] = []
    try:
        for _ in range(count):
            app = make()
            server = ServerThread(app)
            server.start()
            fleet.append((app, server))
        yield fleet
    finally:
        for _, server in fleet:
            server.stop()


async def read_request(scope: Any, receive: Any) -> tuple[bytes, list[tuple[str, str]]]:
    """A test server's view of a request: its whole body and its decoded headers."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    return body, [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]


def gzip_json_app(answer: bytes) -> Any:
    """An upstream that reads the request and answers ``answer`` gzip-compressed."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await read_request(scope, receive)
        body = gzip.compress(answer)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-encoding", b"gzip"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app
