"""``asgi-autoproxy``: serve the proxy on its own, with uvicorn."""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Sequence

from .asgi import JSON_CONTENT_TYPE, Receive, Scope, Send, send_response
from .errors import ProxyError
from .middleware import AutoProxyMiddleware
from .providers import OpenAIProvider


async def not_found_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The app behind the middleware when it runs alone: everything else is a 404."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    error = ProxyError(404, f"No route for {scope['path']}; POST to /v1/proxy/auto.")
    await send_response(send, 404, error.to_body(), [JSON_CONTENT_TYPE])


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="asgi-autoproxy",
        description="Serve an OpenAI-compatible /v1/proxy/auto endpoint.",
    )
    parser.add_argument("--host", default=env("AUTOPROXY_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("AUTOPROXY_PORT", "8000")))
    parser.add_argument(
        "--openai-base-url",
        default=env("OPENAI_BASE_URL", "https://api.openai.com/v1"),
        help="upstream OpenAI-compatible base URL (env OPENAI_BASE_URL)",
    )
    parser.add_argument(
        "--pass-through",
        action="store_true",
        default=env("AUTOPROXY_PASS_THROUGH", "") not in ("", "0", "false"),
        help="forward each caller's own bearer key instead of a server-side key "
        "(the default when OPENAI_API_KEY is unset)",
    )
    parser.add_argument(
        "--allow-anonymous",
        action="store_true",
        default=env("AUTOPROXY_ALLOW_ANONYMOUS", "") not in ("", "0", "false"),
        help="with a server-side OPENAI_API_KEY, serve callers without checking any key "
        "(only for a proxy nobody else can reach); otherwise set AUTOPROXY_CLIENT_KEYS",
    )
    parser.add_argument("--path", default=env("AUTOPROXY_PATH", "/v1/proxy/auto"))
    parser.add_argument("--log-level", default=env("AUTOPROXY_LOG_LEVEL", "info"))
    return parser


def client_keys(raw: str | None) -> dict[str, str] | None:
    """``AUTOPROXY_CLIENT_KEYS``: comma-separated keys callers may use. Each caller id is
    a short hash of its key, so ids stay stable when the list is reordered."""
    keys = [key.strip() for key in (raw or "").split(",") if key.strip()]
    if not keys:
        return None
    return {key: "client-" + hashlib.sha256(key.encode()).hexdigest()[:12] for key in keys}


def build_app(args: argparse.Namespace) -> AutoProxyMiddleware:
    # Keys come only from the environment: flags show up in `ps` output.
    api_key = None if args.pass_through else os.environ.get("OPENAI_API_KEY") or None
    provider = OpenAIProvider(base_url=args.openai_base_url, api_key=api_key, name="openai")
    return AutoProxyMiddleware(
        not_found_app,
        providers=[provider],
        path=args.path,
        api_keys=client_keys(os.environ.get("AUTOPROXY_CLIENT_KEYS")),
        allow_anonymous=args.allow_anonymous,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        print("asgi-autoproxy needs uvicorn: pip install 'asgi_autoproxy[server]'")
        return 2
    try:
        app = build_app(args)
    except ValueError as error:
        print(
            f"asgi-autoproxy: {error}\nWith OPENAI_API_KEY set, list the keys callers may use "
            "in AUTOPROXY_CLIENT_KEYS (comma-separated), or pass --allow-anonymous.",
            file=sys.stderr,
        )
        return 2
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
