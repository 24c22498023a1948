"""RedisCache on a real 3-master Redis Cluster, and the other ways to reach Redis: a
``RedisCluster`` client, ``valkey://``, Sentinel (a real one), and TLS (``rediss://`` and
``valkeys://`` against a real TLS-only redis-server)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pytest
import redis
import redis.asyncio

from asgi_autoproxy import AutoProxyMiddleware, CacheOptions, RedisCache
from asgi_autoproxy._shared.redis_link import RedisLink
from tests.conftest import CALLER_KEY, MakeProxy, chat_body
from tests.fake_upstream import FakeUpstream
from tests.redis_cluster import RedisCluster
from tests.redis_server import RedisServer, find_binary, free_port, running_redis

pytestmark = pytest.mark.anyio


@pytest.fixture
async def cache(cluster: RedisCluster) -> AsyncIterator[RedisCache]:
    async with RedisCache(cluster.url, prefix="cl:", timeout=2) as made:
        yield made


async def test_entries_spread_over_the_nodes_and_round_trip(
    cache: RedisCache, cluster: RedisCluster
) -> None:
    keys = [f"{i:064x}" for i in range(60)]
    for key in keys:
        await cache.set(key, key.encode(), ttl=60)
    assert [await cache.get(key) for key in keys] == [key.encode() for key in keys]
    client = cache.link.client()
    assert isinstance(client, redis.asyncio.RedisCluster)
    slots = {client.keyslot(cache.entry_name(key)) for key in keys}
    nodes = {client.get_node_from_key(cache.entry_name(key)).port for key in keys}
    assert len(slots) > 30 and nodes == set(cluster.ports)  # every master holds some
    assert cache.errors == 0


async def test_an_entry_its_lock_and_its_stream_share_one_slot(cache: RedisCache) -> None:
    client = cache.link.client()
    assert isinstance(client, redis.asyncio.RedisCluster)
    for key in (f"{i:064x}" for i in range(20)):
        names = {cache.entry_name(key), cache.lock_name(key), cache.stream_name(key)}
        assert len(names) == 3
        assert len({client.keyslot(name) for name in names}) == 1


async def test_locks_and_waiting_work_on_the_cluster(cache: RedisCache) -> None:
    """wait_for reads the entry and its lock in one MGET: no CROSSSLOT on a cluster."""
    key = "ab" * 32
    token = await cache.acquire_lock(key, 5000)
    assert token is not None
    assert await cache.acquire_lock(key, 5000) is None

    async def fill() -> None:
        await anyio.sleep(0.2)
        await cache.set(key, b"filled", ttl=60)
        await cache.release_lock(key, token)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(fill)
        assert await cache.wait_for(key, 5) == b"filled"
    assert cache.errors == 0
    assert await cache.acquire_lock(key, 5000) is not None


async def test_a_redis_cluster_client_is_accepted(cluster: RedisCluster) -> None:
    client = redis.asyncio.RedisCluster(host="127.0.0.1", port=cluster.ports[1])
    try:
        cache = RedisCache(prefix="given:", client=client, timeout=2)  # no AttributeError
        assert cache.link.cluster
        await cache.set("k", b"v", ttl=60)
        assert await cache.get("k") == b"v"
        await cache.aclose()  # the caller's client stays open
        assert await client.get("given:{k}") == b"v"
    finally:
        await client.aclose()


def test_a_decoding_cluster_client_is_refused(cluster: RedisCluster) -> None:
    client = redis.asyncio.RedisCluster(
        host="127.0.0.1", port=cluster.ports[0], decode_responses=True
    )
    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisCache(client=client)


async def test_miss_on_one_instance_is_a_hit_on_another_on_the_cluster(
    make_proxy: MakeProxy, upstream: FakeUpstream, cluster: RedisCluster
) -> None:
    a, b = (
        make_proxy(
            cache=RedisCache(cluster.url, prefix="mw:", timeout=2),
            cache_options=CacheOptions(timeout=2),  # a first command also maps the cluster
        )
        for _ in "ab"
    )
    body = chat_body("cluster-wide cache", temperature=0)
    first = await _post(a, body)
    second = await _post(b, body)
    assert (first.headers["x-bt-cached"], second.headers["x-bt-cached"]) == ("MISS", "HIT")
    assert second.json() == first.json()
    assert upstream.calls == 1


async def _post(app: AutoProxyMiddleware, body: dict[str, object]) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://t",
        headers={"authorization": f"Bearer {CALLER_KEY}"},
    ) as http:
        response = await http.post("/v1/proxy/auto", json=body)
    assert response.status_code == 200
    return response


@pytest.mark.parametrize(
    ("url", "kind", "location"),
    [
        ("valkey://:pw@cache.internal:6380/2", "single", "valkey://cache.internal:6380/2"),
        ("valkeys://cache.internal", "single", "valkeys://cache.internal:6379"),
        ("rediss://u:pw@cache.internal:6390/0", "single", "rediss://cache.internal:6390/0"),
        ("redis+cluster://:pw@node1:7000", "cluster", "redis+cluster://node1:7000"),
        ("valkey+cluster://node1:7000", "cluster", "valkey+cluster://node1:7000"),
        (
            "redis+sentinel://:pw@s1:26379,s2:26380/mymaster/1",
            "sentinel",
            "redis+sentinel://s1:26379,s2:26380/mymaster/1",
        ),
    ],
)
def test_urls_it_accepts(url: str, kind: str, location: str) -> None:
    link = RedisLink(url)
    assert link.cluster is (kind == "cluster")
    assert link.location == location
    assert "pw" not in repr(RedisCache(url))


def test_a_rediss_url_connects_with_tls() -> None:
    from redis.asyncio.connection import SSLConnection

    async def kind() -> type:
        client = RedisLink("valkeys://cache.internal:6390/0").client()
        assert isinstance(client, redis.asyncio.Redis)
        return client.connection_pool.connection_class

    assert anyio.run(kind) is SSLConnection


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379", "redis://"),
        ("redis+mesh://h:1", "redis+cluster://"),
        ("redis+sentinel://s1:26379", "service name"),
        ("redis+sentinel://s1:x/master", "host:port"),
    ],
)
def test_urls_it_refuses_say_what_it_accepts(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        RedisCache(url)


@pytest.fixture(scope="module")
def sentinel() -> Iterator[tuple[RedisServer, int]]:
    """A master and one real Sentinel (``redis-server --sentinel``) watching it."""
    with running_redis() as master:
        port = free_port()
        workdir = tempfile.mkdtemp(prefix="asgi_autoproxy-sentinel-")
        config = os.path.join(workdir, "sentinel.conf")
        with open(config, "w") as file:
            file.write(
                f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
            )
        process = subprocess.Popen([find_binary(), config, "--sentinel"], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock,
                ):
                    sock.sendall(b"SENTINEL get-master-addr-by-name mymaster\r\n")
                    if str(master.port).encode() in sock.recv(256):
                        break
                assert time.monotonic() < deadline, "sentinel did not start"
                time.sleep(0.05)
            yield master, port
        finally:
            process.terminate()
            process.wait(timeout=10)
            shutil.rmtree(workdir, ignore_errors=True)


async def test_a_sentinel_url_finds_the_master(sentinel: tuple[RedisServer, int]) -> None:
    master, port = sentinel
    async with RedisCache(f"redis+sentinel://127.0.0.1:{port}/mymaster/0", timeout=2) as cache:
        await cache.set("k", b"through sentinel", ttl=60)
        assert await cache.get("k") == b"through sentinel"
        assert cache.errors == 0
    with redis.Redis.from_url(master.url) as raw:
        assert raw.get("asgi_autoproxy:{k}") == b"through sentinel"


def _tls_files(directory: str) -> tuple[str, str, str]:
    """A CA, and a certificate it signed for 127.0.0.1, with its key: PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None = None,
        signer: ec.EllipticCurvePrivateKey | None = None, ca: bool = False,
    ) -> x509.Certificate:  # fmt: skip
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return builder.sign(signer or key, hashes.SHA256())

    ca_key, server_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = certificate("test CA", ca_key, ca=True)
    server = certificate("127.0.0.1", server_key, issuer=ca.subject, signer=ca_key)
    paths = [os.path.join(directory, name) for name in ("ca.pem", "server.pem", "server.key")]
    for path, data in zip(
        paths,
        (
            ca.public_bytes(serialization.Encoding.PEM),
            server.public_bytes(serialization.Encoding.PEM),
            server_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        ),
        strict=True,
    ):
        with open(path, "wb") as file:
            file.write(data)
    return paths[0], paths[1], paths[2]


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[tuple[int, str]]:
    """A redis-server that speaks only TLS, on a certificate from a test CA."""
    workdir = tempfile.mkdtemp(prefix="asgi_autoproxy-tls-")
    ca, cert, key = _tls_files(workdir)
    port = free_port()
    process = subprocess.Popen(
        [
            find_binary(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca,
            "--tls-auth-clients", "no", "--save", "", "--dir", workdir,
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            assert time.monotonic() < deadline, "the TLS redis-server did not start"
            time.sleep(0.05)
        yield port, ca
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize("scheme", ["rediss", "valkeys"])
async def test_a_tls_url_reaches_a_tls_only_redis(scheme: str, tls_redis: tuple[int, str]) -> None:
    port, ca = tls_redis
    async with RedisCache(f"{scheme}://127.0.0.1:{port}/0?ssl_ca_certs={ca}", timeout=2) as cache:
        await cache.set(scheme, b"over TLS", ttl=60)
        assert await cache.get(scheme) == b"over TLS"
        assert cache.errors == 0
    # The port speaks only TLS: a plain connection gets nowhere.
    async with RedisCache(f"redis://127.0.0.1:{port}/0", timeout=0.5) as plain:
        assert await plain.get(scheme) is None and plain.errors == 1
