"""Remote Triton backend: the gateway batches and caches, Triton servers execute.

``service.models.sources.TritonSource`` gives every READY version a :class:`TritonBackend`. All
backends share one :class:`ReplicaPool` (pooled clients, health checks, least-outstanding routing,
one retry on another replica).

Settings used: ``triton_url`` (one per replica, HOST:PORT of its gRPC or HTTP endpoint),
``triton_protocol`` (``grpc`` preferred, ``http``), ``triton_health_interval_s`` and, when the
settings define it, ``triton_timeout_s`` (per-call client timeout, default 30 s). With tracing on,
a traced batch carries its compute span's W3C ``traceparent`` to Triton (HTTP header or gRPC
metadata), so Triton's own spans (``--trace-config mode=opentelemetry``) join the trace.
"""

from __future__ import annotations

import logging
from typing import Any

from tritonclient.utils import np_to_triton_dtype

from service.backends.base import Backend
from service.backends.triton.replicas import Replica, ReplicaPool
from service.messages import Tensors
from service.observability import tracing

log = logging.getLogger(__name__)


class TritonBackend(Backend):
    """Sends formed batches of one model version to the replica pool (binary tensors)."""

    def __init__(self, pool: ReplicaPool, model: str, version: str, protocol: str) -> None:
        self.pool = pool
        self.model = model
        self.version = version
        if protocol == "grpc":
            import tritonclient.grpc.aio as client_module
        else:
            import tritonclient.http.aio as client_module
        self._client_module: Any = client_module
        self._grpc = protocol == "grpc"
        # Several batches in flight per replica keep both the network and Triton busy.
        self.concurrency = 2 * len(pool.replicas)

    def healthy(self) -> bool:
        """Whether some healthy replica has this version READY (for model readiness)."""
        return any(r.healthy and r.serves(self.model, self.version) for r in self.pool.replicas)

    def _request(self, inputs: Tensors, output_names: list[str]) -> tuple[list[Any], list[Any]]:
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

    async def execute(self, inputs: Tensors, output_names: list[str]) -> Tensors:
        infer_inputs, requested = self._request(inputs, output_names)
        timeout_s = self.pool.timeout_s
        headers = tracing.outgoing_headers()  # the batch's compute span, when it is traced

        # the pool bounds every call; gRPC also sends it to the server as the deadline
        timeout = {"client_timeout": timeout_s} if self._grpc else {}

        async def infer(replica: Replica) -> Any:
            return await replica.client.infer(
                self.model,
                infer_inputs,
                model_version=self.version,
                outputs=requested,
                headers=headers,
                **timeout,
            )

        result = await self.pool.call(self.model, self.version, infer)
        return {name: result.as_numpy(name) for name in output_names}
