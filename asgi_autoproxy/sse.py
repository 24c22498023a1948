"""Server-Sent Events: split a byte stream into whole events and write our own."""

from __future__ import annotations

from . import _json

DONE_EVENT = b"data: [DONE]\n\n"


class EventSplitter:
    """Cuts a byte stream into complete SSE events, each kept byte for byte.

    Only whole events are released, so a stream that breaks mid-event never hands
    the caller half an event followed by ours.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._buffer + chunk if self._buffer else chunk
        events: list[bytes] = []
        start = 0
        while True:
            end = _event_end(data, start)
            if end < 0:
                break
            events.append(data[start:end])
            start = end
        self._buffer = data[start:]
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event that has not been terminated yet."""
        return self._buffer


def _event_end(data: bytes, start: int) -> int:
    """Index just past the blank line that ends the event starting at ``start``, or -1."""
    lf = data.find(b"\n\n", start)
    crlf = data.find(b"\r\n\r\n", start)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf + 4
    return lf + 2 if lf >= 0 else -1


def event_data(event: bytes) -> bytes:
    """The joined ``data:`` lines of one event."""
    parts: list[bytes] = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts)


def event_name(event: bytes) -> bytes | None:
    for line in event.splitlines():
        if line.startswith(b"event:"):
            return line[6:].strip()
    return None


def is_error(event: bytes) -> bool:
    """An event that reports a failure: ``event: error`` or a JSON body with ``error``."""
    if b"error" not in event:
        return False
    if event_name(event) == b"error":
        return True
    if b'"error"' not in event:
        return False
    try:
        payload = _json.loads(event_data(event))
    except _json.JSONDecodeError:
        return False
    return isinstance(payload, dict) and payload.get("error") is not None


def error_event(error: dict[str, object]) -> bytes:
    """An OpenAI-style in-stream error, the shape the ``openai`` SDK raises on."""
    return b"data: " + _json.dumps(error) + b"\n\n"
