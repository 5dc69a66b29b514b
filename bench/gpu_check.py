"""The GPU run of ``bench/gpu_check.sh``: one JSON with what the H200 really does.

Reports the providers ONNX Runtime offers and the gateway uses, raw ORT CUDA EP throughput vs
the gateway for MiniLM fp16 (32 and 128 tokens) and the digits MLP, plain vs IO-binding runs,
whether the TensorRT EP can start (its libraries are absent on those machines), GPU memory, and
the workers curve (``--workers`` 1, 4, 8, 15: requests/s of both models as front ends grow).
Needs the payload's ``site_gpu``/``site`` first on PYTHONPATH (the shell script sets it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from bench.gpu_serve import digits_inputs, minilm_inputs, serve_and_probe  # noqa: E402
from service.backends.onnxruntime.io_binding import IoBindingRunner  # noqa: E402
from service.observability.gpu import read_gpus  # noqa: E402

CUDA = [("CUDAExecutionProvider", {"device_id": "0"}), "CPUExecutionProvider"]


def _timed(run, seconds: float = 1.0) -> tuple[int, float]:
    for _ in range(3):
        run()
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run()
        calls += 1
    return calls, time.perf_counter() - started


def raw_ort(repo: Path) -> dict[str, object]:
    """Numpy in, numpy out, one CUDA session per model: the ceiling the gateway approaches."""
    results: dict[str, object] = {}
    cases = [("minilm_fp16", t, b) for t in (32, 128) for b in (1, 8, 32, 128)]
    cases += [("digits_mlp", 0, b) for b in (1, 64, 1024)]
    sessions: dict[str, ort.InferenceSession] = {}
    for model, tokens, batch in cases:
        if model not in sessions:
            path = str(repo / model / "1" / "model.onnx")
            sessions[model] = ort.InferenceSession(path, providers=CUDA)
        session = sessions[model]
        feeds = minilm_inputs(batch, tokens) if tokens else digits_inputs(batch)
        names = [o.name for o in session.get_outputs()]
        calls, elapsed = _timed(lambda s=session, f=feeds, n=names: s.run(n, f))
        key = f"{model} tokens={tokens} batch={batch}" if tokens else f"{model} batch={batch}"
        results[key] = {
            "rows_per_s": round(calls * batch / elapsed, 1),
            "ms_per_call": round(1000 * elapsed / calls, 3),
            "providers": session.get_providers(),
        }
    session = sessions["minilm_fp16"]
    feeds = minilm_inputs(128, 128)
    names = [o.name for o in session.get_outputs()]
    binder = IoBindingRunner(session, 0, {names[0]: (np.dtype(np.float32), (384,))}, True)
    for label, run in (
        ("plain", lambda: session.run(names, feeds)),
        ("io_binding", lambda: binder.run(feeds, names)),
    ):
        calls, elapsed = _timed(run)
        results[f"minilm_fp16 tokens=128 batch=128 {label}"] = {
            "ms_per_call": round(1000 * elapsed / calls, 3)
        }
    binder.close()
    return results


def tensorrt(repo: Path) -> dict[str, object]:
    """Whether the TensorRT EP starts here; ORT falls back silently, so compare providers."""
    options = {"device_id": "0", "trt_fp16_enable": "True", "trt_engine_cache_enable": "True"}
    options["trt_engine_cache_path"] = "/tmp/infergate-gpu/trt_cache"
    Path(options["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
    providers = [("TensorrtExecutionProvider", options), *CUDA]
    try:
        path = str(repo / "digits_mlp" / "1" / "model.onnx")
        used = ort.InferenceSession(path, providers=providers).get_providers()
    except Exception as exc:
        return {"error": str(exc)[:500]}
    return {"providers": used, "tensorrt_enabled": "TensorrtExecutionProvider" in used}


def gateway(repo: Path) -> dict[str, object]:
    loads = {
        "minilm_fp16 tokens=32": ("minilm_fp16", minilm_inputs(1, 32), 5.0, 128),
        "minilm_fp16 tokens=128": ("minilm_fp16", minilm_inputs(1, 128), 5.0, 128),
        "digits_mlp": ("digits_mlp", digits_inputs(1), 5.0, 128),
    }
    return serve_and_probe(Path(sys.executable), repo, {}, loads)


#: --workers of the curve (16 cores: 15 front ends and the executors at the top)
CURVE = (1, 4, 8, 15)


def workers_curve(repo: Path, counts: tuple[int, ...] = CURVE, seconds: float = 5.0) -> dict:
    """Throughput as front-end workers grow, batch-1 requests from 4 client processes: digits
    MLP on the CPU, MiniLM fp16 on the CUDA EP (raw ORT at batch 32 and 128 is ``raw_ort``'s).
    Until the GPU or an executor is full, rows/s should grow with N; the log says which."""
    loads = {
        "digits_mlp": ("digits_mlp", digits_inputs(1), seconds, 64, 4),
        "minilm_fp16 tokens=128": ("minilm_fp16", minilm_inputs(1, 128), seconds, 64, 4),
        "minilm_fp16 tokens=32": ("minilm_fp16", minilm_inputs(1, 32), seconds, 64, 4),
    }
    curve: dict[str, object] = {}
    for workers in counts:
        env = {"INFERGATE_WORKERS": str(workers)}
        curve[f"workers={workers}"] = serve_and_probe(Path(sys.executable), repo, env, loads)
    return curve


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload()
    report: dict[str, object] = {
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "gpus_before": [asdict(reading) for reading in read_gpus()],
    }
    sections = (
        ("raw_ort", raw_ort),
        ("tensorrt", tensorrt),
        ("gateway", gateway),
        ("workers_curve", workers_curve),
    )
    for section, run in sections:
        started = time.perf_counter()
        try:
            report[section] = run(args.repo)
        except Exception as exc:  # one failing section must not lose the others
            report[section] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        print(f"{section} took {time.perf_counter() - started:.1f} s", file=sys.stderr)
    report["gpus_after"] = [asdict(reading) for reading in read_gpus()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
