"""Test plumbing shared by every package: one way to wait, config edits, an ``infergate serve``.

Tests never race the clock: they wait for a condition with :func:`wait_until` (or
:func:`wait_until_async` inside a coroutine), whose generous timeout only bounds a hang and whose
failure names what it waited for and what it last saw.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

ROOT = Path(__file__).resolve().parents[1]

T = TypeVar("T")

#: how long a wait may take before it counts as a hang; speed is never what a test checks
WAIT_S = 120.0


class _Poll:
    """The deadline and the failure message shared by the sync and async waits."""

    def __init__(self, timeout: float, what: str, ignore: tuple[type[BaseException], ...]) -> None:
        self.timeout = timeout
        self.what = what
        self.ignore = ignore
        self.deadline = time.monotonic() + timeout
        self.last: object = "(never evaluated)"

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def fail(self) -> AssertionError:
        return AssertionError(
            f"timed out after {self.timeout:.0f}s waiting for {self.what}; last saw {self.last!r}"
        )


def wait_until(
    condition: Callable[[], T],
    timeout: float = WAIT_S,
    what: str = "the condition",
    *,
    interval: float = 0.02,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``condition`` until it returns something truthy and return that.

    Raises AssertionError naming ``what`` and the last value (or ignored exception) it returned
    once ``timeout`` seconds passed. Exceptions listed in ``ignore`` count as "not yet".
    """
    poll = _Poll(timeout, what, ignore)
    while True:
        try:
            value = condition()
        except ignore as exc:
            poll.last = exc
        else:
            if value:
                return value
            poll.last = value
        if poll.expired():
            raise poll.fail()
        time.sleep(interval)


async def wait_until_async(
    condition: Callable[[], T | Awaitable[T]],
    timeout: float = WAIT_S,
    what: str = "the condition",
    *,
    interval: float = 0.005,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """:func:`wait_until` for coroutines: the event loop keeps running between polls.

    ``condition`` may be a plain function or return an awaitable (an ``async def``).
    """
    poll = _Poll(timeout, what, ignore)
    while True:
        try:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
        except ignore as exc:
            poll.last = exc
        else:
            if value:
                return value  # type: ignore[return-value]
            poll.last = value
        if poll.expired():
            raise poll.fail()
        await asyncio.sleep(interval)


class ManualClock:
    """A monotonic clock that moves only when the test says: ``clock.advance(seconds)``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def free_port() -> int:
    """A port free right now, for servers that cannot bind port 0 themselves.

    Another process may take it before the server binds it: callers retry with a fresh one when
    the server reports the address in use.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_PORT_TAKEN = re.compile(r"(?i)already in use|cannot bind")

Process = subprocess.Popen[bytes]


def _kill(process: Process) -> None:
    process.kill()
    process.wait()


def start_process(
    spawn: Callable[[], Process],
    up: Callable[[Process], bool],
    log: Callable[[], str],
    what: str,
    *,
    new_ports: Callable[[], None] | None = None,
    kill: Callable[[Process], None] = _kill,
    timeout: float = WAIT_S,
) -> Process:
    """Spawn a server and wait until ``up(process)``; raise, with its log, if it exits first.

    For servers that cannot bind port 0: when it exits because a port was taken meanwhile and
    ``new_ports`` is given, that picks fresh ones and the server is started again.
    """
    for _ in range(5):
        process = spawn()
        try:
            wait_until(lambda: process.poll() is not None or up(process), timeout, what)  # noqa: B023
        except AssertionError:
            kill(process)
            raise
        if process.poll() is None:
            return process
        text = log()
        if new_ports is None or not _PORT_TAKEN.search(text):
            raise RuntimeError(f"{what}: exited with {process.returncode}:\n{text}")
        new_ports()
    raise RuntimeError(f"{what}: its ports were taken 5 times:\n{log()}")


def edit_config(
    path: Path, mutate: Callable[[model_config_pb2.ModelConfig], None]
) -> model_config_pb2.ModelConfig:
    """Parse ``config.pbtxt``, apply ``mutate``, write it back and check the edit took."""
    before = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    config = model_config_pb2.ModelConfig()
    config.CopyFrom(before)
    mutate(config)
    assert config != before, f"editing {path} changed nothing"
    path.write_text(text_format.MessageToString(config))
    written = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    assert written == config, f"{path} does not hold the edit"
    return written


@dataclass
class Gateway:
    """A running ``infergate serve`` process."""

    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


_HTTP_LISTENING = re.compile(r"HTTP listening on \S+:(\d+)")
_GRPC_LISTENING = re.compile(r"gRPC listening on \S+:(\d+)")


def _spawn_gateway(
    repo: Path | str,
    args: tuple[str, ...],
    env: dict[str, str],
    grpc_port: int,
    via_env: bool,
    log_path: Path,
) -> Process:
    serving = {"model-repo": str(repo), "host": "127.0.0.1", "http-port": "0"}
    serving["grpc-port"] = str(grpc_port)
    # Shedding by predicted queue wait depends on how fast the machine is right now: off unless
    # a test asks for it (a flag, or this variable in ``env``), so a slow shared CI box does not
    # turn a test's big request into a 503.
    quiet = {"PYTHONUNBUFFERED": "1", "INFERGATE_MAX_QUEUE_WAIT_MS": "0"}
    process_env = {**os.environ, **quiet, **env}
    command = [sys.executable, "-m", "service.cli", "serve"]
    for flag, value in serving.items():
        if via_env:
            process_env[f"INFERGATE_{flag.upper().replace('-', '_')}"] = value
        else:
            command += [f"--{flag}", value]
    command += args
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command, cwd=ROOT, env=process_env, stdout=log, stderr=subprocess.STDOUT
        )


def start_gateway(
    repo: Path | str,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = WAIT_S,
    via_env: bool = False,
    ready: Callable[[Gateway], bool] | None = None,
) -> Gateway:
    """Start ``infergate serve`` and wait until it reports ready.

    REST binds port 0 and the port comes from the ``HTTP listening on`` log line. gRPC cannot
    (its port 0 means "off"), so it gets a free port and a start that finds it taken is retried.
    ``via_env`` passes repository, host and ports as ``INFERGATE_*`` variables, not flags.
    ``ready`` replaces the plain-HTTP readiness probe (e.g. for a gateway serving TLS).
    """
    handle, name = tempfile.mkstemp(prefix="infergate-", suffix=".log")
    os.close(handle)
    log_path = Path(name)
    grpc_port = [free_port()]

    def new_grpc_port() -> None:
        grpc_port[0] = free_port()

    process = start_process(
        lambda: _spawn_gateway(repo, args, env or {}, grpc_port[0], via_env, log_path),
        lambda _: bool(_HTTP_LISTENING.search(log_path.read_text(errors="replace"))),
        lambda: log_path.read_text(errors="replace"),
        f"the gateway to announce its ports ({log_path})",
        new_ports=new_grpc_port,
        timeout=timeout,
    )
    text = log_path.read_text(errors="replace")
    http_match, grpc_match = _HTTP_LISTENING.search(text), _GRPC_LISTENING.search(text)
    assert http_match is not None
    grpc_bound = int(grpc_match.group(1)) if grpc_match else 0
    gateway = Gateway(process, int(http_match.group(1)), grpc_bound, log_path, list(args))
    try:
        check = ready or _ready
        wait_until(lambda: check(gateway), timeout, f"the gateway to be ready ({log_path})")
    except AssertionError:
        gateway.stop()
        raise
    return gateway


def _ready(gateway: Gateway) -> bool:
    if not gateway.alive():
        raise RuntimeError(f"gateway exited with {gateway.process.returncode}:\n{gateway.log()}")
    try:
        return httpx.get(f"{gateway.base_url}/v2/health/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
