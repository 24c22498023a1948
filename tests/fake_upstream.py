"""A fake OpenAI-compatible upstream: a raw ASGI app, served for real on 127.0.0.1.

It records every request (path, headers, body) and answers in OpenAI's shapes. A
test steers it through a ``fake`` object in the JSON body, which the proxy forwards
unchanged like any provider-specific field:

    {"fake": {"chunks": 5, "delay": 0.01, "status": 500, "gate": true, "no_done": true,
              "gate_before_first": true,
              "error_event_after": 2, "body": "raw text", "headers": {"x": "y"},
              "sleep": 1.0, "echo_auth": true, "response_model": "m-2024",
              "usage": {"prompt_tokens": 1000, ...}}}

``response_model`` replaces the answer's ``model``. A stream whose request says
``stream_options.include_usage`` ends, as OpenAI's do, with a chunk that has
``choices: []`` and the usage.

``usage`` replaces the answer's usage (and rides on a stream's last chunk).
``echo_auth`` puts the received Authorization header into the error message, as
careless upstreams do. Odd bodies (wrong types anywhere) get a plain answer, never a
crash, so fuzz tests can blame the proxy alone.

``overrides`` on the instance are merged over ``fake`` for every request, so one of
several upstreams can fail while the others answer the same body normally.

``/embeddings``, ``/moderations`` and ``/responses`` answer in their own shapes
(tests/fake_openai_routes.py), after the same ``status``, ``body`` and ``sleep`` steering.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tests import fake_openai_routes as routes
from tests.servers import read_request


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    header_list: list[tuple[str, str]]
    body: bytes
    client: tuple[str, int] | None = None
    """The caller's (host, port): one port per TCP connection, so reuse shows."""

    @property
    def json(self) -> Any:
        return json.loads(self.body)


async def send_named_events(
    send: Any, events: Iterable[dict[str, Any]], headers: list[tuple[str, str]]
) -> None:
    """A 200 stream of ``event: {type}`` events, as the Responses and Anthropic APIs send."""
    sse = [("content-type", "text/event-stream"), *headers]
    await send({"type": "http.response.start", "status": 200, "headers": encode_headers(sse)})
    for event in events:
        data = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
        await send({"type": "http.response.body", "body": data, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


@dataclass
class RecordingFake:
    """A fake upstream that records each request it gets and answers by ``scenario``."""

    requests: list[RecordedRequest] = field(default_factory=list)
    scenario: str = "text"
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.scenario = "text"

    async def record(self, scope: Any, receive: Any) -> bytes:
        """Reads the request, keeps it in ``requests`` and returns its body."""
        body, header_list = await read_request(scope, receive)
        with self._lock:
            self.requests.append(
                RecordedRequest(
                    method=scope["method"],
                    path=scope["path"],
                    query=scope["query_string"].decode(),
                    headers=dict(header_list),
                    header_list=header_list,
                    body=body,
                )
            )
        return body


@dataclass
class FakeUpstream:
    requests: list[RecordedRequest] = field(default_factory=list)
    disconnects: int = 0
    completed_streams: int = 0
    chunks_sent: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _gate: asyncio.Event | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def reset(self) -> None:
        with self._lock:
            self.overrides = {}
            self.requests.clear()
            self.disconnects = 0
            self.completed_streams = 0
            self.chunks_sent = 0
            self._gate = None

    @property
    def parked(self) -> bool:
        """A gated stream is waiting for ``open_gate``."""
        gate = self._gate
        return gate is not None and not gate.is_set()

    def __repr__(self) -> str:
        # Short: Hypothesis prints fixtures, and the recorded requests grow large.
        return f"FakeUpstream(calls={self.calls})"

    @property
    def calls(self) -> int:
        return len(self.requests)

    def open_gate(self) -> None:
        """Let a ``gate`` stream send the rest of its chunks (``gate_before_first``: all)."""
        loop, gate = self._loop, self._gate
        assert loop is not None and gate is not None, "no gated stream has started"
        loop.call_soon_threadsafe(gate.set)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body, header_list = await read_request(scope, receive)
        recorded = RecordedRequest(
            method=scope["method"],
            path=scope["path"],
            query=scope["query_string"].decode(),
            headers=dict(header_list),
            header_list=header_list,
            body=body,
            client=tuple(scope["client"]) if scope.get("client") else None,
        )
        with self._lock:
            self.requests.append(recorded)
            number = len(self.requests)
        path = scope["path"]
        if path.endswith("/models"):
            await _send_json(send, 200, {"object": "list", "data": []})
            return
        try:
            payload = json.loads(body)
        except ValueError:
            await _send_json(send, 400, {"error": {"message": "bad json", "type": "x"}})
            return
        if not isinstance(payload, dict):
            await _send_json(send, 400, {"error": {"message": "not an object", "type": "x"}})
            return
        fake = payload.get("fake")
        if not isinstance(fake, dict):
            fake = {}
        fake = {**fake, **self.overrides}
        if fake.get("sleep"):
            await asyncio.sleep(fake["sleep"])
        headers = [
            ("x-request-id", f"req_{number}"),
            ("openai-processing-ms", "7"),
            ("x-ratelimit-remaining-requests", "99"),
            ("openai-organization", "org-secret-name"),
            ("set-cookie", "upstream=1"),
            ("server", "fake-upstream"),
            *fake.get("headers", {}).items(),
        ]
        status = fake.get("status", 200)
        if "body" in fake:
            await send_whole(send, status, fake["body"].encode(), "text/plain", headers)
            return
        if status != 200:
            message = f"upstream says {status}"
            if fake.get("echo_auth"):
                message += f"; bad key: {recorded.headers.get('authorization')}"
            error = {"error": {"message": message, "type": "fake", "code": None}}
            await _send_json(send, status, error, headers)
            return
        if path.endswith(("/embeddings", "/moderations", "/responses")):
            await self._other_route(send, path, payload, fake, number, headers)
            return
        chat = path.endswith("/chat/completions")
        if payload.get("stream"):
            auth = recorded.headers.get("authorization", "")
            await self._stream(payload, fake, chat, number, headers, receive, send, auth)
            return
        answer = _completion(payload, chat, number)
        _dress(answer, fake)
        await _send_json(send, 200, answer, headers)

    async def _other_route(
        self,
        send: Any,
        path: str,
        payload: dict[str, Any],
        fake: dict[str, Any],
        number: int,
        headers: list[tuple[str, str]],
    ) -> None:
        """Embeddings, moderations and responses (tests/fake_openai_routes.py)."""
        if path.endswith("/embeddings"):
            await _send_json(send, 200, routes.embeddings(payload, number), headers)
        elif path.endswith("/moderations"):
            await _send_json(send, 200, routes.moderations(payload, number), headers)
        elif payload.get("stream") is True:
            await routes.send_response_stream(send, payload, number, fake, encode_headers(headers))
            with self._lock:
                self.completed_streams += 1
        else:
            await _send_json(send, 200, routes.response(payload, number), headers)

    async def _stream(
        self,
        payload: dict[str, Any],
        fake: dict[str, Any],
        chat: bool,
        number: int,
        headers: list[tuple[str, str]],
        receive: Any,
        send: Any,
        recorded_auth: str = "",
    ) -> None:
        chunks = int(fake.get("chunks", 3))
        delay = float(fake.get("delay", 0))
        disconnected = asyncio.Event()

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected.set()
                    return

        watcher = asyncio.ensure_future(watch())
        completed = False
        if fake.get("gate") or fake.get("gate_before_first"):
            self._loop = asyncio.get_running_loop()
            self._gate = asyncio.Event()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": encode_headers([("content-type", "text/event-stream"), *headers]),
            }
        )
        try:
            if fake.get("gate_before_first"):  # headers out, then nothing until the gate opens
                assert self._gate is not None
                await asyncio.wait_for(self._gate.wait(), timeout=10)
            for index in range(chunks):
                if index == fake.get("error_event_after"):
                    message = "overloaded mid-stream"
                    if fake.get("echo_auth"):
                        message += f"; key was {recorded_auth}"
                    error = {"error": {"message": message, "type": "server_error"}}
                    await _send_event(send, error)
                    break
                chunk = _chunk(payload, chat, number, index, chunks)
                _dress(chunk, fake, usage=False)
                if index == chunks - 1 and isinstance(fake.get("usage"), dict):
                    chunk["usage"] = fake["usage"]
                with self._lock:  # counted first: the proxy may relay it before send returns
                    self.chunks_sent += 1
                await _send_event(send, chunk)
                if index == 0 and self._gate is not None and fake.get("gate"):
                    await asyncio.wait_for(self._gate.wait(), timeout=10)
                if delay:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(disconnected.wait(), timeout=delay)
                if disconnected.is_set():
                    raise ConnectionError
            else:
                options = payload.get("stream_options")
                if isinstance(options, dict) and options.get("include_usage"):
                    tail = _chunk(payload, chat, number, 0, 1)
                    tail["choices"] = []
                    tail["usage"] = dict(_USAGE)
                    _dress(tail, fake)
                    await _send_event(send, tail)
                if not fake.get("no_done"):
                    await send(
                        {
                            "type": "http.response.body",
                            "body": b"data: [DONE]\n\n",
                            "more_body": True,
                        }
                    )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            completed = True
            with self._lock:
                self.completed_streams += 1
        except (ConnectionError, OSError):
            pass
        finally:
            # Give the watcher a moment to see a disconnect that raced the last send.
            try:
                await asyncio.wait_for(asyncio.shield(watcher), timeout=0.2)
            except TimeoutError:
                watcher.cancel()
            # After a complete response the server reports a disconnect too; not a real one.
            if disconnected.is_set() and not completed:
                with self._lock:
                    self.disconnects += 1


_USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def _dress(answer: dict[str, Any], fake: dict[str, Any], *, usage: bool = True) -> None:
    if isinstance(fake.get("response_model"), str):
        answer["model"] = fake["response_model"]
    if usage and isinstance(fake.get("usage"), dict):
        answer["usage"] = fake["usage"]


def _completion(payload: dict[str, Any], chat: bool, number: int) -> dict[str, Any]:
    model = payload.get("model")
    usage = dict(_USAGE)
    if chat:
        messages = payload.get("messages")
        last_message = messages[-1] if isinstance(messages, list) and messages else {}
        last = last_message.get("content", "") if isinstance(last_message, dict) else ""
        return {
            "id": f"chatcmpl-{number}",
            "object": "chat.completion",
            "created": 1700000000 + number,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"echo #{number}: {last}"},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": usage,
        }
    return {
        "id": f"cmpl-{number}",
        "object": "text_completion",
        "created": 1700000000 + number,
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": f"echo #{number}: {payload.get('prompt')}",
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": usage,
    }


def _chunk(
    payload: dict[str, Any], chat: bool, number: int, index: int, total: int
) -> dict[str, Any]:
    last = index == total - 1
    base = {
        "id": f"chatcmpl-{number}" if chat else f"cmpl-{number}",
        "created": 1700000000,
        "model": payload.get("model"),
    }
    if chat:
        delta: dict[str, Any] = {"content": f"tok{index} "}
        if index == 0:
            delta["role"] = "assistant"
        choice = {
            "index": 0,
            "delta": delta,
            "finish_reason": "stop" if last else None,
            "logprobs": None,
        }
        return {**base, "object": "chat.completion.chunk", "choices": [choice]}
    choice = {
        "index": 0,
        "text": f"tok{index} ",
        "finish_reason": "stop" if last else None,
        "logprobs": None,
    }
    return {**base, "object": "text_completion", "choices": [choice]}


def encode_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), str(v).encode()) for k, v in headers]


async def _send_event(send: Any, data: dict[str, Any]) -> None:
    body = b"data: " + json.dumps(data).encode() + b"\n\n"
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _send_json(
    send: Any, status: int, data: Any, headers: list[tuple[str, str]] = ()
) -> None:  # type: ignore[assignment]
    await send_whole(send, status, json.dumps(data).encode(), "application/json", list(headers))


async def send_whole(
    send: Any, status: int, body: bytes, content_type: str, headers: list[tuple[str, str]]
) -> None:
    all_headers = [("content-type", content_type), ("content-length", str(len(body))), *headers]
    await send(
        {"type": "http.response.start", "status": status, "headers": encode_headers(all_headers)}
    )
    await send({"type": "http.response.body", "body": body})
