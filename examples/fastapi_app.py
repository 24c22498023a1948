"""Run: uvicorn examples.fastapi_app:app --lifespan on --port 8000

A FastAPI app with its own routes, plus the proxy at ``POST /v1/proxy/auto``.
The upstream is ``OPENAI_BASE_URL`` (default https://api.openai.com/v1).
With ``OPENAI_API_KEY`` set the proxy sends that key upstream, and callers must present
one of the keys in ``AUTOPROXY_CLIENT_KEYS`` (comma-separated); without it, each
caller's own ``Authorization: Bearer`` key is passed through.

``--lifespan on``: FastAPI builds its middleware on its first ASGI call, the lifespan
start-up, so a bad setting (say ``OPENAI_API_KEY`` without ``AUTOPROXY_CLIENT_KEYS``)
stops the server with its message. uvicorn's default, ``auto``, takes that error for an
app without lifespan support, starts anyway and answers every request with a 500.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from asgi_autoproxy import AutoProxyMiddleware, OpenAIProvider, client_keys_from_env

app = FastAPI()


@app.get("/")
async def home() -> dict[str, str]:
    return {"message": "Hello from the FastAPI app; the proxy is at /v1/proxy/auto."}


app.add_middleware(
    AutoProxyMiddleware,
    # With a server-side key, only these callers may spend it: AUTOPROXY_CLIENT_KEYS.
    api_keys=client_keys_from_env(),
    providers=[
        OpenAIProvider(
            base_url=os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
            api_key=os.environ.get("OPENAI_API_KEY"),  # None: pass the caller's key through
        )
    ],
)
