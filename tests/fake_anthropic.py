"""A fake Anthropic Messages API: a raw ASGI app, served for real on 127.0.0.1.

It records every request and answers in Anthropic's wire shapes, whole or as the
named SSE events the real API sends (with ``ping``s in between). A test picks the
answer by setting ``scenario``:

- ``text``: a text answer; ``stop_sequence``/``max_tokens`` change the stop reason;
- ``tools``: text, then two tool calls whose arguments stream as ``input_json_delta``;
- ``json``: the forced ``response_format`` tool answers;
- ``cache``: usage with cache reads and writes;
- ``thinking``: a thinking block (streamed as ``thinking_delta`` and ``signature_delta``),
  then the text;
- ``error_mid_stream``: an ``error`` event after some text (status 200);
- ``cut``: the stream stops without ``message_stop``;
- ``overloaded`` (529), ``invalid`` (400), ``rate_limited`` (429), ``html`` (500 non-JSON).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tests.fake_upstream import RecordingFake, send_named_events, send_whole

MESSAGE_ID = "msg_01XFDUDYJgAACzvnptvVoYEL"
THOUGHTS = ["Paris is ", "in France."]
SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"
TOOL_CALLS = [
    ("toolu_01A09q90qw90lq917835lq9", "get_weather", ['{"city": "Pa', 'ris", "unit": "c"}']),
    ("toolu_01B12r34st56uv789wxyz01", "get_time", ["", '{"zone": ', '"CET"}']),
]
_ERRORS = {
    "overloaded": (529, "overloaded_error", "Overloaded"),
    "invalid": (400, "invalid_request_error", "messages: roles must alternate"),
    "rate_limited": (429, "rate_limit_error", "Number of requests has exceeded your limit"),
}


@dataclass
class FakeAnthropic(RecordingFake):
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await self.record(scope, receive)
        payload = json.loads(body)
        scenario = self.scenario
        headers = [("request-id", "req_011CS"), ("anthropic-ratelimit-requests-remaining", "49")]
        if scenario in _ERRORS:
            status, kind, text = _ERRORS[scenario]
            error = {"type": "error", "error": {"type": kind, "message": text}}
            await send_whole(send, status, json.dumps(error).encode(), "application/json", headers)
            return
        if scenario == "html":
            await send_whole(send, 500, b"<html>oops</html>", "text/html", headers)
            return
        if not payload.get("stream"):
            answer = json.dumps(_message(payload, scenario)).encode()
            await send_whole(send, 200, answer, "application/json", headers)
            return
        await send_named_events(send, _events(payload, scenario), headers)


def _usage(scenario: str) -> dict[str, Any]:
    usage: dict[str, Any] = {"input_tokens": 25, "output_tokens": 12}
    if scenario == "cache":
        usage.update(cache_read_input_tokens=100, cache_creation_input_tokens=40)
    return usage


def _stop_reason(scenario: str) -> str:
    return {
        "tools": "tool_use",
        "json": "tool_use",
        "stop_sequence": "stop_sequence",
        "max_tokens": "max_tokens",
    }.get(scenario, "end_turn")


def _blocks(payload: dict[str, Any], scenario: str) -> list[dict[str, Any]]:
    if scenario == "json":
        name = payload["tool_choice"]["name"]
        return [{"type": "tool_use", "id": "toolu_json", "name": name, "input": {"answer": 42}}]
    blocks: list[dict[str, Any]] = [{"type": "text", "text": "Hello from Claude."}]
    if scenario == "thinking":
        thought = {"type": "thinking", "thinking": "".join(THOUGHTS), "signature": SIGNATURE}
        blocks.insert(0, thought)
    if scenario == "tools":
        for call_id, name, parts in TOOL_CALLS:
            arguments = json.loads("".join(parts))
            blocks.append({"type": "tool_use", "id": call_id, "name": name, "input": arguments})
    return blocks


def _message(payload: dict[str, Any], scenario: str) -> dict[str, Any]:
    return {
        "id": MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "model": payload["model"],
        "content": _blocks(payload, scenario),
        "stop_reason": _stop_reason(scenario),
        "stop_sequence": "###" if scenario == "stop_sequence" else None,
        "usage": _usage(scenario),
    }


def _events(payload: dict[str, Any], scenario: str) -> list[dict[str, Any]]:
    usage = _usage(scenario)
    start = {
        **_message(payload, scenario),
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
        {"type": "ping"},
    ]
    for index, block in enumerate(_blocks(payload, scenario)):
        if block["type"] == "text":
            events.append(
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                }
            )
            for piece in ("Hello", " from", " Claude."):
                events.append(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": piece},
                    }
                )
                if scenario == "error_mid_stream" and piece == " from":
                    events.append(
                        {
                            "type": "error",
                            "error": {"type": "overloaded_error", "message": "Overloaded"},
                        }
                    )
                    return events
        elif block["type"] == "thinking":
            start = {"type": "thinking", "thinking": "", "signature": ""}
            events.append({"type": "content_block_start", "index": index, "content_block": start})
            for piece in THOUGHTS:
                delta = {"type": "thinking_delta", "thinking": piece}
                events.append({"type": "content_block_delta", "index": index, "delta": delta})
            delta = {"type": "signature_delta", "signature": SIGNATURE}
            events.append({"type": "content_block_delta", "index": index, "delta": delta})
        else:
            parts = next((p for i, _, p in TOOL_CALLS if i == block["id"]), None)
            if parts is None:
                parts = [json.dumps(block["input"])[:5], json.dumps(block["input"])[5:]]
            events.append(
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {**block, "input": {}},
                }
            )
            events.append({"type": "ping"})
            for part in parts:
                events.append(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": part},
                    }
                )
        events.append({"type": "content_block_stop", "index": index})
    if scenario == "cut":
        return events
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": _stop_reason(scenario), "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        }
    )
    events.append({"type": "message_stop"})
    return events
