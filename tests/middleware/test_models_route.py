"""``GET {prefix}/models/{id}`` and ``/models``, with the real ``openai`` SDK."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from asgi_autoproxy import AutoProxyMiddleware, OpenAIProvider
from tests.conftest import CALLER_KEY, SERVER_KEY, inner_app
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerThread, serve


@pytest.fixture(scope="module")
def base_url(_upstream_server: tuple[FakeUpstream, ServerThread]) -> Iterator[str]:
    openai_like = OpenAIProvider(
        base_url=_upstream_server[1].url + "/v1",
        api_key=SERVER_KEY,
        name="house",
        models=["gpt-*", "o*", "text-embedding-*", "acme/*", "davinci-002"],
    )
    app = AutoProxyMiddleware(
        inner_app(),
        providers=[openai_like],
        api_keys={CALLER_KEY: "tests"},
        model_catalog={"acme/tuned-1": "chat"},
    )
    with serve(app, lifespan="on") as server:
        yield server.url + "/v1/proxy"


@pytest.fixture
def sdk(base_url: str) -> Iterator[OpenAI]:
    with OpenAI(base_url=base_url, api_key=CALLER_KEY, max_retries=0, timeout=10) as client:
        yield client


@pytest.mark.parametrize(
    "model", ["gpt-4o", "o3-pro", "text-embedding-3-small", "davinci-002", "acme/tuned-1"]
)
def test_sdk_retrieves_a_model_of_any_flavour(
    sdk: OpenAI, upstream: FakeUpstream, model: str
) -> None:
    found = sdk.models.retrieve(model)
    assert found.id == model
    assert found.object == "model"
    assert found.owned_by == "house"
    assert upstream.calls == 0  # answered by the proxy itself


def test_sdk_retrieves_a_dated_model_the_catalog_knows_by_its_family(sdk: OpenAI) -> None:
    assert sdk.models.retrieve("gpt-4o-2099-01-01").id == "gpt-4o-2099-01-01"


@pytest.mark.parametrize(
    "model",
    [
        "no-such-model",
        "claude-sonnet-4-5",  # the catalog knows it, but no provider here serves it
        "gpt-4o/../../admin",
    ],
)
def test_sdk_gets_not_found_in_openais_shape(sdk: OpenAI, model: str) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        sdk.models.retrieve(model)
    assert raised.value.status_code == 404
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["code"] == "model_not_found" and body["param"] == "model"
    assert body["type"] == "invalid_request_error"


@pytest.mark.anyio
async def test_async_sdk_retrieves_and_lists(base_url: str) -> None:
    async with AsyncOpenAI(
        base_url=base_url, api_key=CALLER_KEY, max_retries=0, timeout=10
    ) as client:
        found = await client.models.retrieve("o3")
        listed = [model.id async for model in client.models.list()]
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("claude-3-haiku-20240307")
    assert found.id == "o3"
    # Every flavour the catalog knows by exact name, where a provider serves it.
    assert {"gpt-4o", "o3-pro", "text-embedding-3-small", "davinci-002", "acme/tuned-1"} <= set(
        listed
    )
    assert not any(name.startswith("claude-") for name in listed)


def test_a_model_needs_the_callers_key(base_url: str) -> None:
    with httpx.Client(timeout=10) as http:
        missing = http.get(f"{base_url}/models/gpt-4o")
        wrong = http.get(f"{base_url}/models/gpt-4o", headers={"authorization": "Bearer nope"})
        posted = http.post(
            f"{base_url}/models/gpt-4o", headers={"authorization": f"Bearer {CALLER_KEY}"}
        )
    assert missing.status_code == wrong.status_code == 401
    assert posted.status_code == 405 and posted.headers["allow"] == "GET"
    assert posted.json()["error"]["code"] == "method_not_allowed"


def test_a_bare_models_slash_is_left_to_the_app(base_url: str) -> None:
    with httpx.Client(timeout=10) as http:
        response = http.get(
            f"{base_url}/models/", headers={"authorization": f"Bearer {CALLER_KEY}"}
        )
    assert response.status_code == 404
    assert "error" not in response.text  # the wrapped app's own 404, not the proxy's


def test_a_long_unknown_id_is_not_echoed_whole(sdk: OpenAI) -> None:
    model = "x" * 5000
    with pytest.raises(openai.NotFoundError) as raised:
        sdk.models.retrieve(model)
    assert len(str(raised.value.message)) < 400
