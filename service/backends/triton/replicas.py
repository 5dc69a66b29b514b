"""Remote Triton replicas: pooled asyncio clients, health checks, least-outstanding routing, retry.

One client per replica is created on first use and reused (gRPC channel or aiohttp session). A
background task checks every replica each ``triton_health_interval_s`` (server ready + repository
index); a replica that fails a check or a call is taken out of rotation and put back once a check
passes again. An inference that fails for replica reasons (connection lost, server unavailable,
model not loaded there, timeout) is retried once on another healthy replica; errors about the
request itself are mapped to the gateway's v2 errors and never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from service.errors import (
    BadRequest,
    InferenceError,
    Internal,
    Overloaded,
    Timeout,
    Unavailable,
)

log = logging.getLogger(__name__)

#: gRPC status / HTTP status of a Triton error -> gateway error class, for errors about the request
_REQUEST_ERRORS: dict[str, type[InferenceError]] = {
    "StatusCode.INVALID_ARGUMENT": BadRequest,
    "StatusCode.OUT_OF_RANGE": BadRequest,
    "StatusCode.FAILED_PRECONDITION": BadRequest,
    "StatusCode.UNIMPLEMENTED": BadRequest,
    "StatusCode.ALREADY_EXISTS": BadRequest,
    "400": BadRequest,
    "413": BadRequest,
    "422": BadRequest,
}
#: errors that say the replica, not the request, is the problem: retry elsewhere
_REPLICA_ERRORS = {
    "StatusCode.UNAVAILABLE",
    "StatusCode.CANCELLED",
    "StatusCode.ABORTED",
    "StatusCode.UNKNOWN",
    "StatusCode.NOT_FOUND",
    "StatusCode.RESOURCE_EXHAUSTED",
    "404",
    "429",
    "502",
    "503",
}
_TIMEOUTS = {"StatusCode.DEADLINE_EXCEEDED", "504"}
_OVERLOAD = {"StatusCode.RESOURCE_EXHAUSTED", "429"}
_DOWN = {"StatusCode.UNAVAILABLE", "StatusCode.UNKNOWN", "502", "503"}
_UNKNOWN_MODEL = ("unknown model", "no available versions", "is not ready")


class ReplicaFailure(Exception):
    """A call failed because of the replica; ``down`` says whether to take it out of rotation."""

    def __init__(self, reason: str, *, down: bool, cause: type[InferenceError]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.down = down
        self.cause = cause


def classify(exc: BaseException, timeout_s: float) -> Exception:
    """Turn a client exception into a gateway error or a :class:`ReplicaFailure`."""
    if isinstance(exc, TimeoutError):
        return ReplicaFailure(f"no answer within {timeout_s:g}s", down=True, cause=Timeout)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return ReplicaFailure(f"unreachable ({_short(str(exc))})", down=True, cause=Unavailable)
    if not isinstance(exc, InferenceServerException):
        return Internal(f"Triton call failed: {exc}")
    status = str(exc.status() or "")
    text = str(exc.message() or exc).removeprefix("[request id: <id_unknown>] ")
    if status in _TIMEOUTS:
        return ReplicaFailure(f"deadline exceeded ({text})", down=True, cause=Timeout)
    unknown_model = _mentions_unknown_model(text)
    if status in _REPLICA_ERRORS or (status == "400" and unknown_model):
        if "connect" in text.lower():
            text = f"unreachable ({_short(text)})"
        down = status in _DOWN and not unknown_model
        return ReplicaFailure(
            text, down=down, cause=Overloaded if status in _OVERLOAD else Unavailable
        )
    error = _REQUEST_ERRORS.get(status)
    return error(text) if error else Internal(f"Triton: {text}")


def _short(text: str) -> str:
    """gRPC's "failed to connect ...; last error: ...: Connection refused" -> the last part."""
    return text.rsplit(": ", 1)[-1].strip() or text


def _mentions_unknown_model(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in _UNKNOWN_MODEL)


@dataclass(eq=False)
class Replica:
    """One Triton server and the one client the gateway keeps open to it."""

    url: str
    protocol: str  # "grpc" | "http"
    healthy: bool = False
    reason: str = "not checked yet"
    outstanding: int = 0
    slow_checks: int = 0  # consecutive health checks that timed out
    #: (model, version) pairs READY in this replica's repository index, from the last check
    ready_models: set[tuple[str, str]] = field(default_factory=set)
    index: list[dict[str, str]] = field(default_factory=list)
    _client: Any = None

    @property
    def client(self) -> Any:
        """The pooled asyncio client, created inside the running loop on first use."""
        if self._client is None:
            if self.protocol == "grpc":
                import tritonclient.grpc.aio as grpcclient

                self._client = grpcclient.InferenceServerClient(
                    self.url,
                    channel_args=[
                        ("grpc.max_send_message_length", -1),
                        ("grpc.max_receive_message_length", -1),
                        # reconnect soon after a restart instead of backing off up to 2 minutes
                        ("grpc.initial_reconnect_backoff_ms", 200),
                        ("grpc.min_reconnect_backoff_ms", 200),
                        ("grpc.max_reconnect_backoff_ms", 1000),
                    ],
                )
            else:
                import tritonclient.http.aio as httpclient

                self._client = httpclient.InferenceServerClient(self.url, conn_limit=256)
        return self._client

    async def check(self, timeout_s: float) -> None:
        """Server ready + repository index; sets ``healthy`` and ``reason``."""
        try:
            async with asyncio.timeout(timeout_s):
                ready = await self.client.is_server_ready()
                index = await self.repository_index() if ready else []
        except Exception as exc:  # a refused connection means: do not route here
            failure = classify(exc, timeout_s)
            self.slow_checks = self.slow_checks + 1 if isinstance(exc, TimeoutError) else 0
            if self.slow_checks == 1 and self.healthy:
                return  # one slow answer on a busy host is not an outage; two in a row are
            self.mark_down(failure.reason if isinstance(failure, ReplicaFailure) else str(failure))
            return
        self.slow_checks = 0
        if not ready:
            self.mark_down("server reports not ready")
            return
        self.index = index
        self.ready_models = {
            (m["name"], m.get("version", "")) for m in index if m["state"] == "READY"
        }
        if not self.healthy:
            log.info("Triton replica %s is healthy (%d models ready)", self.url, len(index))
        self.healthy, self.reason = True, ""

    def mark_down(self, reason: str) -> None:
        if self.healthy:
            log.warning("Triton replica %s out of rotation: %s", self.url, reason)
        self.healthy, self.reason = False, reason

    def serves(self, model: str, version: str) -> bool:
        if not version:
            return any(name == model for name, _ in self.ready_models)
        return (model, version) in self.ready_models

    async def repository_index(self) -> list[dict[str, str]]:
        if self.protocol == "grpc":
            response = await self.client.get_model_repository_index(as_json=True)
            rows = response.get("models", [])
        else:
            rows = await self.client.get_model_repository_index()
        return [{k: str(v) for k, v in row.items()} for row in rows]

    async def model_config(self, model: str) -> model_config_pb2.ModelConfig:
        if self.protocol == "grpc":
            response = await self.client.get_model_config(model, as_json=False)
            config: model_config_pb2.ModelConfig = response.config
            return config
        as_dict = await self.client.get_model_config(model)
        return json_format.ParseDict(
            as_dict, model_config_pb2.ModelConfig(), ignore_unknown_fields=True
        )

    async def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
            self._client = None


class ReplicaPool:
    """Routes calls to the healthy replica with the fewest outstanding requests."""

    def __init__(self, urls: list[str], protocol: str, interval_s: float, timeout_s: float) -> None:
        if not urls:
            raise ValueError("--backend triton needs at least one --triton-url HOST:PORT")
        self.urls = [url.removeprefix("http://").removeprefix("grpc://") for url in urls]
        self.protocol = protocol
        self.replicas = [Replica(url, protocol) for url in self.urls]
        #: configured url -> replica urls it last resolved to
        self._expanded: dict[str, list[str]] = {url: [url] for url in self.urls}
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._turn = itertools.count()
        self._task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._task is not None

    async def start(self) -> None:
        """One health round now, then a background task (idempotent)."""
        if self._task is None:
            await self.check_all()
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="triton-health")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for replica in self.replicas:
            await replica.close()

    async def check_all(self) -> None:
        await self.resolve()
        check_timeout = min(max(2 * self.interval_s, 2.0), 5.0)
        await asyncio.gather(*(r.check(check_timeout) for r in self.replicas))

    async def resolve(self) -> None:
        """One replica per address a configured name resolves to, re-resolved every round.

        A Kubernetes headless Service (``triton:8001``) answers with every ready Triton pod, so pods
        an autoscaler adds join the pool and removed ones leave it. A name that does not resolve
        right now keeps its last replicas (their health checks decide).
        """
        loop = asyncio.get_running_loop()
        for url in self.urls:
            host, _, port = url.rpartition(":")
            try:
                infos = await loop.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            except (OSError, ValueError):
                continue
            v4 = [info[4][0] for info in infos if info[0] == socket.AF_INET]
            addresses = sorted(set(v4 or [f"[{info[4][0]}]" for info in infos]))
            # one address: keep the name as the user wrote it
            self._expanded[url] = (
                [url] if len(addresses) <= 1 else [f"{a}:{port}" for a in addresses]
            )
        wanted = list(dict.fromkeys(u for url in self.urls for u in self._expanded[url]))
        if wanted == [replica.url for replica in self.replicas]:
            return
        kept = {replica.url: replica for replica in self.replicas}
        self.replicas = [kept.get(url) or Replica(url, self.protocol) for url in wanted]
        for url, replica in kept.items():
            if url not in wanted:
                log.info("Triton replica %s left the pool (no longer in DNS)", url)
                await replica.close()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check_all()
            except Exception:  # a broken check must not end health checking
                log.exception("Triton health check failed")

    def healthy(self) -> list[Replica]:
        return [r for r in self.replicas if r.healthy]

    def pick(self, model: str, version: str, exclude: set[str]) -> Replica:
        """The least-busy healthy replica serving the model; round-robin among ties."""
        candidates = [
            r
            for r in self.replicas
            if r.url not in exclude and r.healthy and r.serves(model, version)
        ]
        if not candidates:
            raise Unavailable(self.why_unavailable(model, version))
        start = next(self._turn) % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        return min(rotated, key=lambda r: r.outstanding)

    def why_unavailable(self, model: str, version: str) -> str:
        label = f"'{model}'" + (f" version {version}" if version else "")
        reasons = []
        for r in self.replicas:
            if not r.healthy:
                reasons.append(f"{r.url}: {r.reason}")
            elif not r.serves(model, version):
                reasons.append(f"{r.url}: model not ready there")
            else:
                reasons.append(f"{r.url}: failed this request")
        return f"no healthy Triton replica for model {label} ({'; '.join(reasons)})"

    async def call(self, model: str, version: str, operation: Any) -> Any:
        """``await operation(replica)`` on one replica; once more on another on replica failure."""
        tried: set[str] = set()
        failures: list[str] = []
        cause: type[InferenceError] = Unavailable
        for _attempt in range(2):
            try:
                replica = self.pick(model, version, tried)
            except Unavailable as exc:
                if not failures:
                    raise
                raise cause(exc.message) from exc
            tried.add(replica.url)
            replica.outstanding += 1
            try:
                async with asyncio.timeout(self.timeout_s):
                    return await operation(replica)
            except Exception as exc:
                error = classify(exc, self.timeout_s)
                if not isinstance(error, ReplicaFailure):
                    raise error from exc
                failures.append(f"{replica.url}: {error.reason}")
                cause = error.cause
                if error.down:
                    replica.mark_down(error.reason)
                else:
                    replica.ready_models.discard((model, version))
                    log.warning("Triton %s: model %s: %s", replica.url, model, error.reason)
            finally:
                replica.outstanding -= 1
        raise cause(f"model '{model}' failed on 2 Triton replicas ({'; '.join(failures)})")
