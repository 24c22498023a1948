"""The version is written once: the installed metadata reads asgi_autoproxy.__version__."""

from __future__ import annotations

import importlib.metadata
import re

from asgi_autoproxy import __version__
from tests.processes import REPO_ROOT


def test_version_has_one_source() -> None:
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert re.search(r'^dynamic = \["version"\]', pyproject, re.MULTILINE)
    assert not re.search(r"^version\s*=", pyproject, re.MULTILINE)
    assert importlib.metadata.version("asgi_autoproxy") == __version__


def test_changelog_has_an_entry_for_this_version() -> None:
    changelog = (REPO_ROOT / "CHANGELOG.md").read_text()
    assert changelog.startswith("# Changelog")
    assert "## [Unreleased]" in changelog
    assert f"## [{__version__}]" in changelog
