"""ONNX → TensorRT engine (``model.plan``, platform ``tensorrt_plan``) on machines with a CUDA GPU.

Everything that can fail for want of hardware or packages is checked before anything is written.
Parity runs the engine on CUDA through torch tensors against ONNX Runtime on the CPU.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from converters.errors import ConversionError, first_line
from converters.options import PublishOptions
from converters.parity import Arrays, Tolerances, make_samples, ort_runner
from converters.progress import QUIET, Reporter
from converters.publish import check_target
from converters.release import Candidate, prove_and_publish
from converters.signature import graph_inputs, graph_outputs, index_limits
from converters.triton_config import build_config
from service.host import cuda_gpu_count


def missing_requirements() -> list[str]:
    """Why a TensorRT build cannot run here (empty when it can)."""
    reasons = []
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        reasons.append(
            "the `tensorrt` Python package is not installed (pip install 'infergate[tensorrt]')"
        )
    if cuda_gpu_count() == 0:
        reasons.append("no CUDA GPU is visible")
    try:
        import torch

        if not torch.cuda.is_available():
            reasons.append(
                "torch has no CUDA support (needed to run the engine for the parity check)"
            )
    except ImportError:
        reasons.append("torch is not installed (needed to run the engine for the parity check)")
    return reasons


def _build_engine(
    model: onnx.ModelProto, max_batch: int, fp16: bool, int8: bool, workspace_gib: float
) -> bytes:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConversionError(f"TensorRT cannot parse the ONNX graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if int8:  # explicit quantisation: the graph must carry Q/DQ nodes (e.g. from ModelOpt)
        if not any(n.op_type == "QuantizeLinear" for n in model.graph.node):
            raise ConversionError(
                "--int8 needs a Q/DQ-quantised ONNX graph (explicit quantisation)"
            )
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    for spec in graph_inputs(model):
        rest = [d if d > 0 else 128 for d in spec.shape[1:]]
        low = [1 if d == -1 else d for d in spec.shape[1:]]
        batch = max_batch if max_batch > 0 else 1
        profile.set_shape(spec.name, [1, *low], [max(1, batch // 2), *rest], [batch, *rest])
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise ConversionError("TensorRT failed to build the engine (see the TensorRT log above)")
    return bytes(engine)


def _engine_runner(plan: bytes, output_names: list[str]) -> Any:  # pragma: no cover - GPU only
    import tensorrt as trt
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan)
    context = engine.create_execution_context()

    def run(feed: Arrays) -> Arrays:
        stream = torch.cuda.Stream()
        keep = {}
        for name, array in feed.items():
            tensor = torch.from_numpy(np.ascontiguousarray(array)).cuda()
            keep[name] = tensor
            context.set_input_shape(name, tuple(array.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        results = {}
        for name in output_names:
            shape = tuple(context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.zeros(0, trt.nptype(engine.get_tensor_dtype(name)))).dtype
            results[name] = torch.empty(shape, dtype=dtype, device="cuda")
            context.set_tensor_address(name, results[name].data_ptr())
        context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return {name: value.cpu().numpy() for name, value in results.items()}

    return run


def _build_plan(
    model: onnx.ModelProto,
    max_batch: int,
    fp16: bool,
    int8: bool,
    workspace_gib: float,
    reporter: Reporter,
) -> bytes:
    try:
        with reporter.step("TensorRT engine build"):
            return _build_engine(model, max_batch, fp16, int8, workspace_gib)
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"TensorRT engine build failed: {first_line(exc)}") from None


def build_tensorrt(
    onnx_path: Path,
    options: PublishOptions,
    *,
    fp16: bool = False,
    int8: bool = False,
    workspace_gib: float = 2.0,
    reporter: Reporter = QUIET,
) -> dict[str, Any]:
    """Build, prove parity against ONNX Runtime, then publish atomically; no writes on failure."""
    from converters.onnx_model import load_onnx

    reasons = missing_requirements()
    if reasons:
        raise ConversionError(
            "cannot build a TensorRT engine: " + "; ".join(reasons) + ". Nothing was written"
        )
    # a plan runs only on a GPU: Triton refuses KIND_CPU for it
    config_options = replace(options.config, platform="tensorrt_plan", backend="", device="gpu")
    model = load_onnx(onnx_path)
    inputs, outputs = graph_inputs(model), graph_outputs(model)
    config = build_config(options.name, inputs, outputs, config_options)
    version, warnings = check_target(options.repo, options.name, options.version, config)
    for warning in warnings:
        reporter.note(warning)
    start = time.perf_counter()
    max_batch = config_options.max_batch_size
    plan = _build_plan(model, max_batch, fp16, int8, workspace_gib, reporter)
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    output_names = [o.name for o in outputs]
    candidate = Candidate(
        model_file="model.plan",
        data=plan,
        run=_engine_runner(plan, output_names),
        runtime="TensorRT",
        reference=ort_runner(model),
        reference_name="ONNX Runtime",
        samples=make_samples(inputs, index_limits=index_limits(model)),
        tolerances=options.tolerances or Tolerances.for_precision(precision, embedding=False),
        cosine_outputs=output_names,
        framework="tensorrt",
        exporter="tensorrt",
        precision=precision,
        notes=warnings,
        export_seconds=time.perf_counter() - start,
    )
    return prove_and_publish(candidate, options, version, config, reporter)
