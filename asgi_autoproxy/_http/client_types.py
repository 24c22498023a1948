"""The HTTP clients the middleware and providers accept: ``httpx``'s and ``httpx2``'s.

httpx2 is the maintained continuation of httpx (the ``openai`` 3.x and ``anthropic`` 2.x
SDKs use it) with the same client API under another module name. Only type checkers
import it from here; the package never imports httpx2 at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

import httpx

if TYPE_CHECKING:
    import httpx2

UpstreamClient: TypeAlias = "httpx.AsyncClient | httpx2.AsyncClient"
"""An ``httpx.AsyncClient`` or an ``httpx2.AsyncClient``."""

UpstreamHTTPResponse: TypeAlias = "httpx.Response | httpx2.Response"
"""A response from either client."""
