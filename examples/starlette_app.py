"""Run: uvicorn examples.starlette_app:app --port 8000

A Starlette app with its own routes, plus the proxy at ``POST /v1/proxy/auto``.
The upstream is ``OPENAI_BASE_URL`` (default https://api.openai.com/v1).
With ``OPENAI_API_KEY`` set the proxy sends that key upstream; without it, each
caller's own ``Authorization: Bearer`` key is passed through.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_autoproxy import AutoProxyMiddleware, OpenAIProvider


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("Hello from the Starlette app; the proxy is at /v1/proxy/auto.")


openai = OpenAIProvider(
    base_url=os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
    api_key=os.environ.get("OPENAI_API_KEY"),  # None: pass the caller's key through
)

# With a server-side key, only these callers may spend it: AUTOPROXY_CLIENT_KEYS="k1,k2".
client_keys = {
    key: f"client-{number}"
    for number, key in enumerate(os.environ.get("AUTOPROXY_CLIENT_KEYS", "").split(","))
    if key
}

app = Starlette(
    routes=[Route("/", home)],
    middleware=[Middleware(AutoProxyMiddleware, providers=[openai], api_keys=client_keys or None)],
)
