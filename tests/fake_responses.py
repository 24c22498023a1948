"""A fake OpenAI Responses API (``POST /v1/responses``), served for real on 127.0.0.1.

It records every request and answers in the Responses API's wire shapes: a whole
``response`` object, or the named SSE events the real API streams (``event:
response.created`` ... ``event: response.completed``, each with a ``sequence_number``).
A test picks the answer by setting ``scenario``:

- ``text``: a reasoning item, then a text answer; usage with reasoning and cached tokens;
- ``tools``: a reasoning item, then two function calls whose arguments stream in pieces;
- ``refusal``: a refusal instead of text;
- ``incomplete``: text cut at ``max_output_tokens`` (status ``incomplete``);
- ``failed``: ``response.failed`` after some text (whole: a 200 response whose status is
  ``failed``);
- ``error_event``: an ``event: error`` after some text;
- ``cut``: the stream stops before ``response.completed``;
- ``whole_always``: a whole text answer even when a stream was asked for;
- ``invalid`` (400), ``rate_limited`` (429): OpenAI error bodies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tests.fake_upstream import RecordingFake, send_named_events, send_whole

RESPONSE_ID = "resp_68af4030592c81938ec0a5fbab4a3e9f"
CREATED_AT = 1_756_315_696
TEXT_PIECES = ("Hello", " from", " the Responses API.")
TEXT = "".join(TEXT_PIECES)
REFUSAL = "I can't help with that."
TOOL_CALLS = [
    ("call_weather_01", "get_weather", ['{"city": "Pa', 'ris", "unit": "c"}']),
    ("call_time_02", "get_time", ['{"zone": ', '"CET"}']),
]
USAGE = {
    "input_tokens": 36,
    "input_tokens_details": {"cached_tokens": 12, "cache_write_tokens": 5},
    "output_tokens": 87,
    "output_tokens_details": {"reasoning_tokens": 64},
    "total_tokens": 123,
}
_ERRORS = {
    "invalid": (400, "invalid_request_error", "Unsupported parameter: 'foo'.", "invalid_value"),
    "rate_limited": (429, "rate_limit_error", "Rate limit reached for o3-pro.", "rate_limit"),
}


@dataclass
class FakeResponses(RecordingFake):
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await self.record(scope, receive)
        headers = [("x-request-id", "req_fake_responses"), ("openai-processing-ms", "812")]
        if not scope["path"].endswith("/responses"):
            await send_whole(send, 404, b'{"error": "not found"}', "application/json", headers)
            return
        payload = json.loads(body)
        scenario = self.scenario
        if scenario in _ERRORS:
            status, kind, message, code = _ERRORS[scenario]
            error = {"error": {"message": message, "type": kind, "param": None, "code": code}}
            await send_whole(send, status, json.dumps(error).encode(), "application/json", headers)
            return
        if not payload.get("stream") or scenario == "whole_always":
            answer = json.dumps(whole_response(payload, scenario)).encode()
            await send_whole(send, 200, answer, "application/json", headers)
            return
        await send_named_events(send, stream_events(payload, scenario), headers)


def _reasoning() -> dict[str, Any]:
    return {"id": "rs_0001", "type": "reasoning", "summary": []}


def _message_item(scenario: str, text: str) -> dict[str, Any]:
    if scenario == "refusal":
        part: dict[str, Any] = {"type": "refusal", "refusal": REFUSAL}
    else:
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    status = "incomplete" if scenario == "incomplete" else "completed"
    return {
        "id": "msg_0002",
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [part],
    }


def _call_item(index: int, arguments: str) -> dict[str, Any]:
    call_id, name, _ = TOOL_CALLS[index]
    return {
        "id": f"fc_000{index + 3}",
        "type": "function_call",
        "status": "completed",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def _output(scenario: str) -> list[dict[str, Any]]:
    if scenario == "tools":
        return [
            _reasoning(),
            *(_call_item(i, "".join(parts)) for i, (_, _, parts) in enumerate(TOOL_CALLS)),
        ]
    text = "".join(TEXT_PIECES[:2]) if scenario == "incomplete" else TEXT
    return [_reasoning(), _message_item(scenario, text)]


def response_object(payload: dict[str, Any], status: str, output: list[Any]) -> dict[str, Any]:
    """A ``response`` as the API returns it, echoing the request's settings."""
    return {
        "id": RESPONSE_ID,
        "object": "response",
        "created_at": CREATED_AT,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": payload.get("instructions"),
        "max_output_tokens": payload.get("max_output_tokens"),
        "model": f"{payload['model']}-2025-06-10",
        "output": output,
        "parallel_tool_calls": payload.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {"effort": (payload.get("reasoning") or {}).get("effort"), "summary": None},
        "store": payload.get("store", True),
        "temperature": payload.get("temperature", 1.0),
        "text": payload.get("text") or {"format": {"type": "text"}},
        "tool_choice": payload.get("tool_choice", "auto"),
        "tools": payload.get("tools", []),
        "top_p": payload.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": None,
        "metadata": payload.get("metadata") or {},
    }


def whole_response(payload: dict[str, Any], scenario: str) -> dict[str, Any]:
    if scenario == "failed":
        failed = response_object(payload, "failed", [])
        failed["error"] = {"code": "server_error", "message": "The model failed to respond."}
        return failed
    status = "incomplete" if scenario == "incomplete" else "completed"
    response = response_object(payload, status, _output(scenario))
    if scenario == "incomplete":
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    response["usage"] = USAGE
    return response


def stream_events(payload: dict[str, Any], scenario: str) -> list[dict[str, Any]]:
    """The events of one streamed response, as the real API sends them."""
    events: list[dict[str, Any]] = []

    def emit(kind: str, **fields: Any) -> None:
        events.append({"type": kind, "sequence_number": len(events), **fields})

    emit("response.created", response=response_object(payload, "in_progress", []))
    emit("response.in_progress", response=response_object(payload, "in_progress", []))
    reasoning = _reasoning()
    emit("response.output_item.added", output_index=0, item=reasoning)
    emit("response.output_item.done", output_index=0, item=reasoning)
    if scenario == "tools":
        for index, (_, _, parts) in enumerate(TOOL_CALLS):
            position = index + 1
            item = _call_item(index, "")
            emit("response.output_item.added", output_index=position, item=item)
            for part in parts:
                emit(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=position,
                    delta=part,
                )
            arguments = "".join(parts)
            emit(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=position,
                arguments=arguments,
            )
            emit(
                "response.output_item.done",
                output_index=position,
                item=_call_item(index, arguments),
            )
    else:
        _text_events(emit, scenario)
        if scenario == "failed":
            failed = response_object(payload, "failed", [])
            failed["error"] = {"code": "server_error", "message": "The model failed to respond."}
            emit("response.failed", response=failed)
            return events
        if scenario == "error_event":
            emit(
                "error",
                code="server_error",
                message="The server had an error while processing your request.",
                param=None,
            )
            return events
        if scenario == "cut":
            return events
    final = whole_response(payload, scenario)
    emit(
        "response.incomplete" if scenario == "incomplete" else "response.completed", response=final
    )
    return events


def _text_events(emit: Any, scenario: str) -> None:
    item = {**_message_item(scenario, ""), "status": "in_progress", "content": []}
    emit("response.output_item.added", output_index=1, item=item)
    where = {"item_id": item["id"], "output_index": 1, "content_index": 0}
    if scenario == "refusal":
        emit("response.content_part.added", **where, part={"type": "refusal", "refusal": ""})
        for piece in ("I can't", " help with that."):
            emit("response.refusal.delta", **where, delta=piece)
        emit("response.refusal.done", **where, refusal=REFUSAL)
        done_part: dict[str, Any] = {"type": "refusal", "refusal": REFUSAL}
    else:
        empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        emit("response.content_part.added", **where, part=empty)
        pieces = (
            TEXT_PIECES[:2] if scenario in ("incomplete", "failed", "error_event") else TEXT_PIECES
        )
        if scenario == "cut":
            pieces = TEXT_PIECES[:1]
        for piece in pieces:
            emit("response.output_text.delta", **where, delta=piece, logprobs=[])
        if scenario in ("failed", "error_event", "cut"):
            return
        text = "".join(pieces)
        emit("response.output_text.done", **where, text=text, logprobs=[])
        done_part = {**empty, "text": text}
    emit("response.content_part.done", **where, part=done_part)
    text = "".join(TEXT_PIECES[:2]) if scenario == "incomplete" else TEXT
    emit("response.output_item.done", output_index=1, item=_message_item(scenario, text))
