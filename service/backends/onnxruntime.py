"""Embedded ONNX Runtime backend: runs batches in a small thread pool, off the event loop."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument
from tritonclient.grpc import model_config_pb2

from service.backends.base import Backend
from service.errors import BadRequest
from service.protocol.datatypes import ORT_TO_V2, V2_TO_CONFIG
from service.settings import Settings

log = logging.getLogger(__name__)


def choose_providers(requested: list[str]) -> list[str]:
    """The requested providers that exist here, else TensorRT/CUDA when present, else CPU."""
    available = ort.get_available_providers()
    if requested:
        chosen = [p for p in requested if p in available]
        missing = [p for p in requested if p not in available]
        if missing:
            log.warning("execution providers not available here: %s", ", ".join(missing))
        return chosen or ["CPUExecutionProvider"]
    preferred = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in preferred if p in available]


def _config_dims(shape: list[int | str | None], batch_axis: bool) -> list[int]:
    dims = [d if isinstance(d, int) and d >= 0 else -1 for d in shape]
    return dims[1:] if batch_axis else dims


class OnnxRuntimeBackend(Backend):
    """One InferenceSession per model version; ``instance_group.count`` batches may run at once."""

    def __init__(
        self, model_path: Path, config: model_config_pb2.ModelConfig, settings: Settings
    ) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if settings.intra_op_threads:
            options.intra_op_num_threads = settings.intra_op_threads
        options.inter_op_num_threads = settings.inter_op_threads
        # Spinning worker threads would steal the cores the event loop needs to parse requests.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(model_path), options, providers=choose_providers(settings.execution_providers)
            )
        except Exception as exc:  # ORT raises its own exception types for bad graphs
            raise ValueError(f"ONNX Runtime cannot load {model_path.name}: {exc}") from exc
        self.concurrency = max(1, sum(group.count or 1 for group in config.instance_group) or 1)
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"ort-{config.name}")

    def complete_config(self, config: model_config_pb2.ModelConfig) -> None:
        """Fill inputs/outputs the config leaves out from the graph, then check the rest."""
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

    def _run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        feeds = {name: _strings_to_ort(array) for name, array in inputs.items()}
        try:
            results = self.session.run(output_names, feeds)
        except InvalidArgument as exc:  # e.g. a token id outside the vocabulary
            raise BadRequest(f"the model rejected the input: {exc}") from exc
        return {name: _strings_from_ort(array) for name, array in zip(output_names, results)}

    async def execute(
        self, inputs: dict[str, np.ndarray], output_names: list[str]
    ) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run, inputs, output_names)

    async def close(self) -> None:
        self._pool.shutdown(wait=True)


def _strings_to_ort(array: np.ndarray) -> np.ndarray:
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


def _strings_from_ort(array: np.ndarray) -> np.ndarray:
    """ORT returns string tensors as str; the rest of the gateway carries BYTES as bytes."""
    if array.dtype != np.object_:
        return array
    result = np.empty(array.size, dtype=np.object_)
    result[:] = [item.encode("utf-8") if isinstance(item, str) else item for item in array.flat]
    return result.reshape(array.shape)
