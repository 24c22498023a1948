"""Run: uvicorn examples.fastapi_app:app --port 8000

A FastAPI app with its own routes, plus the proxy at ``POST /v1/proxy/auto``.
The upstream is ``OPENAI_BASE_URL`` (default https://api.openai.com/v1).
With ``OPENAI_API_KEY`` set the proxy sends that key upstream; without it, each
caller's own ``Authorization: Bearer`` key is passed through.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from asgi_autoproxy import AutoProxyMiddleware, OpenAIProvider

app = FastAPI()


@app.get("/")
async def home() -> dict[str, str]:
    return {"message": "Hello from the FastAPI app; the proxy is at /v1/proxy/auto."}


# With a server-side key, only these callers may spend it: AUTOPROXY_CLIENT_KEYS="k1,k2".
client_keys = {
    key: f"client-{number}"
    for number, key in enumerate(os.environ.get("AUTOPROXY_CLIENT_KEYS", "").split(","))
    if key
}

app.add_middleware(
    AutoProxyMiddleware,
    api_keys=client_keys or None,
    providers=[
        OpenAIProvider(
            base_url=os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
            api_key=os.environ.get("OPENAI_API_KEY"),  # None: pass the caller's key through
        )
    ],
)
