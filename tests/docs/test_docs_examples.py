"""Every code example in the docs runs: a Python block with an import is a full example
and is executed here (against the fake upstream where it calls the proxy); every other
Python block must at least parse; every included file exists; and the README's framework
examples are the files in examples/, which test_examples.py runs."""

from __future__ import annotations

import ast
import io
import re
from collections.abc import Iterator
from contextlib import AsyncExitStack, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette

from asgi_autoproxy import AnthropicProvider, AutoProxyMiddleware, OpenAIProvider
from tests.conftest import inner_app
from tests.fake_anthropic import FakeAnthropic
from tests.fake_upstream import FakeUpstream
from tests.processes import REPO_ROOT
from tests.servers import ServerThread, serve

DOCS = REPO_ROOT / "docs"
README = REPO_ROOT / "README.md"
# Where the docs send a reader's calls; the test swaps in a live proxy.
PROXY_URL = "http://127.0.0.1:8000/v1/proxy"
_BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", re.S | re.M)
_SNIPPET = re.compile(r'^--8<-- "([^"]+)"$', re.M)


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    code: str

    @property
    def is_full(self) -> bool:
        return bool(re.search(r"^(import|from) \S+", self.code, re.M))

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def blocks() -> Iterator[Block]:
    for page in pages():
        text = page.read_text()
        for match in _BLOCK.finditer(text):
            indent = len(match.group(1))
            code = "\n".join(line[indent:] for line in match.group(2).splitlines())
            line = text.count("\n", 0, match.start()) + 1
            if not _SNIPPET.fullmatch(code.strip()):
                yield Block(str(page.relative_to(REPO_ROOT)), line, code)


FULL = [b for b in blocks() if b.is_full]
FRAGMENTS = [b for b in blocks() if not b.is_full]


def test_the_docs_hold_full_examples() -> None:
    assert len(FULL) >= 8
    assert any(PROXY_URL in b.code for b in FULL)


@pytest.mark.parametrize("block", FRAGMENTS, ids=str)
def test_fragment_parses(block: Block) -> None:
    ast.parse(block.code)


def test_every_included_file_exists_and_is_tested() -> None:
    included = [m.group(1) for page in pages() for m in _SNIPPET.finditer(page.read_text())]
    assert included
    for name in included:
        path, _, section = name.partition(":")
        text = (REPO_ROOT / path).read_text()
        if section:
            assert f"--8<-- [start:{section}]" in text and f"--8<-- [end:{section}]" in text
        assert path.startswith(("examples/", "README.md", "CONTRIBUTING.md")), name


def _fake_environment(code: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in set(re.findall(r'os\.environ\["(\w+)"\]', code)):
        fake = "https://example.invalid" if name.endswith("ENDPOINT") else f"sk-fake-{name}"
        monkeypatch.setenv(name, fake)
    monkeypatch.setenv("AUTOPROXY_CLIENT_KEYS", "team-key-1")


def _apps(namespace: dict[str, Any]) -> list[Any]:
    return [v for v in namespace.values() if isinstance(v, AutoProxyMiddleware | Starlette)]


@pytest.mark.anyio
@pytest.mark.parametrize("block", FULL, ids=str)
async def test_full_example_runs(
    block: Block,
    monkeypatch: pytest.MonkeyPatch,
    upstream: FakeUpstream,
    upstream_url: str,
    claude: FakeAnthropic,
    proxy_server: ServerThread,
) -> None:
    _fake_environment(block.code, monkeypatch)
    code = block.code.replace(PROXY_URL, proxy_server.url + "/v1/proxy")
    # ``app`` in an example stands for the reader's own ASGI app.
    namespace: dict[str, Any] = {"__name__": "docs_example", "app": inner_app()}
    printed = io.StringIO()
    with redirect_stdout(printed):
        exec(compile(code, str(block), "exec"), namespace)  # the docs' own code
    # The app it built starts and stops: Starlette builds its middleware at start-up, so
    # a bad keyword fails here.
    async with AsyncExitStack() as stack:
        for app in _apps(namespace):
            await stack.enter_async_context(LifespanManager(app))
    for app in _apps(namespace):
        if isinstance(app, AutoProxyMiddleware):
            await app.aclose()
    if PROXY_URL in block.code:
        assert upstream.requests, "the example's calls reached the upstream"
    if "Anthropic(" in block.code:
        assert claude.requests, "the example's Anthropic call reached the fake Anthropic"
    if "print(" in block.code:
        assert printed.getvalue().strip()


@pytest.fixture
def proxy_server(upstream_url: str, claude_url: str) -> Iterator[ServerThread]:
    """The proxy the docs' calls reach: pass-through to the fake upstreams."""
    providers = [AnthropicProvider(base_url=claude_url), OpenAIProvider(base_url=upstream_url)]
    proxy = AutoProxyMiddleware(inner_app(), providers=providers)
    with serve(proxy, lifespan="on") as server:
        yield server


def _example_code(path: str) -> str:
    """The example file as the README shows it: without its docstring and future import."""
    source = (REPO_ROOT / path).read_text()
    first = ast.parse(source).body[0]
    start = first.end_lineno if isinstance(first, ast.Expr) else 0
    body = "\n".join(source.splitlines()[start:])
    return body.replace("from __future__ import annotations\n", "").strip()


README_EXAMPLES = re.findall(r"```python\n((?:# [^\n]*\n)+)(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize(
    ("header", "code"), README_EXAMPLES, ids=[h.split()[1] for h, _ in README_EXAMPLES]
)
def test_readme_example_is_the_tested_file(header: str, code: str) -> None:
    [path] = re.findall(r"^# (examples/\S+\.py)", header, re.M)
    assert code.strip() == _example_code(path), f"copy {path} into the README again"


def test_readme_shows_every_framework_example() -> None:
    shown = {re.findall(r"# (examples/\S+\.py)", h)[0] for h, _ in README_EXAMPLES}
    assert shown == {
        "examples/starlette_app.py",
        "examples/fastapi_app.py",
        "examples/django_project/proxysite/asgi.py",
    }
