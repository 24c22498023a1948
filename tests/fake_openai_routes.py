"""The fake upstream's answers on OpenAI's other routes: embeddings, moderations, responses.

``FakeUpstream`` (tests/fake_upstream.py) records the request and reads the ``fake``
steering object, then hands these routes here. A Responses stream is the API's named
events (``event: response.output_text.delta``...), ending with ``response.completed``;
``fake`` steers it as for chat (``chunks``, ``delay``, ``no_done``: stop before the
last event, ``error_event_after``: an ``event: error`` after that many deltas) and by
``end``: ``"failed"`` or ``"incomplete"`` for that final event instead; ``done``: a
chat-style ``data: [DONE]`` after it, as some compatible servers send.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from typing import Any

VECTOR = [0.25, -0.5, 0.125]
USAGE = {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8}


def embeddings(payload: dict[str, Any], number: int) -> dict[str, Any]:
    """One vector per input, as floats or, as the ``openai`` SDK asks by default, base64."""
    inputs = payload.get("input")
    count = len(inputs) if isinstance(inputs, list) and inputs else 1
    vector: Any = VECTOR
    if payload.get("encoding_format") == "base64":
        vector = base64.b64encode(struct.pack(f"<{len(VECTOR)}f", *VECTOR)).decode()
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": vector} for i in range(count)],
        "model": payload.get("model"),
        "usage": {"prompt_tokens": 4 + number, "total_tokens": 4 + number},
    }


_CATEGORIES = ("harassment", "hate", "self-harm", "sexual", "violence")


def moderations(payload: dict[str, Any], number: int) -> dict[str, Any]:
    flagged = "kill" in json.dumps(payload.get("input"))
    result = {
        "flagged": flagged,
        "categories": {name: flagged and name == "violence" for name in _CATEGORIES},
        "category_scores": {
            name: 0.9 if flagged and name == "violence" else 0.01 for name in _CATEGORIES
        },
        "category_applied_input_types": {name: ["text"] for name in _CATEGORIES},
    }
    return {"id": f"modr-{number}", "model": payload.get("model"), "results": [result]}


def _text(payload: dict[str, Any], number: int) -> str:
    given = payload.get("input")
    return f"echo #{number}: {given if isinstance(given, str) else 'items'}"


def response(payload: dict[str, Any], number: int, *, status: str = "completed") -> dict[str, Any]:
    """A Responses API ``response`` object holding one text message."""
    message = {
        "type": "message",
        "id": f"msg_{number}",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": _text(payload, number), "annotations": []}],
    }
    return {
        "id": f"resp_{number}",
        "object": "response",
        "created_at": 1700000000 + number,
        "status": status,
        "model": payload.get("model"),
        "output": [message] if status != "in_progress" else [],
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": None,
        "metadata": {},
        "parallel_tool_calls": True,
        "temperature": payload.get("temperature"),
        "tool_choice": "auto",
        "tools": [],
        "top_p": None,
        "usage": USAGE if status != "in_progress" else None,
    }


def response_events(
    payload: dict[str, Any], number: int, fake: dict[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    """The (name, data) events of a streamed answer, last one included."""
    chunks = int(fake.get("chunks", 3))
    deltas = [f"tok{i} " for i in range(chunks)]
    started = response(payload, number, status="in_progress")
    item = {
        "type": "message",
        "id": f"msg_{number}",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    part = {"type": "output_text", "text": "", "annotations": []}
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": started}),
        ("response.in_progress", {"response": started}),
        ("response.output_item.added", {"output_index": 0, "item": item}),
        (
            "response.content_part.added",
            {"item_id": item["id"], "output_index": 0, "content_index": 0, "part": part},
        ),
    ]
    for index, delta in enumerate(deltas):
        if index == fake.get("error_event_after"):
            events.append(
                (
                    "error",
                    {"code": "server_error", "message": "overloaded mid-stream", "param": None},
                )
            )
            return _numbered(events)
        events.append(
            (
                "response.output_text.delta",
                {
                    "item_id": item["id"],
                    "output_index": 0,
                    "content_index": 0,
                    "delta": delta,
                    "logprobs": [],
                },
            )
        )
    text = "".join(deltas)
    done_item = {**item, "status": "completed", "content": [{**part, "text": text}]}
    events += [
        (
            "response.output_text.done",
            {
                "item_id": item["id"],
                "output_index": 0,
                "content_index": 0,
                "text": text,
                "logprobs": [],
            },
        ),
        (
            "response.content_part.done",
            {
                "item_id": item["id"],
                "output_index": 0,
                "content_index": 0,
                "part": {**part, "text": text},
            },
        ),
        ("response.output_item.done", {"output_index": 0, "item": done_item}),
    ]
    if fake.get("no_done"):
        return _numbered(events)
    end = fake.get("end", "completed")
    final = response(payload, number, status=end)
    final["output"] = [done_item]
    if end == "failed":
        final["error"] = {"code": "server_error", "message": "the model failed"}
    events.append((f"response.{end}", {"response": final}))
    return _numbered(events)


def _numbered(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (name, {"type": name, **data, "sequence_number": n})
        for n, (name, data) in enumerate(events)
    ]


async def send_response_stream(
    send: Any,
    payload: dict[str, Any],
    number: int,
    fake: dict[str, Any],
    headers: list[tuple[bytes, bytes]],
) -> None:
    delay = float(fake.get("delay", 0))
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream"), *headers],
        }
    )
    for name, data in response_events(payload, number, fake):
        event = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
        await send({"type": "http.response.body", "body": event, "more_body": True})
        if delay:
            await asyncio.sleep(delay)
    if fake.get("done"):
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
