"""A Triton python-backend copy of an ONNX repository, for Triton builds without onnxruntime.

Each ``onnxruntime_onnx`` model becomes ``backend: "python"`` with the same inputs, outputs,
batching, instances, parameters and version policy; every version gets ``model.onnx`` plus the
self-contained ``model.py`` (``converters/triton_python_model.py``).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from converters.errors import ConversionError
from converters.publish import existing_versions, swap_in
from converters.triton_config import read_config, render

TEMPLATE = Path(__file__).with_name("triton_python_model.py")


def python_config(config: mc.ModelConfig) -> mc.ModelConfig:
    result = mc.ModelConfig()
    result.CopyFrom(config)
    result.ClearField("platform")
    result.backend = "python"
    for group in result.instance_group:
        group.kind = mc.ModelInstanceGroup.KIND_CPU
        group.ClearField("gpus")
    return result


def write_python_backend(
    repo: Path, out: Path, models: list[str] | None = None
) -> list[dict[str, object]]:
    """Write ``out/<model>`` for each ONNX model (default: all), swapped in atomically."""
    if not repo.is_dir():
        raise ConversionError(f"model repository not found: {repo}")
    if out.resolve() == repo.resolve():
        raise ConversionError("--out must differ from --repo")
    candidates = sorted(p.name for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = models or candidates
    unknown = [n for n in names if n not in candidates]
    if unknown:
        raise ConversionError(f"models {unknown} are not in {repo} (has {candidates})")
    plans = []
    for name in names:
        config_path = repo / name / "config.pbtxt"
        if not config_path.is_file():
            raise ConversionError(f"{config_path} not found")
        config = read_config(config_path)
        if config.platform != "onnxruntime_onnx" and config.backend != "onnxruntime":
            if models:
                raise ConversionError(
                    f"model '{name}' is not an ONNX model ({config.platform or config.backend})"
                )
            continue
        versions = [
            v
            for v in existing_versions(repo / name)
            if (repo / name / str(v) / "model.onnx").is_file()
        ]
        if not versions:
            raise ConversionError(f"model '{name}' has no version with a model.onnx")
        plans.append((name, config, versions))
    out.mkdir(parents=True, exist_ok=True)
    written: list[dict[str, object]] = []
    for name, config, versions in plans:
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{name}-", dir=out))
        try:
            (staging / "config.pbtxt").write_text(render(python_config(config)))
            for version in versions:
                target = staging / str(version)
                target.mkdir()
                shutil.copy2(repo / name / str(version) / "model.onnx", target / "model.onnx")
                shutil.copy2(TEMPLATE, target / "model.py")
            swap_in(staging, out / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        written.append({"model": name, "versions": versions, "path": str(out / name)})
    return written
