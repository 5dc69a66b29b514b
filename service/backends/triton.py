"""Remote Triton backend: the gateway batches and caches, Triton servers execute.

``TritonSource(settings)`` is the model source for ``--backend triton``: it lists the models in
the replicas' repository indexes, reads each model's config from Triton itself (so shapes,
batching and ``response_cache`` follow what Triton serves) and gives every READY version a
:class:`TritonBackend`. All backends share one :class:`ReplicaPool` (pooled clients, health
checks, least-outstanding routing, one retry on another replica). Call ``await source.close()``
on shutdown to stop health checks and close the clients.

Settings used: ``triton_url`` (one per replica, HOST:PORT of its gRPC or HTTP endpoint),
``triton_protocol`` (``grpc`` preferred, ``http``), ``triton_health_interval_s`` and, when the
settings define it, ``triton_timeout_s`` (per-call client timeout, default 30 s).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import np_to_triton_dtype

from service.backends.base import Backend
from service.backends.triton_replicas import Replica, ReplicaPool
from service.errors import Unavailable
from service.repository import ModelSource
from service.settings import Settings

log = logging.getLogger(__name__)


class TritonSource(ModelSource):
    """Models served by a set of Triton replicas that all hold the same repository."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.timeout_s = settings.triton_timeout_s
        self.pool = ReplicaPool(
            list(settings.triton_url),
            settings.triton_protocol,
            settings.triton_health_interval_s,
            self.timeout_s,
        )
        self._start_lock = asyncio.Lock()
        self._names: list[str] = []

    async def _started(self) -> ReplicaPool:
        """Start health checks; on first start wait a while for one replica (compose ordering)."""
        pool = self.pool
        async with self._start_lock:
            if pool.started:
                return pool
            await pool.start()
            loop = asyncio.get_running_loop()
            wait_s = self.settings.triton_startup_wait_s
            deadline = loop.time() + wait_s
            while not pool.healthy() and loop.time() < deadline:
                await asyncio.sleep(min(pool.interval_s, 1.0))
            if not pool.healthy():
                log.error(
                    "no Triton replica is healthy after %gs: %s",
                    wait_s,
                    "; ".join(f"{r.url}: {r.reason}" for r in pool.replicas),
                )
        return pool

    async def model_names(self) -> list[str]:
        """Models in the healthy replicas' indexes; the last known list while none is healthy,
        so an outage does not unload everything under ``--model-control-mode poll``."""
        pool = await self._started()
        if pool.healthy():
            self._names = sorted({row["name"] for r in pool.healthy() for row in r.index})
        return list(self._names)

    async def load(self, name: str) -> dict[str, tuple[model_config_pb2.ModelConfig, Backend]]:
        pool = await self._started()
        versions = sorted(
            {
                version
                for r in pool.healthy()
                for (model, version) in r.ready_models
                if model == name
            },
            key=lambda v: int(v) if v.isdigit() else -1,
        )
        if not versions:
            raise ValueError(f"no Triton replica has '{name}' READY ({_states(pool, name)})")

        async def fetch(replica: Replica) -> model_config_pb2.ModelConfig:
            return await replica.model_config(name)

        try:
            config = await pool.call(name, versions[-1], fetch)
        except Unavailable as exc:
            raise ValueError(exc.message) from exc
        loaded: dict[str, tuple[model_config_pb2.ModelConfig, Backend]] = {}
        for version in versions:
            copy = model_config_pb2.ModelConfig()
            copy.CopyFrom(config)
            loaded[version] = (
                copy,
                TritonBackend(pool, name, version, self.settings.triton_protocol),
            )
        return loaded

    async def close(self) -> None:
        await self.pool.close()


def _states(pool: ReplicaPool, name: str) -> str:
    parts = []
    for r in pool.replicas:
        if not r.healthy:
            parts.append(f"{r.url}: {r.reason}")
            continue
        rows = [row for row in r.index if row["name"] == name]
        state = ", ".join(
            f"{row.get('state', '?')} {row.get('reason', '')}".strip() for row in rows
        )
        parts.append(f"{r.url}: {state or 'not in its repository'}")
    return "; ".join(parts)


class TritonBackend(Backend):
    """Sends formed batches of one model version to the replica pool (binary tensors)."""

    def __init__(self, pool: ReplicaPool, model: str, version: str, protocol: str) -> None:
        self.pool = pool
        self.model = model
        self.version = version
        if protocol == "grpc":
            import tritonclient.grpc.aio as client_module
        else:
            import tritonclient.http.aio as client_module  # type: ignore[no-redef]
        self._client_module: Any = client_module
        self._grpc = protocol == "grpc"
        # Several batches in flight per replica keep both the network and Triton busy.
        self.concurrency = 2 * len(pool.replicas)

    def healthy(self) -> bool:
        """Whether some healthy replica has this version READY (for model readiness)."""
        return any(r.healthy and r.serves(self.model, self.version) for r in self.pool.replicas)

    def _request(
        self, inputs: dict[str, np.ndarray], output_names: list[str]
    ) -> tuple[list[Any], list[Any]]:
        module = self._client_module
        infer_inputs = []
        for name, array in inputs.items():
            tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            if self._grpc:
                tensor.set_data_from_numpy(array)
            else:
                tensor.set_data_from_numpy(array, binary_data=True)
            infer_inputs.append(tensor)
        if self._grpc:
            outputs = [module.InferRequestedOutput(name) for name in output_names]
        else:
            outputs = [module.InferRequestedOutput(name, binary_data=True) for name in output_names]
        return infer_inputs, outputs

    async def execute(
        self, inputs: dict[str, np.ndarray], output_names: list[str]
    ) -> dict[str, np.ndarray]:
        infer_inputs, requested = self._request(inputs, output_names)
        timeout_s = self.pool.timeout_s

        async def infer(replica: Replica) -> Any:
            if self._grpc:
                return await replica.client.infer(
                    self.model,
                    infer_inputs,
                    model_version=self.version,
                    outputs=requested,
                    client_timeout=timeout_s,
                )
            return await replica.client.infer(
                self.model, infer_inputs, model_version=self.version, outputs=requested
            )

        result = await self.pool.call(self.model, self.version, infer)
        return {name: result.as_numpy(name) for name in output_names}
