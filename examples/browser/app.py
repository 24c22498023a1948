"""A page that streams answers straight from the proxy, holding only a temporary credential.

The page's user logs in to this app (a toy login below; use your own). The app's logged-in
endpoint ``POST /session/credential`` asks the proxy for a short-lived token limited to
one model, and the page calls ``/v1/proxy/auto`` with it, reading the stream as it comes.
No provider key and no long-lived proxy key ever reaches the browser.

run:
    export OPENAI_API_KEY=sk-...   # the proxy's own upstream key
    export ASGI_AUTOPROXY_CREDENTIALS_SECRET="$(openssl rand -base64 48)"
    uvicorn examples.browser.app:app --lifespan on --port 8000
then open http://127.0.0.1:8000/

``AUTOPROXY_CORS_ORIGINS`` (comma-separated) lets pages served from other origins call the
proxy too, e.g. ``http://localhost:5173`` for a front end on its own dev server.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from asgi_autoproxy import AutoProxyMiddleware, OpenAIProvider, client_keys_from_env

PAGE = (Path(__file__).parent / "index.html").read_text()
MODEL = os.environ.get("EXAMPLE_MODEL", "gpt-4o-mini")
CREDENTIAL_TTL = 300
"""Seconds a page's credential lasts: the page asks for a new one when it expires."""


def build_app(
    *,
    base_url: str,
    api_key: str,
    credentials_secret: str,
    cors_origins: Sequence[str] | None = None,
    model: str = MODEL,
) -> AutoProxyMiddleware:
    sessions: dict[str, str] = {}  # session id -> user; a real app has its own sessions

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE.replace("{{model}}", model).replace("{{proxy}}", ""))

    async def login(request: Request) -> Response:
        try:
            name = str((await request.json()).get("name", "")).strip()[:40]
        except (ValueError, AttributeError):  # not JSON, or not an object
            name = ""
        if not name:
            return JSONResponse({"error": "Give a name to log in with."}, status_code=400)
        session = secrets.token_urlsafe(24)
        sessions[session] = name
        response = Response(status_code=204)
        response.set_cookie("session", session, httponly=True, samesite="strict")
        return response

    async def credential(request: Request) -> JSONResponse:
        user = sessions.get(request.cookies.get("session", ""))
        if user is None:
            return JSONResponse({"error": "Log in first."}, status_code=401)
        # The user's own id: the proxy then keeps this user's cache entries and rate
        # limit apart from everyone else's.
        key = proxy.issue_credential(f"user:{user}", model=model, ttl_seconds=CREDENTIAL_TTL)
        return JSONResponse({"key": key, "model": model, "ttl_seconds": CREDENTIAL_TTL})

    site = Starlette(
        routes=[
            Route("/", page),
            Route("/login", login, methods=["POST"]),
            Route("/session/credential", credential, methods=["POST"]),
        ]
    )
    proxy = AutoProxyMiddleware(
        site,
        providers=[OpenAIProvider(base_url=base_url, api_key=api_key)],
        api_keys=client_keys_from_env(),  # servers may still use long-lived keys
        credentials_secret=credentials_secret,
        cors_origins=cors_origins,
    )
    return proxy


def _origins(raw: str) -> list[str] | None:
    return [origin.strip() for origin in raw.split(",") if origin.strip()] or None


if not os.environ.get("OPENAI_API_KEY"):
    raise RuntimeError(
        "Set OPENAI_API_KEY: the proxy spends its own key for the page, which never sees one."
    )
app = build_app(
    base_url=os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
    api_key=os.environ["OPENAI_API_KEY"],
    # No secret set: one per process, so credentials die with it (fine for a demo).
    credentials_secret=os.environ.get("ASGI_AUTOPROXY_CREDENTIALS_SECRET")
    or secrets.token_urlsafe(48),
    cors_origins=_origins(os.environ.get("AUTOPROXY_CORS_ORIGINS", "")),
)
