"""The README stays true: its first commands work as written and every keyword is documented."""

from __future__ import annotations

import inspect
import re
import shlex

import pytest

from asgi_autoproxy import AutoProxyMiddleware, CacheOptions, Limits, OpenAIProvider
from asgi_autoproxy.cli import build_parser
from asgi_autoproxy.config import MOVED
from tests.processes import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
PYPROJECT = (REPO_ROOT / "pyproject.toml").read_text()


def command_after(marker: str) -> str:
    """The line after the comment starting with ``marker`` in the README's first code block."""
    lines = README.split("```", 2)[1].splitlines()
    [index] = [i for i, line in enumerate(lines) if line.startswith(marker)]
    return lines[index + 1]


def section(heading: str) -> str:
    start = README.index(heading)
    end = README.find("\n#", start + len(heading))
    return README[start : end if end >= 0 else None]


def test_readme_opens_with_one_sentence_then_the_two_commands() -> None:
    title, summary, rest = README.split("\n\n", 2)
    assert title.startswith("# ") and "\n" not in title
    assert "\n" not in summary and summary.count(". ") == 0 and summary.endswith(".")
    assert rest.startswith("```bash\n# Run the proxy")
    assert "# Run the tests" in rest.split("```", 2)[1]


def test_readme_is_short() -> None:
    assert len(README.splitlines()) <= 300


@pytest.mark.parametrize("marker", ["# Run the proxy", "# Run the tests"])
def test_readme_commands_install_extras_that_exist(marker: str) -> None:
    install, _, _ = command_after(marker).partition(" && ")
    [spec] = [word for word in shlex.split(install) if word.startswith(".[")]
    for extra in spec[2:-1].split(","):
        assert re.search(rf"^{extra}\s*=", PYPROJECT, re.MULTILINE), extra


def test_readme_proxy_command_parses() -> None:
    _, _, run = command_after("# Run the proxy").partition(" && ")
    program, *args = shlex.split(run)
    assert program == "asgi-autoproxy"
    parsed = build_parser({}).parse_args(args)
    assert parsed.pass_through


def test_readme_test_command_runs_pytest() -> None:
    _, _, run = command_after("# Run the tests").partition(" && ")
    assert shlex.split(run)[:3] == ["python", "-m", "pytest"]


@pytest.mark.parametrize(
    ("heading", "callable_"),
    [
        ("### `AutoProxyMiddleware(", AutoProxyMiddleware.__init__),
        ("### `OpenAIProvider(", OpenAIProvider.__init__),
        ("### `Limits(", Limits),
        ("### `CacheOptions(", CacheOptions),
    ],
)
def test_every_keyword_has_a_table_row(heading: str, callable_: object) -> None:
    text = section(heading)
    keywords = [
        p.name
        for p in inspect.signature(callable_).parameters.values()  # type: ignore[arg-type]
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    assert keywords
    missing = [k for k in keywords if f"| `{k}` |" not in text]
    assert not missing, f"document these keywords under {heading!r}: {missing}"


def test_every_deprecated_keyword_says_where_it_went() -> None:
    page = (REPO_ROOT / "docs" / "reference" / "configuration.md").read_text()
    text = page[page.index("## Deprecated keywords") :]
    objects = {"limits": "Limits", "cache_options": "CacheOptions"}
    for old, (keyword, field) in MOVED.items():
        assert f"| `{old}=` | `{keyword}={objects[keyword]}({field}=...)` |" in text, old


def test_every_cli_flag_is_documented() -> None:
    text = section("### On its own")
    flags = [
        option
        for action in build_parser({})._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    ]
    missing = [flag for flag in flags if f"`{flag}`" not in text]
    assert not missing, missing


def test_readme_in_page_links_land_on_a_heading() -> None:
    def slug(heading: str) -> str:
        text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
        return text.replace(" ", "-")

    outside_code = re.sub(r"```.*?```", "", README, flags=re.S)
    anchors = {slug(h) for h in re.findall(r"^#+ (.*)$", outside_code, re.M)}
    links = set(re.findall(r"\]\(#([^)]+)\)", outside_code))
    assert not links - anchors, f"README links to headings it lacks: {links - anchors}"
