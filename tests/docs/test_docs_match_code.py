"""Nothing in the docs contradicts the code: every keyword, command-line flag, header and
error code the README and the docs name exists in the code, and every keyword, flag and
error code of the code is documented."""

from __future__ import annotations

import importlib
import inspect
import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio
from starlette.applications import Starlette

import asgi_autoproxy
from asgi_autoproxy import (
    AnthropicProvider,
    AutoProxyMiddleware,
    CacheOptions,
    Limits,
    OpenAIProvider,
    RedisCache,
)
from asgi_autoproxy.cli import build_parser
from asgi_autoproxy.config import MOVED
from tests.processes import REPO_ROOT

DOCS = REPO_ROOT / "docs"
PACKAGE = REPO_ROOT / "asgi_autoproxy"
ERRORS_PAGE = DOCS / "reference" / "errors-and-headers.md"
DOC_FILES = [REPO_ROOT / "README.md", REPO_ROOT / "CONTRIBUTING.md", *sorted(DOCS.rglob("*.md"))]


def prose(path: Path) -> str:
    """A page without its code blocks: what the page states, not code it shows."""
    return re.sub(r"```.*?```", "", path.read_text(), flags=re.S)


def named(pattern: str, files: Iterable[Path] = DOC_FILES) -> dict[str, str]:
    """Each match of ``pattern``'s group in the docs' prose -> the first file naming it."""
    found: dict[str, str] = {}
    for path in files:
        for name in re.findall(pattern, prose(path)):
            found.setdefault(name, str(path.relative_to(REPO_ROOT)))
    return found


def keywords(callable_: Callable[..., Any]) -> set[str]:
    return {
        p.name
        for p in inspect.signature(callable_).parameters.values()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in ("self", "app")
    }


def package_source() -> str:
    return "\n".join(p.read_text() for p in sorted(PACKAGE.rglob("*.py")))


# -- keywords ---------------------------------------------------------------------------

# Other libraries' keywords the docs name, each with the callable that takes it.
FOREIGN_KEYWORDS: dict[str, Callable[..., Any]] = {
    "decode_responses": redis.asyncio.Redis.__init__,  # a RedisCache client of your own
    "stream": httpx.AsyncClient.send,  # how a provider opens its answer unread
    "extra": logging.Logger._log,  # the request log's record fields
    "middleware": Starlette.__init__,  # where a Starlette app lists the proxy
}


def public_keywords() -> set[str]:
    names: set[str] = set(MOVED)
    for name in asgi_autoproxy.__all__:
        obj = getattr(asgi_autoproxy, name)
        target = obj.__init__ if inspect.isclass(obj) else obj
        if callable(target):
            try:
                names |= keywords(target)
            except (TypeError, ValueError):  # builtins and protocols without a signature
                continue
    return names


def test_every_keyword_the_docs_name_exists() -> None:
    known = public_keywords()
    for keyword, callable_ in FOREIGN_KEYWORDS.items():
        assert keyword in keywords(callable_), keyword
    unknown = {
        k: where
        for k, where in named(r"`([a-z_][a-z0-9_]*)=").items()
        if k not in known and k not in FOREIGN_KEYWORDS
    }
    assert not unknown, f"keywords the docs name that no public callable takes: {unknown}"


def table_keywords(text: str, heading: str) -> set[str]:
    start = text.index(heading)
    end = text.find("\n#", start + len(heading))
    section = text[start : end if end >= 0 else None]
    return set(re.findall(r"^\| `([a-z_][a-z0-9_]*)` \|", section, re.M))


README = (REPO_ROOT / "README.md").read_text()


@pytest.mark.parametrize(
    ("text", "heading", "callable_"),
    [
        (README, "### `AutoProxyMiddleware(", AutoProxyMiddleware.__init__),
        (README, "### `OpenAIProvider(", OpenAIProvider.__init__),
        (README, "### `Limits(", Limits),
        (README, "### `CacheOptions(", CacheOptions),
        ((DOCS / "providers.md").read_text(), "## Anthropic (", AnthropicProvider.__init__),
        ((DOCS / "redis.md").read_text(), "## Use it", RedisCache.__init__),
    ],
    ids=["middleware", "openai", "limits", "cache-options", "anthropic", "redis"],
)
def test_keyword_tables_match_the_signatures(
    text: str, heading: str, callable_: Callable[..., Any]
) -> None:
    rows = table_keywords(text, heading)
    code = keywords(callable_)
    assert rows == code, f"undocumented: {code - rows}; not in the code: {rows - code}"


# -- command-line flags -----------------------------------------------------------------


def cli_flags() -> set[str]:
    return {
        option
        for action in build_parser({})._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


def other_commands_flags() -> set[str]:
    """uvicorn's own options, and the flags of the scripts in bench/."""
    uvicorn_main = importlib.import_module("uvicorn.main")
    flags = {opt for param in uvicorn_main.main.params for opt in param.opts}
    for script in (REPO_ROOT / "bench").glob("*.py"):
        flags |= set(re.findall(r'"(--[a-z][a-z0-9-]*)"', script.read_text()))
    return flags


# A flag on its own, or in a command line of this project's command, uvicorn or bench/.
_COMMAND = re.compile(
    r"`((?:--|asgi-autoproxy |python -m asgi_autoproxy |uvicorn |python bench/)[^`]*)`"
)


def test_every_flag_the_docs_name_exists() -> None:
    known = cli_flags() | other_commands_flags()
    stated: dict[str, str] = {}
    for path in DOC_FILES:
        for command in _COMMAND.findall(prose(path)):
            for flag in re.findall(r"(?:^| )(--[a-z][a-z0-9-]*)", command):
                stated.setdefault(flag, str(path.relative_to(REPO_ROOT)))
    assert {"--pass-through", "--lifespan"} <= set(stated)
    unknown = {f: w for f, w in stated.items() if f not in known}
    assert not unknown, f"flags the docs name that no command takes: {unknown}"


def test_every_flag_has_a_row_on_the_cli_page() -> None:
    # The page includes the README's table; the README's own test reads it there.
    assert '--8<-- "README.md:cli-flags"' in (DOCS / "cli.md").read_text()
    start = README.index("--8<-- [start:cli-flags]")
    table = README[start : README.index("--8<-- [end:cli-flags]")]
    rows = set(re.findall(r"`(--[a-z][a-z0-9-]*)`", table))
    assert rows == cli_flags(), (cli_flags() - rows, rows - cli_flags())


# -- headers ----------------------------------------------------------------------------

# Headers the docs name only to say the proxy never forwards them.
NEVER_FORWARDED = {"x-forwarded-", "x-forwarded-host"}


def test_every_header_the_docs_name_exists() -> None:
    source = package_source().lower()
    unknown = {
        h: where
        for h, where in named(r"`((?i:x)-[A-Za-z0-9-]+)").items()
        if h.lower() not in source and h.lower() not in NEVER_FORWARDED
    }
    assert not unknown, f"headers the docs name that the code never uses: {unknown}"


def test_every_proxy_header_is_in_the_reference() -> None:
    page = ERRORS_PAGE.read_text()
    in_code = set(
        re.findall(r'"(x-bt-[a-z-]+|x-request-id|x-upstream-request-id)"', package_source())
    )
    assert in_code >= {"x-bt-cached", "x-bt-use-cache", "x-request-id"}
    missing = sorted(h for h in in_code if f"`{h}" not in page)
    assert not missing, f"add these headers to {ERRORS_PAGE.name}: {missing}"


# -- error codes ------------------------------------------------------------------------


def error_codes() -> set[str]:
    source = package_source()
    return set(re.findall(r'code="([a-z_]+)"', source)) | set(
        re.findall(r'"code": "([a-z_]+)"', source)
    )


def test_every_error_code_is_in_the_reference() -> None:
    page = ERRORS_PAGE.read_text()
    missing = sorted(code for code in error_codes() if not re.search(rf"\b{code}\b", page))
    assert not missing, f"add these codes to {ERRORS_PAGE.name}: {missing}"


def test_every_error_code_the_docs_name_exists() -> None:
    codes = error_codes() | {"upstream_<status>"}  # upstream_404 and so on
    source = package_source()
    types = set(re.findall(r'"([a-z_]+_error)"', source)) | set(
        re.findall(r'type="([a-z_]+)"', source)
    )
    # The code column of the errors table: `type` / `code`, or `code` alone.
    table_cells = re.findall(r"^\|[^|]*\|[^|]*\| (.*) \|$", ERRORS_PAGE.read_text(), re.M)
    named_in_table = {n for cell in table_cells for n in re.findall(r"`([a-z_<>]+)`", cell)}
    stated = named(r'code: ?"([a-z_]+)"') | {n: ERRORS_PAGE.name for n in named_in_table}
    unknown = {
        c: w for c, w in stated.items() if c not in codes | types and c not in ("type", "code")
    }
    assert not unknown, f"error codes the docs name that the code never sends: {unknown}"
