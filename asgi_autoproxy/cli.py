"""``asgi-autoproxy``: serve the proxy on its own, with uvicorn.

Every flag has an environment variable, so a container needs no command line. The
upstream key is read from ``OPENAI_API_KEY`` only: a flag would show it in ``ps``.
``--config gateway.toml`` runs a whole gateway from one file (``_gateway.py``); flags
and their variables still win over the file. ``asgi-autoproxy check-config FILE``
checks a file without serving.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import dataclasses
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from asgi_autoproxy import __version__
from asgi_autoproxy._asgi import (
    JSON_CONTENT_TYPE,
    ASGIApp,
    Receive,
    Scope,
    Send,
    send_response,
    serve_lifespan,
)
from asgi_autoproxy._cache.backends.redis import RedisCache
from asgi_autoproxy._gate.auth import parse_client_keys as client_keys
from asgi_autoproxy._gateway import ConfigError, Gateway, load_gateway
from asgi_autoproxy._heap import freeze_startup_heap
from asgi_autoproxy.config import Limits
from asgi_autoproxy.errors import ProxyError
from asgi_autoproxy.middleware import DEFAULT_SHUTDOWN_GRACE, AutoProxyMiddleware
from asgi_autoproxy.providers import OpenAIProvider
from asgi_autoproxy.providers.base import shown_url

if TYPE_CHECKING:
    import socket

    import uvicorn

logger = logging.getLogger("asgi_autoproxy")

LOOPS = ("asyncio", "uvloop", "auto")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
HEALTH_PATH = "/healthz"
REDIS_URL_VARIABLE = "ASGI_AUTOPROXY_REDIS_URL"
READY_PATH = "/readyz"
LOG_FORMATS = ("text", "json")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})

_EPILOG = """\
environment:
  OPENAI_API_KEY   server-side upstream key; callers' keys then never leave the proxy.
                   Unset (or --pass-through): each caller's own bearer key goes upstream.
                   There is deliberately no flag for it: flags show up in `ps`.
  every flag also reads the variable named in its help; a flag wins over its variable.

GET /healthz answers 200 while the process lives (liveness); GET /readyz answers 503
while starting or draining, else 200 (readiness); other paths outside the proxy get 404.

asgi-autoproxy check-config gateway.toml   checks a --config file without serving.
"""


class Readiness:
    """Whether the command's server should get traffic: not while starting or draining.
    Redis being down does not count: the proxy serves without its cache."""

    __slots__ = ("draining", "started")

    def __init__(self) -> None:
        self.started = False
        self.draining = False

    @property
    def state(self) -> str:
        if self.draining:
            return "draining"
        return "ready" if self.started else "starting"


def standalone_app(
    proxy_path: str, *, gc_freeze: bool = False, readiness: Readiness | None = None
) -> ASGIApp:
    """The app behind the middleware when it runs alone: health and readiness, else 404.

    With ``gc_freeze``, start-up ends with ``freeze_startup_heap`` (see _heap.py)."""
    ready = Readiness() if readiness is None else readiness

    def on_startup() -> None:
        loop_type = type(asyncio.get_running_loop())
        logger.info("event loop: %s.%s", loop_type.__module__, loop_type.__qualname__)
        if gc_freeze:
            freeze_startup_heap()
        ready.started = True

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send, on_startup)
            return
        if scope["type"] != "http":
            return  # uvicorn refuses a websocket the app never accepts
        if scope["path"] == HEALTH_PATH and scope["method"] in ("GET", "HEAD"):
            await send_response(send, 200, b'{"status":"ok"}', [JSON_CONTENT_TYPE])
            return
        if scope["path"] == READY_PATH and scope["method"] in ("GET", "HEAD"):
            state = ready.state
            body = b'{"status":"%s"}' % state.encode()
            await send_response(send, 200 if state == "ready" else 503, body, [JSON_CONTENT_TYPE])
            return
        error = ProxyError(
            404, f"No route for {scope['path']}; POST to {proxy_path}.", code="not_found"
        )
        await send_response(send, 404, error.to_body(), [JSON_CONTENT_TYPE])

    return app


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, got {port}")
    return port


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not 0 <= seconds < math.inf:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be zero or more seconds, got {value!r}")
    return seconds


def _choice(choices: Sequence[str]) -> dict[str, Any]:
    """``type=`` and ``metavar=`` for a flag with fixed choices. The type checks the
    choice itself, since argparse skips ``choices`` for a default read from the
    environment."""

    def parse(value: str) -> str:
        if value.lower() not in choices:
            raise argparse.ArgumentTypeError(
                f"invalid choice: {value!r} (choose from {', '.join(choices)})"
            )
        return value.lower()

    return {"type": parse, "metavar": "{" + ",".join(choices) + "}"}


def _workers(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of workers: {value!r}") from None
    if not 1 <= count <= 256:
        raise argparse.ArgumentTypeError(f"workers must be between 1 and 256, got {count}")
    return count


def _env_flag(environ: Mapping[str, str], name: str) -> bool:
    value = environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    print(f"asgi-autoproxy: error: {name}={value!r}; use 1/true/yes or 0/false/no", file=sys.stderr)
    raise SystemExit(2)


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The command line; defaults come from ``environ`` (``os.environ`` by default)."""
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="asgi-autoproxy",
        description="Serve an OpenAI-compatible POST /v1/proxy/auto endpoint, plus\n"
        "/chat/completions, /completions and /models beside it, with uvicorn.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # String defaults go through `type`, so a bad environment value gets a clean error.
    parser.add_argument(
        "--host",
        default=env.get("AUTOPROXY_HOST", "127.0.0.1"),
        help="interface to listen on (env AUTOPROXY_HOST; default %(default)s)",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=env.get("AUTOPROXY_PORT", "8000"),
        help="port to listen on (env AUTOPROXY_PORT; default %(default)s)",
    )
    parser.add_argument(
        "--openai-base-url",
        default=env.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
        metavar="URL",
        help="upstream OpenAI-compatible base URL, e.g. http://localhost:11434/v1 "
        "(env OPENAI_BASE_URL; default %(default)s)",
    )
    parser.add_argument(
        "--pass-through",
        action=argparse.BooleanOptionalAction,
        default=_env_flag(env, "AUTOPROXY_PASS_THROUGH"),
        help="forward each caller's own bearer key even when OPENAI_API_KEY is set "
        "(env AUTOPROXY_PASS_THROUGH=1). Without OPENAI_API_KEY this is always the case.",
    )
    parser.add_argument(
        "--allow-anonymous",
        action=argparse.BooleanOptionalAction,
        default=_env_flag(env, "AUTOPROXY_ALLOW_ANONYMOUS"),
        help="with a server-side OPENAI_API_KEY, serve callers without checking any key "
        "(only for a proxy nobody else can reach); otherwise set AUTOPROXY_CLIENT_KEYS "
        "(env AUTOPROXY_ALLOW_ANONYMOUS=1)",
    )
    parser.add_argument(
        "--path",
        default=env.get("AUTOPROXY_PATH", "/v1/proxy/auto"),
        help="path of the /auto endpoint; its siblings sit beside it "
        "(env AUTOPROXY_PATH; default %(default)s)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=_seconds,
        default=env.get("AUTOPROXY_SHUTDOWN_GRACE", f"{DEFAULT_SHUTDOWN_GRACE:g}"),
        metavar="SECONDS",
        help="on SIGTERM or Ctrl+C, requests in flight get this long to finish; the rest "
        "then get a 503 or a final SSE error event, and the process exits "
        "(env AUTOPROXY_SHUTDOWN_GRACE; default %(default)s)",
    )
    parser.add_argument(
        "--request-read-timeout",
        type=_seconds,
        default=env.get("AUTOPROXY_REQUEST_READ_TIMEOUT", "30"),
        metavar="SECONDS",
        help="a request's line and headers, and then its body, must each arrive within this "
        "long, else it gets a 408 (env AUTOPROXY_REQUEST_READ_TIMEOUT; default %(default)s)",
    )
    parser.add_argument(
        "--gc-freeze",
        action=argparse.BooleanOptionalAction,
        default=not _env_flag(env, "AUTOPROXY_NO_GC_FREEZE"),
        help="once started, exempt start-up's objects from garbage collection, which "
        "cuts the pauses that set the p99 under load (default on; "
        "env AUTOPROXY_NO_GC_FREEZE=1 turns it off)",
    )
    parser.add_argument(
        "--loop",
        **_choice(LOOPS),
        default=env.get("AUTOPROXY_LOOP", "asyncio"),
        help="event loop (env AUTOPROXY_LOOP; default %(default)s). uvloop admits one new "
        "connection per loop turn, so under load a burst of new connections waits up to "
        "hundreds of ms; asyncio admits them at once, at the same CPU cost per request. "
        "auto: uvloop when installed, as plain uvicorn does",
    )
    parser.add_argument(
        "--log-level",
        **_choice(LOG_LEVELS),
        default=env.get("AUTOPROXY_LOG_LEVEL", "info"),
        help="log level for uvicorn and the proxy (env AUTOPROXY_LOG_LEVEL; default %(default)s)",
    )
    parser.add_argument(
        "--log-format",
        **_choice(LOG_FORMATS),
        default=env.get("AUTOPROXY_LOG_FORMAT", "text"),
        help="text, or json: one JSON object per line, and per request one line with its id, "
        "caller, route, model, provider, status, cache status, duration and tokens "
        "(env AUTOPROXY_LOG_FORMAT; default %(default)s)",
    )
    parser.add_argument(
        "--config",
        default=env.get("AUTOPROXY_CONFIG") or None,
        metavar="FILE",
        help="run a whole gateway from this TOML file: providers, keys, cache, limits, CORS, "
        "telemetry (see the README); flags and their variables win over it "
        "(env AUTOPROXY_CONFIG)",
    )
    parser.add_argument(
        "--redis-url",
        default=env.get(REDIS_URL_VARIABLE) or None,
        metavar="URL",
        help="share the cache and all shared state (rate limits, provider health) through "
        "this Redis, Redis Cluster (redis+cluster://), Sentinel (redis+sentinel://) or "
        f"Valkey (valkey://) (env {REDIS_URL_VARIABLE}; default: per process)",
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        default=env.get("AUTOPROXY_WORKERS", "1"),
        metavar="N",
        help="serve with N processes on one socket; with --redis-url they share the cache "
        "and state (env AUTOPROXY_WORKERS; default %(default)s)",
    )
    parser.add_argument("--fd", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def build_app(
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    *,
    readiness: Readiness | None = None,
) -> AutoProxyMiddleware:
    """The proxy around ``standalone_app``. Raises ``ValueError`` for a bad URL or path."""
    env = os.environ if environ is None else environ
    api_key = None if _pass_through(args, env) else env["OPENAI_API_KEY"]
    provider = OpenAIProvider(base_url=args.openai_base_url, api_key=api_key, name="openai")
    # The cache in Redis; rate limits and provider health follow it (shared_state).
    shared: dict[str, Any] = {}
    if args.redis_url is not None:
        shared["cache"] = RedisCache(args.redis_url)
    return AutoProxyMiddleware(
        standalone_app(args.path, gc_freeze=bool(args.gc_freeze), readiness=readiness),
        providers=[provider],
        path=args.path,
        api_keys=client_keys(env.get("AUTOPROXY_CLIENT_KEYS")),
        allow_anonymous=bool(args.allow_anonymous),
        shutdown_grace=float(args.shutdown_grace),
        limits=Limits(request_read_timeout=float(args.request_read_timeout)),
        **shared,
    )


# uvicorn's own --timeout-graceful-shutdown is the grace plus this: a backstop that
# cancels what is left only after the middleware's cut has had time to answer.
SHUTDOWN_MARGIN = 2.0


def make_server(
    config: uvicorn.Config, proxy: AutoProxyMiddleware, readiness: Readiness | None = None
) -> uvicorn.Server:
    """A uvicorn server that starts the proxy's ``drain()`` as soon as shutdown begins.

    uvicorn waits for open connections before it sends the lifespan shutdown, so a
    stream that never ends (keep-alive comments), or a body that trickles in, would hold
    it until its own timeout cancels the request with a bare 500. Draining beside that
    wait cuts such requests after ``shutdown_grace`` with the proxy's own answer; their
    connections then close and uvicorn carries on."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            if readiness is not None:
                readiness.draining = True
            drain = asyncio.ensure_future(proxy.drain())
            await super().shutdown(sockets)
            # Done by now, unless a forced exit (a second Ctrl+C) skipped the lifespan
            # shutdown, whose aclose() waits for it.
            drain.cancel()
            await asyncio.wait([drain])

    return Server(config)


def _pass_through(args: argparse.Namespace, environ: Mapping[str, str]) -> bool:
    return bool(args.pass_through) or not environ.get("OPENAI_API_KEY")


def log_config(level: str, log_format: str = "text") -> dict[str, Any]:
    """uvicorn's logging setup, with the proxy's logger printed the same way; with
    ``json``, every line (uvicorn's own too) is one JSON object (_logs.py)."""
    from uvicorn.config import LOG_LEVELS as UVICORN_LEVELS
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["asgi_autoproxy"] = {
        "handlers": ["default"],
        "level": UVICORN_LEVELS[level],
        "propagate": False,
    }
    if log_format == "json":
        for formatter in config["formatters"].values():
            formatter.clear()
            formatter["()"] = "asgi_autoproxy._logs.JsonFormatter"
    return config


# Settings a --config file may hold, with the variable that, like the flag, wins over it.
OVERRIDES = {
    "host": "AUTOPROXY_HOST",
    "port": "AUTOPROXY_PORT",
    "path": "AUTOPROXY_PATH",
    "shutdown_grace": "AUTOPROXY_SHUTDOWN_GRACE",
    "request_read_timeout": "AUTOPROXY_REQUEST_READ_TIMEOUT",
    "loop": "AUTOPROXY_LOOP",
    "log_level": "AUTOPROXY_LOG_LEVEL",
    "log_format": "AUTOPROXY_LOG_FORMAT",
    "allow_anonymous": "AUTOPROXY_ALLOW_ANONYMOUS",
}
# Flags for the single upstream of the plain command; a --config file names its own.
_SINGLE_UPSTREAM = ("openai_base_url", "pass_through")


def given_settings(
    parser: argparse.ArgumentParser, argv: Sequence[str], environ: Mapping[str, str]
) -> set[str]:
    """The settings the command line or the environment set: those win over the file."""
    unset = object()
    # argparse fills in a default only where the namespace lacks the attribute.
    probe = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != "help"})
    parser.parse_args(argv, namespace=probe)
    given = {dest for dest, value in vars(probe).items() if value is not unset}
    return given | {dest for dest, variable in OVERRIDES.items() if variable in environ}


def apply_file_settings(args: argparse.Namespace, gateway: Gateway, given: set[str]) -> None:
    """The file's server and logging settings, where no flag or variable set them."""
    for dest in _SINGLE_UPSTREAM:
        if dest in given:
            flag = "--" + dest.replace("_", "-")
            raise ConfigError(
                flag, getattr(args, dest), "not used with --config; set it on a [[providers]]"
            )
    from_file = dict(gateway.server)
    from_file.update({f"log_{name}": value for name, value in gateway.logging.items()})
    for dest, value in from_file.items():
        if dest in given:
            continue
        if dest == "loop" and value not in LOOPS:
            raise ConfigError("server.loop", value, f"must be one of {', '.join(LOOPS)}")
        if dest == "log_level" and value not in LOG_LEVELS:
            raise ConfigError("logging.level", value, f"must be one of {', '.join(LOG_LEVELS)}")
        setattr(args, dest, value)


def build_gateway_app(
    args: argparse.Namespace,
    gateway: Gateway,
    given: set[str],
    *,
    readiness: Readiness | None = None,
) -> AutoProxyMiddleware:
    """The proxy the file describes, around ``standalone_app``."""
    keywords = dict(gateway.keywords)
    if args.redis_url is not None:  # --redis-url wins over the file's [cache]
        keywords["cache"] = RedisCache(args.redis_url)
    if "allow_anonymous" in given:
        keywords["allow_anonymous"] = bool(args.allow_anonymous)
    limits = keywords.pop("limits", None) or Limits()
    limits = dataclasses.replace(limits, request_read_timeout=float(args.request_read_timeout))
    proxy = AutoProxyMiddleware(
        standalone_app(args.path, gc_freeze=bool(args.gc_freeze), readiness=readiness),
        path=args.path,
        shutdown_grace=float(args.shutdown_grace),
        limits=limits,
        **keywords,
    )
    return proxy


def check_config(argv: Sequence[str]) -> int:
    """``asgi-autoproxy check-config FILE``: the checks start-up makes, without serving."""
    parser = argparse.ArgumentParser(
        prog="asgi-autoproxy check-config",
        description="Check a gateway file (and the variables it names) without serving.",
    )
    parser.add_argument("file", metavar="FILE", help="the TOML file to check")
    args = parser.parse_args(argv)
    command = build_parser()
    options = command.parse_args(["--config", args.file])
    try:
        gateway = load_gateway(args.file, os.environ)
        given = given_settings(command, [], os.environ)
        apply_file_settings(options, gateway, given)
        build_gateway_app(options, gateway, given)
    except (ValueError, TypeError) as error:
        print(f"asgi-autoproxy: error: {_in_file(args.file, error)}", file=sys.stderr)
        return 2
    print(f"{args.file}: OK: POST {options.path}; {gateway.summary}")
    return 0


def _in_file(path: str, error: Exception) -> str:
    text = str(error)
    return text if text.startswith(path) or text.startswith("--") else f"{path}: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["check-config"]:
        return check_config(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        parser.exit(2, "asgi-autoproxy needs uvicorn: pip install 'asgi_autoproxy[server]'\n")
    if args.workers > 1 and args.fd is None:
        if args.redis_url is None:
            print(
                f"{parser.prog}: {args.workers} workers without --redis-url: each keeps its "
                "own cache and limits",
                file=sys.stderr,
            )
        from asgi_autoproxy._workers import run_workers

        return run_workers(args.workers, argv, args.host, args.port)
    readiness = Readiness()
    gateway: Gateway | None = None
    try:
        if args.config is not None:
            gateway = load_gateway(args.config, os.environ)
            given = given_settings(parser, argv, os.environ)
            apply_file_settings(args, gateway, given)
            app = build_gateway_app(args, gateway, given, readiness=readiness)
        else:
            app = build_app(args, readiness=readiness)
    except ConfigError as error:
        print(f"{parser.prog}: error: {_in_file(args.config, error)}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as error:
        if gateway is not None:
            print(f"{parser.prog}: error: {_in_file(args.config, error)}", file=sys.stderr)
            return 2
        advice = ""
        if not _pass_through(args, os.environ):
            advice = (
                "\nWith OPENAI_API_KEY set, list the keys callers may use in "
                "AUTOPROXY_CLIENT_KEYS (comma-separated), or pass --allow-anonymous."
            )
        print(f"{parser.prog}: error: {error}{advice}", file=sys.stderr)
        return 2
    from asgi_autoproxy._server import guarded_http_protocol

    config = uvicorn.Config(
        app,
        http=guarded_http_protocol(header_timeout=args.request_read_timeout),
        host=args.host,
        port=args.port,
        fd=args.fd,  # a worker of --workers: the parent's socket
        loop=args.loop,
        log_level=args.log_level,
        log_config=log_config(args.log_level, args.log_format),
        timeout_graceful_shutdown=math.ceil(args.shutdown_grace + SHUTDOWN_MARGIN),
    )  # configures logging, so the line below is printed like uvicorn's own
    if gateway is not None:
        logger.info("proxying POST %s from %s; %s", args.path, args.config, gateway.summary)
    else:
        keys = "callers' own keys" if _pass_through(args, os.environ) else "OPENAI_API_KEY"
        shown = shown_url(args.openai_base_url)  # no user:pass@ nor query in the log
        logger.info("proxying POST %s to %s using %s", args.path, shown, keys)
    server = make_server(config, app, readiness)
    server.run()
    return 0 if server.started else 3  # 3: uvicorn's code for a failed start-up
