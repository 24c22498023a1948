"""The OpenAPI description, and schemathesis run from it against a live middleware."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    status_code_conformance,
)

from asgi_autoproxy import AnthropicProvider, AutoProxyMiddleware, OpenAIProvider, openapi_document
from asgi_autoproxy._gate.credentials import TemporaryCredentials
from asgi_autoproxy._routes import AUTO, SIBLINGS, route_table
from tests.conftest import CALLER_KEY, SERVER_KEY, inner_app
from tests.fake_anthropic import FakeAnthropic
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerThread, serve

CREDENTIALS_SECRET = "openapi-credentials-secret-0123456789-abcdefgh"


@pytest.fixture(scope="module")
def live_proxy(
    _upstream_server: tuple[FakeUpstream, ServerThread],
    _anthropic_server: tuple[FakeAnthropic, ServerThread],
) -> Iterator[str]:
    """The middleware under a real uvicorn server, holding provider keys. Every model
    reaches a provider on every route: Anthropic's Messages API serves any model here."""
    provider = OpenAIProvider(
        base_url=_upstream_server[1].url + "/v1", api_key=SERVER_KEY, name="paid"
    )
    claude = AnthropicProvider(
        base_url=_anthropic_server[1].url, api_key=SERVER_KEY, models=["*"], name="claude"
    )
    app = AutoProxyMiddleware(
        inner_app(),
        providers=[provider, claude],
        api_keys={CALLER_KEY: "schemathesis"},
        credentials_secret=CREDENTIALS_SECRET,
        timeout=10,
    )
    with serve(app, lifespan="on") as server:
        yield server.url


# Schemathesis' own pytest plugin does not run under pytest 9; its Hypothesis
# strategies do, and drive the same checks through `call_and_validate`.
SCHEMA = schemathesis.openapi.from_dict(
    openapi_document(
        endpoint_names={
            **{e: ["paid"] for e in ("chat", "completion", "embeddings", "moderations")},
            "responses": ["paid"],
            "messages": ["claude"],
        },
        credentials=True,
    )
)


@SCHEMA.auth()
class CallerKey:
    """The caller's key, registered so schemathesis knows it is valid and can also
    probe the same request without it, or with a wrong one."""

    def get(self, case: Any, context: Any) -> str:
        return CALLER_KEY

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"


LIVE = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def call(case: Any, base_url: str, **kwargs: Any) -> Any:
    response = case.call_and_validate(base_url=base_url, timeout=30, **kwargs)
    assert SERVER_KEY not in response.text
    assert "Traceback" not in response.text
    return response


@LIVE
@given(case=SCHEMA.as_strategy(GenerationMode.POSITIVE))
def test_valid_requests_get_described_answers(live_proxy: str, case: Any) -> None:
    """Every default schemathesis check: status codes, content types, response bodies
    and headers as described, no server errors, auth enforced."""
    call(case, live_proxy)


@LIVE
@given(case=SCHEMA.as_strategy(GenerationMode.NEGATIVE))
def test_invalid_requests_never_break_the_proxy(live_proxy: str, case: Any) -> None:
    """Bodies that break the description: the proxy forwards fields it does not know,
    so an upstream may accept them; what must hold is no 5xx and described errors."""
    call(
        case,
        live_proxy,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance],
    )


def test_auto_operation_is_described_like_braintrusts() -> None:
    doc = openapi_document()
    operation = doc["paths"]["/v1/proxy/auto"]["post"]
    assert operation["operationId"] == "proxyauto"
    assert operation["tags"] == ["Proxy"]
    assert operation["requestBody"]["required"] is True
    assert {"text/event-stream", "application/json"} <= set(
        operation["responses"]["200"]["content"]
    )
    assert {"bearerAuth": []} in doc["security"]


def test_document_follows_the_configured_path() -> None:
    doc = openapi_document("/api/llm/auto")
    assert set(doc["paths"]) == {
        "/api/llm/auto",
        "/api/llm/chat/completions",
        "/api/llm/completions",
        "/api/llm/models",
        "/api/llm/models/{model}",
        "/api/llm/embeddings",
        "/api/llm/moderations",
        "/api/llm/responses",
        "/api/llm/anthropic/v1/messages",
        "/api/llm/anthropic/messages",
    }
    assert set(openapi_document(sibling_routes=False)["paths"]) == {"/v1/proxy/auto"}


@pytest.mark.parametrize("credentials", [True, False])
@pytest.mark.parametrize("siblings", [True, False])
def test_every_served_route_is_described_with_its_method(siblings: bool, credentials: bool) -> None:
    """The route table and the description cannot drift apart: a new row needs its path."""
    signer = TemporaryCredentials(CREDENTIALS_SECRET) if credentials else None
    served = route_table("/x/auto", siblings=siblings, credentials=signer)
    doc = openapi_document("/x/auto", sibling_routes=siblings, credentials=credentials)
    rows = [AUTO, *(SIBLINGS if siblings else ()), *([signer] if signer else [])]
    assert len(doc["paths"]) == len(rows)
    described = set()
    for path, item in doc["paths"].items():
        route = served.get(path.replace("{model}", "gpt-4o"))
        assert route is not None, path
        assert list(item) == [route.method.lower()]
        described.add(route.suffix)
    assert len(described) == len(rows)  # each row once


def test_the_anthropic_route_describes_anthropics_errors_and_headers() -> None:
    operation = openapi_document()["paths"]["/v1/proxy/anthropic/v1/messages"]["post"]
    assert operation["responses"]["401"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AnthropicError"
    }
    names = {parameter["name"] for parameter in operation["parameters"]}
    assert {"anthropic-version", "anthropic-beta", "x-bt-use-cache"} <= names


def test_credentials_route_is_described_when_enabled() -> None:
    assert "/v1/proxy/credentials" not in openapi_document()["paths"]
    doc = openapi_document("/api/llm/auto", credentials=True, sibling_routes=False)
    operation = doc["paths"]["/api/llm/credentials"]["post"]
    assert operation["operationId"] == "proxycredentials"
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["ttl_seconds"]["maximum"] == 86400
    assert body["properties"]["ttl_seconds"]["default"] == 600
    assert {"200", "400", "401", "403"} <= set(operation["responses"])
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["required"] == ["key"]
    # A token for another model: a described 403 on the proxy routes.
    assert "403" in doc["paths"]["/api/llm/auto"]["post"]["responses"]


@LIVE
@given(case=SCHEMA["/v1/proxy/credentials"]["POST"].as_strategy(GenerationMode.POSITIVE))
def test_issued_credentials_work_as_keys(live_proxy: str, case: Any) -> None:
    """Every valid /credentials body gets a key, and that key lists the models."""
    response = call(case, live_proxy)
    body = case.body if isinstance(case.body, dict) else {}
    ttl = body.get("ttl_seconds") or 600
    if response.status_code == 200 and ttl >= 10:  # one that cannot expire meanwhile
        key = response.json()["key"]
        models = httpx.get(
            f"{live_proxy}/v1/proxy/models", headers={"authorization": f"Bearer {key}"}, timeout=10
        )
        assert models.status_code == 200
