"""The request headers that shape a cache plan are declared once, in ``PLAN_HEADERS``:
their parsing, the plan memo's digest and the OpenAPI description all read that table.

Each header in the table must keep two requests that differ only in its value from
sharing a remembered plan; a header the digest left out would serve a stale plan.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from asgi_autoproxy import AutoProxyMiddleware, OpenAIProvider, openapi_document
from asgi_autoproxy._cache.remembered_plans import request_digest
from asgi_autoproxy._headers import FORWARDABLE, PLAN_HEADERS, RequestHeaders
from tests.conftest import CALLER_KEY, MakeProxy, chat_body
from tests.fake_upstream import FakeUpstream

# Two values per table header, the first one filing a plan (its decision reads the
# cache). A header added to the table needs a line here: see the first test.
VALUES: dict[bytes, tuple[str, str]] = {
    b"x-bt-endpoint-name": ("a", "b"),
    b"x-bt-use-cache": ("always", "never"),
    b"x-bt-cache-ttl": ("60", "120"),
    b"cache-control": ("max-age=600", "no-cache"),
}

NAMES = [header.name for header in PLAN_HEADERS]


def test_every_table_header_has_values_to_tell_apart() -> None:
    assert set(VALUES) == set(NAMES)
    assert len(set(NAMES)) == len(NAMES)


def test_each_table_header_is_parsed_into_its_attribute_first_value_first() -> None:
    assert set(RequestHeaders.__annotations__) == {h.attribute for h in PLAN_HEADERS}
    for index, header in enumerate(PLAN_HEADERS):
        first, second = VALUES[header.name]
        parsed = RequestHeaders(
            [(b"host", b"x"), (header.name, first.encode()), (header.name, second.encode())]
        )
        assert getattr(parsed, header.attribute) == first
        assert parsed.plan[index] == first
        assert [value for value in parsed.plan if value is not None] == [first]
    assert RequestHeaders([]).plan == (None,) * len(PLAN_HEADERS)


@pytest.mark.parametrize("name", NAMES, ids=[n.decode() for n in NAMES])
def test_the_digest_tells_each_table_header_apart(name: bytes) -> None:
    first, second = VALUES[name]

    def digest(*raw: tuple[bytes, bytes]) -> object:
        return request_digest("auto", "caller", True, RequestHeaders(raw), b"{}")

    digests = {digest(), digest((name, first.encode())), digest((name, second.encode()))}
    assert len(digests) == 3


@pytest.mark.parametrize("name", sorted(FORWARDABLE), ids=[n.decode() for n in sorted(FORWARDABLE)])
def test_the_digest_tells_each_forwardable_header_apart(name: bytes) -> None:
    """A route that passes it upstream keys its entries by it (anthropic-beta...), so a
    plan remembered without it must never serve a request with it."""

    def digest(*raw: tuple[bytes, bytes]) -> object:
        return request_digest("anthropic", "caller", True, RequestHeaders(raw), b"{}")

    assert len({digest(), digest((name, b"a")), digest((name, b"b"))}) == 3


async def post(app: AutoProxyMiddleware, body: Any, headers: dict[str, str]) -> httpx.Response:
    sent = {"authorization": f"Bearer {CALLER_KEY}", **headers}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as http:
        return await http.post("/v1/proxy/auto", json=body, headers=sent)


@pytest.mark.anyio
@pytest.mark.parametrize("name", NAMES, ids=[n.decode() for n in NAMES])
async def test_requests_differing_in_one_table_header_never_share_a_plan(
    make_proxy: MakeProxy, upstream: FakeUpstream, upstream_url: str, name: bytes
) -> None:
    providers = [OpenAIProvider(base_url=upstream_url, name=n) for n in ("a", "b")]
    app = make_proxy(providers=providers)
    memo = app._pipeline.cache.plan_memo
    assert memo is not None
    body = chat_body(f"one plan per {name.decode()} value", temperature=0)
    first_value, second_value = VALUES[name]
    first = await post(app, body, {name.decode(): first_value})
    second = await post(app, body, {name.decode(): second_value})
    assert first.status_code == second.status_code == 200
    assert first.headers["x-bt-cached"] == "MISS"
    assert memo.found == 0  # the second request did not find the first one's plan
    plans = list(memo._plans.values())
    if name == b"x-bt-endpoint-name":  # pinned to another provider, with its own entries
        assert (first.headers["x-bt-used-endpoint"], second.headers["x-bt-used-endpoint"]) == (
            "a",
            "b",
        )
        assert second.headers["x-bt-cached"] == "MISS"
        assert len(plans) == 2 and plans[0].key != plans[1].key
    elif name == b"x-bt-cache-ttl":  # the same entry, kept for the time each one asked
        assert first.headers["cache-control"] == "max-age=60"
        assert [plan.decision.ttl for plan in plans] == [60, 120]
    else:  # never, or no-cache: the cache is not read, though the first answer is there
        assert second.headers["x-bt-cached"] == "MISS"
        assert upstream.calls == 2
        assert len(plans) == 1


def test_the_openapi_document_describes_every_table_header_on_the_post_routes() -> None:
    document = openapi_document()
    posts = [item["post"] for item in document["paths"].values() if "post" in item]
    assert len(posts) == 8  # auto, chat, completions, embeddings, moderations, responses,
    # and the Anthropic route's two spellings
    for operation in posts:
        parameters = {p["name"]: p for p in operation["parameters"] if p["in"] == "header"}
        for header in PLAN_HEADERS:
            described = parameters[header.name.decode()]
            assert described["description"] == header.description
            assert described["schema"] == dict(header.schema)
            assert described["required"] is False


def test_endpoint_names_narrow_the_pinning_header_to_the_providers() -> None:
    document = openapi_document(endpoint_names=["a", "b"])
    operation = document["paths"]["/v1/proxy/auto"]["post"]
    (pin,) = [p for p in operation["parameters"] if p["name"] == "x-bt-endpoint-name"]
    assert pin["schema"]["enum"] == ["a", "b"]
    pin["schema"]["enum"].append("c")  # the document is a copy: the table is not touched
    assert "enum" not in next(h for h in PLAN_HEADERS if h.attribute == "endpoint_name").schema
