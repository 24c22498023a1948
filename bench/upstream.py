"""The benchmark's fake OpenAI upstream: a raw ASGI app that answers at once.

Non-streaming requests get one small chat completion (on ``/embeddings``, one
embedding). Requests whose body holds ``"stream": true`` get 20 SSE chunks, 10 ms apart,
then ``[DONE]``. It parses nothing, so its own cost stays far below the proxies' it is
measured against.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from bench.loop_report import report_loop

STREAM_CHUNKS = 20
STREAM_INTERVAL = 0.010

_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "The quick brown fox."},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }
).encode()
_JSON_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_COMPLETION)).encode()),
    (b"x-request-id", b"req_bench"),
    (b"openai-processing-ms", b"1"),
]
_EMBEDDING = json.dumps(
    {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.0125] * 64}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }
).encode()
_EMBEDDING_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_EMBEDDING)).encode()),
    (b"x-request-id", b"req_bench"),
]
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"x-request-id", b"req_bench")]


def _chunk(index: int) -> bytes:
    delta: dict[str, Any] = {"content": f"tok{index} "}
    if index == 0:
        delta["role"] = "assistant"
    last = index == STREAM_CHUNKS - 1
    data = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": "stop" if last else None}],
    }
    return b"data: " + json.dumps(data).encode() + b"\n\n"


_CHUNKS = [_chunk(i) for i in range(STREAM_CHUNKS)]


def wants_stream(body: bytes) -> bool:
    return b'"stream":true' in body or b'"stream": true' in body


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                report_loop()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    if scope["path"].endswith("/embeddings"):
        await send({"type": "http.response.start", "status": 200, "headers": _EMBEDDING_HEADERS})
        await send({"type": "http.response.body", "body": _EMBEDDING})
        return
    if not wants_stream(b"".join(parts)):
        await send({"type": "http.response.start", "status": 200, "headers": _JSON_HEADERS})
        await send({"type": "http.response.body", "body": _COMPLETION})
        return
    await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
    for chunk in _CHUNKS:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await asyncio.sleep(STREAM_INTERVAL)
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True})
    await send({"type": "http.response.body", "body": b""})
