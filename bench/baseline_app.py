"""The yardstick: a hand-written Starlette passthrough with one shared httpx.AsyncClient.

``BENCH_UPSTREAM`` is the upstream's base URL; ``BENCH_BASELINE_CACHE=1`` adds an
exact-match dict cache of whole non-streaming answers, keyed on the raw body.
``BENCH_GC_FREEZE=1`` freezes the start-up heap, as the proxy does under the same flag.
"""

import gc
import os
from contextlib import asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from bench.loop_report import report_loop

BASE = os.environ["BENCH_UPSTREAM"].rstrip("/")
USE_CACHE = os.environ.get("BENCH_BASELINE_CACHE") == "1"
cache: dict[bytes, tuple[int, bytes]] = {}
shared: dict[str, httpx.AsyncClient] = {}


@asynccontextmanager
async def lifespan(app):
    async with httpx.AsyncClient(timeout=60) as client:
        shared["client"] = client
        report_loop()
        if os.environ.get("BENCH_GC_FREEZE") == "1":
            gc.collect()
            gc.freeze()
        yield


async def chat(request):
    """POST the body to the same path below the upstream's base URL."""
    body = await request.body()
    if USE_CACHE and (hit := cache.get(body)) is not None:
        return Response(hit[1], hit[0], media_type="application/json")
    client = shared["client"]
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
    url = BASE + request.url.path.removeprefix("/v1")
    upstream = client.build_request("POST", url, content=body, headers=headers)
    response = await client.send(upstream, stream=True)
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return StreamingResponse(
            response.aiter_raw(),
            media_type="text/event-stream",
            background=BackgroundTask(response.aclose),
        )
    content = await response.aread()
    if USE_CACHE and response.status_code == 200:
        cache[body] = (200, content)
    return Response(content, response.status_code, media_type="application/json")


app = Starlette(
    routes=[
        Route(path, chat, methods=["POST"]) for path in ("/v1/chat/completions", "/v1/embeddings")
    ],
    lifespan=lifespan,
)
