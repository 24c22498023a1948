"""``RequestHeaders``: everything the proxy reads from a request's headers, in one pass."""

from __future__ import annotations

from asgi_autoproxy._headers import RequestHeaders


def test_the_first_bearer_token_is_the_credential() -> None:
    headers = RequestHeaders(
        [
            (b"authorization", b"Basic dXNlcjpwYXNz"),
            (b"x-api-key", b"from-x-api-key"),
            (b"authorization", b"  bearer   first-token "),
            (b"authorization", b"Bearer second-token"),
        ]
    )
    assert headers.credential == "first-token"


def test_without_a_bearer_token_the_last_x_api_key_is_the_credential() -> None:
    assert RequestHeaders([(b"x-api-key", b"a"), (b"x-api-key", b" b ")]).credential == "b"
    assert RequestHeaders([(b"x-api-key", b"a"), (b"x-api-key", b"  ")]).credential is None
    assert RequestHeaders([(b"authorization", b"Bearer ")]).credential is None
    assert RequestHeaders([]).credential is None


def test_repeated_headers_count_their_first_value() -> None:
    headers = RequestHeaders(
        [
            (b"x-request-id", b"one"),
            (b"x-request-id", b"two"),
            (b"cache-control", b"no-store"),
            (b"cache-control", b"no-cache"),
            (b"x-bt-use-cache", b"always"),
            (b"x-bt-use-cache", b"never"),
            (b"x-bt-cache-ttl", b"60"),
            (b"x-bt-cache-ttl", b"120"),
            (b"x-bt-endpoint-name", b"primary"),
            (b"x-bt-endpoint-name", b"backup"),
            (b"content-length", b"12"),
            (b"content-length", b"13"),
        ]
    )
    assert headers.request_id == "one"
    assert headers.cache_control == "no-store"
    assert headers.use_cache == "always"
    assert headers.cache_ttl == "60"
    assert headers.endpoint_name == "primary"
    assert headers.content_length == b"12"


def test_absent_headers_read_as_none_and_all_headers_are_counted() -> None:
    raw = [(b"host", b"example.test"), (b"accept", b"*/*"), (b"x-caf\xe9", b"\xe9")]
    headers = RequestHeaders(raw)
    assert headers.count == 3
    assert headers.size == sum(len(name) + len(value) for name, value in raw)
    assert (headers.request_id, headers.content_length, headers.credential) == (None, None, None)
    assert (headers.use_cache, headers.cache_ttl, headers.cache_control) == (None, None, None)
    assert headers.endpoint_name is None
