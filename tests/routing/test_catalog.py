"""The model catalog: the built-in data file, a user's file or mapping, prices, rules."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from asgi_autoproxy import BUILTIN_CATALOG, AutoProxyMiddleware, ModelCatalog, OpenAIProvider
from asgi_autoproxy._routing.pricing import Price
from tests.conftest import inner_app
from tests.processes import REPO_ROOT

VENDORS = {
    "openai": ("gpt-", "o1", "o3", "o4", "chatgpt-", "text-embedding-3", "davinci-002"),
    "anthropic": ("claude-",),
    "google": ("gemini-", "gemma-"),
    "mistral": ("mistral-", "codestral-", "magistral-", "ministral-", "open-mi", "pixtral-"),
    "meta": ("llama", "Llama-", "meta-llama/"),
    "deepseek": ("deepseek-",),
    "xai": ("grok-",),
    "cohere": ("command-", "embed-", "c4ai-aya-"),
}


def builtin_document() -> dict[str, Any]:
    text = resources.files("asgi_autoproxy._routing").joinpath("models.json").read_text()
    document: dict[str, Any] = json.loads(text)
    return document


def exact_names() -> list[str]:
    return [name for name in BUILTIN_CATALOG if not any(c in name for c in "*?[")]


def test_builtin_catalog_knows_300_models_of_every_flavour_and_vendor() -> None:
    names = exact_names()
    assert len(names) >= 300
    flavours = Counter(BUILTIN_CATALOG[name] for name in names)
    assert set(flavours) == {"chat", "completion", "responses", "embedding"}
    for vendor, prefixes in VENDORS.items():
        assert any(name.startswith(prefixes) for name in names), vendor


def test_every_builtin_entry_has_a_flavour_and_a_wire_format() -> None:
    models = builtin_document()["models"]
    for name, entry in models.items():
        assert entry["flavor"] in {"chat", "completion", "responses", "embedding"}, name
        assert entry["format"] in {"openai", "anthropic", "google"}, name
        price = entry.get("price")
        if price is not None:
            assert price["input"] >= 0 and price["output"] >= 0, name
    assert models["claude-sonnet-4-5"]["format"] == "anthropic"
    assert models["gemini-2.5-pro"]["format"] == "google"


@pytest.mark.parametrize(
    ("model", "flavor"),
    [
        # The misclassification found when tried: mistral-* claimed it as chat.
        ("mistral-embed", "embedding"),
        ("codestral-embed-2505", "embedding"),
        ("gemini-embedding-001", "embedding"),
        ("embed-v4.0", "embedding"),
        ("text-embedding-3-large", "embedding"),
        # Served only by /responses (Braintrust's list), whatever the chat globs say.
        ("o1-pro", "responses"),
        ("o1-pro-2025-03-19", "responses"),
        ("o3-pro", "responses"),
        ("o3-deep-research", "responses"),
        ("gpt-5-pro", "responses"),
        ("gpt-5-pro-2099-01-01", "responses"),
        ("gpt-5-codex", "responses"),
        ("gpt-5.1-codex", "responses"),
        ("gpt-5.1-codex-mini", "responses"),
        ("gpt-5.3", "responses"),
        ("gpt-5.3-chat-latest", "responses"),
        ("gpt-5.4-mini", "responses"),
        ("gpt-5.9", "responses"),
        ("gpt-5.12", "responses"),
        ("gpt-6", "responses"),
        ("gpt-6-mini-2027-01-01", "responses"),
        ("codex-mini-latest", "responses"),
        # Chat, and not swept up by the globs above.
        ("gpt-5", "chat"),
        ("gpt-5.1", "chat"),
        ("gpt-5.1-2025-11-13", "chat"),
        ("gpt-5.2", "chat"),
        ("gpt-5-mini", "chat"),
        ("o3", "chat"),
        ("o3-mini", "chat"),
        ("o1", "chat"),
        ("gpt-4o-2099-01-01", "chat"),
        ("gpt-35-turbo", None),  # an Azure deployment name, not gpt-3.5 nor gpt-6+
        ("claude-opus-4-5", "chat"),
        ("grok-4", "chat"),
        ("deepseek-reasoner", "chat"),
        ("command-a-03-2025", "chat"),
        ("meta-llama/Llama-3.3-70B-Instruct-Turbo", "chat"),
        # Completion.
        ("gpt-3.5-turbo-instruct", "completion"),
        ("gpt-3.5-turbo-instruct-0914", "completion"),
        ("davinci-002", "completion"),
        ("no-such-model", None),
    ],
)
def test_builtin_flavours(model: str, flavor: str | None) -> None:
    assert ModelCatalog().flavor(model) == flavor


def test_prices_exact_names_first_then_globs() -> None:
    catalog = ModelCatalog()
    assert catalog.price("gpt-4o") == Price(2.5, 10, 1.25)
    assert catalog.price("gpt-4o-2024-05-13") == Price(5, 15)
    assert catalog.price("claude-3-haiku-20240307") == Price(0.25, 1.25, 0.03)
    assert catalog.price("text-embedding-3-small") == Price(0.02, 0)
    # Unpublished or unsure: no price, never a made-up one, and never 0.
    assert catalog.price("claude-opus-4-7") is None
    assert catalog.price("gpt-4o-2099-01-01") is None  # only a glob: no family price
    assert catalog.price("no-such-model") is None


def test_user_mapping_adds_entries_with_prices_and_keeps_builtin_ones() -> None:
    catalog = ModelCatalog(
        {
            "acme-chat": {"flavor": "chat", "price": {"input": 1, "output": 2}},
            "acme-*": "completion",
            "gpt-4o": "completion",  # a flavour alone keeps the built-in price
            "gpt-4o-mini": {"flavor": "chat", "price": None},  # cleared on purpose
        }
    )
    assert catalog.flavor("acme-chat") == "chat"
    assert catalog.price("acme-chat") == Price(1, 2)
    assert catalog.flavor("acme-other") == "completion"
    assert catalog.flavor("gpt-4o") == "completion"
    assert catalog.price("gpt-4o") == Price(2.5, 10, 1.25)
    assert catalog.price("gpt-4o-mini") is None
    assert catalog.flavor("claude-3-haiku-20240307") == "chat"


def test_user_file_in_the_builtin_format_overrides_builtins(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(
        json.dumps(
            {
                "param_rules": {"no-temp": {"drop": ["temperature"]}},
                "models": {
                    "acme-embed": {"flavor": "embedding", "format": "openai"},
                    "o3-pro": {"flavor": "chat"},
                    "house-*": {
                        "flavor": "chat",
                        "price": {"input": 0.5, "output": 1.5, "cached_input": 0.05},
                        "params": "no-temp",
                    },
                    "house-b": {"flavor": "chat", "params": "openai-reasoning"},
                },
            }
        )
    )
    for source in (path, str(path)):
        catalog = ModelCatalog(source)
        assert catalog.flavor("acme-embed") == "embedding"
        assert catalog.flavor("o3-pro") == "chat"
        assert catalog.price("o3-pro") == Price(20, 80)  # the built-in price stays
        assert catalog.price("house-a") == Price(0.5, 1.5, 0.05)
        rule = catalog.params("house-a")
        assert rule is not None and rule.apply({"temperature": 0}) == {}
        builtin_rule = catalog.params("house-b")  # names a built-in rule
        assert builtin_rule is not None
        assert builtin_rule.apply({"max_tokens": 5}) == {"max_completion_tokens": 5}


def test_middleware_takes_a_catalog_file(tmp_path: Path, upstream_url: str) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"models": {"acme-1": "completion"}}))
    proxy = AutoProxyMiddleware(
        inner_app(), providers=[OpenAIProvider(base_url=upstream_url)], model_catalog=path
    )
    assert proxy.router.catalog.flavor("acme-1") == "completion"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"acme": "chat"}, 'must be a JSON object with a "models" object'),
        ({"models": {"acme": "image"}}, "use one of"),
        ({"models": {"acme": {"flavor": "chat", "colour": 1}}}, "unknown fields ['colour']"),
        ({"models": {"acme": {"flavor": "chat", "price": {"input": 1}}}}, "'input' and 'output'"),
        ({"models": {"a": {"flavor": "chat", "price": {"input": -1, "output": 1}}}}, "0 or more"),
        ({"models": {"a": {"flavor": "chat", "price": {"input": "1", "output": 1}}}}, "number"),
        ({"models": {"acme": {"flavor": "chat", "params": "nope"}}}, "no param_rules defines"),
        ({"models": {}, "param_rules": {"r": {"drop": "temperature"}}}, "list of parameter"),
        ({"models": {}, "extra": 1}, "unknown fields ['extra']"),
    ],
)
def test_a_bad_catalog_file_fails_at_start_naming_the_entry(
    tmp_path: Path, document: Any, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"bad\.json") as raised:
        ModelCatalog(path)
    assert message in str(raised.value)


def test_unreadable_or_invalid_catalog_file_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be read"):
        ModelCatalog(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelCatalog(broken)
    with pytest.raises(TypeError, match="mapping of model names"):
        ModelCatalog(42)  # type: ignore[arg-type]


def test_known_models_lists_every_flavour_by_exact_name() -> None:
    known = ModelCatalog({"acme-embed": "embedding", "acme-*": "chat"}).known_models()
    assert known[0] == "acme-embed"
    assert {"gpt-4o", "davinci-002", "o3-pro", "mistral-embed"} <= set(known)
    assert not any("*" in name for name in known)
    assert len(known) == len(set(known))


def test_the_wheel_ships_the_catalog_data_file(tmp_path: Path) -> None:
    """pip builds the wheel with hatchling (the test extra), offline, from this checkout."""
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO_ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = json.loads(archive.read("asgi_autoproxy/_routing/models.json"))
    assert shipped == builtin_document()
