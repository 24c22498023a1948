"""``limits=Limits(...)`` and ``cache_options=CacheOptions(...)``, and the flat keywords
they replace, which still work for one release and warn."""

from __future__ import annotations

import inspect
import typing
from typing import Any

import httpx
import pytest

from asgi_autoproxy import AutoProxyMiddleware, CacheOptions, Limits
from asgi_autoproxy.config import MOVED, MovedKeywords
from tests.conftest import CALLER_KEY, MakeProxy, chat_body
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.anyio


async def post(
    app: AutoProxyMiddleware, body: dict[str, Any], key: str = CALLER_KEY
) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        return await http.post(
            "/v1/proxy/auto", json=body, headers={"authorization": f"Bearer {key}"}
        )


# -- the new objects --------------------------------------------------------------------


async def test_a_body_over_limits_max_body_size_is_413(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    app = make_proxy(limits=Limits(max_body_size=200))
    response = await post(app, chat_body("x" * 400))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert upstream.calls == 0


# CacheOptions(share_across_callers=True) end to end: tests/cache/test_cache.py.


def test_defaults_are_the_documented_ones() -> None:
    assert Limits().max_body_size == 10 * 1024 * 1024
    assert Limits().request_read_timeout == 30.0
    assert Limits().stream_idle_timeout == 120.0
    assert CacheOptions().timeout == 0.1
    assert CacheOptions().share_across_callers is False


def test_the_objects_are_frozen_and_keyword_only() -> None:
    limits = Limits(max_body_size=5)
    with pytest.raises(AttributeError):
        limits.max_body_size = 6  # type: ignore[misc]
    with pytest.raises(TypeError):
        Limits(5)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Limits(max_body_size=0), "Limits.max_body_size must be a positive number"),
        (lambda: Limits(max_response_size=-1), "Limits.max_response_size"),
        (lambda: Limits(max_event_size=0), "Limits.max_event_size"),
        (lambda: Limits(request_read_timeout=0), "Limits.request_read_timeout .* or None"),
        (lambda: Limits(stream_idle_timeout=float("nan")), "Limits.stream_idle_timeout"),
        (lambda: Limits(max_header_count=0), "Limits.max_header_count"),
        (lambda: Limits(max_header_bytes=0), "Limits.max_header_bytes"),
        (lambda: Limits(max_json_depth=1001), "Limits.max_json_depth must be between 1 and 1000"),
        (lambda: Limits(max_concurrent_upstream=0), "Limits.max_concurrent_upstream"),
        (lambda: CacheOptions(timeout=0), "CacheOptions.timeout must be a positive number"),
        (lambda: CacheOptions(coalesce_timeout=-1), "CacheOptions.coalesce_timeout"),
        (lambda: CacheOptions(max_follower_lag=0), "CacheOptions.max_follower_lag"),
    ],
)
def test_invalid_values_are_refused_when_made(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_none_turns_the_optional_limits_off() -> None:
    limits = Limits(
        request_read_timeout=None, stream_idle_timeout=None, max_concurrent_upstream=None
    )
    assert limits.request_read_timeout is None


async def test_a_wrong_object_is_a_type_error(make_proxy: MakeProxy) -> None:
    with pytest.raises(TypeError, match=r"limits must be a Limits\(...\)"):
        make_proxy(limits=CacheOptions())
    with pytest.raises(TypeError, match=r"cache_options must be a CacheOptions\(...\)"):
        make_proxy(cache_options={"timeout": 1.0})


# -- the old flat keywords, for one release ---------------------------------------------


def test_the_table_and_the_typed_keywords_agree() -> None:
    assert set(MOVED) == set(typing.get_type_hints(MovedKeywords))
    for old, (keyword, field) in MOVED.items():
        kind = Limits if keyword == "limits" else CacheOptions
        assert field in kind.__dataclass_fields__, old
    flat = inspect.signature(AutoProxyMiddleware.__init__).parameters
    assert not set(MOVED) & set(flat)  # no longer in the signature
    assert {"limits", "cache_options"} <= set(flat)


async def test_an_old_keyword_still_works_and_warns(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    with pytest.warns(
        DeprecationWarning,
        match=r"max_body_size= is deprecated .*use limits=Limits\(max_body_size=...\)",
    ) as warned:
        app = make_proxy(max_body_size=200)
    assert warned[0].filename.endswith("conftest.py")  # points at the caller's line
    response = await post(app, chat_body("x" * 400))
    assert response.status_code == 413
    assert upstream.calls == 0


async def test_a_renamed_cache_keyword_still_works_and_warns(
    make_proxy: MakeProxy, upstream: FakeUpstream
) -> None:
    with pytest.warns(
        DeprecationWarning, match=r"use cache_options=CacheOptions\(share_across_callers=...\)"
    ):
        app = make_proxy(share_cache_across_callers=True)
    await post(app, chat_body(temperature=0), key="sk-alice")
    bob = await post(app, chat_body(temperature=0), key="sk-bob")
    assert bob.headers["x-bt-cached"] == "HIT"
    assert upstream.calls == 1


@pytest.mark.parametrize("old", sorted(MOVED))
async def test_every_old_keyword_warns_and_lands_in_its_field(
    old: str, make_proxy: MakeProxy
) -> None:
    keyword, field = MOVED[old]
    value = getattr(Limits() if keyword == "limits" else CacheOptions(), field)
    with pytest.warns(DeprecationWarning, match=rf"^{old}= is deprecated"):
        make_proxy(**{old: value})


async def test_an_invalid_old_keyword_is_refused_as_before(make_proxy: MakeProxy) -> None:
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="max_json_depth"):
        make_proxy(max_json_depth=0)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"max_body_size": 10}, {"limits": Limits()}),
        ({"stream_idle_timeout": None}, {"limits": Limits(max_body_size=10)}),
        ({"cache_clock": lambda: 0.0}, {"cache_options": CacheOptions()}),
    ],
)
async def test_an_old_keyword_beside_its_object_is_a_type_error(
    old: dict[str, Any], new: dict[str, Any], make_proxy: MakeProxy
) -> None:
    with pytest.raises(TypeError, match="not both"):
        make_proxy(**old, **new)


async def test_an_old_keyword_beside_the_other_object_is_fine(make_proxy: MakeProxy) -> None:
    with pytest.warns(DeprecationWarning):
        make_proxy(max_body_size=10, cache_options=CacheOptions(timeout=1.0))


async def test_an_unknown_keyword_is_still_a_type_error(make_proxy: MakeProxy) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_body_sise'"):
        make_proxy(max_body_sise=10)
