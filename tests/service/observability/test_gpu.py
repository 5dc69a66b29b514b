"""Triton's nv_gpu_* families: rendered from NVML readings, absent (and harmless) without a GPU."""

from __future__ import annotations

import importlib.util

import pytest

from service.host import cuda_gpu_count
from service.observability import gpu
from service.observability.gpu import GpuReading, read_gpus, render_lines
from service.observability.metrics import registry_text, render

HAS_GPU = cuda_gpu_count() > 0
HAS_NVML = importlib.util.find_spec("pynvml") is not None


def test_readings_render_with_tritons_names_and_the_gpu_uuid_label() -> None:
    readings = [
        GpuReading("GPU-aaa", 0.25, 80 * 2**30, 2**30, 310.5),
        GpuReading("GPU-bbb", 0.0, 80 * 2**30, 0, 70.0),
    ]
    lines = render_lines(readings)
    assert "# TYPE nv_gpu_utilization gauge" in lines
    assert 'nv_gpu_utilization{gpu_uuid="GPU-aaa"} 0.25' in lines
    assert f'nv_gpu_memory_total_bytes{{gpu_uuid="GPU-bbb"}} {80 * 2**30}' in lines
    assert f'nv_gpu_memory_used_bytes{{gpu_uuid="GPU-aaa"}} {2**30}' in lines
    assert 'nv_gpu_power_usage{gpu_uuid="GPU-aaa"} 310.5' in lines
    assert render_lines([]) == []


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU")
def test_without_a_gpu_metrics_have_no_gpu_families_and_no_error() -> None:
    assert read_gpus() == []
    exposition = render([], registry_text()).decode()
    assert "nv_gpu_" not in exposition
    assert "infergate_queue_depth" in exposition  # the rest of /metrics is intact


@pytest.mark.skipif(not HAS_NVML, reason="nvidia-ml-py (pynvml) is not installed")
@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU")
def test_nvml_without_a_driver_is_treated_as_no_gpu() -> None:
    gpu._nvml_checked = False  # ask NVML again, whatever an earlier test saw
    assert read_gpus() == []


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_GPU and HAS_NVML), reason="needs a CUDA GPU and nvidia-ml-py")
def test_a_real_gpu_is_reported() -> None:
    readings = read_gpus()
    assert readings and all(r.memory_total_bytes > r.memory_used_bytes >= 0 for r in readings)
    assert f'gpu_uuid="{readings[0].uuid}"' in render([], registry_text()).decode()
