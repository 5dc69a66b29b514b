"""A real ``redis-server`` for tests: free port, no persistence, kill and restart on the same port.

redis-server cannot bind port 0 (that turns TCP off), so a first start that finds its free port
taken picks another one and starts again.

Import the fixtures into a conftest (``from tests.redis_server import redis_server,
redis_server_factory``) or use :class:`RedisServer` directly from scripts and benchmarks.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import WAIT_S, free_port, start_process

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

#: bound on one Redis call or a wait for background writes: a hang, never a busy machine
SLOW_REDIS_S = 60.0


def free_cluster_port() -> int:
    """A free port whose cluster-bus twin (port + 10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port > 55535:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _serves_as(port: int, pid: int, password: str | None = None, timeout_s: float = 5.0) -> bool:
    """Whether the redis-server with process id ``pid`` answers on ``port`` (not another one)."""
    commands = ([f"AUTH {password}"] if password else []) + ["INFO server"]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall("".join(f"{command}\r\n" for command in commands).encode())
            reply = b""
            while True:
                found = reply.find(b"process_id:")
                if found >= 0 and reply.find(b"\r\n", found) >= 0:
                    return f"process_id:{pid}\r\n".encode() in reply
                chunk = sock.recv(4096)
                reply += chunk
                if not chunk or reply.startswith(b"-"):
                    return False
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process; ``kill()`` and ``start()`` keep the port."""

    def __init__(
        self,
        port: int | None = None,
        password: str | None = None,
        extra: list[str] | None = None,
        pick_port: Callable[[], int] = free_port,
    ) -> None:
        self.pick_port = pick_port
        self.port = port or pick_port()
        # a port we picked may be re-picked if taken, until clients know it (the first start)
        self.port_fixed = port is not None
        self.password = password
        self.extra = list(extra or [])
        self.dir = Path(tempfile.mkdtemp(prefix="infergate-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout_s: float = WAIT_S) -> RedisServer:
        """Start and wait until it answers; a first start on a port taken meanwhile moves."""
        if self.running:
            return self
        self.process = start_process(
            self._spawn,
            lambda process: self._answers(process.pid),
            self.log_tail,
            f"redis-server on port {self.port} to answer",
            new_ports=None if self.port_fixed else self._new_port,
            timeout=timeout_s,
        )
        self.port_fixed = True  # restarts keep it: clients reconnect to it
        return self

    def _new_port(self) -> None:
        self.port = self.pick_port()

    def _spawn(self) -> subprocess.Popen[bytes]:
        args = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--protected-mode", "no",
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra
        with (self.dir / "redis.log").open("ab") as log:
            return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)

    def _answers(self, pid: int) -> bool:
        return _serves_as(self.port, pid, self.password)

    def kill(self) -> None:
        """SIGKILL, like a crashed or partitioned Redis; the port is free again afterwards."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def restart(self) -> RedisServer:
        self.kill()
        return self.start()

    def log_tail(self, lines: int = 20) -> str:
        path = self.dir / "redis.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


@pytest.fixture
def redis_server_factory() -> Iterator[Callable[..., RedisServer]]:
    """Start any number of servers (``factory(password=...)``); all are removed afterwards."""
    servers: list[RedisServer] = []

    def factory(**kwargs: object) -> RedisServer:
        server = RedisServer(**kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server.start()

    yield factory
    for server in servers:
        server.cleanup()


@pytest.fixture
def redis_server(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    """A fresh, empty redis-server for one test."""
    return redis_server_factory()
