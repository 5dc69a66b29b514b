"""Optional graph rewrites: ORT graph optimisation, int8 dynamic quantisation, fp16 weights."""

from __future__ import annotations

import logging
import tempfile
from collections import deque
from pathlib import Path

import onnx

from converters.errors import ConversionError, first_line


def optimize_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """Save ORT's EXTENDED-level optimised graph (ALL adds CPU-specific layouts)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(out)
        options.log_severity_level = 3
        try:
            ort.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ConversionError(
                f"ONNX Runtime graph optimisation failed: {first_line(exc)}"
            ) from None
        return onnx.load(str(out))


def quantize_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """Dynamic int8 weights, per channel: per-tensor lost too much on MiniLM (min cosine 0.895).

    Weights use 7 bits (``reduce_range``): on x86 CPUs without VNNI (AVX2 only) ONNX Runtime's
    u8 x s8 kernel sums pairs of products into saturating int16, which wrecked a plain linear
    layer (max abs error 0.44 on softmax outputs); 7-bit weights cannot saturate there."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # ORT logs a "consider pre-processing" hint at WARNING
        try:
            quantize_dynamic(
                str(src),
                str(dst),
                per_channel=True,
                reduce_range=True,
                weight_type=QuantType.QInt8,
            )
        except Exception as exc:
            raise ConversionError(f"int8 dynamic quantisation failed: {first_line(exc)}") from None
        finally:
            root.setLevel(level)
        return onnx.load(str(dst))


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and compute, fp32 inputs/outputs so the served signature does not change."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        converted = convert_float_to_float16(model, keep_io_types=True)
    except Exception as exc:
        raise ConversionError(f"fp16 conversion failed: {first_line(exc)}") from None
    return toposort(converted)  # the converter appends its Cast nodes out of order


def toposort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Order nodes so each comes after its producers (onnx.checker requires it; ORT does not)."""
    nodes = list(model.graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    waiting = [0] * len(nodes)
    users: list[list[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        for name in set(node.input):
            j = producer.get(name)
            if j is not None and j != i:
                waiting[i] += 1
                users[j].append(i)
    ready = deque(i for i, n in enumerate(waiting) if n == 0)
    order: list[int] = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for user in users[i]:
            waiting[user] -= 1
            if waiting[user] == 0:
                ready.append(user)
    if len(order) != len(nodes):
        raise ConversionError("the transformed graph has a cycle")
    del model.graph.node[:]
    model.graph.node.extend(nodes[i] for i in order)
    return model
