"""config.pbtxt from a graph signature, via protobuf text_format (no templates)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from onnx import TensorProto
from tritonclient.grpc import model_config_pb2 as mc

from converters.errors import ConversionError
from converters.signature import TensorSpec
from service import parameters

_ONNX_TO_TRITON: dict[int, int] = {
    TensorProto.FLOAT: mc.TYPE_FP32,
    TensorProto.FLOAT16: mc.TYPE_FP16,
    TensorProto.BFLOAT16: mc.TYPE_BF16,
    TensorProto.DOUBLE: mc.TYPE_FP64,
    TensorProto.INT8: mc.TYPE_INT8,
    TensorProto.INT16: mc.TYPE_INT16,
    TensorProto.INT32: mc.TYPE_INT32,
    TensorProto.INT64: mc.TYPE_INT64,
    TensorProto.UINT8: mc.TYPE_UINT8,
    TensorProto.UINT16: mc.TYPE_UINT16,
    TensorProto.UINT32: mc.TYPE_UINT32,
    TensorProto.UINT64: mc.TYPE_UINT64,
    TensorProto.BOOL: mc.TYPE_BOOL,
    TensorProto.STRING: mc.TYPE_STRING,
}


@dataclass
class ConfigOptions:
    """Serving knobs that the graph cannot tell us."""

    max_batch_size: int = 64
    preferred_batch_sizes: list[int] | None = None
    max_queue_delay_us: int = 1000
    instances: int = 1
    response_cache: bool = False
    pad_inputs: list[str] = field(default_factory=list)
    platform: str = "onnxruntime_onnx"
    backend: str = ""
    device: str = "cpu"  # cpu | gpu | auto (gpu when a CUDA GPU is visible)
    gpus: list[int] = field(default_factory=list)  # KIND_GPU device ids; empty = all


def instance_kind(device: str, gpus: list[int]) -> int:
    """``--device``/``--gpus`` -> the instance_group kind (``auto`` asks the CUDA driver)."""
    from service.host import cuda_gpu_count

    if device not in ("cpu", "gpu", "auto"):
        raise ConversionError(f"--device must be cpu, gpu or auto, not '{device}'")
    on_gpu = device == "gpu" or (device == "auto" and cuda_gpu_count() > 0)
    if gpus and not on_gpu:
        raise ConversionError(f"--gpus {gpus} needs --device gpu (the instances run on the CPU)")
    if any(gpu < 0 for gpu in gpus):
        raise ConversionError(f"--gpus takes device ids >= 0, not {gpus}")
    return mc.ModelInstanceGroup.KIND_GPU if on_gpu else mc.ModelInstanceGroup.KIND_CPU


def triton_dtype(spec: TensorSpec) -> int:
    try:
        return _ONNX_TO_TRITON[spec.elem_type]
    except KeyError:
        name = TensorProto.DataType.Name(spec.elem_type)
        raise ConversionError(
            f"tensor '{spec.name}' has type {name}, which Triton cannot serve"
        ) from None


def _fill_tensor(target: mc.ModelInput | mc.ModelOutput, spec: TensorSpec, max_batch: int) -> None:
    target.name = spec.name
    target.data_type = triton_dtype(spec)  # type: ignore[assignment]
    shape = list(spec.shape)
    if max_batch > 0:
        if not shape:
            raise ConversionError(
                f"tensor '{spec.name}' is a scalar, so it cannot carry a batch axis"
            )
        if shape[0] != -1:
            raise ConversionError(
                f"tensor '{spec.name}' has a fixed first dimension {shape[0]}, "
                "so it cannot be batched; "
                "export with a dynamic batch axis or pass --max-batch-size 0"
            )
        shape = shape[1:]
        if not shape:  # [batch] tensors: Triton wants dims [1] reshaped to a scalar per item
            target.dims.append(1)
            target.reshape.SetInParent()
            return
    target.dims.extend(shape)


def build_config(
    name: str, inputs: list[TensorSpec], outputs: list[TensorSpec], options: ConfigOptions
) -> mc.ModelConfig:
    """Everything a server needs, derived from the graph plus the serving options."""
    config = mc.ModelConfig(name=name, max_batch_size=max(0, options.max_batch_size))
    if options.platform:
        config.platform = options.platform
    if options.backend:
        config.backend = options.backend
    for spec in inputs:
        _fill_tensor(config.input.add(), spec, config.max_batch_size)
    for spec in outputs:
        _fill_tensor(config.output.add(), spec, config.max_batch_size)
    if config.max_batch_size > 0:
        sizes = options.preferred_batch_sizes
        if sizes is None:
            sizes = sorted(
                {s for s in (8, 16, 32) if s < config.max_batch_size} | {config.max_batch_size}
            )
        bad = [s for s in sizes if s < 1 or s > config.max_batch_size]
        if bad:
            raise ConversionError(
                f"preferred batch sizes {bad} are outside 1..{config.max_batch_size}"
            )
        config.dynamic_batching.preferred_batch_size.extend(sizes)
        config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    group = config.instance_group.add()
    group.count = max(1, options.instances)
    group.kind = instance_kind(options.device, options.gpus)  # type: ignore[assignment]
    if group.kind == mc.ModelInstanceGroup.KIND_GPU:
        group.gpus.extend(options.gpus)
    if options.response_cache:
        config.response_cache.enable = True
    names = {spec.name for spec in inputs}
    unknown = [n for n in options.pad_inputs if n not in names]
    if unknown:
        raise ConversionError(f"pad inputs {unknown} are not graph inputs {sorted(names)}")
    if options.pad_inputs:
        config.parameters[parameters.PAD_INPUTS.name].string_value = ",".join(options.pad_inputs)
    return config


def render(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse(text: str, source: str = "config.pbtxt") -> mc.ModelConfig:
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as exc:
        raise ConversionError(f"{source} is not a valid Triton model config: {exc}") from None


def read_config(path: Path) -> mc.ModelConfig:
    return parse(path.read_text(), str(path))


def _signature(config: mc.ModelConfig) -> dict[str, str]:
    """What clients rely on, as readable text: batching and each tensor's dtype and dims."""
    sig = {"max_batch_size": str(config.max_batch_size)}
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for t in tensors:
            text = f"{mc.DataType.Name(t.data_type).removeprefix('TYPE_')} {list(t.dims)}"
            if t.HasField("reshape"):
                text += f" reshaped to {list(t.reshape.shape)}"
            sig[f"{kind} '{t.name}'"] = text
    return sig


def check_compatible(existing: mc.ModelConfig, new: mc.ModelConfig, model_dir: Path) -> None:
    """A new version must keep the model's signature, or clients break depending on the version."""
    old_sig, new_sig = _signature(existing), _signature(new)
    for key in sorted(set(old_sig) | set(new_sig)):
        if old_sig.get(key) != new_sig.get(key):
            raise ConversionError(
                f"model '{existing.name}' in {model_dir.parent} already has {key} = "
                f"{old_sig.get(key, 'absent')}, but this model has {new_sig.get(key, 'absent')}; "
                "all versions of a model share its config.pbtxt and signature. Publish this one "
                f"as a new model (another --name, e.g. --name {existing.name}_2), or remove "
                f"{model_dir} to replace the model"
            )


def _pad_inputs(config: mc.ModelConfig) -> str:
    if parameters.PAD_INPUTS.name not in config.parameters:
        return "none"
    return config.parameters[parameters.PAD_INPUTS.name].string_value or "none"


# The serving settings that publish options control, keyed by the option that sets them.
_SERVING_SETTINGS: dict[str, Callable[[mc.ModelConfig], object]] = {
    "--preferred-batch-size": lambda c: list(c.dynamic_batching.preferred_batch_size),
    "--max-queue-delay-us": lambda c: c.dynamic_batching.max_queue_delay_microseconds,
    "--instances": lambda c: sum(max(1, g.count) for g in c.instance_group) or 1,
    "instance kind": lambda c: [mc.ModelInstanceGroup.Kind.Name(g.kind) for g in c.instance_group],
    "--response-cache": lambda c: "on" if c.response_cache.enable else "off",
    "--pad-inputs": _pad_inputs,
}


def serving_differences(existing: mc.ModelConfig, new: mc.ModelConfig) -> list[str]:
    """``option old -> new`` for each serving setting the new config would change."""
    differences = []
    for option, read in _SERVING_SETTINGS.items():
        old, wanted = read(existing), read(new)
        if old != wanted:
            differences.append(f"{option} {old} -> {wanted}")
    return differences


def apply_version_policy(config: mc.ModelConfig, versions: list[int], policy: str) -> None:
    """Make the published versions servable as asked ("all", "latest" or "keep")."""
    if policy == "keep":
        return
    if policy == "latest":
        config.version_policy.latest.num_versions = 1
        return
    if policy != "all":
        raise ConversionError(f"unknown version policy '{policy}' (use all, latest or keep)")
    if len(versions) <= 1 and not config.HasField("version_policy"):
        return  # one version: Triton's default (latest 1) already serves it
    which = config.version_policy.WhichOneof("policy_choice")
    if which == "specific":
        have = set(config.version_policy.specific.versions)
        config.version_policy.specific.versions.extend(v for v in versions if v not in have)
    else:
        config.version_policy.all.SetInParent()
