"""Embedded ONNX Runtime backend: runs batches in a small thread pool, off the event loop."""

from __future__ import annotations

import asyncio
import logging
import queue
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument
from tritonclient.grpc import model_config_pb2

from service import parameters
from service.backends.base import Backend
from service.backends.onnxruntime.gpu_budget import LEDGER
from service.backends.onnxruntime.placement import Placement, plan_sessions
from service.backends.onnxruntime.runtime import Slot, describe, make_slots, run_warmup
from service.backends.onnxruntime.sessions import (
    OpenedSession,
    engine_cache_dir,
    open_session,
    preload_gpu_libraries,
)
from service.backends.onnxruntime.warmup import warmup_samples
from service.datatypes import ORT_TO_V2, V2_TO_CONFIG
from service.errors import BadRequest
from service.host import cuda_gpu_count
from service.messages import Array, Tensors
from service.observability.metrics import INSTANCE_INFO, WARMUP_SECONDS
from service.settings import Settings

log = logging.getLogger(__name__)


def plan(
    config: model_config_pb2.ModelConfig,
    settings: Settings,
    version: str,
    visible_gpus: Sequence[int] | None = None,
) -> Placement:
    """Where a version's sessions go (visible GPUs: every CUDA GPU unless given); also what a
    load will reserve on each GPU (``Placement.gpu_memory``) before it starts."""
    gpus = range(cuda_gpu_count()) if visible_gpus is None else visible_gpus
    return plan_sessions(
        config,
        visible_gpus=list(gpus),
        override=settings.execution_providers,
        engine_cache_dir=engine_cache_dir(settings, config.name, version),
    )


def _config_dims(shape: list[int | str | None], batch_axis: bool) -> list[int]:
    dims = [d if isinstance(d, int) and d >= 0 else -1 for d in shape]
    return dims[1:] if batch_axis else dims


class OnnxRuntimeBackend(Backend):
    """The sessions ``config.pbtxt`` places (see ``service.backends.onnxruntime.placement``).

    CPU: one session shared by ``instance_group.count`` threads. GPU: one session per instance
    on each listed GPU; batches go to whichever instance is free.
    """

    def __init__(
        self,
        model_path: Path,
        config: model_config_pb2.ModelConfig,
        settings: Settings,
        visible_gpus: Sequence[int] | None = None,
    ) -> None:
        self.model, self.version = config.name, model_path.parent.name
        self.placement = plan(config, settings, self.version, visible_gpus)
        self._reservation = LEDGER.reserve(
            f"{self.model}/{self.version}",
            self.placement.gpu_memory(),
            settings.gpu_memory_budget_bytes,
        )
        try:
            preload_gpu_libraries(self.placement)
            label = f"{self.model} version {self.version}"
            self.instances = [
                open_session(model_path, plan, settings, label) for plan in self.placement.sessions
            ]
        except BaseException:
            LEDGER.release(self._reservation)
            raise
        self.session = self.instances[0].session  # the graph's signature is the same in all
        self.model_dir = model_path.parent.parent
        slots, self._binders = make_slots(
            self.instances, self.placement.io_binding, config.max_batch_size > 0
        )
        self._slots = slots
        self._free: queue.SimpleQueue[Slot] = queue.SimpleQueue()
        for slot in slots:
            self._free.put(slot)
        self.concurrency = len(slots)
        self._warmed = False
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"ort-{config.name}")
        self._info = Counter(self._info_labels(opened) for opened in self.instances)
        for labels, count in self._info.items():
            INSTANCE_INFO.hold(labels, count)

    def _info_labels(self, opened: OpenedSession) -> tuple[str, str, str, str, str]:
        limit = str(opened.plan.gpu_mem_limit_bytes) if opened.plan.on_gpu else "0"
        return self.model, self.version, opened.device, opened.provider, limit

    def complete_config(self, config: model_config_pb2.ModelConfig) -> None:
        """Fill inputs/outputs the config leaves out from the graph, check the rest, and record
        where the instances really run (``ort_runtime.describe``)."""
        batch_axis = config.max_batch_size > 0
        for kind, graph_tensors, config_tensors in (
            ("input", self.session.get_inputs(), config.input),
            ("output", self.session.get_outputs(), config.output),
        ):
            graph = {tensor.name: tensor for tensor in graph_tensors}
            if not config_tensors:
                for tensor in graph_tensors:
                    added = config_tensors.add()
                    added.name = tensor.name
                    added.data_type = model_config_pb2.DataType.Value(
                        V2_TO_CONFIG[ORT_TO_V2[tensor.type]]
                    )
                    added.dims.extend(_config_dims(tensor.shape, batch_axis))
                continue
            for declared in config_tensors:
                found = graph.get(declared.name)
                if found is None:
                    raise ValueError(
                        f"{kind} '{declared.name}' is not in the graph (graph has {sorted(graph)})"
                    )
                declared_type = model_config_pb2.DataType.Name(declared.data_type)
                graph_type = V2_TO_CONFIG.get(ORT_TO_V2.get(found.type, ""), found.type)
                if declared_type != graph_type:
                    raise ValueError(
                        f"{kind} '{declared.name}' is {declared_type} in config.pbtxt but "
                        f"{graph_type} in the graph"
                    )
                graph_dims = _config_dims(found.shape, batch_axis)
                if len(graph_dims) != len(declared.dims) or any(
                    g not in (-1, d) and d != -1 for g, d in zip(graph_dims, declared.dims)
                ):
                    raise ValueError(
                        f"{kind} '{declared.name}' has dims {list(declared.dims)} in config.pbtxt "
                        f"but {graph_dims} in the graph"
                    )
        describe(config, self.instances, self.placement)

    def warm_up(self, config: model_config_pb2.ModelConfig) -> None:
        """Triton's model_warmup (default: one max-size zero batch) before the model is READY;
        its fastest run becomes the calibration admission predicts from. A warm-up the config
        asked for that fails makes the load fail; the default one only logs why."""
        label = f"{self.model} version {self.version}"
        asked = bool(config.model_warmup) or parameters.WARMUP.flag(config)
        try:
            samples = warmup_samples(config, self.model_dir)
            seconds, self.calibration = run_warmup(self._slots, samples, label)
        except Exception as exc:
            if not asked:
                log.warning("default warmup of %s failed (no first estimate): %s", label, exc)
                return
            self._pool.shutdown(wait=False)
            LEDGER.release(self._reservation)
            raise ValueError(f"warmup failed: {exc}") from exc
        if samples:
            self._warmed = True
            WARMUP_SECONDS.hold((self.model, self.version), seconds)
            log.info("warmup of %s done in %.3f s", label, seconds)

    runs_inline = True

    def run(self, inputs: Tensors, output_names: list[str]) -> Tensors:
        feeds = {name: _strings_to_ort(array) for name, array in inputs.items()}
        slot = self._free.get()  # never waits: one slot per worker thread
        try:
            results = slot.run(feeds, output_names)
        except InvalidArgument as exc:  # e.g. a token id outside the vocabulary
            raise BadRequest(f"the model rejected the input: {exc}") from exc
        finally:
            self._free.put(slot)
        return {name: _strings_from_ort(array) for name, array in zip(output_names, results)}

    async def execute(self, inputs: Tensors, output_names: list[str]) -> Tensors:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.run, inputs, output_names)

    async def close(self) -> None:
        self._pool.shutdown(wait=True)
        for binder in self._binders:
            binder.close()
        for labels in self._info:
            INSTANCE_INFO.release(labels)
        if self._warmed:
            WARMUP_SECONDS.release((self.model, self.version))
        LEDGER.release(self._reservation)


def _strings_to_ort(array: Array) -> Array:
    """BYTES arrive as bytes; ORT's binding wants str (it stores str(b"x"), i.e. "b'x'")."""
    if array.dtype != np.object_:
        return array
    try:
        flat = [item.decode("utf-8") if isinstance(item, bytes) else item for item in array.flat]
    except UnicodeDecodeError as exc:
        raise BadRequest(f"a BYTES element is not UTF-8, which ONNX Runtime needs: {exc}") from exc
    result = np.empty(len(flat), dtype=np.object_)
    result[:] = flat
    return result.reshape(array.shape)


def _strings_from_ort(array: Array) -> Array:
    """ORT returns string tensors as str; the rest of the gateway carries BYTES as bytes."""
    if array.dtype != np.object_:
        return array
    result = np.empty(array.size, dtype=np.object_)
    result[:] = [item.encode("utf-8") if isinstance(item, str) else item for item in array.flat]
    return result.reshape(array.shape)
