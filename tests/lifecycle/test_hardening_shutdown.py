"""Shutdown under a real server ends within the grace period whatever callers and
upstreams do, and those cut short get the proxy's own answer, not the server's bare 500.
A misconfigured example stops at start-up with its message instead of serving 500s."""

from __future__ import annotations

import ast
import contextlib
import json
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from asgi_autoproxy import Limits
from asgi_autoproxy.cli import build_parser
from tests.conftest import CALLER_KEY, SERVER_KEY, chat_body
from tests.fake_upstream import FakeUpstream
from tests.fault_upstream import FaultUpstream
from tests.faults import asgi_client, fault_body, faulty_proxy, settle
from tests.processes import REPO_ROOT, ServerProcess, child_env, free_port, run_server

GRACE = 1.0
MARGIN = 3.0  # the cut, the connections closing, lifespan shutdown, interpreter exit
READY = 15.0  # a busy 2-core machine: how long the three requests may take to get going
AUTH = {"authorization": f"Bearer {CALLER_KEY}"}
CUT = "server_shutting_down"


class NeverEnding:
    """Three proxied requests that would never end by themselves, each on a thread: a
    stream whose upstream sends ``: ping`` comments forever, a whole answer whose upstream
    never answers, and a request body that trickles in a byte at a time."""

    def __init__(self, server: ServerProcess, upstream: FaultUpstream, tag: str) -> None:
        self.url, self.upstream, self.tag = server.url, upstream, tag
        self.port = int(server.url.rsplit(":", 1)[1])
        self.stream = b""
        self.whole: httpx.Response | None = None
        self.trickled = b""
        self.errors: list[BaseException] = []
        self._first_event = threading.Event()
        self._trickling = threading.Event()
        self._stop = threading.Event()
        targets = (self._run_stream, self._run_whole, self._run_trickle)
        self._threads = [threading.Thread(target=self._guard, args=(t,)) for t in targets]

    def __enter__(self) -> NeverEnding:
        for thread in self._threads:
            thread.start()
        assert self._first_event.wait(READY), self.errors
        assert self._trickling.wait(READY), self.errors
        deadline = time.monotonic() + READY
        while self.upstream.exchange(f"{self.tag}-whole") is None:
            assert time.monotonic() < deadline, "the whole request never reached upstream"
            time.sleep(0.02)
        time.sleep(0.3)  # a few pings and trickled bytes more: all three are under way
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def _guard(self, target: Any) -> None:
        try:
            target()
        except Exception as error:  # reported by the test's assertions
            self.errors.append(error)

    def _run_stream(self) -> None:
        body = fault_body("stall", True, f"{self.tag} stream", wait=60, ping=0.1)
        headers = {**AUTH, "x-request-id": f"{self.tag}-stream"}
        with (
            httpx.Client(base_url=self.url, timeout=60) as http,
            http.stream("POST", "/v1/proxy/auto", json=body, headers=headers) as response,
        ):
            for chunk in response.iter_raw():
                self.stream += chunk
                if b"data: " in self.stream:
                    self._first_event.set()

    def _run_whole(self) -> None:
        body = fault_body("slow_headers", False, f"{self.tag} whole", wait=60)
        headers = {**AUTH, "x-request-id": f"{self.tag}-whole"}
        with httpx.Client(base_url=self.url, timeout=60) as http:
            self.whole = http.post("/v1/proxy/auto", json=body, headers=headers)

    def _run_trickle(self) -> None:
        head = (
            "POST /v1/proxy/auto HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            f"authorization: Bearer {CALLER_KEY}\r\ncontent-type: application/json\r\n"
            f"content-length: 1000\r\nx-request-id: {self.tag}-trickle\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(head.encode())
            deadline = time.monotonic() + 60
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    sock.sendall(b" ")  # JSON allows leading blanks: never a bad body
                except OSError:
                    break
                self._trickling.set()
                if select.select([sock], [], [], 0.1)[0]:
                    break  # the answer has come
            with contextlib.suppress(OSError):  # a reset after the answer: it was read
                while chunk := sock.recv(65536):
                    self.trickled += chunk

    def stream_error(self) -> dict[str, Any]:
        """The stream's last data event, which must be an error."""
        events = [e for e in self.stream.split(b"\n\n") if e.startswith(b"data: ")]
        assert len(events) >= 2, self.stream
        assert b"chat.completion.chunk" in events[0]
        error: dict[str, Any] = json.loads(events[-1][6:])["error"]
        return error

    def trickle_answer(self) -> tuple[int, dict[bytes, bytes], Any]:
        head, _, body = self.trickled.partition(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        headers = dict(line.lower().split(b": ", 1) for line in lines)
        return int(status_line.split()[1]), headers, json.loads(body)


def stop_and_time(server: ServerProcess, within: float) -> float:
    """SIGTERM the server; how long it took to exit, failing past ``within`` seconds."""
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=within)
    except subprocess.TimeoutExpired:
        server.process.kill()  # so the callers' threads end too
        server.process.wait(timeout=10)
        pytest.fail(f"still running {within:g} s after SIGTERM; log:\n{server.log}")
    return time.monotonic() - started


def assert_cut_by_the_proxy(requests: NeverEnding, log: str) -> None:
    assert not requests.errors, requests.errors
    error = requests.stream_error()
    assert error["code"] == CUT and error["type"] == "server_error", error
    whole = requests.whole
    assert whole is not None
    assert whole.status_code == 503, (whole.status_code, whole.text)
    assert whole.headers["content-type"] == "application/json"
    assert whole.json()["error"]["code"] == CUT
    assert whole.headers["x-request-id"] == f"{requests.tag}-whole"
    status, headers, body = requests.trickle_answer()
    assert (status, headers[b"content-type"]) == (503, b"application/json")
    assert body["error"]["code"] == CUT
    assert "Internal Server Error" not in log


# -- 16 and 17: the asgi-autoproxy command ----------------------------------------------


def test_cli_sigterm_cuts_never_ending_requests_within_the_grace(
    fault_upstream: FaultUpstream, tmp_path: Path
) -> None:
    port = free_port()
    args = ["-m", "asgi_autoproxy", "--port", str(port), "--openai-base-url", fault_upstream.url]
    env = {"AUTOPROXY_SHUTDOWN_GRACE": f"{GRACE:g}"}
    with (
        run_server(args, port=port, env=env, log_path=tmp_path / "cli.log") as server,
        NeverEnding(server, fault_upstream, "cli") as requests,
    ):
        took = stop_and_time(server, GRACE + MARGIN)
    assert took >= GRACE * 0.9, "requests in flight must get their grace"
    assert_cut_by_the_proxy(requests, server.log)
    # uvicorn ends a clean shutdown by raising the signal it caught again.
    assert server.process.returncode in (0, -signal.SIGTERM)
    assert "cutting 3 request(s) still running after 1 s" in server.log
    assert "Traceback" not in server.log and "Exception in ASGI" not in server.log
    # Upstream saw the proxy hang up on the stream and on the unanswered request.
    for kind in ("stream", "whole"):
        exchange = fault_upstream.exchange(f"cli-{kind}")
        assert exchange is not None and exchange.outcome == "peer_closed", exchange


def test_shutdown_grace_flag_and_variable() -> None:
    assert build_parser({}).parse_args([]).shutdown_grace == 30.0
    from_env = build_parser({"AUTOPROXY_SHUTDOWN_GRACE": "2.5"}).parse_args([])
    assert from_env.shutdown_grace == 2.5
    assert build_parser({}).parse_args(["--shutdown-grace", "0"]).shutdown_grace == 0.0


@pytest.mark.parametrize("value", ["-1", "soon", "nan", "inf"])
def test_bad_shutdown_grace_exits_2(value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "asgi_autoproxy", "--shutdown-grace", value],
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "argument --shutdown-grace:" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.anyio
async def test_drain_at_shutdowns_start_then_lifespans_cuts_once(
    fault_upstream: FaultUpstream,
) -> None:
    """What the command does: drain() when shutdown begins, then aclose() (lifespan
    shutdown) while that drain still runs; the second waits for the first."""
    proxy = faulty_proxy(
        fault_upstream.url, shutdown_grace=0.3, limits=Limits(stream_idle_timeout=None)
    )
    body = fault_body("stall", True, "drain twice", wait=30, ping=0.05)
    answers: list[httpx.Response] = []
    async with asgi_client(proxy) as http, anyio.create_task_group() as group:

        async def ask() -> None:
            answers.append(await http.post("/v1/proxy/auto", json=body))

        group.start_soon(ask)
        assert await settle(lambda: proxy.requests_in_flight == 1, within=READY)
        started = time.monotonic()
        cuts: list[int] = []

        async def drain() -> None:
            cuts.append(await proxy.drain())

        group.start_soon(drain)
        await anyio.sleep(0.05)
        await proxy.aclose()
    took = time.monotonic() - started  # both drains and the request have ended
    assert cuts == [1] and 0.3 <= took < 2.0
    [answer] = answers
    assert json.loads(answer.content.split(b"\n\n")[-2][6:])["error"]["code"] == CUT


# -- 17: a library user under plain uvicorn ---------------------------------------------


def test_plain_uvicorn_past_its_graceful_timeout_gets_the_proxys_answers(
    fault_upstream: FaultUpstream, tmp_path: Path
) -> None:
    """uvicorn cancels what is left after --timeout-graceful-shutdown; the middleware
    answers those requests itself first."""
    port = free_port()
    args = ["-m", "uvicorn", "examples.starlette_app:app", "--port", str(port)]
    args += ["--lifespan", "on", "--timeout-graceful-shutdown", f"{GRACE:g}"]
    env = {"OPENAI_BASE_URL": fault_upstream.url}
    with (
        run_server(args, port=port, env=env, log_path=tmp_path / "uvicorn.log") as server,
        NeverEnding(server, fault_upstream, "uvicorn") as requests,
    ):
        stop_and_time(server, GRACE + MARGIN)
    assert_cut_by_the_proxy(requests, server.log)


# -- 18: the examples' configuration ----------------------------------------------------

EXAMPLES = REPO_ROOT / "examples"
LAZY_EXAMPLES = ["starlette_app", "fastapi_app"]  # their framework builds middleware lazily


def documented_command(name: str) -> list[str]:
    """The ``Run:`` command in the example's docstring, as ``python -m`` arguments."""
    doc = ast.get_docstring(ast.parse((EXAMPLES / f"{name}.py").read_text()))
    assert doc is not None and doc.startswith("Run: uvicorn "), doc
    program, *args = shlex.split(doc.splitlines()[0].removeprefix("Run: "))
    return ["-m", program, *args]


def with_port(args: list[str], port: int) -> list[str]:
    args = list(args)
    args[args.index("--port") + 1] = str(port)
    return args


@pytest.mark.parametrize("name", LAZY_EXAMPLES)
def test_documented_run_stops_at_start_up_when_client_keys_are_missing(
    name: str, upstream_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {"OPENAI_API_KEY": SERVER_KEY, "OPENAI_BASE_URL": upstream_url}
    log_path = tmp_path / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, *with_port(documented_command(name), port)],
            cwd=REPO_ROOT,
            env=child_env(env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        # Still serving: show what a caller gets, then stop it.
        with contextlib.suppress(httpx.HTTPError):
            home = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
            print("GET / ->", home.status_code, home.text)
        process.kill()
        process.wait(timeout=10)
        pytest.fail(f"the example kept serving without client keys:\n{log_path.read_text()}")
    output = log_path.read_text()
    assert process.returncode != 0
    assert "hold their own API key" in output and "Application startup failed" in output
    assert SERVER_KEY not in output


@pytest.mark.parametrize("name", [*LAZY_EXAMPLES, "django"])
def test_example_takes_client_keys_as_the_cli_does(
    name: str, upstream: FakeUpstream, upstream_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        "OPENAI_API_KEY": SERVER_KEY,
        "OPENAI_BASE_URL": upstream_url,
        "AUTOPROXY_CLIENT_KEYS": f" {CALLER_KEY} , sk-second ,",  # as the CLI accepts it
    }
    if name == "django":
        args = ["-m", "uvicorn", "proxysite.asgi:application", "--port", str(port)]
        cwd = EXAMPLES / "django_project"
    else:
        args, cwd = with_port(documented_command(name), port), REPO_ROOT
    log_path = tmp_path / f"{name}.log"
    with (
        run_server(args, port=port, env=env, cwd=cwd, log_path=log_path) as server,
        httpx.Client(base_url=server.url, timeout=10) as http,
    ):
        home = http.get("/")
        served = [
            http.post("/v1/proxy/auto", json=chat_body(), headers={"authorization": f"Bearer {k}"})
            for k in (CALLER_KEY, "sk-second")
        ]
        refused = http.post("/v1/proxy/auto", json=chat_body())
    assert home.status_code == 200, home.text
    assert [r.status_code for r in served] == [200, 200], [r.text for r in served]
    assert refused.status_code == 401
    assert all(r.headers["authorization"] == f"Bearer {SERVER_KEY}" for r in upstream.requests)


def test_client_keys_from_env_matches_the_cli() -> None:
    from asgi_autoproxy import client_keys_from_env  # here: the rest runs without it

    keys = client_keys_from_env({"AUTOPROXY_CLIENT_KEYS": " b-key , a-key ,"})
    assert keys is not None and sorted(keys) == ["a-key", "b-key"]
    assert all(caller.startswith("client-") for caller in keys.values())
    reordered = client_keys_from_env({"AUTOPROXY_CLIENT_KEYS": "a-key,b-key"})
    assert reordered == keys  # ids hash the key, so the order does not matter
    assert client_keys_from_env({}) is None
    assert client_keys_from_env({"AUTOPROXY_CLIENT_KEYS": " , "}) is None
