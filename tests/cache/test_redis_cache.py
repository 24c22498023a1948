"""RedisCache against a real redis-server: storage, TTLs, encryption at rest, outages."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from hashlib import sha256

import anyio
import pytest
import redis
import redis.asyncio

from asgi_autoproxy import RedisCache
from asgi_autoproxy._cache.backends.base import CacheBackend
from asgi_autoproxy._cache.crypto import derive_key, derive_secret, entry_prk, seal, unseal
from tests.processes import REPO_ROOT as ROOT
from tests.redis_server import RedisServer, free_port, running_redis

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
async def raw(shared_redis: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client on the shared server, emptied before each test."""
    client = redis.asyncio.Redis.from_url(shared_redis.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
async def cache(shared_redis: RedisServer, raw: redis.asyncio.Redis) -> AsyncIterator[RedisCache]:
    # A generous timeout: these tests are about storage, not speed, and CI machines stall.
    async with RedisCache(shared_redis.url, prefix="test:", timeout=2) as cache:
        yield cache


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A server of the test's own, free to kill and restart."""
    with running_redis() as server:
        yield server


async def eventually(check: object, *, within: float = 5.0) -> None:
    """Poll an async predicate until it holds; fail after ``within`` seconds."""
    assert callable(check)
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await anyio.sleep(0.05)


# --- Storage -----------------------------------------------------------------


async def test_set_get_delete_roundtrip(cache: RedisCache, raw: redis.asyncio.Redis) -> None:
    assert isinstance(cache, CacheBackend)
    assert await cache.get("ab12") is None
    await cache.set("ab12", b"\x00value\xff", ttl=60)
    assert await cache.get("ab12") == b"\x00value\xff"
    assert await raw.get("test:{ab12}") == b"\x00value\xff"
    await cache.delete("ab12")
    assert await cache.get("ab12") is None
    assert await raw.exists("test:{ab12}") == 0
    assert (cache.hits, cache.misses, cache.errors, cache.skipped) == (1, 2, 0, 0)


async def test_ttl_is_native_to_redis(cache: RedisCache, raw: redis.asyncio.Redis) -> None:
    await cache.set("week", b"v", ttl=604800)
    await cache.set("fraction", b"v", ttl=1.5)
    assert 604790 <= await raw.ttl("test:{week}") <= 604800
    assert 1000 < await raw.pttl("test:{fraction}") <= 1500


async def test_entry_expires(cache: RedisCache, raw: redis.asyncio.Redis) -> None:
    await cache.set("short", b"v", ttl=0.1)
    assert 0 < await raw.pttl("test:{short}") <= 100

    async def gone() -> bool:
        return await cache.get("short") is None

    await eventually(gone, within=3.0)


async def test_non_positive_ttl_stores_nothing(cache: RedisCache, raw: redis.asyncio.Redis) -> None:
    await cache.set("zero", b"v", ttl=0)
    assert await raw.dbsize() == 0


async def test_prefixes_isolate_caches(shared_redis: RedisServer, raw: redis.asyncio.Redis) -> None:
    async with (
        RedisCache(shared_redis.url, prefix="app-a:", timeout=2) as a,
        RedisCache(shared_redis.url, prefix="app-b:", timeout=2) as b,
    ):
        await a.set("k1", b"from a", ttl=60)
        await b.set("k1", b"from b", ttl=60)
        assert await a.get("k1") == b"from a"
        assert await b.get("k1") == b"from b"
        await a.delete("k1")
        assert await a.get("k1") is None
        assert await b.get("k1") == b"from b"
    assert sorted(await raw.keys("*")) == [b"app-b:{k1}"]


async def test_concurrent_use_shares_a_bounded_pool(
    shared_redis: RedisServer, raw: redis.asyncio.Redis
) -> None:
    async with RedisCache(shared_redis.url, prefix="pool:", max_connections=4, timeout=2) as cache:

        async def roundtrip(i: int) -> None:
            await cache.set(f"{i:04x}", str(i).encode(), ttl=60)
            assert await cache.get(f"{i:04x}") == str(i).encode()

        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(roundtrip, i)
        assert cache.errors == 0
        clients = await raw.client_list()
        assert len(clients) <= 4 + 1  # the pool's plus our raw client
    assert await raw.dbsize() == 100


async def test_aclose_closes_connections_and_a_later_call_reopens(
    cache: RedisCache, raw: redis.asyncio.Redis
) -> None:
    await cache.set("k", b"v", ttl=60)
    assert len(await raw.client_list()) == 2
    await cache.aclose()

    async def only_raw_left() -> bool:
        return len(await raw.client_list()) == 1

    await eventually(only_raw_left)
    assert await cache.get("k") == b"v"


def test_one_cache_serves_several_event_loops(shared_redis: RedisServer) -> None:
    """redis.asyncio pools are bound to a loop, so each loop gets its own."""
    cache = RedisCache(shared_redis.url, prefix="loops:", timeout=2)

    async def use(value: bytes) -> bytes | None:
        await cache.set("k", value, ttl=60)
        try:
            return await cache.get("k")
        finally:
            await cache.aclose()

    assert anyio.run(use, b"first") == b"first"
    assert anyio.run(use, b"second") == b"second"
    assert cache.errors == 0


async def test_caller_client_is_used_and_left_open(
    shared_redis: RedisServer, raw: redis.asyncio.Redis
) -> None:
    client = redis.asyncio.Redis.from_url(shared_redis.url)
    cache = RedisCache(prefix="mine:", client=client)
    await cache.set("k", b"v", ttl=60)
    await cache.aclose()
    assert await client.get("mine:{k}") == b"v"
    await client.aclose()


# --- Configuration -------------------------------------------------------------


def test_encryption_is_on_by_default() -> None:
    assert RedisCache().encrypt is True
    assert RedisCache(encrypt=False).encrypt is False


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "http://127.0.0.1:6379"}, "redis://"),
        ({"timeout": 0}, "timeout"),
        ({"retry_after": -1}, "retry_after"),
        ({"max_connections": 0}, "max_connections"),
        ({"client": redis.asyncio.Redis(decode_responses=True)}, "decode_responses=False"),
    ],
)
def test_bad_settings_fail_at_start_up(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisCache(**kwargs)  # type: ignore[arg-type]


def test_repr_and_location_leave_the_password_out() -> None:
    cache = RedisCache("redis://user:hunter2-pw@cache.internal:6380/3")
    assert cache.location == "redis://cache.internal:6380/3"
    assert "hunter2" not in repr(cache)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )


def test_importing_the_package_needs_no_redis() -> None:
    result = run_python(
        "import sys; sys.modules['redis'] = None; sys.modules['cryptography'] = None\n"
        "import asgi_autoproxy\n"
        "from asgi_autoproxy._cache.crypto import derive_key\n"
        "assert len(derive_key(b'x')) == 64\n"
        "try:\n"
        "    asgi_autoproxy.RedisCache()\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'asgi_autoproxy[redis]'" in result.stdout


def test_encryption_without_cryptography_says_how_to_install_it() -> None:
    result = run_python(
        "import sys; sys.modules['cryptography'] = None\n"
        "from asgi_autoproxy._cache.crypto import seal\n"
        "try:\n"
        "    seal(bytes(32), b'x')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'asgi_autoproxy[redis]'" in result.stdout


# --- Encryption at rest ----------------------------------------------------------


async def test_nothing_readable_at_rest(cache: RedisCache, raw: redis.asyncio.Redis) -> None:
    """Store entries the way the cache layer does, then read Redis like a thief would."""
    prompt, model = "my secret prompt about Zanzibar", "gpt-4o-mini-secret-model"
    completion, token = "the confidential answer 42", "sk-caller-secret-abcdef"
    request = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0},
        sort_keys=True,
    ).encode()
    response = json.dumps(
        {"model": model, "choices": [{"message": {"content": completion}}]}
    ).encode()
    key = derive_key(entry_prk(sha256(b"chat\x00openai\x00" + request).digest(), token))
    secret = derive_secret(entry_prk(sha256(b"chat\x00openai\x00" + request).digest(), token))
    assert cache.encrypt
    await cache.set(key, seal(secret, response), ttl=60)
    token_lock = await cache.acquire_lock(key, 5000)
    assert token_lock is not None

    dumped: list[bytes] = []
    async for name in raw.scan_iter(match="*", count=10):
        dumped.append(name)
        dumped.append(await raw.get(name) or b"")
    assert len(dumped) == 4  # the entry and its lock
    for plain in (prompt, model, completion, token, "Zanzibar", "confidential", "gpt-4o"):
        for blob in dumped:
            assert plain.encode() not in blob
            assert plain.encode().hex().encode() not in blob

    stored = await cache.get(key)
    assert stored is not None
    assert unseal(secret, stored) == response
    other_caller = derive_secret(
        entry_prk(sha256(b"chat\x00openai\x00" + request).digest(), "sk-someone-else")
    )
    assert unseal(other_caller, stored) is None


# --- Outages -----------------------------------------------------------------------


async def test_redis_down_at_start_up_is_a_fast_miss(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="asgi_autoproxy.cache.redis")
    url = f"redis://:hunter2-pw@127.0.0.1:{free_port()}/0"
    async with RedisCache(url, prefix="down:") as cache:
        started = time.monotonic()
        assert await cache.get("k") is None
        await cache.set("k", b"v", ttl=60)
        await cache.delete("k")
        assert await cache.get("k") is None
        assert time.monotonic() - started < 0.5
        assert cache.errors == 3  # then backing off: the last get was not even tried
        assert cache.skipped == 1
        assert not cache.available
    assert "is failing" in caplog.text
    assert "hunter2" not in caplog.text


async def test_redis_killed_mid_run_degrades_then_recovers_on_restart(
    own_redis: RedisServer,
) -> None:
    async with RedisCache(own_redis.url, prefix="k:", timeout=0.5, retry_after=0.2) as cache:
        await cache.set("k", b"before", ttl=60)
        assert await cache.get("k") == b"before"

        own_redis.kill()
        started = time.monotonic()
        for _ in range(5):
            assert await cache.get("k") is None
            await cache.set("k", b"during", ttl=60)
        assert time.monotonic() - started < 1.0
        assert cache.errors >= 3

        own_redis.start()  # same port, empty (no persistence)
        assert own_redis.running

        async def works_again() -> bool:
            await cache.set("k", b"after", ttl=60)
            return await cache.get("k") == b"after"

        await eventually(works_again)
        assert cache.available


async def test_slow_redis_is_bounded_by_the_timeout(
    own_redis: RedisServer,
) -> None:
    admin = redis.asyncio.Redis.from_url(own_redis.url)
    await admin.set("slow:{k}", b"v")
    async with RedisCache(own_redis.url, prefix="slow:", retry_after=0.2) as cache:
        await admin.execute_command("CLIENT", "PAUSE", "1000")
        for _ in range(4):
            started = time.monotonic()
            assert await cache.get("k") is None
            await cache.set("k2", b"v", ttl=60)
            assert time.monotonic() - started < 0.5
        assert cache.errors >= 3

        async def works_again() -> bool:
            return await cache.get("k") == b"v"

        await eventually(works_again)
    await admin.aclose()


async def test_unresponsive_host_backs_off_instead_of_waiting_each_time() -> None:
    """A server that accepts connections but never answers costs one timeout per try."""
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(64)
        url = f"redis://127.0.0.1:{blackhole.getsockname()[1]}/0"
        async with RedisCache(url, timeout=0.2, retry_after=0.5) as cache:
            for _ in range(RedisCache.failures_before_backoff):
                started = time.monotonic()
                assert await cache.get("k") is None
                assert 0.19 < time.monotonic() - started < 1.0
            started = time.monotonic()
            assert await cache.get("k") is None
            await cache.set("k", b"v", ttl=60)
            assert time.monotonic() - started < 0.1  # not tried: well under one timeout
            assert cache.skipped == 2
            await anyio.sleep(0.55)
            started = time.monotonic()
            assert await cache.get("k") is None  # tried again, timed out again
            assert time.monotonic() - started > 0.19
            assert cache.errors == RedisCache.failures_before_backoff + 1


# --- Coalescing lock ------------------------------------------------------------------


async def test_lock_has_one_holder_and_only_the_holder_frees_it(
    cache: RedisCache, raw: redis.asyncio.Redis
) -> None:
    token = await cache.acquire_lock("k", 5000)
    assert token is not None
    assert await cache.acquire_lock("k", 5000) is None
    assert 0 < await raw.pttl("test:lock:{k}") <= 5000
    await cache.release_lock("k", "not-the-token")
    assert await cache.acquire_lock("k", 5000) is None
    await cache.release_lock("k", token)
    assert await raw.exists("test:lock:{k}") == 0
    assert await cache.acquire_lock("k", 5000) is not None


async def test_lock_expires_by_itself(cache: RedisCache) -> None:
    assert await cache.acquire_lock("k", 50) is not None

    async def free_again() -> bool:
        return await cache.acquire_lock("k", 5000) is not None

    await eventually(free_again, within=3.0)


async def test_follower_gets_the_value_the_holder_stores(cache: RedisCache) -> None:
    token = await cache.acquire_lock("k", 5000)
    assert token is not None
    received: list[bytes | None] = []

    async def follower() -> None:
        received.append(await cache.wait_for("k", 5.0))

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(follower)
        await anyio.sleep(0.05)
        await cache.set("k", b"result", ttl=60)
        await cache.release_lock("k", token)
    assert received == [b"result"]
    assert time.monotonic() - started < 2.0


async def test_follower_stops_waiting_when_the_holder_gives_up(cache: RedisCache) -> None:
    token = await cache.acquire_lock("k", 5000)
    assert token is not None
    received: list[bytes | None] = []

    async def follower() -> None:
        received.append(await cache.wait_for("k", 5.0))

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(follower)
        await anyio.sleep(0.05)
        await cache.release_lock("k", token)
    assert received == [None]
    assert time.monotonic() - started < 2.0


async def test_follower_wait_is_bounded(cache: RedisCache) -> None:
    assert await cache.acquire_lock("k", 5000) is not None
    started = time.monotonic()
    assert await cache.wait_for("k", 0.2) is None
    assert 0.2 <= time.monotonic() - started < 1.5


async def test_without_redis_everyone_goes_ahead_alone() -> None:
    async with RedisCache(f"redis://127.0.0.1:{free_port()}/0") as cache:
        first = await cache.acquire_lock("k", 5000)
        second = await cache.acquire_lock("k", 5000)
        assert first is not None and second is not None
        started = time.monotonic()
        assert await cache.wait_for("k", 5.0) is None
        await cache.release_lock("k", first)
        assert time.monotonic() - started < 0.5
