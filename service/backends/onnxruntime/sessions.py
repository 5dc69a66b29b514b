"""Opening the ONNX Runtime sessions of a placement, and saying loudly what ORT really enabled.

ONNX Runtime falls back without an error when a provider cannot start (TensorRT libraries
missing -> CUDA, CUDA libraries missing -> CPU), so the requested providers are compared with
``session.get_providers()`` and every difference is logged as a warning.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from service.backends.onnxruntime.placement import (
    CPU,
    GPU_PROVIDERS,
    TENSORRT,
    Placement,
    SessionPlan,
    fallbacks,
)
from service.settings import Settings

log = logging.getLogger(__name__)
_preload_lock = threading.Lock()
_preloaded = False


@dataclass(slots=True)
class OpenedSession:
    """A session and what it really runs on."""

    session: ort.InferenceSession
    plan: SessionPlan
    used: list[str]  # session.get_providers()
    fallen_back: list[str]  # requested GPU providers ORT did not enable

    @property
    def provider(self) -> str:
        return self.used[0] if self.used else CPU

    @property
    def device(self) -> str:
        return self.plan.device if self.provider in GPU_PROVIDERS else "cpu"


def preload_gpu_libraries(placement: Placement) -> None:
    """``onnxruntime.preload_dlls()`` once: it finds the CUDA/cuDNN libraries pip installed."""
    global _preloaded
    wanted = any(
        name in GPU_PROVIDERS for plan in placement.sessions for name in plan.provider_names
    )
    preload = getattr(ort, "preload_dlls", None)
    if not wanted or preload is None:
        return
    with _preload_lock:
        if _preloaded:
            return
        _preloaded = True
        try:
            preload()
        except Exception as exc:  # CPU builds: a no-op or an error; either way not fatal
            log.debug("onnxruntime.preload_dlls() failed: %s", exc)


def start_runtime() -> None:
    """Pay ONNX Runtime's one-time costs in this process (its environment, allocators, the first
    session's setup: about 10 MiB of RSS) on a one-node graph, so that the first model's load
    does not measure them as its own footprint."""
    import numpy as np
    from onnx import TensorProto, helper

    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y"))
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "start", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=[CPU])
    session.run(None, {"x": np.zeros(1, dtype=np.float32)})


def engine_cache_dir(settings: Settings, model: str, version: str) -> Path:
    """Where TensorRT engines persist across restarts (outside the polled model repository)."""
    if settings.trt_engine_cache_dir is not None:
        root = settings.trt_engine_cache_dir
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "infergate"
        root = root / "tensorrt"
    return root / model / version


def session_options(settings: Settings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if settings.intra_op_threads:
        options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    # Spinning worker threads would steal the cores the event loop needs to parse requests.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _why(missing: list[str], available: set[str]) -> str:
    absent = [name for name in missing if name not in available]
    if absent:
        return f"this onnxruntime build has no {', '.join(absent)} (install onnxruntime-gpu)"
    if TENSORRT in missing:
        return "its libraries could not be loaded (TensorRT/CUDA missing? see ORT's error above)"
    return "its libraries could not be loaded (CUDA/cuDNN missing? see ORT's error above)"


def open_session(
    model_path: Path, plan: SessionPlan, settings: Settings, label: str
) -> OpenedSession:
    """One session for ``plan``; providers this build lacks are dropped, then reported."""
    available = set(ort.get_available_providers())
    usable = [(name, opts) for name, opts in plan.providers if name in available] or [(CPU, {})]
    for name, opts in usable:
        if name == TENSORRT and opts.get("trt_engine_cache_path"):
            Path(opts["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
    try:
        session = ort.InferenceSession(
            str(model_path),
            session_options(settings),
            providers=[name for name, _ in usable],
            provider_options=[opts for _, opts in usable],
        )
    except Exception as exc:  # ORT raises its own exception types for bad graphs
        raise ValueError(f"ONNX Runtime cannot load {model_path.name}: {exc}") from exc
    used = list(session.get_providers())
    opened = OpenedSession(session, plan, used, fallbacks(plan.provider_names, used))
    if opened.fallen_back:
        log.warning(
            "FALLBACK model %s instance on %s: requested %s but ONNX Runtime runs %s, because %s",
            label,
            plan.device,
            " > ".join(plan.provider_names),
            " > ".join(used),
            _why(opened.fallen_back, available),
        )
    log.info(
        "model %s instance on %s uses %s (gpu_mem_limit %s)",
        label,
        opened.device,
        " > ".join(used),
        plan.gpu_mem_limit_bytes or "none",
    )
    return opened
