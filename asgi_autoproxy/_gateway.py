"""A whole gateway from one TOML file: ``asgi-autoproxy --config gateway.toml``.

The file names providers of every built-in kind, balancing and retries, caller keys,
the cache, limits, CORS, telemetry and logging. Keys are never written in it: each is
named by the environment variable that holds it (``api_key_env``). Every value is
checked here, and a bad one stops start-up with one line that names the key, the
value and what to write instead (``ConfigError``); a secret's value is never shown.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asgi_autoproxy._cache.backends.memory import MemoryCache
from asgi_autoproxy._cache.backends.redis import RedisCache
from asgi_autoproxy._gate.limits import RateLimit
from asgi_autoproxy._upstream.dispatch import Cooldown, RetryPolicy
from asgi_autoproxy.config import CacheOptions, Limits
from asgi_autoproxy.providers import AnthropicProvider, AzureOpenAIProvider, OpenAIProvider
from asgi_autoproxy.providers.base import Provider

KINDS = ("openai", "azure", "anthropic")
LOG_FORMATS = ("text", "json")
SECTIONS = ("server", "logging", "providers", "routing", "auth", "cache", "limits", "cors",
            "telemetry")  # fmt: skip


class ConfigError(ValueError):
    """One line: where (file and key), the value, and the fix."""

    def __init__(self, key: str, value: object, fix: str, *, secret: bool = False) -> None:
        shown = "(not shown)" if secret else _show(value)
        super().__init__(f"{key} = {shown}: {fix}")
        self.key = key


@dataclass(slots=True)
class Gateway:
    """What the file says, ready for ``AutoProxyMiddleware`` and the server."""

    keywords: dict[str, Any]
    """Keywords for ``AutoProxyMiddleware`` (all but the app, path and shutdown grace)."""
    server: dict[str, Any] = field(default_factory=dict)
    """host, port, path, shutdown_grace, request_read_timeout, loop (only those set)."""
    logging: dict[str, str] = field(default_factory=dict)
    """level and format (only those set)."""
    summary: str = ""


def load_gateway(path: str | Path, environ: Mapping[str, str]) -> Gateway:
    """Reads and checks ``path``; raises ``ConfigError`` (naming the file) when it is bad."""
    name = str(path)
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise _file_error(name, "no such file; give the path of a TOML file") from None
    except tomllib.TOMLDecodeError as error:
        raise _file_error(name, f"not valid TOML: {error}") from None
    except OSError as error:
        raise _file_error(name, f"cannot be read ({error.strerror})") from None
    try:
        return _Reader(environ, Path(path).parent).gateway(data)
    except ConfigError as error:
        raise _file_error(name, str(error), key=error.key) from None


def _file_error(name: str, text: str, *, key: str = "") -> ConfigError:
    """A ``ConfigError`` whose line starts with the file's name."""
    error = ConfigError.__new__(ConfigError)
    ValueError.__init__(error, f"{name}: {text}")
    error.key = key
    return error


def _show(value: object) -> str:
    if isinstance(value, str):
        return repr(value) if len(value) <= 80 else repr(value[:77] + "...")
    if isinstance(value, (dict, list)):
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."
    return repr(value)


class _Table:
    """One TOML table being read: each key taken once, the rest refused as unknown."""

    def __init__(self, where: str, data: object) -> None:
        if not isinstance(data, dict):
            raise ConfigError(where, data, "must be a table, e.g. [" + where + "]")
        self.where = where
        self.data: dict[str, Any] = data
        self.read: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.read.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if (
            float in kinds
            and int not in kinds
            and isinstance(value, int)
            and not isinstance(value, bool)
        ):
            value, ok = float(value), True
        if not ok:
            wanted = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
            raise ConfigError(self.key(name), value, f"must be {wanted}")
        return value

    def strings(self, name: str, default: list[str] | None = None) -> list[str] | None:
        value = self.get(name, list, default)
        if value is not None and not all(isinstance(v, str) and v for v in value):
            raise ConfigError(self.key(name), value, 'must be a list of strings, e.g. ["a", "b"]')
        return None if value is None else list(value)

    def string_map(self, name: str) -> dict[str, str] | None:
        value = self.get(name, dict)
        if value is not None and not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(self.key(name), value, 'must map names to strings, e.g. {a = "b"}')
        return None if value is None else dict(value)

    def choice(self, name: str, choices: tuple[str, ...], default: str | None = None) -> Any:
        value = self.get(name, str, default)
        if value is not None and value not in choices:
            raise ConfigError(self.key(name), value, f"must be one of {', '.join(choices)}")
        return value

    def table(self, name: str) -> _Table | None:
        self.read.add(name)
        if name not in self.data:
            return None
        return _Table(self.key(name), self.data[name])

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.read)
        if unknown:
            known = ", ".join(sorted(self.read))
            raise ConfigError(
                self.key(unknown[0]),
                self.data[unknown[0]],
                f"unknown key; check its spelling (known here: {known})",
            )


_TYPE_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false",
               list: "a list", dict: "a table"}  # fmt: skip


class _Reader:
    def __init__(self, environ: Mapping[str, str], base: Path) -> None:
        self.env = environ
        self.base = base

    def gateway(self, data: dict[str, Any]) -> Gateway:
        root = _Table("", data)
        for section in data:
            if section not in SECTIONS:
                raise ConfigError(
                    section, data[section], f"unknown section; use one of {', '.join(SECTIONS)}"
                )
        keywords: dict[str, Any] = {}
        gateway = Gateway(keywords)
        if (server := root.table("server")) is not None:
            gateway.server = self.server(server)
        if (logs := root.table("logging")) is not None:
            gateway.logging = self.logging(logs)
        providers, weights = self.providers(root)
        keywords["providers"] = providers
        if weights:
            keywords["weights"] = weights
        if (routing := root.table("routing")) is not None:
            self.routing(routing, keywords)
        if (auth := root.table("auth")) is not None:
            self.auth(auth, keywords)
        cache_name = self.cache(root.table("cache"), keywords)
        if (limits := root.table("limits")) is not None:
            self.limits(limits, keywords)
        if (cors := root.table("cors")) is not None:
            if origins := cors.strings("origins", []):
                keywords["cors_origins"] = origins
            if (credentials := cors.get("allow_credentials", bool)) is not None:
                keywords["cors_allow_credentials"] = credentials
            cors.done()
        if (telemetry := root.table("telemetry")) is not None:
            self.telemetry(telemetry, keywords)
        root.done()
        names = ", ".join(
            f"{p.name} ({kind})" for p, kind in zip(providers, self.kinds, strict=True)
        )
        gateway.summary = f"providers: {names}; cache: {cache_name}"
        return gateway

    # -- sections -----------------------------------------------------------------------

    def server(self, table: _Table) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name, kind in (("host", str), ("path", str), ("loop", str)):
            if (value := table.get(name, kind)) is not None:
                found[name] = value
        if (port := table.get("port", int)) is not None:
            if not 0 <= port <= 65535:
                raise ConfigError(table.key("port"), port, "must be between 0 and 65535")
            found["port"] = port
        for name in ("shutdown_grace", "request_read_timeout"):
            if (seconds := table.get(name, float)) is not None:
                if not (seconds >= 0 and math.isfinite(seconds)):
                    raise ConfigError(table.key(name), seconds, "must be zero or more seconds")
                found[name] = seconds
        table.done()
        return found

    def logging(self, table: _Table) -> dict[str, str]:
        found = {}
        if (level := table.get("level", str)) is not None:
            found["level"] = level.lower()
        if (fmt := table.choice("format", LOG_FORMATS)) is not None:
            found["format"] = fmt
        table.done()
        return found

    def providers(self, root: _Table) -> tuple[list[Provider], dict[str, float]]:
        root.read.add("providers")
        entries = root.data.get("providers")
        if not isinstance(entries, list) or not entries:
            raise ConfigError(
                "providers",
                entries,
                'add at least one [[providers]] table, e.g. kind = "openai"',
            )
        providers: list[Provider] = []
        weights: dict[str, float] = {}
        self.kinds: list[str] = []
        for index, entry in enumerate(entries):
            table = _Table(f"providers[{index}]", entry)
            provider = self.provider(table)
            if (weight := table.get("weight", float)) is not None:
                if not (weight >= 0 and math.isfinite(weight)):
                    raise ConfigError(table.key("weight"), weight, "must be a number >= 0")
                weights[provider.name] = weight
            table.done()
            providers.append(provider)
        return providers, weights

    def provider(self, table: _Table) -> Provider:
        kind = table.choice("kind", KINDS)
        if kind is None:
            raise ConfigError(table.key("kind"), None, f"say which kind: {', '.join(KINDS)}")
        self.kinds.append(kind)
        common: dict[str, Any] = {"name": table.get("name", str)}
        if (models := table.strings("models")) is not None:
            common["models"] = models
        if (headers := table.string_map("headers")) is not None:
            common["headers"] = headers
        if (endpoints := table.strings("endpoints")) is not None:
            for endpoint in endpoints:
                if endpoint not in ("chat", "completion"):
                    raise ConfigError(
                        table.key("endpoints"), endpoints, 'use "chat" and/or "completion"'
                    )
            common["endpoints"] = endpoints
        key = self.secret(table, "api_key_env", required=kind == "anthropic")
        where = table.key("kind")
        try:
            if kind == "openai":
                if (url := table.get("base_url", str)) is not None:
                    common["base_url"] = url
                return OpenAIProvider(api_key=key, **common)
            if kind == "azure":
                endpoint = table.get("endpoint", str)
                if endpoint is None:
                    raise ConfigError(
                        table.key("endpoint"), None, "set it, e.g. https://NAME.openai.azure.com"
                    )
                extra: dict[str, Any] = {}
                if (version := table.get("api_version", str)) is not None:
                    extra["api_version"] = version
                if (deployments := table.string_map("deployments")) is not None:
                    extra["deployments"] = deployments
                return AzureOpenAIProvider(endpoint=endpoint, api_key=key, **common, **extra)
            common.pop("endpoints", None)
            if (url := table.get("base_url", str)) is not None:
                common["base_url"] = url
            if (max_tokens := table.get("default_max_tokens", int)) is not None:
                common["default_max_tokens"] = max_tokens
            return AnthropicProvider(api_key=key, **common)
        except (ValueError, TypeError) as error:
            if isinstance(error, ConfigError):
                raise
            raise ConfigError(where, kind, str(error)) from None

    def secret(self, table: _Table, name: str, *, required: bool = False) -> str | None:
        """The value of the environment variable named at ``name`` (never the value itself)."""
        variable = table.get(name, str)
        if variable is None:
            if required:
                raise ConfigError(
                    table.key(name), None, "name the environment variable that holds the key"
                )
            return None
        value = self.env.get(variable)
        if not value:
            raise ConfigError(
                table.key(name),
                variable,
                f"the environment variable {variable} is not set; export it "
                "(the key itself never goes in the file)",
            )
        return value

    def routing(self, table: _Table, keywords: dict[str, Any]) -> None:
        balancing = table.choice("load_balancing", ("ordered", "round_robin", "weighted"))
        if balancing is not None:
            keywords["load_balancing"] = balancing
        if (catalog := table.string_map("catalog")) is not None:
            keywords["model_catalog"] = catalog
        if (retry := table.table("retry")) is not None:
            keywords["retry"] = self.fields(retry, RetryPolicy)
        if (cooldown := table.table("cooldown")) is not None:
            if cooldown.get("enabled", bool, True) is False:
                cooldown.data = {k: v for k, v in cooldown.data.items() if k == "enabled"}
                keywords["cooldown"] = None
            else:
                keywords["cooldown"] = self.fields(cooldown, Cooldown, skip=("clock",))
        table.done()

    def auth(self, table: _Table, keywords: dict[str, Any]) -> None:
        keys: dict[str, str] = {}
        if (path := table.get("client_keys_file", str)) is not None:
            keys.update(self.keys_file(table.key("client_keys_file"), path))
        if (variable := table.get("client_keys_env", str)) is not None:
            raw = self.env.get(variable)
            if not raw:
                raise ConfigError(
                    table.key("client_keys_env"),
                    variable,
                    f"the environment variable {variable} is not set; export it as id=key,id2=key2",
                )
            for number, entry in enumerate(raw.split(","), 1):
                if entry.strip():
                    keys.update(
                        [_key_entry(table.key("client_keys_env"), f"entry {number}", entry)]
                    )
        if keys:
            keywords["api_keys"] = keys
        if (anonymous := table.get("allow_anonymous", bool)) is not None:
            keywords["allow_anonymous"] = anonymous
        table.done()

    def keys_file(self, key: str, path: str) -> dict[str, str]:
        full = self.base / path
        try:
            lines = full.read_text().splitlines()
        except OSError as error:
            raise ConfigError(key, path, f"cannot be read ({error.strerror})") from None
        keys = {}
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if line and not line.startswith("#"):
                entry_key, caller = _key_entry(key, f"line {number}", line)
                keys[entry_key] = caller
        if not keys:
            raise ConfigError(key, path, "the file holds no keys; write one id=key per line")
        return keys

    def cache(self, table: _Table | None, keywords: dict[str, Any]) -> str:
        if table is None:
            return "memory"
        backend = table.choice("backend", ("memory", "redis", "none"), "memory")
        if (ttl := table.get("ttl", int)) is not None:
            keywords["cache_ttl"] = ttl
        options: dict[str, Any] = {}
        if (shared := table.get("share_across_callers", bool)) is not None:
            options["share_across_callers"] = shared
        if (timeout := table.get("timeout", float)) is not None:
            options["timeout"] = timeout
        if options:
            keywords["cache_options"] = CacheOptions(**options)
        url = table.get("redis_url", str)
        url_env = table.get("redis_url_env", str)
        max_entries = table.get("max_entries", int)
        table.done()
        if backend == "none":
            keywords["cache"] = None
            return "off"
        if backend == "memory":
            if max_entries is not None:
                keywords["cache"] = MemoryCache(max_entries=max_entries)
            return "memory"
        if url_env is not None:
            url = self.env.get(url_env)
            if not url:
                raise ConfigError(
                    table.key("redis_url_env"),
                    url_env,
                    f"the environment variable {url_env} is not set",
                )
        if url is None:
            raise ConfigError(
                table.key("redis_url"),
                None,
                'set redis_url = "redis://host:6379/0" or redis_url_env',
            )
        try:
            keywords["cache"] = RedisCache(url)
        except (ValueError, ImportError) as error:
            raise ConfigError(table.key("redis_url"), "(not shown)", str(error)) from None
        return "redis"

    def limits(self, table: _Table, keywords: dict[str, Any]) -> None:
        if "request_read_timeout" in table.data:
            raise ConfigError(
                table.key("request_read_timeout"),
                table.data["request_read_timeout"],
                "set it under [server]: it times the request's headers too",
            )
        if (rate := table.table("rate_limit")) is not None:
            keywords["rate_limit"] = self.fields(rate, RateLimit, skip=("clock",))
        keywords["limits"] = self.fields(table, Limits, skip=("request_read_timeout",))

    def telemetry(self, table: _Table, keywords: dict[str, Any]) -> None:
        for name in ("opentelemetry", "capture_content"):
            if (flag := table.get(name, bool)) is not None:
                keywords[name] = flag
        if (path := table.get("metrics_path", str)) is not None:
            keywords["metrics_path"] = path
        if (token := self.secret(table, "metrics_token_env")) is not None:
            keywords["metrics_token"] = token
        table.done()

    def fields(self, table: _Table, cls: Callable[..., Any], skip: tuple[str, ...] = ()) -> Any:
        """``cls(**table)`` for a dataclass of numbers, each field checked by name."""
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):  # type: ignore[arg-type]
            if item.name in skip:
                continue
            kind = str(item.type)
            whole = "int" in kind and "float" not in kind
            optional = "None" in kind  # false turns it off
            kinds: tuple[type, ...] = (int,) if whole else (int, float)
            value = table.get(item.name, (*kinds, bool) if optional else kinds)
            if value is True:
                raise ConfigError(table.key(item.name), value, "write a number, or false for off")
            if value is not None:
                values[item.name] = None if value is False else value
        table.done()
        try:
            return cls(**values)
        except (ValueError, TypeError) as error:
            raise ConfigError(table.where, values, str(error)) from None


def _key_entry(key: str, place: str, entry: str) -> tuple[str, str]:
    """``id=key`` -> (key, id). The key is never shown in an error."""
    caller, sep, secret = entry.strip().partition("=")
    caller, secret = caller.strip(), secret.strip()
    if not sep or not caller or not secret:
        raise ConfigError(f"{key} ({place})", entry, "write each caller as id=key", secret=True)
    return secret, caller
