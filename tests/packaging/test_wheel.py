"""The built wheel, installed in a fresh venv: its metadata, a bare import that loads no
optional module, the command's --help, and one request proxied by the installed command."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import httpx
import pytest

from asgi_autoproxy import __version__
from tests.conftest import CALLER_KEY, chat_body
from tests.fake_upstream import FakeUpstream
from tests.processes import REPO_ROOT, child_env, free_port, run_server

pytestmark = pytest.mark.slow

# Installing from the registry: bounded per request and as a whole.
PIP = ["-m", "pip", "install", "-q", "--disable-pip-version-check", "--timeout", "30"]
INSTALL_TIMEOUT = 240
# Modules that only an extra (or the caller's own code) may bring in.
OPTIONAL_MODULES = {
    "blake3",
    "cryptography",
    "django",
    "fastapi",
    "httptools",
    "httpx2",
    "opentelemetry",
    "prometheus_client",
    "redis",
    "starlette",
    "uvicorn",
    "uvloop",
    "jwt",
}


def _run(args: list[str], *, timeout: float = INSTALL_TIMEOUT, cwd: Path) -> str:
    done = subprocess.run(
        args,
        cwd=cwd,
        env=child_env(checkout_on_path=False),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO_ROOT)],
        cwd=out,
    )
    [built] = out.glob("asgi_autoproxy-*.whl")
    return built


@pytest.fixture(scope="module")
def bare_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the wheel and its base dependencies only; yields its python."""
    home = tmp_path_factory.mktemp("venv")
    venv.create(home, with_pip=True)
    python = home / "bin" / "python"
    _run([str(python), *PIP, str(wheel)], cwd=home)
    yield python


def test_wheel_metadata_is_complete(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [meta_name] = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(archive.read(meta_name).decode())
    assert meta["Version"] == __version__
    assert meta["License-Expression"] == "MIT"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "asgi_autoproxy/py.typed" in names
    classifiers = meta.get_all("Classifier") or []
    assert {"Typing :: Typed", "Framework :: AsyncIO"} <= set(classifiers)
    assert meta.get_all("Project-URL")
    required = meta.get_all("Requires-Dist") or []
    base = {r.split(">")[0].split("=")[0].strip() for r in required if "extra ==" not in r}
    assert "starlette" not in base
    assert {"aiohttp", "orjson", "httpx", "anyio"} <= base


def test_bare_install_imports_no_optional_module(bare_venv: Path) -> None:
    script = (
        "import json, sys, asgi_autoproxy as a; "
        "print(json.dumps([a.__file__, a.__version__, sorted(sys.modules)]))"
    )
    where, version, loaded = json.loads(_run([str(bare_venv), "-c", script], cwd=bare_venv.parent))
    assert str(REPO_ROOT) not in where, "the test must import the installed wheel"
    assert version == __version__
    top_level = {name.partition(".")[0] for name in loaded}
    assert not top_level & OPTIONAL_MODULES, sorted(top_level & OPTIONAL_MODULES)
    installed = _run(
        [str(bare_venv), "-m", "pip", "list", "--format", "json"], cwd=bare_venv.parent
    )
    names = {d["name"].lower() for d in json.loads(installed)}
    assert not names & OPTIONAL_MODULES, sorted(names & OPTIONAL_MODULES)
    assert {"aiohttp", "orjson"} <= names


def test_installed_command_serves_a_proxied_request(
    bare_venv: Path, wheel: Path, upstream: FakeUpstream, upstream_url: str, tmp_path: Path
) -> None:
    _run([str(bare_venv), *PIP, f"{wheel}[server]"], cwd=tmp_path)
    command = bare_venv.parent / "asgi-autoproxy"
    assert "--pass-through" in _run([str(command), "--help"], cwd=tmp_path, timeout=60)
    port = free_port()
    args = ["-m", "asgi_autoproxy", "--port", str(port), "--pass-through"]
    args += ["--openai-base-url", upstream_url]
    with (
        run_server(
            args,
            port=port,
            log_path=tmp_path / "server.log",
            cwd=tmp_path,
            python=str(bare_venv),
            checkout_on_path=False,
        ) as server,
        httpx.Client(base_url=server.url, timeout=10) as http,
    ):
        answer = http.post(
            "/v1/proxy/auto",
            json=chat_body("from the wheel"),
            headers={"authorization": f"Bearer {CALLER_KEY}"},
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "echo #1: from the wheel"
    [seen] = upstream.requests
    assert seen.headers["authorization"] == f"Bearer {CALLER_KEY}"
    assert "Traceback" not in server.log
    # [server] brings uvicorn's C parser, which the command then uses by default.
    _run([str(bare_venv), "-c", "import httptools, uvicorn"], cwd=tmp_path, timeout=60)
