"""The browser example (examples/browser/) in a real headless Chromium.

Three origins on 127.0.0.1, each its own uvicorn server: A serves the example app (its page,
its login, and the proxy with the fake upstream behind it); B and C serve the same page
pointed at A's proxy, and only B is in A's ``cors_origins``. Selenium drives Debian's
``chromium`` through ``chromium-driver`` (``.ci/run`` installs both with apt-get). Like the
Redis tests, these fail without the browser and say how to install it; set
ASGI_AUTOPROXY_SKIP_BROWSER=1 to skip them on a machine without one (never in CI).

A screenshot of the streamed answer is saved as a test artifact; its path is printed. Set
ASGI_AUTOPROXY_ARTIFACTS to choose the folder.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from asgi_autoproxy._gate.credentials import TemporaryCredentials
from tests.conftest import SERVER_KEY
from tests.fake_upstream import FakeUpstream
from tests.processes import REPO_ROOT
from tests.servers import ServerThread

pytestmark = pytest.mark.slow

SKIP_ENV = "ASGI_AUTOPROXY_SKIP_BROWSER"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SECRET = "browser-test-credentials-secret-0123456789-abcdef"
MODEL = "gpt-4o-mini"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=900,760",
)
WAIT = 20.0


def require_browser() -> None:
    if all(os.access(path, os.X_OK) for path in (CHROMIUM, CHROMEDRIVER)):
        return
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"chromium not installed and {SKIP_ENV}=1")
    pytest.fail(
        "The browser tests need Debian's chromium and chromium-driver: install them with "
        f"`apt-get install -y chromium chromium-driver`, or set {SKIP_ENV}=1 to skip them "
        "locally (never in CI).",
        pytrace=False,
    )


def load_example() -> Any:
    """The example's module; its own ``app`` is made with a stand-in key and never served."""
    saved = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = "sk-example-module-only"
    try:
        return _import_example()
    finally:
        if saved is None:
            del os.environ["OPENAI_API_KEY"]
        else:
            os.environ["OPENAI_API_KEY"] = saved


def _import_example() -> Any:
    spec = importlib.util.spec_from_file_location(
        f"_browser_example_{uuid.uuid4().hex}", REPO_ROOT / "examples" / "browser" / "app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def static_page(proxy_url: Callable[[], str]) -> Starlette:
    """Another origin serving the same page, pointed at A's proxy."""
    html = (REPO_ROOT / "examples" / "browser" / "index.html").read_text()

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(html.replace("{{model}}", MODEL).replace("{{proxy}}", proxy_url()))

    return Starlette(routes=[Route("/", page)])


class Site:
    def __init__(self, upstream_url: str) -> None:
        self.allowed = ServerThread(static_page(lambda: self.app.url))
        self.refused = ServerThread(static_page(lambda: self.app.url))
        module = load_example()
        self.app = ServerThread(
            module.build_app(
                base_url=upstream_url,
                api_key=SERVER_KEY,
                credentials_secret=SECRET,
                cors_origins=[self.allowed.url],
                model=MODEL,
            ),
            lifespan="on",
        )

    def start(self) -> None:
        for server in (self.allowed, self.refused, self.app):
            server.start()

    def stop(self) -> None:
        for server in (self.app, self.allowed, self.refused):
            server.stop()

    def credential(self) -> str:
        """A credential as the page gets one: log in, then ask the app for it."""
        with httpx.Client(base_url=self.app.url, timeout=10) as client:
            assert client.post("/login", json={"name": "tester"}).status_code == 204
            response = client.post("/session/credential")
            assert response.status_code == 200, response.text
            key: str = response.json()["key"]
            return key


@pytest.fixture(scope="module")
def site(_upstream_server: tuple[FakeUpstream, Any]) -> Iterator[Site]:
    require_browser()
    site = Site(_upstream_server[1].url + "/v1")
    site.start()
    yield site
    site.stop()


@pytest.fixture(scope="module")
def browser(site: Site) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="asgi_autoproxy-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    chosen = os.environ.get("ASGI_AUTOPROXY_ARTIFACTS")
    folder = Path(chosen) if chosen else tmp_path / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def text(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    value: str = driver.find_element(By.ID, element_id).text
    return value


def wait_for_state(driver: Any, *states: str) -> str:
    deadline = time.monotonic() + WAIT
    while (state := text(driver, "state")) not in states:
        assert time.monotonic() < deadline, f"page stuck in state {state!r}"
        time.sleep(0.05)
    return state


def ask(driver: Any, question: str) -> None:
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "question")
    box.clear()
    box.send_keys(question)
    driver.find_element(By.ID, "ask-button").click()


def test_answer_streams_in_pieces_then_hits_the_cache(
    site: Site, browser: Any, upstream: FakeUpstream, artifacts: Path
) -> None:
    from selenium.webdriver.common.by import By

    upstream.overrides = {"chunks": 6, "delay": 0.25}
    browser.get(site.app.url + "/")
    browser.find_element(By.ID, "name").send_keys("ada")
    browser.find_element(By.ID, "login-button").click()
    wait_for_state(browser, "logged in")

    question = f"Stream to me, please ({uuid.uuid4().hex[:8]})"
    ask(browser, question)
    seen: list[str] = []
    deadline = time.monotonic() + WAIT
    while text(browser, "state") != "done":  # watch the answer grow from outside the page
        assert time.monotonic() < deadline, text(browser, "error")
        current = text(browser, "answer")
        if not seen or seen[-1] != current:
            seen.append(current)
        time.sleep(0.03)
    final = text(browser, "answer")
    assert final.strip() == "tok0 tok1 tok2 tok3 tok4 tok5"
    partial = [shown for shown in seen if shown and shown != final]
    assert len(partial) >= 2, seen  # seen in pieces, not all at once
    renders = browser.execute_script("return window.renders")
    assert len(renders) == 6
    assert [r["length"] for r in renders] == sorted({r["length"] for r in renders})
    assert renders[-1]["at"] - renders[0]["at"] >= 5 * 0.25 * 0.6  # spread over the stream
    assert text(browser, "cached") == "MISS"
    shot = artifacts / "browser-streamed-answer.png"
    assert browser.save_screenshot(str(shot))
    print(f"\nbrowser screenshot: {shot}")

    calls = upstream.calls
    ask(browser, question)  # the identical deterministic question
    wait_for_state(browser, "done")
    assert text(browser, "cached") == "HIT"
    assert text(browser, "answer") == final
    assert upstream.calls == calls
    assert browser.save_screenshot(str(artifacts / "browser-cache-hit.png"))


def test_expired_credential_shows_a_clear_error(
    site: Site, browser: Any, upstream: FakeUpstream
) -> None:
    an_hour_ago = TemporaryCredentials(SECRET, clock=lambda: time.time() - 3600)
    expired = an_hour_ago.issue("user:ada", models=(MODEL,), ttl_seconds=60)
    browser.get(site.app.url + "/")
    browser.execute_script("window.useCredential(arguments[0])", expired)
    ask(browser, "Too late?")
    wait_for_state(browser, "failed")
    error = text(browser, "error")
    assert error.startswith("Error 401: This temporary credential expired at "), error
    assert "Ask for a new one" in error
    assert upstream.calls == 0


def test_page_from_an_allowed_origin_streams_and_reads_the_headers(
    site: Site, browser: Any, upstream: FakeUpstream
) -> None:
    browser.get(site.allowed.url + "/")
    browser.execute_script("window.useCredential(arguments[0])", site.credential())
    ask(browser, f"From another origin ({uuid.uuid4().hex[:8]})")
    assert wait_for_state(browser, "done", "failed") == "done", text(browser, "error")
    assert text(browser, "answer").strip() == "tok0 tok1 tok2"
    assert text(browser, "cached") == "MISS"  # readable: the proxy exposes it
    assert upstream.calls == 1


def test_page_from_another_origin_is_refused_by_cors(
    site: Site, browser: Any, upstream: FakeUpstream
) -> None:
    browser.get(site.refused.url + "/")
    browser.execute_script("window.useCredential(arguments[0])", site.credential())
    ask(browser, "Let me in?")
    wait_for_state(browser, "failed")
    assert "refused this page's origin (CORS)" in text(browser, "error")
    assert text(browser, "answer") == ""
    assert upstream.calls == 0  # the preflight was refused: the question never left
    logged = " ".join(entry["message"] for entry in browser.get_log("browser"))
    assert "CORS policy" in logged, logged
