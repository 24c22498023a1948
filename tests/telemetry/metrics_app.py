"""The app each server process serves in the Prometheus tests (run by uvicorn)."""

from __future__ import annotations

import os
from typing import Any

from asgi_autoproxy import AutoProxyMiddleware, OpenAIProvider


async def inner(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


app = AutoProxyMiddleware(
    inner,
    providers=[OpenAIProvider(base_url=os.environ["TEST_UPSTREAM_URL"], name="fake")],
    metrics_path="/metrics",
    metrics_token=os.environ.get("TEST_METRICS_TOKEN"),
)
