"""Build (here) what a bare GPU machine needs to run the gateway, and prove it here first.

The GPU machine has Python 3.12 with numpy, onnx, grpcio, protobuf, prometheus-client, typer,
rich, httpx, xxhash, pyyaml, aiohttp, uvloop (and torch), but not the gateway's web stack,
pydantic, tritonclient (+ python-rapidjson), OpenTelemetry (API, SDK, OTLP exporters), redis or
onnxruntime-gpu. This tool downloads cp312 manylinux wheels for exactly those (versions pinned to
the ones the test suite runs with), installs them into a ``site`` folder that goes first on
``PYTHONPATH`` there, builds the benchmark models, and packs everything into <=60 MiB parts (one
per device call).

``dry-run`` proves the import closure on this machine: an empty Python 3.12 venv gets only what
the GPU machine already has (plus the CPU onnxruntime standing in for onnxruntime-gpu), the
payload's ``site`` goes on ``PYTHONPATH``, and ``infergate serve`` must start and answer.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "results" / "gpu_payload"  # git-ignored
PYTHON312 = os.environ.get("PYTHON312", "/root/.pyenv/versions/3.12.1/bin/python3.12")
# overridable only to rehearse --pack with a small wheel; the GPU run needs this one
ORT_GPU = os.environ.get("INFERGATE_GPU_WHEEL", "onnxruntime-gpu==1.31.1")
ORT_CPU_STAND_IN = "onnxruntime==1.31.1"
PART_BYTES = "60M"
PLATFORM_FLAGS = [
    "--only-binary=:all:",
    "--python-version",
    "3.12",
    "--implementation",
    "cp",
    "--platform",
    "manylinux_2_28_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
    "--platform",
    "manylinux2014_x86_64",
]
# In the gateway's import closure (``service`` + uvicorn's httptools/uvloop path) but not on the
# GPU machine. tritonclient.grpc needs python-rapidjson, fastapi needs opentelemetry-api.
MISSING = [
    "fastapi",
    "starlette",
    "uvicorn",
    "click",
    "httptools",
    "watchfiles",
    "orjson",
    "pydantic",
    "pydantic-core",
    "pydantic-settings",
    "python-dotenv",
    "annotated-types",
    "annotated-doc",
    "typing-inspection",
    "typing-extensions",
    "tritonclient",
    "python-rapidjson",
    "opentelemetry-api",
    # tracing (--otlp-endpoint); redis-py imports the SDK too, whenever it is installed
    "opentelemetry-sdk",
    "opentelemetry-semantic-conventions",
    "opentelemetry-proto",
    "opentelemetry-exporter-otlp-common",
    "opentelemetry-exporter-otlp-proto-common",
    "opentelemetry-exporter-otlp-proto-grpc",
    "opentelemetry-exporter-otlp-proto-http",
    "opentelemetry-exporter-http-transport",
    "googleapis-common-protos",
    "psutil",  # imported by opentelemetry-sdk's resources
    "redis",
    "hiredis",
    "nvidia-ml-py",
]
# What the GPU machine already has that the gateway imports (the dry-run venv gets these).
ON_THE_MACHINE = [
    "numpy",
    "onnx",
    "protobuf",
    "grpcio",
    "prometheus-client",
    "typer",
    "rich",
    "httpx",
    "xxhash",
    "pyyaml",
    "aiohttp",
    "uvloop",
    "tokenizers",  # with transformers and sentence-transformers
]
MODELS = {
    "digits_mlp": "copied from model_repo/ (fp32 MLP)",
    "minilm_fp16": "infergate convert onnx model_repo/minilm_embed/1/model.onnx --fp16",
}


# pins for payload packages the shared venv does not hold yet
FALLBACK_PINS = {"nvidia-ml-py": "13.615.71"}


def _version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return FALLBACK_PINS.get(name)


def plan() -> dict[str, object]:
    """Every requirement of the payload, pinned to what this checkout is tested with."""
    pinned = [f"{name}=={_version(name)}" for name in MISSING]
    return {
        "site": pinned,
        "gpu": [ORT_GPU],
        "dry_run_stand_in": [ORT_CPU_STAND_IN],
        "on_the_machine": ON_THE_MACHINE,
        "models": MODELS,
        "pip_flags": PLATFORM_FLAGS,
        "part_bytes": PART_BYTES,
    }


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True)


def install_target(requirements: list[str], target: Path) -> None:
    """cp312 manylinux wheels, no dependencies (the plan lists them all), into ``target``."""
    done = target / ".complete"
    if done.is_file() and done.read_text() == "\n".join(requirements):
        return
    shutil.rmtree(target, ignore_errors=True)
    wheels = WORK / "wheels"
    _pip("download", "--no-deps", *PLATFORM_FLAGS, "-d", str(wheels), *requirements)
    _pip("install", "--no-deps", *PLATFORM_FLAGS, "--target", str(target), *requirements,
         "--find-links", str(wheels), "--no-index")  # fmt: skip
    (target / ".complete").write_text("\n".join(requirements))


def _kind_gpu(config_path: Path) -> None:
    """Re-target a config at KIND_GPU (what ``--device gpu`` writes)."""
    from tritonclient.grpc import model_config_pb2 as mc

    from converters.triton_config import read_config, render

    config = read_config(config_path)
    for group in config.instance_group:
        group.kind = mc.ModelInstanceGroup.KIND_GPU
        group.count = 1
    config_path.write_text(render(config))


def build_models(repo: Path) -> None:
    if (repo / ".complete").is_file():
        return
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    shutil.copytree(ROOT / "model_repo" / "digits_mlp", repo / "digits_mlp")
    source = ROOT / "model_repo" / "minilm_embed" / "1" / "model.onnx"
    command = [sys.executable, "-m", "service.cli", "convert", "onnx", str(source)]
    command += ["--name", "minilm_fp16", "--repo", str(repo), "--fp16", "--max-batch-size", "128"]
    command += ["--embedding-output", "sentence_embedding"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(command, check=True, cwd=ROOT, env=env)
    for name in MODELS:
        _kind_gpu(repo / name / "config.pbtxt")
    (repo / ".complete").write_text("ok")


def venv312(stand_in: list[str]) -> Path:
    """A 3.12 venv holding only what the GPU machine has (+ the CPU ORT stand-in)."""
    venv = WORK / "venv312"
    python = venv / "bin" / "python"
    wanted = " ".join([*ON_THE_MACHINE, *stand_in, "-", *MISSING])  # a changed list rebuilds
    done = venv / ".complete"
    if not done.is_file() or done.read_text() != wanted:
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([PYTHON312, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "-q"]
        subprocess.run([*pip, "install", *ON_THE_MACHINE, *stand_in], check=True)
        # What those pulled in from the payload's list goes again: the GPU machine lacks it, so
        # only the payload's ``site`` may provide it, or the dry run proves nothing.
        subprocess.run([*pip, "uninstall", "-y", *MISSING], check=True, capture_output=True)
        done.write_text(wanted)
    return python


def dry_run() -> dict[str, object]:
    """Start ``infergate serve`` from the 3.12 venv + payload site; one inference per model."""
    sys.path.insert(0, str(ROOT))
    from bench.gpu_serve import digits_inputs, minilm_inputs, serve_and_probe

    site = WORK / "site"
    install_target(plan()["site"], site)  # type: ignore[arg-type]
    build_models(WORK / "model_repo")
    python = venv312([ORT_CPU_STAND_IN])
    env = {"PYTHONPATH": f"{site}:{ROOT}", "PYTHONNOUSERSITE": "1"}
    loads = {"minilm_fp16 32 tokens": ("minilm_fp16", minilm_inputs(1, 32), 2.0, 8)}
    result = serve_and_probe(python, WORK / "model_repo", env, loads)
    # the workers curve's path (supervisor, executors, workers; client processes), briefly
    curve_loads = {"digits_mlp": ("digits_mlp", digits_inputs(1), 0.5, 4, 2)}
    env_workers = {**env, "INFERGATE_WORKERS": "2"}
    result["workers_curve"] = serve_and_probe(python, WORK / "model_repo", env_workers, curve_loads)
    return result


def pack() -> list[Path]:
    """site + site_gpu (onnxruntime-gpu) + models -> payload.tar.xz split into parts."""
    install_target(plan()["site"], WORK / "site")  # type: ignore[arg-type]
    install_target([ORT_GPU], WORK / "site_gpu")
    build_models(WORK / "model_repo")
    parts = WORK / "parts"
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir()
    archive = WORK / "payload.tar.xz"
    started = time.monotonic()
    subprocess.run(
        ["tar", "-cJf", str(archive), "-C", str(WORK), "site", "site_gpu", "model_repo"],
        check=True,
        env={**os.environ, "XZ_OPT": "-T0 -6"},
    )
    subprocess.run(
        ["split", "-b", PART_BYTES, str(archive), str(parts / "payload.tar.xz.part")], check=True
    )
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    archive.unlink()
    count = len(list(parts.iterdir()))
    (parts / "MANIFEST").write_text(f"sha256 {digest}\nparts {count}\n")
    print(f"packed in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return sorted(parts.iterdir())


def _quiet_stdout(work: Callable[[], dict[str, object]]) -> dict[str, object]:
    """Run ``work`` with fd 1 pointing at stderr, so what its subprocesses print (pip, convert
    tables) cannot precede the JSON report on stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        return work()
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("plan", "dry-run", "pack"))
    action = parser.parse_args().action
    if action == "plan":
        print(json.dumps(plan(), indent=2))
    elif action == "dry-run":
        result = _quiet_stdout(dry_run)
        print(json.dumps(result, indent=2))
        return 0 if result["ok"] else 1
    else:
        for part in pack():
            print(f"{part.relative_to(ROOT)} {part.stat().st_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
