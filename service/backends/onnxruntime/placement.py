"""config.pbtxt placement -> ONNX Runtime sessions: which device, which providers, which options.

Pure (no ONNX Runtime import), so one config.pbtxt can be checked to mean the same here as on
Triton. Triton's ONNX Runtime backend semantics, followed here:

- ``instance_group { kind: KIND_GPU gpus: [0, 1] count: 2 }``: ``count`` instances on each listed
  GPU (all visible GPUs when ``gpus`` is empty); each is its own session with ``device_id``.
- ``KIND_CPU`` (or no group): one CPU session shared by ``count`` worker threads.
- ``KIND_AUTO``: GPU when one is visible (or ``gpus`` are listed), else CPU.
- ``optimization.execution_accelerators.gpu_execution_accelerator``: ``tensorrt`` puts the
  TensorRT EP first (``precision_mode`` FP16/INT8, ``max_workspace_size_bytes``, ``trt_*`` keys
  as in the backend's mapping table); ``cuda`` passes its parameters to the CUDA EP. The CUDA EP
  and then the CPU EP always follow, for the nodes TensorRT cannot take.
- Model parameters ``gpu_mem_limit`` / ``arena_extend_strategy`` / ``cudnn_conv_algo_search`` /
  ``do_copy_in_default_stream`` (Triton's) or ``infergate.gpu_mem_limit_bytes`` /
  ``infergate.arena_extend_strategy`` set the CUDA EP's arena per instance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from service import parameters

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = frozenset({CUDA, TENSORRT})

_ARENA = {"0": "kNextPowerOfTwo", "1": "kSameAsRequested"}
_CONV_SEARCH = {"0": "EXHAUSTIVE", "1": "HEURISTIC", "2": "DEFAULT"}
# Triton's names for TensorRT EP options that ORT spells differently; other ``trt_*`` keys pass.
_TRT_RENAMED = {
    "max_workspace_size_bytes": "trt_max_workspace_size",
    "int8_calibration_table_name": "trt_int8_calibration_table_name",
    "int8_use_native_calibration_table": "trt_int8_use_native_calibration_table",
}
# ORT's Python binding accepts only "True"/"False" for these; Triton configs say "1"/"true".
_TRT_BOOLS = frozenset(
    {
        "trt_fp16_enable",
        "trt_bf16_enable",
        "trt_int8_enable",
        "trt_int8_use_native_calibration_table",
        "trt_dla_enable",
        "trt_engine_cache_enable",
        "trt_dump_subgraphs",
        "trt_force_sequential_engine_build",
        "trt_context_memory_sharing_enable",
        "trt_layer_norm_fp32_fallback",
        "trt_timing_cache_enable",
        "trt_force_timing_cache",
        "trt_detailed_build_log",
        "trt_build_heuristics_enable",
        "trt_sparsity_enable",
        "trt_cuda_graph_enable",
        "trt_dump_ep_context_model",
    }
)

ProviderSpec = tuple[str, dict[str, str]]


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """One ORT session: where it runs, its providers in priority order, how many share it."""

    device_id: int  # -1 = CPU
    providers: tuple[ProviderSpec, ...]
    slots: int  # batches that may run on this session at once
    gpu_mem_limit_bytes: int = 0  # CUDA arena cap; 0 = none

    @property
    def on_gpu(self) -> bool:
        return self.device_id >= 0

    @property
    def device(self) -> str:
        return f"gpu:{self.device_id}" if self.on_gpu else "cpu"

    @property
    def provider_names(self) -> list[str]:
        return [name for name, _ in self.providers]


@dataclass(frozen=True, slots=True)
class Placement:
    """Every session of one model version."""

    sessions: list[SessionPlan] = field(default_factory=list)
    io_binding: bool = False

    @property
    def concurrency(self) -> int:
        return sum(plan.slots for plan in self.sessions)

    @property
    def on_gpu(self) -> bool:
        return any(plan.on_gpu for plan in self.sessions)

    def gpu_memory(self) -> dict[int, int]:
        """Bytes each GPU must hold for this version (sum of its instances' arena caps)."""
        wanted: dict[int, int] = {}
        for plan in self.sessions:
            if plan.on_gpu:
                wanted[plan.device_id] = wanted.get(plan.device_id, 0) + plan.gpu_mem_limit_bytes
        return wanted


def _flag(key: str, value: str) -> str:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return "True"
    if lowered in ("0", "false", "no", "off"):
        return "False"
    raise ValueError(f"TensorRT parameter '{key}' must be true/false or 1/0, not '{value}'")


def tensorrt_options(
    accelerator: mc.ModelOptimizationPolicy.ExecutionAccelerators.Accelerator,
    device_id: int,
    engine_cache_dir: Path,
) -> dict[str, str]:
    """Triton's ``tensorrt`` accelerator parameters as TensorRT EP options."""
    options = {"device_id": str(device_id)}
    for key, value in accelerator.parameters.items():
        if key == "precision_mode":
            mode = value.upper()
            if mode not in ("FP32", "FP16", "INT8"):
                raise ValueError(f"precision_mode must be FP32, FP16 or INT8, not '{value}'")
            if mode != "FP32":
                options[f"trt_{mode.lower()}_enable"] = "True"
        elif key in _TRT_RENAMED or key.startswith("trt_"):
            name = _TRT_RENAMED.get(key, key)
            options[name] = _flag(key, value) if name in _TRT_BOOLS else value
        else:
            raise ValueError(f"unknown TensorRT accelerator parameter '{key}'")
    # Engines take minutes to build: cache them unless the config says otherwise.
    options.setdefault("trt_engine_cache_enable", "True")
    if options["trt_engine_cache_enable"] == "True":
        options.setdefault("trt_engine_cache_path", str(engine_cache_dir))
    return options


def cuda_options(config: mc.ModelConfig, device_id: int, extra: dict[str, str]) -> dict[str, str]:
    """CUDA EP options: device, arena cap and strategy, Triton's legacy keys, ``cuda`` params."""
    options = {"device_id": str(device_id)}
    limit = parameters.GPU_MEM_LIMIT_BYTES.integer(config)
    if limit:
        options["gpu_mem_limit"] = str(limit)
    if parameters.ARENA_EXTEND_STRATEGY.raw(config):
        arena = parameters.ARENA_EXTEND_STRATEGY.choice(config)
        options["arena_extend_strategy"] = _ARENA.get(arena, arena)
    if parameters.CUDNN_CONV_ALGO_SEARCH.raw(config):
        search = parameters.CUDNN_CONV_ALGO_SEARCH.choice(config)
        options["cudnn_conv_algo_search"] = _CONV_SEARCH.get(search, search)
    copy = parameters.DO_COPY_IN_DEFAULT_STREAM.raw(config)
    if copy:
        options["do_copy_in_default_stream"] = copy
    options.update(extra)
    return options


def gpu_providers(
    config: mc.ModelConfig, device_id: int, engine_cache_dir: Path
) -> tuple[ProviderSpec, ...]:
    """TensorRT (when asked) -> CUDA -> CPU for one GPU instance."""
    accelerators = config.optimization.execution_accelerators
    cuda_extra: dict[str, str] = {}
    tensorrt: ProviderSpec | None = None
    for accelerator in accelerators.gpu_execution_accelerator:
        if accelerator.name == "tensorrt":
            tensorrt = (TENSORRT, tensorrt_options(accelerator, device_id, engine_cache_dir))
        elif accelerator.name == "cuda":
            cuda_extra.update(dict(accelerator.parameters))
        else:
            raise ValueError(
                f"unknown GPU execution accelerator '{accelerator.name}' (tensorrt or cuda)"
            )
    cuda = (CUDA, cuda_options(config, device_id, cuda_extra))
    return (tensorrt, cuda, (CPU, {})) if tensorrt else (cuda, (CPU, {}))


def _override_providers(
    config: mc.ModelConfig, names: Sequence[str], device_id: int, engine_cache_dir: Path
) -> tuple[ProviderSpec, ...]:
    """``INFERGATE_EXECUTION_PROVIDERS`` names, GPU ones given the config's options."""
    configured = dict(gpu_providers(config, max(device_id, 0), engine_cache_dir))
    specs: list[ProviderSpec] = []
    for name in names:
        if name == TENSORRT and name not in configured:
            options = {"device_id": str(max(device_id, 0)), "trt_engine_cache_enable": "True"}
            options["trt_engine_cache_path"] = str(engine_cache_dir)
            specs.append((name, options))
        else:
            specs.append((name, configured.get(name, {}) if name in GPU_PROVIDERS else {}))
    return tuple(specs)


def _groups(config: mc.ModelConfig, visible_gpus: Sequence[int]) -> tuple[int, list[int]]:
    """(CPU instance count, one GPU id per GPU instance) from the instance groups."""
    cpu_count = 0
    gpu_instances: list[int] = []
    kinds = mc.ModelInstanceGroup
    for group in config.instance_group:
        count = group.count or 1
        gpus = list(group.gpus) or list(visible_gpus)
        wants_gpu = group.kind == kinds.KIND_GPU or (group.kind == kinds.KIND_AUTO and gpus)
        if not wants_gpu:
            cpu_count += count
            continue
        for gpu in gpus or [0]:  # no GPU visible: try device 0 and report the fallback
            gpu_instances.extend([gpu] * count)
    if not config.instance_group:
        cpu_count = 1
    return cpu_count, gpu_instances


def plan_sessions(
    config: mc.ModelConfig,
    *,
    visible_gpus: Sequence[int],
    override: Sequence[str] = (),
    engine_cache_dir: Path,
) -> Placement:
    """The sessions to open for one model version; ValueError names a bad setting."""
    cpu_count, gpu_instances = _groups(config, visible_gpus)
    limit_bytes = parameters.GPU_MEM_LIMIT_BYTES.integer(config)
    io_binding = parameters.IO_BINDING.flag(config)
    sessions: list[SessionPlan] = []
    if override and not (gpu_instances and GPU_PROVIDERS & set(override)):
        # one shared session, as before this module existed; on a GPU when the override says so
        device = 0 if override[0] in GPU_PROVIDERS else -1
        providers = _override_providers(config, override, device, engine_cache_dir)
        slots = cpu_count + len(gpu_instances)
        sessions.append(SessionPlan(device, providers, slots, limit_bytes if device >= 0 else 0))
        return Placement(sessions, io_binding and device >= 0)
    if cpu_count:
        sessions.append(SessionPlan(-1, ((CPU, {}),), cpu_count))
    for gpu in gpu_instances:
        if override:
            providers = _override_providers(config, override, gpu, engine_cache_dir)
        else:
            providers = gpu_providers(config, gpu, engine_cache_dir)
        sessions.append(SessionPlan(gpu, providers, 1, limit_bytes))
    return Placement(sessions, io_binding)


def fallbacks(requested: Sequence[str], used: Sequence[str]) -> list[str]:
    """Requested GPU providers ONNX Runtime did not enable (it falls back without an error)."""
    return [name for name in requested if name in GPU_PROVIDERS and name not in used]
