"""A cached response and its byte format.

Streams are kept as their list of SSE events, byte for byte, so a hit replays the
same events with the same boundaries. Headers are kept encoded, as ASGI sends them,
so a hit does not encode them again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from asgi_autoproxy import _json

_FORMAT = 1


@dataclass(frozen=True, slots=True)
class CachedResponse:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    """Lower-case names and values, latin-1, in the order the caller gets them."""
    parts: tuple[bytes, ...]
    """The whole body as one part, or a stream's SSE events."""
    stream: bool
    stored_at: float
    scrubbed: bool = field(default=True, compare=False)
    """Header values were scrubbed of provider keys before the entry was stored. False
    only for entries decoded from bytes that an older version wrote without scrubbing."""

    @property
    def body(self) -> bytes:
        return b"".join(self.parts)

    @property
    def size(self) -> int:
        return sum(len(p) for p in self.parts)

    def encode(self) -> bytes:
        header = _json.dumps(
            {
                "f": _FORMAT,
                "s": self.status,
                "h": [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.headers],
                "st": self.stream,
                "t": self.stored_at,
                "l": [len(p) for p in self.parts],
                "r": self.scrubbed,  # an addition: older versions ignore it
            }
        )
        return len(header).to_bytes(4, "big") + header + b"".join(self.parts)

    @classmethod
    def decode(cls, data: bytes) -> CachedResponse | None:
        """None for anything that is not a well-formed entry of this version."""
        try:
            size = int.from_bytes(data[:4], "big")
            header = _json.loads(data[4 : 4 + size])
            if header["f"] != _FORMAT:
                return None
            parts: list[bytes] = []
            offset = 4 + size
            for length in header["l"]:
                parts.append(data[offset : offset + length])
                offset += length
            if offset != len(data):
                return None
            return cls(
                status=int(header["s"]),
                headers=tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in header["h"]),
                parts=tuple(parts),
                stream=bool(header["st"]),
                stored_at=float(header["t"]),
                scrubbed=header.get("r") is True,
            )
        except (
            KeyError,
            TypeError,
            ValueError,
            IndexError,
            AttributeError,
            *_json.JSONDecodeError,
        ):
            return None
