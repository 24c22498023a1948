"""Server-Sent Events: split a byte stream into whole events and write our own."""

from __future__ import annotations

from asgi_autoproxy import _json
from asgi_autoproxy.errors import ResponseTooLarge

DONE_EVENT = b"data: [DONE]\n\n"


class EventSplitter:
    """Cuts a byte stream into complete SSE events.

    Only whole events are released, so a stream that breaks mid-event never hands
    the caller half an event followed by ours. Line ends are made LF: SSE allows CR,
    LF and CRLF and means the same by each, so every ``data:`` line's content is kept
    byte for byte, and only one kind of blank line is left to end an event.

    Each chunk is searched once, and an unfinished event is kept as a list of chunks,
    so the work stays linear in the bytes fed however long an event grows. Past
    ``max_event_size`` bytes, ``feed`` raises ``ResponseTooLarge`` at once, with the
    whole events before it in that chunk as its ``events``.
    """

    __slots__ = ("_after_cr", "_limit", "_pending", "_size")

    def __init__(self, max_event_size: int | None = None) -> None:
        self._limit = max_event_size
        self._pending: list[bytes] = []  # the unfinished event, as it arrived
        self._size = 0  # its length
        self._after_cr = False  # the last chunk ended with CR: an LF next completes a CRLF

    def feed(self, chunk: bytes) -> list[bytes]:
        events: list[bytes] = []
        if self._after_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]  # a CRLF that the reads cut in two; its CR is already an LF
            self._after_cr = False
        if not chunk:
            return events
        self._after_cr = chunk[-1:] == b"\r"
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        start = 0
        limit = self._limit
        if pending := self._pending:
            # The blank line may begin in the last chunk: look one byte back.
            if chunk[:1] == b"\n" and pending[-1][-1:] == b"\n":
                end = 1
            elif (end := chunk.find(b"\n\n") + 2) < 2:
                self._keep(chunk, events)
                return events
            if limit is not None and self._size + end > limit:
                raise ResponseTooLarge(limit, "event", events)
            pending.append(chunk[:end])
            events.append(b"".join(pending))
            self._pending = []
            self._size = 0
            start = end
        while (end := chunk.find(b"\n\n", start) + 2) >= 2:
            if limit is not None and end - start > limit:
                raise ResponseTooLarge(limit, "event", events)
            events.append(chunk[start:end])
            start = end
        if start < len(chunk):
            self._keep(chunk[start:] if start else chunk, events)
        return events

    def _keep(self, part: bytes, events: list[bytes]) -> None:
        self._size += len(part)
        if self._limit is not None and self._size > self._limit:
            raise ResponseTooLarge(self._limit, "event", events)
        self._pending.append(part)

    @property
    def pending(self) -> bytes:
        """Bytes of an event that has not been terminated yet (line ends made LF)."""
        return b"".join(self._pending)


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
