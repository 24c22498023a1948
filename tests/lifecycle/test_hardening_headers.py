"""The ``asgi-autoproxy`` command bounds each request's line and headers, in time and in
size, under httptools (the default where installed) and under h11.

uvicorn times nothing before a request's headers are complete, and under httptools it
buffers them without a limit: a client trickling header bytes held a connection for ever,
and one sending a 200 MB header grew the server by as much. Each server here runs the real
command as a child process with ``AUTOPROXY_REQUEST_READ_TIMEOUT=1``; the h11 one runs it
as on a machine without httptools. Raw sockets on 127.0.0.1, every wait bounded."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from asgi_autoproxy.cli import build_app, build_parser, main
from tests.conftest import CALLER_KEY, chat_body
from tests.fake_upstream import FakeUpstream
from tests.processes import ServerProcess, free_port, run_server
from tests.servers import ServerThread

TIMEOUT = 1.0  # the servers' request read timeout
SLACK = 1.5  # a busy 2-core machine: how late a 408 may come
STEP = 0.2  # a slow client's pace: one byte each
KEEP_ALIVE = 5.0  # uvicorn's default --timeout-keep-alive, which the CLI keeps
MB = 1024 * 1024
PARTIAL_HEAD = b"GET /healthz HTTP/1.1\r\nHost: proxy\r\nX-Slow: " + b"z" * 40  # never ends
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n"
# A machine without httptools: uvicorn's "auto", and the command's, then pick h11.
WITHOUT_HTTPTOOLS = (
    "import sys; sys.modules['httptools'] = None; "
    "from asgi_autoproxy.cli import main; sys.exit(main(sys.argv[1:]))"
)
KIND: dict[str, str] = {}  # each server's url: the protocol it runs
HEAD_CAP = {"httptools": 64 * 1024, "h11": 16 * 1024}  # h11 keeps its own, smaller cap


@pytest.fixture(scope="module", params=["httptools", "h11"])
def server(
    request: pytest.FixtureRequest,
    _upstream_server: tuple[FakeUpstream, ServerThread],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    http = request.param
    if http == "httptools":
        pytest.importorskip("httptools")
    port = free_port()
    flags = ["--port", str(port), "--openai-base-url", _upstream_server[1].url + "/v1"]
    command = ["-m", "asgi_autoproxy"] if http == "httptools" else ["-c", WITHOUT_HTTPTOOLS]
    env = {"AUTOPROXY_REQUEST_READ_TIMEOUT": f"{TIMEOUT:g}", "AUTOPROXY_LOG_LEVEL": "warning"}
    log_path = tmp_path_factory.mktemp(http) / "server.log"
    with run_server([*command, *flags], port=port, env=env, log_path=log_path) as process:
        KIND[process.url] = http
        yield process
    assert "Traceback" not in process.log


def http_kind(server: ServerProcess) -> str:
    return KIND[server.url]


@contextlib.contextmanager
def connect(server: ServerProcess) -> Iterator[socket.socket]:
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        yield sock


class Reader:
    """Responses off a raw socket, one at a time, each wait bounded."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer, self.eof = sock, b"", False

    def fill(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"nothing more within the wait; have {self.buffer[:200]!r}")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        self.eof = not chunk
        self.buffer += chunk

    def _take(self, size: int, deadline: float) -> bytes:
        while len(self.buffer) < size and not self.eof:
            self.fill(deadline)
        taken, self.buffer = self.buffer[:size], self.buffer[size:]
        return taken

    def _line(self, deadline: float) -> bytes:
        while b"\r\n" not in self.buffer and not self.eof:
            self.fill(deadline)
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def response(self, wait: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        deadline = time.monotonic() + wait
        while b"\r\n\r\n" not in self.buffer:
            if self.eof:
                raise EOFError(f"closed without a response; have {self.buffer!r}")
            self.fill(deadline)
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(self._line(deadline), 16):
                body += self._take(size, deadline)
                self._line(deadline)
            self._line(deadline)
        else:
            body = self._take(int(headers.get("content-length", "0")), deadline)
        return int(status_line.split()[1]), headers, body

    def closed(self, wait: float) -> bool:
        """Whether the server ends the connection within ``wait`` seconds, with nothing
        more sent."""
        deadline = time.monotonic() + wait
        with contextlib.suppress(TimeoutError):
            while not self.eof:
                self.fill(deadline)
        return self.eof and not self.buffer


def trickle(sock: socket.socket, data: bytes) -> float:
    """Send ``data`` a byte every ``STEP`` s until the server answers or closes; return
    when that happened (monotonic). Bounded by ``len(data)`` steps."""
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return time.monotonic()
        readable, _, _ = select.select([sock], [], [], STEP)
        if readable:
            return time.monotonic()
    raise AssertionError(f"no answer after trickling {len(data)} bytes over {len(data) * STEP} s")


def assert_refused(
    response: tuple[int, dict[str, str], bytes], status: int, code: str
) -> dict[str, Any]:
    got, headers, body = response
    assert got == status, (got, body)
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    error: dict[str, Any] = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] is None
    assert error["code"] == code
    return error


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- the deadline -----------------------------------------------------------------------


def test_headers_trickled_a_byte_at_a_time_get_a_408_and_the_connection_closes(
    server: ServerProcess,
) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        answered = trickle(sock, PARTIAL_HEAD)
        reader = Reader(sock)
        error = assert_refused(reader.response(), 408, "request_timeout")
        assert reader.closed(wait=1.0)
        closed = time.monotonic()
    assert "did not arrive within 1 s" in error["message"]
    assert TIMEOUT - 0.1 <= answered - started <= TIMEOUT + SLACK
    assert closed - started <= TIMEOUT + SLACK + 0.5


def test_a_kept_alive_connection_times_each_next_head_from_its_first_byte(
    server: ServerProcess,
) -> None:
    with connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(HEALTHZ)
        assert reader.response()[0] == 200
        # Idle past the read timeout but within keep-alive: uvicorn's to govern, not ours.
        time.sleep(TIMEOUT + 0.5)
        sock.sendall(HEALTHZ)
        assert reader.response()[0] == 200
        time.sleep(TIMEOUT * 0.8)  # idle again; the next head's clock starts with its byte
        started = time.monotonic()
        answered = trickle(sock, PARTIAL_HEAD)
        assert_refused(reader.response(), 408, "request_timeout")
        assert reader.closed(wait=1.0)
    assert TIMEOUT - 0.1 <= answered - started <= TIMEOUT + SLACK


def test_an_idle_kept_alive_connection_still_closes_at_the_keep_alive_timeout(
    server: ServerProcess,
) -> None:
    with connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(HEALTHZ)
        assert reader.response()[0] == 200
        answered = time.monotonic()
        assert reader.closed(wait=KEEP_ALIVE + SLACK + 1)  # silently: no 408
        assert time.monotonic() - answered >= KEEP_ALIVE - 0.5


def test_a_body_trickled_after_its_answer_is_cut_like_a_slow_head(server: ServerProcess) -> None:
    """The app answers without reading the body; uvicorn then waits for the rest of that
    body with no timer at all. It counts as waiting for the next request's head."""
    with connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: proxy\r\nContent-Length: 60\r\n\r\n")
        assert reader.response()[0] == 200
        started = time.monotonic()
        answered = trickle(sock, b"b" * 60)
        assert_refused(reader.response(), 408, "request_timeout")
        assert reader.closed(wait=1.0)
    assert answered - started <= TIMEOUT + SLACK


def test_a_late_pipelined_head_lets_the_answer_before_it_finish_then_ends_the_connection(
    server: ServerProcess,
) -> None:
    """A slow head queued behind a request still being answered: that answer goes out
    whole, then the connection ends (httptools: at once; h11, which reads nothing while
    it answers, times the head from its next byte: a 408)."""
    body = json.dumps({**chat_body("slow"), "fake": {"sleep": 2 * TIMEOUT}}).encode()
    first = (
        b"POST /v1/proxy/auto HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + CALLER_KEY.encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    with connect(server) as sock:
        reader = Reader(sock)
        started = time.monotonic()
        sock.sendall(first + PARTIAL_HEAD[:10])
        rest = iter(PARTIAL_HEAD[10:])
        while not reader.buffer and not reader.eof:  # trickle on until the answer comes
            with contextlib.suppress(StopIteration, OSError):
                sock.sendall(bytes([next(rest)]))
            with contextlib.suppress(TimeoutError):
                reader.fill(time.monotonic() + STEP)
            assert time.monotonic() - started < 2 * TIMEOUT + 5, "no answer"
        status, _, answer = reader.response()
        assert status == 200, answer
        assert json.loads(answer)["choices"][0]["message"]["content"].endswith(": slow")
        assert time.monotonic() - started >= 2 * TIMEOUT
        if http_kind(server) == "h11":
            for byte in rest:  # bounded: the rest of the partial head
                with contextlib.suppress(OSError):
                    sock.sendall(bytes([byte]))
                if select.select([sock], [], [], STEP)[0]:
                    break
            assert_refused(reader.response(), 408, "request_timeout")
        assert reader.closed(wait=TIMEOUT + SLACK)


# -- the size cap -----------------------------------------------------------------------


def send_huge_head(sock: socket.socket, size: int) -> None:
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: proxy\r\nX-Huge: ")
    piece = b"h" * 65536
    with contextlib.suppress(OSError):  # the server may stop reading once it has answered
        for _ in range(size // len(piece)):
            sock.sendall(piece)


def test_a_megabyte_of_headers_gets_a_431_at_once_and_is_not_buffered(
    server: ServerProcess,
) -> None:
    cap = HEAD_CAP[http_kind(server)]
    pid = server.process.pid
    with connect(server) as sock:  # the first refusal imports and allocates what it needs
        send_huge_head(sock, MB)
        assert_refused(Reader(sock).response(), 431, "request_header_fields_too_large")
    before = rss_kib(pid)
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(connect(server)) for _ in range(8)]
        started = time.monotonic()
        for sock in socks:  # all eight held open together: 8 MB sent
            send_huge_head(sock, MB)
        time.sleep(0.3)
        grown = rss_kib(pid) - before
        for sock in socks:
            reader = Reader(sock)
            error = assert_refused(
                reader.response(wait=5.0), 431, "request_header_fields_too_large"
            )
            assert f"limit of {cap} bytes" in error["message"]
            assert reader.closed(wait=3.0)
        elapsed = time.monotonic() - started
    assert grown < 4 * 1024, f"the server grew by {grown} KiB"
    assert elapsed < TIMEOUT + SLACK  # answered on the cap, not on the clock
    assert "larger than the server's limit" in server.log


def test_heads_up_to_the_cap_pass_even_when_a_body_comes_in_the_same_read(
    server: ServerProcess,
) -> None:
    cap = HEAD_CAP[http_kind(server)]
    body = json.dumps({**chat_body("big body"), "user": "u" * 300_000}).encode()
    pad = b"p" * (min(cap, 32 * 1024) - 4096)  # under the middleware's own 32 KiB, too
    chat = (
        b"POST /v1/proxy/auto HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + CALLER_KEY.encode() + b"\r\nX-Pad: " + pad + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    pad = b"p" * (cap - 1024)  # just under the server's cap; /healthz has no limit of its own
    health = b"GET /healthz HTTP/1.1\r\nHost: proxy\r\nX-Pad: " + pad + b"\r\n"
    health += b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    with connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(chat + body)  # one write: the server reads head and body together
        status, _, answer = reader.response()
        assert status == 200, answer
        assert json.loads(answer)["choices"][0]["message"]["content"].endswith(": big body")
        # Answered unread, then the next three pipelined behind the body, in one write.
        sock.sendall(health + body + HEALTHZ * 3)
        assert [reader.response()[0] for _ in range(4)] == [200, 200, 200, 200]


# -- ordinary traffic -------------------------------------------------------------------


def test_ordinary_requests_on_a_kept_alive_connection_still_work(server: ServerProcess) -> None:
    auth = {"authorization": f"Bearer {CALLER_KEY}"}
    with httpx.Client(base_url=server.url, timeout=10) as http:
        first = http.post("/v1/proxy/auto", json=chat_body("one"), headers=auth)
        time.sleep(TIMEOUT + 0.3)  # kept alive across more than the read timeout
        second = http.post("/v1/proxy/auto", json=chat_body("two"), headers=auth)
        assert http.get("/healthz").json() == {"status": "ok"}
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert second.json()["choices"][0]["message"]["content"].endswith(": two")


def test_both_bounds_hold_on_uvloop_too(
    _upstream_server: tuple[FakeUpstream, ServerThread], tmp_path: Path
) -> None:
    pytest.importorskip("uvloop")
    port = free_port()
    args = ["-m", "asgi_autoproxy", "--port", str(port), "--loop", "uvloop"]
    args += ["--request-read-timeout", f"{TIMEOUT:g}"]  # the flag, this time
    with run_server(args, port=port, log_path=tmp_path / "uvloop.log") as server:
        with connect(server) as sock:
            started = time.monotonic()
            answered = trickle(sock, PARTIAL_HEAD)
            reader = Reader(sock)
            assert_refused(reader.response(), 408, "request_timeout")
            assert reader.closed(wait=1.0)
        assert answered - started <= TIMEOUT + SLACK
        with connect(server) as sock:
            send_huge_head(sock, MB)
            reader = Reader(sock)
            assert_refused(reader.response(), 431, "request_header_fields_too_large")
            assert reader.closed(wait=3.0)
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
    assert "event loop: uvloop.Loop" in server.log


# -- the flag ---------------------------------------------------------------------------


def test_request_read_timeout_flag_and_variable_reach_the_middleware() -> None:
    assert build_parser({}).parse_args([]).request_read_timeout == 30
    env = {"AUTOPROXY_REQUEST_READ_TIMEOUT": "7.5"}
    assert build_parser(env).parse_args([]).request_read_timeout == 7.5
    args = build_parser(env).parse_args(["--request-read-timeout", "2"])
    assert args.request_read_timeout == 2
    app = build_app(args, {})
    assert app._body_deadline is not None
    assert app._body_deadline.seconds == 2


def test_a_request_read_timeout_of_zero_stops_the_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--request-read-timeout", "0"]) == 2
    assert "request_read_timeout must be a positive number" in capsys.readouterr().err


def test_the_protocol_classes_load_from_uvicorns_http_setting() -> None:
    import uvicorn

    from asgi_autoproxy import _server

    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    for name in ("GuardedH11Protocol", "GuardedHttpToolsProtocol"):
        config = uvicorn.Config(app, http=f"asgi_autoproxy._server:{name}")
        config.load()  # what `uvicorn --http asgi_autoproxy._server:...` does
        assert config.http_protocol_class is getattr(_server, name)
    made: Any = _server.guarded_http_protocol("h11", header_timeout=2, max_header_bytes=4096)
    assert issubclass(made, _server.GuardedH11Protocol)
    assert (made.header_timeout, made.max_header_bytes) == (2.0, 4096)
    assert issubclass(_server.guarded_http_protocol(), _server.GuardedHttpToolsProtocol)
    bad: Any
    for bad in ({"header_timeout": 0}, {"header_timeout": float("nan")}, {"max_header_bytes": 0}):
        with pytest.raises(ValueError):
            _server.guarded_http_protocol(**bad)
    bad = "h2"
    with pytest.raises(ValueError, match="'h2'"):
        _server.guarded_http_protocol(bad)
