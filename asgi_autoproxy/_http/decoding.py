"""Decoding an upstream body's ``content-encoding`` a bounded piece at a time.

httpx decodes each network read whole: 64 KiB of gzip can hold 64 MiB of zeros, so a
single read of a gzip bomb would cost that much memory before anyone could count it.
Here gzip and deflate come out in pieces of at most ``PIECE`` bytes, so a reader that
stops at its size bound never holds more than the bound and one piece.

(The aiohttp transport's direct lane decodes in aiohttp, which bounds its pieces in the
same way since 3.13.3.)
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

import httpx

from asgi_autoproxy._http.client_types import UpstreamHTTPResponse

PIECE = 64 * 1024


def decoded_chunks(response: UpstreamHTTPResponse) -> AsyncIterator[bytes]:
    """``response``'s body, decoded, as ``aiter_bytes`` would give it."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return response.aiter_raw()
    if encoding in ("gzip", "x-gzip", "deflate"):
        return _inflated(response.aiter_raw(), encoding != "deflate")
    # br, zstd or several encodings: httpx's own decoders, bounded by network read only.
    return response.aiter_bytes()


async def _inflated(raw: AsyncIterator[bytes], gzip: bool) -> AsyncIterator[bytes]:
    inflater = None
    async for data in raw:
        if inflater is None:
            if not data:
                continue
            # deflate should be zlib-wrapped, but some servers send it raw (as aiohttp).
            wbits = zlib.MAX_WBITS | 16 if gzip else zlib.MAX_WBITS
            if not gzip and data[0] & 0x0F != 8:
                wbits = -zlib.MAX_WBITS
            inflater = zlib.decompressobj(wbits)
        while True:
            try:
                piece = inflater.decompress(data, PIECE)
            except zlib.error as exc:
                raise httpx.DecodingError(str(exc)) from exc
            if piece:
                yield piece
            data = inflater.unconsumed_tail
            # This read is used up once zlib gives less than it may: a full piece can
            # leave output inside zlib even with no input left.
            if not data and len(piece) < PIECE:
                break
