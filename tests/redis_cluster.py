"""A real 3-master Redis Cluster on 127.0.0.1: three ``redis-server`` processes joined by
``redis-cli --cluster create``, started and stopped by the tests themselves.

Like ``tests/redis_server.py``, it fails (never skips quietly) without the binaries,
unless ASGI_AUTOPROXY_SKIP_REDIS=1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

from tests.redis_server import SKIP_ENV, find_binary

READY_TIMEOUT = 30.0


def _port_pair_free(port: int) -> bool:
    """A cluster node needs its port and the bus port 10000 above it."""
    for candidate in (port, port + 10000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                return False
    return True


def _free_node_ports(count: int) -> list[int]:
    ports: list[int] = []
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + 10000 < 65536 and port not in ports and _port_pair_free(port):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError("no free port pairs for a Redis Cluster")


def _redis_cli() -> str:
    found = shutil.which("redis-cli") or shutil.which("valkey-cli")
    if found:
        return found
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"redis-cli not installed and {SKIP_ENV}=1")
    pytest.fail("The cluster tests need redis-cli: apt-get install -y redis-server", pytrace=False)


def _ask(port: int, command: bytes) -> bytes:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(command)
            return sock.recv(4096)
    except OSError:
        return b""


class RedisCluster:
    """Three masters, no replicas; every slot covered once ``start`` returns."""

    def __init__(self) -> None:
        self.binary = find_binary()
        self.cli = _redis_cli()
        self.ports = _free_node_ports(3)
        self._dir = tempfile.mkdtemp(prefix="asgi_autoproxy-cluster-")
        self._processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """Any node will do: the client learns the others from it."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self) -> None:
        for port in self.ports:
            node_dir = os.path.join(self._dir, str(port))
            os.makedirs(node_dir)
            args = [
                self.binary,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", os.path.join(node_dir, "nodes.conf"),
                "--cluster-node-timeout", "2000",
                "--save", "",
                "--appendonly", "no",
                "--dir", node_dir,
                "--logfile", os.path.join(node_dir, "server.log"),
            ]  # fmt: skip
            self._processes.append(subprocess.Popen(args, stdout=subprocess.DEVNULL))
        deadline = time.monotonic() + READY_TIMEOUT
        for port in self.ports:
            while not _ask(port, b"PING\r\n").startswith(b"+PONG"):
                assert time.monotonic() < deadline, f"cluster node {port} did not start"
                time.sleep(0.02)
        create = [
            self.cli, "--cluster", "create",
            *(f"127.0.0.1:{port}" for port in self.ports),
            "--cluster-replicas", "0", "--cluster-yes",
        ]  # fmt: skip
        result = subprocess.run(create, capture_output=True, timeout=READY_TIMEOUT, check=False)
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
        for port in self.ports:
            while b"cluster_state:ok" not in _ask(port, b"CLUSTER INFO\r\n"):
                assert time.monotonic() < deadline, f"cluster node {port} never became ok"
                time.sleep(0.05)

    def close(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        for process in self._processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(self._dir, ignore_errors=True)


@contextlib.contextmanager
def running_cluster() -> Iterator[RedisCluster]:
    cluster = RedisCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
