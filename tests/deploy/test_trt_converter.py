"""deploy/converter/build_plans.py: trtexec optimisation profiles and the configs it writes.

The plan build itself needs a GPU and TensorRT (the compose ``converter`` service); here the
script's planning runs on real config.pbtxt files, and its write path runs with a stand-in
trtexec. With a real ``trtexec`` on PATH, a real plan is built too.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tests.deploy.deploy_support import DEPLOY

SCRIPT = DEPLOY / "converter" / "build_plans.py"


@pytest.fixture(scope="module")
def build_plans() -> Iterator[ModuleType]:
    """The script as a module (it is not in a package: it is copied into the container)."""
    name = "infergate_build_plans"
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


def _model(repo: Path, config: mc.ModelConfig, versions: tuple[str, ...] = ("1",)) -> None:
    (repo / config.name).mkdir(parents=True)
    (repo / config.name / "config.pbtxt").write_text(text_format.MessageToString(config))
    for version in versions:
        (repo / config.name / version).mkdir()
        (repo / config.name / version / "model.onnx").write_bytes(b"onnx")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "model_repo"
    embed = mc.ModelConfig(name="embed", platform="onnxruntime_onnx", max_batch_size=16)
    embed.input.add(name="input_ids", data_type=mc.TYPE_INT64, dims=[-1])
    embed.input.add(name="attention_mask", data_type=mc.TYPE_INT64, dims=[-1])
    embed.output.add(name="embedding", data_type=mc.TYPE_FP32, dims=[384])
    embed.dynamic_batching.max_queue_delay_microseconds = 500
    embed.response_cache.enable = True
    embed.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=2)
    _model(repo, embed, ("1", "2"))

    fixed = mc.ModelConfig(name="fixed", backend="onnxruntime", max_batch_size=0)
    fixed.input.add(name="in:0", data_type=mc.TYPE_FP32, dims=[1, 3, -1])
    fixed.output.add(name="out", data_type=mc.TYPE_FP32, dims=[1, 10])
    _model(repo, fixed)

    text = mc.ModelConfig(name="tokenize", platform="onnxruntime_onnx", max_batch_size=4)
    text.input.add(name="text", data_type=mc.TYPE_STRING, dims=[1])
    _model(repo, text)

    python = mc.ModelConfig(name="py", backend="python", max_batch_size=4)
    _model(repo, python)
    already = mc.ModelConfig(name="embed_trt", platform="tensorrt_plan", max_batch_size=16)
    _model(repo, already)
    return repo


def test_script_runs_on_the_tensorrt_containers_python() -> None:
    """NVIDIA's 24.10 containers ship Python 3.10: no 3.11-only syntax in the script."""
    ast.parse(SCRIPT.read_text(), feature_version=(3, 10))


def test_profiles_cover_the_configured_batch_and_dims(build_plans: ModuleType, repo: Path) -> None:
    jobs, skipped = build_plans.plan_jobs(repo, repo, dim_range=build_plans.DimRange(1, 64, 256))
    by_key = {(job.model, job.version): job for job in jobs}
    assert set(by_key) == {("embed", "1"), ("embed", "2"), ("fixed", "1")}
    assert len(skipped) == 1 and skipped[0].startswith("tokenize")

    embed = by_key[("embed", "1")].argv
    assert "--minShapes=input_ids:1x1,attention_mask:1x1" in embed
    assert "--optShapes=input_ids:8x64,attention_mask:8x64" in embed
    assert "--maxShapes=input_ids:16x256,attention_mask:16x256" in embed
    assert f"--saveEngine={repo / 'embed_trt' / '1' / 'model.plan'}" in embed
    assert f"--onnx={repo / 'embed' / '1' / 'model.onnx'}" in embed

    fixed = by_key[("fixed", "1")].argv  # no batch axis; the name needs trtexec's quoting
    assert "--minShapes='in:0':1x3x1" in fixed
    assert "--maxShapes='in:0':1x3x256" in fixed


def test_plan_config_keeps_batching_and_cache(build_plans: ModuleType, repo: Path) -> None:
    jobs, _ = build_plans.plan_jobs(repo, repo, gpus=2)
    config = next(job.config for job in jobs if job.model == "embed")
    assert config.name == "embed_trt"
    assert config.platform == "tensorrt_plan" and config.backend == ""
    assert config.max_batch_size == 16
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.response_cache.enable
    assert [(g.kind, g.count) for g in config.instance_group] == [
        (mc.ModelInstanceGroup.KIND_GPU, 2)
    ]
    assert [(t.name, list(t.dims)) for t in config.input] == [
        ("input_ids", [-1]),
        ("attention_mask", [-1]),
    ]
    # what Triton will parse back
    assert text_format.Parse(text_format.MessageToString(config), mc.ModelConfig()) == config


def test_dry_run_writes_nothing(build_plans: ModuleType, repo: Path, capsys) -> None:
    before = sorted(repo.rglob("*"))
    assert build_plans.main([str(repo), "--dry-run", "--fp16"]) == 0
    out = capsys.readouterr().out
    assert out.count("--saveEngine=") == 3 and "--fp16" in out
    assert sorted(repo.rglob("*")) == before


def _stand_in_trtexec(path: Path, exit_code: int) -> Path:
    """A trtexec stand-in: writes the engine it is asked for (or fails), nothing else."""
    path.write_text(
        "#!/bin/sh\n"
        f"[ {exit_code} -ne 0 ] && exit {exit_code}\n"
        'for a in "$@"; do case "$a" in\n'
        '  --saveEngine=*) echo plan > "${a#--saveEngine=}";;\n'
        "esac; done\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_configs_are_written_only_next_to_built_plans(
    build_plans: ModuleType, repo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "plans"
    failing = _stand_in_trtexec(tmp_path / "trtexec-fail", 1)
    assert build_plans.main([str(repo), "--out", str(out), "--trtexec", str(failing)]) == 1
    assert not list(out.rglob("config.pbtxt")), "Triton must not poll in a config without a plan"

    working = _stand_in_trtexec(tmp_path / "trtexec", 0)
    assert build_plans.main([str(repo), "--out", str(out), "--trtexec", str(working)]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "embed_trt/1/model.plan",
        "embed_trt/2/model.plan",
        "embed_trt/config.pbtxt",
        "fixed_trt/1/model.plan",
        "fixed_trt/config.pbtxt",
    ]
    written = text_format.Parse((out / "embed_trt" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert written.platform == "tensorrt_plan"


@pytest.mark.gpu
def test_real_trtexec_builds_a_plan(build_plans: ModuleType, tmp_path: Path) -> None:
    trtexec = shutil.which("trtexec") or next(
        (p for p in ("/usr/src/tensorrt/bin/trtexec",) if os.path.exists(p)), None
    )
    if trtexec is None:
        pytest.skip("needs TensorRT's trtexec and a GPU (the compose converter service has both)")
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    repo = tmp_path / "repo"
    config = mc.ModelConfig(name="relu", platform="onnxruntime_onnx", max_batch_size=8)
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[4])
    config.output.add(name="y", data_type=mc.TYPE_FP32, dims=[4])
    _model(repo, config)
    onnx.save(helper.make_model(graph), str(repo / "relu" / "1" / "model.onnx"))
    assert build_plans.main([str(repo), "--trtexec", trtexec]) == 0
    assert (repo / "relu_trt" / "1" / "model.plan").stat().st_size > 0


def test_device_gpu_retargets_the_onnx_configs_at_kind_gpu(
    build_plans: ModuleType, repo: Path, tmp_path: Path
) -> None:
    """The compose converter runs with ``--device gpu``: Triton then runs the ONNX models on
    the GPU too, not only the plans (the converters write KIND_CPU)."""
    import yaml

    compose = yaml.safe_load((DEPLOY.parent / "docker-compose.yml").read_text())
    command = compose["services"]["converter"]["command"]
    assert command[command.index("--device") + 1] == "gpu"

    trtexec = _stand_in_trtexec(tmp_path / "trtexec", 0)
    before = (repo / "fixed" / "config.pbtxt").read_text()
    argv = [str(repo), "--device", "gpu", "--gpu-ids", "0,1", "--trtexec", str(trtexec)]
    assert build_plans.main([*argv, "--dry-run"]) == 0
    assert (repo / "fixed" / "config.pbtxt").read_text() == before, "dry run wrote a config"
    assert build_plans.main(argv) == 0
    embed = text_format.Parse((repo / "embed" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert [(g.kind, g.count, list(g.gpus)) for g in embed.instance_group] == [
        (mc.ModelInstanceGroup.KIND_GPU, 2, [0, 1])
    ]
    assert embed.response_cache.enable and embed.max_batch_size == 16  # the rest is kept
    fixed = text_format.Parse((repo / "fixed" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert [(g.kind, g.count) for g in fixed.instance_group] == [
        (mc.ModelInstanceGroup.KIND_GPU, 1)
    ]
    python = text_format.Parse((repo / "py" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert not python.instance_group, "only ONNX Runtime models are re-targeted"
    assert build_plans.gpu_retargets(repo, [0, 1]) == [], "a second run changes nothing"
