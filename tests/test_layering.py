"""The package's picture stays true: a module imports only from its own layer or below.

A request flows gate -> route -> cache -> dispatch -> relay; the layers below follow that
order, with the foundations under them and the entry points on top. An import from a
lower layer to a higher one (the relay reaching for the middleware, say) fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "asgi_autoproxy"

# Lowest first. A module belongs to the first prefix that matches its dotted name.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "_json",
            "errors",
            "_asgi",
            "_cancel",
            "_headers",
            "observability",
            "_deadline",
            "_sse",
            "_idle_timeout",
            "_protocols",
            "_routing.pricing",  # a value type: the request record prices its usage
            "_cors",
        ),
    ),
    ("http", ("_http",)),
    ("shared state", ("_shared",)),
    ("providers", ("providers",)),
    ("gate", ("_gate",)),
    ("routing", ("_routing",)),
    ("cache", ("_cache",)),
    ("upstream", ("_upstream",)),
    ("pipeline", ("_call", "_routes", "_relay", "_pipeline", "_shutdown")),
    ("telemetry", ("_telemetry",)),
    ("middleware", ("config", "_assembly", "middleware")),
    (
        "entry points",
        (
            "cli",
            "_gateway",
            "_logs",
            "_server",
            "_workers",
            "_heap",
            "openapi",
            "__init__",
            "__main__",
        ),
    ),
]


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                return index
    raise AssertionError(f"asgi_autoproxy.{module} belongs to no layer: add it to LAYERS")


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found.append((".".join(parts), path))
    return found


def imported(module: str, path: Path) -> set[str]:
    """The package modules ``module`` imports, type-checking-only imports included."""
    tree = ast.parse(path.read_text())
    package = module.split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and node.module.startswith("asgi_autoproxy"):
                target = node.module.removeprefix("asgi_autoproxy").lstrip(".")
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                names.add(
                    sub
                    if (PACKAGE / sub.replace(".", "/")).exists()
                    or (PACKAGE / (sub.replace(".", "/") + ".py")).exists()
                    else target
                )
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("asgi_autoproxy."):
                    names.add(alias.name.removeprefix("asgi_autoproxy."))
    names.discard("")
    return names


@pytest.mark.parametrize(("module", "path"), modules(), ids=[m for m, _ in modules()])
def test_imports_go_down_the_layers(module: str, path: Path) -> None:
    own = layer_of(module)
    upward = sorted(
        f"{name} ({LAYERS[layer_of(name)][0]})"
        for name in imported(module, path)
        if layer_of(name) > own
    )
    assert not upward, f"{module} ({LAYERS[own][0]}) imports from higher layers: {upward}"


def test_the_layer_check_sees_an_upward_import(tmp_path: Path) -> None:
    stray = tmp_path / "relay.py"
    stray.write_text("from ..middleware import AutoProxyMiddleware\n")
    assert "middleware" in imported("_upstream.relay", stray)
    assert layer_of("middleware") > layer_of("_upstream.relay")
