"""config.pbtxt placement -> ORT sessions/providers, the GPU memory budget, and CPU fallback.

The mapping is pure, so configs parsed with model_config_pb2 are checked option by option. The
fallback and budget tests load real models with real ONNX Runtime sessions in-process; on this
CPU-only machine ORT has no CUDA provider, which is exactly the fallback under test.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from service.backends.onnxruntime.gpu_budget import GpuMemoryLedger
from service.backends.onnxruntime.placement import CPU, CUDA, TENSORRT, fallbacks, plan_sessions
from service.dataplane.plane import DataPlane
from service.errors import Unavailable
from service.host import cuda_gpu_count
from service.messages import InferRequest
from service.settings import Settings

CACHE = Path("/engines")
GIB = 1 << 30


def config(text: str) -> mc.ModelConfig:
    return text_format.Parse('name: "m"\nmax_batch_size: 8\n' + text, mc.ModelConfig())


def plan(text: str, visible: list[int] | None = None, override: list[str] | None = None):
    return plan_sessions(
        config(text), visible_gpus=visible or [], override=override or [], engine_cache_dir=CACHE
    )


TENSORRT_FP16 = """
instance_group { kind: KIND_GPU gpus: [1] }
optimization { execution_accelerators { gpu_execution_accelerator: [ {
  name: "tensorrt"
  parameters { key: "precision_mode" value: "FP16" }
  parameters { key: "max_workspace_size_bytes" value: "1073741824" }
  parameters { key: "trt_timing_cache_enable" value: "1" }
} ] } }
"""


def test_tensorrt_fp16_workspace_and_engine_cache() -> None:
    (session,) = plan(TENSORRT_FP16).sessions
    assert session.device == "gpu:1"
    assert session.provider_names == [TENSORRT, CUDA, CPU]
    assert dict(session.providers)[TENSORRT] == {
        "device_id": "1",
        "trt_fp16_enable": "True",
        "trt_max_workspace_size": "1073741824",
        "trt_timing_cache_enable": "True",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(CACHE),
    }
    assert dict(session.providers)[CUDA] == {"device_id": "1"}


def test_tensorrt_int8_and_a_disabled_engine_cache() -> None:
    text = TENSORRT_FP16.replace("FP16", "INT8").replace(
        'value: "1" }', 'value: "1" }\n  parameters { key: "trt_engine_cache_enable" value: "0" }'
    )
    options = dict(plan(text).sessions[0].providers)[TENSORRT]
    assert options["trt_int8_enable"] == "True" and "trt_fp16_enable" not in options
    assert options["trt_engine_cache_enable"] == "False"
    assert "trt_engine_cache_path" not in options


def test_cuda_accelerator_memory_limit_and_arena() -> None:
    (session,) = plan(
        """
        instance_group { kind: KIND_GPU gpus: [0] }
        optimization { execution_accelerators { gpu_execution_accelerator: [ {
          name: "cuda" parameters { key: "cudnn_conv_use_max_workspace" value: "0" } } ] } }
        parameters { key: "infergate.gpu_mem_limit_bytes" value: { string_value: "2147483648" } }
        parameters { key: "arena_extend_strategy" value: { string_value: "1" } }
        parameters { key: "cudnn_conv_algo_search" value: { string_value: "1" } }
        """
    ).sessions
    assert session.provider_names == [CUDA, CPU]
    assert dict(session.providers)[CUDA] == {
        "device_id": "0",
        "gpu_mem_limit": "2147483648",
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "HEURISTIC",
        "cudnn_conv_use_max_workspace": "0",
    }
    assert session.gpu_mem_limit_bytes == 2 * GIB


def test_gpus_times_count_gives_one_session_per_instance() -> None:
    placement = plan("instance_group { kind: KIND_GPU gpus: [0, 1] count: 2 }")
    assert [s.device_id for s in placement.sessions] == [0, 0, 1, 1]
    assert all(s.slots == 1 and s.provider_names == [CUDA, CPU] for s in placement.sessions)
    assert placement.concurrency == 4


def test_kind_gpu_without_gpus_uses_every_visible_gpu() -> None:
    placement = plan("instance_group { kind: KIND_GPU count: 1 }", visible=[0, 1, 2])
    assert [s.device for s in placement.sessions] == ["gpu:0", "gpu:1", "gpu:2"]


@pytest.mark.parametrize(
    "text, visible, devices, concurrency",
    [
        ("instance_group { kind: KIND_CPU count: 3 }", [0], ["cpu"], 3),
        ("", [0], ["cpu"], 1),  # no group: CPU, as the converters' configs always said
        ("instance_group { count: 2 }", [], ["cpu"], 2),  # KIND_AUTO without a GPU
        ("instance_group { count: 2 }", [0], ["gpu:0", "gpu:0"], 2),  # KIND_AUTO with one
    ],
)
def test_cpu_and_auto_placement(text, visible, devices, concurrency) -> None:
    placement = plan(text, visible=visible)
    assert [s.device for s in placement.sessions] == devices
    assert placement.concurrency == concurrency


def test_cpu_override_folds_gpu_instances_into_one_shared_session() -> None:
    placement = plan("instance_group { kind: KIND_GPU gpus: [0, 1] }", override=[CPU])
    (session,) = placement.sessions
    assert session.device == "cpu" and session.provider_names == [CPU] and session.slots == 2


@pytest.mark.parametrize(
    "accelerator, message",
    [
        ('name: "openvino"', "unknown GPU execution accelerator 'openvino'"),
        (
            'name: "tensorrt" parameters { key: "precision_mode" value: "FP8" }',
            "precision_mode must be FP32, FP16 or INT8",
        ),
        (
            'name: "tensorrt" parameters { key: "trt_fp16_enable" value: "maybe" }',
            "must be true/false or 1/0",
        ),
    ],
)
def test_bad_accelerators_are_refused_precisely(accelerator, message) -> None:
    text = (
        "instance_group { kind: KIND_GPU }\noptimization { execution_accelerators { "
        f"gpu_execution_accelerator: [ {{ {accelerator} }} ] }} }}"
    )
    with pytest.raises(ValueError, match=message):
        plan(text, visible=[0])


def test_fallbacks_compare_requested_with_what_ort_enabled() -> None:
    assert fallbacks([TENSORRT, CUDA, CPU], [CUDA, CPU]) == [TENSORRT]
    assert fallbacks([CUDA, CPU], [CPU]) == [CUDA]
    assert fallbacks([CPU], [CPU]) == []


LIMITED = """
instance_group { kind: KIND_GPU count: 2 }
parameters { key: "infergate.gpu_mem_limit_bytes" value: { string_value: "3221225472" } }
"""


def test_budget_refuses_what_does_not_fit_on_a_fake_two_gpu_machine() -> None:
    ledger = GpuMemoryLedger()
    placement = plan(LIMITED, visible=[0, 1])
    assert placement.gpu_memory() == {0: 6 * GIB, 1: 6 * GIB}
    first = ledger.reserve("a/1", placement.gpu_memory(), 10 * GIB)
    with pytest.raises(ValueError, match=r"GPU 0 has 4294967296 of its 10737418240 budget"):
        ledger.reserve("b/1", placement.gpu_memory(), 10 * GIB)
    assert ledger.reserve("a/1", placement.gpu_memory(), 10 * GIB)  # a reload of a/1 fits
    ledger.release(first)
    assert ledger.used(0) == 6 * GIB
    with pytest.raises(ValueError, match="every GPU instance needs a limit"):
        ledger.reserve("c/1", plan("instance_group { kind: KIND_GPU }", [0]).gpu_memory(), GIB)


# --- real sessions: fallback and budget through the repository ---------------------------------

needs_no_cuda = pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers() and cuda_gpu_count() > 0,
    reason="this machine really has CUDA: the CPU fallback cannot happen here",
)


def gpu_copy(example_repo: Path, repo: Path, name: str, extra: str = "") -> None:
    """digits_mlp as ``name`` with a KIND_GPU group (and ``extra`` config text)."""
    shutil.copytree(example_repo / "digits_mlp", repo / name)
    text = (repo / name / "config.pbtxt").read_text()
    text = text.replace('"digits_mlp"', f'"{name}"').replace("KIND_CPU", "KIND_GPU\n  gpus: 0")
    (repo / name / "config.pbtxt").write_text(text + extra)


def digits(name: str) -> InferRequest:
    data = np.random.default_rng(0).random((1, 64), dtype=np.float32)
    return InferRequest(name, "", {"input": data}, {"input": "FP32"})


@needs_no_cuda
async def test_kind_gpu_falls_back_to_cpu_loudly_and_still_serves(example_repo, tmp_path, caplog):
    gpu_copy(example_repo, tmp_path, "gpu_mlp")
    caplog.set_level(logging.WARNING, logger="service.backends.onnxruntime.sessions")
    dataplane = DataPlane(Settings(model_repo=tmp_path, grpc_port=0))
    await dataplane.start()
    try:
        warnings = [r.getMessage() for r in caplog.records if "FALLBACK" in r.getMessage()]
        assert warnings and "CUDAExecutionProvider > CPUExecutionProvider" in warnings[0]
        assert "install onnxruntime-gpu" in warnings[0]
        response = await dataplane.infer(digits("gpu_mlp"))
        assert response.outputs["probabilities"].shape == (1, 10)
        served = dataplane.model_config("gpu_mlp")
        assert [(g.kind, g.count) for g in served.instance_group] == [
            (mc.ModelInstanceGroup.KIND_CPU, 2)
        ]
        runtime = json.loads(served.parameters["infergate.runtime"].string_value)
        assert runtime["instances"][0]["fallback"] == [CUDA]
        assert runtime["instances"][0]["providers"] == [CPU]
        metrics = (await dataplane.metrics()).decode()
        assert (
            'infergate_model_instance_info{device="cpu",gpu_mem_limit_bytes="0",'
            'model="gpu_mlp",provider="CPUExecutionProvider",version="1"} 2.0'
        ) in metrics
    finally:
        await dataplane.close()
    assert (
        'infergate_model_instance_info{device="cpu",gpu_mem_limit_bytes="0",model="gpu_mlp"'
        not in ((await dataplane.metrics()).decode())
    )


async def test_budget_leaves_the_model_that_does_not_fit_unavailable(example_repo, tmp_path):
    limit = '\nparameters { key: "gpu_mem_limit" value: { string_value: "3000000000" } }\n'
    gpu_copy(example_repo, tmp_path, "a_mlp", limit)
    gpu_copy(example_repo, tmp_path, "b_mlp", limit)
    budget = 8_000_000_000  # a_mlp's two instances hold 6 GB of it; b_mlp needs 6 GB more
    dataplane = DataPlane(
        Settings(
            model_repo=tmp_path,
            grpc_port=0,
            gpu_memory_budget_bytes=budget,
            model_control_mode="explicit",
        )
    )
    await dataplane.start()
    try:
        assert (await dataplane.infer(digits("a_mlp"))).outputs["probabilities"].shape == (1, 10)
        rows = {row.name: row.to_json() for row in await dataplane.repository_index()}
        assert rows["b_mlp"]["state"] == "UNAVAILABLE"
        assert "GPU 0 has 2000000000 of its 8000000000 budget bytes left" in rows["b_mlp"]["reason"]
        with pytest.raises(Unavailable, match="instances need 6000000000"):
            await dataplane.infer(digits("b_mlp"))
        await dataplane.unload_model("a_mlp")
        await dataplane.load_model("b_mlp")  # the budget freed by a_mlp now lets b_mlp in
        assert (await dataplane.infer(digits("b_mlp"))).outputs["probabilities"].shape == (1, 10)
    finally:
        await dataplane.close()
