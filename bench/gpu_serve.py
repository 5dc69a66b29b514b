"""Start ``infergate serve`` from a given interpreter, probe what it runs on, and load it.

Shared by ``gpu_payload.py dry-run`` (here, CPU, Python 3.12 venv) and ``gpu_check.py`` (the
GPU machine), so the code the GPU run depends on is exercised before the device is spent.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def minilm_inputs(rows: int, tokens: int) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(0).integers(1000, 2000, (rows, tokens), dtype=np.int64)
    ids[:, 0] = 101
    return {
        "input_ids": ids,
        "attention_mask": np.ones((rows, tokens), dtype=np.int64),
        "token_type_ids": np.zeros((rows, tokens), dtype=np.int64),
    }


def digits_inputs(rows: int) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(0).random((rows, 64), dtype=np.float32)}


async def grpc_load(
    url: str, model: str, inputs: dict[str, np.ndarray], seconds: float, concurrency: int
) -> dict[str, float]:
    """``concurrency`` clients sending ``inputs`` for ``seconds``; rows/s and mean latency."""
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    client = grpcclient.InferenceServerClient(url)
    tensors = []
    for name, array in inputs.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    rows = next(iter(inputs.values())).shape[0]
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while True:  # at least one request, so seconds=0 is a smoke test
            started = time.perf_counter()
            await client.infer(model, tensors)
            latencies.append(time.perf_counter() - started)
            if started >= deadline:
                break

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    await client.close()
    return {
        "rows_per_s": round(len(latencies) * rows / elapsed, 1),
        "mean_ms": round(1000 * sum(latencies) / max(len(latencies), 1), 3),
        "requests": len(latencies),
        "concurrency": concurrency,
    }


def _load_in_process(args: tuple[str, str, dict[str, np.ndarray], float, int]) -> dict[str, float]:
    return asyncio.run(grpc_load(*args))


def spread_load(
    url: str,
    model: str,
    inputs: dict[str, np.ndarray],
    seconds: float,
    concurrency: int,
    processes: int = 1,
) -> dict[str, float]:
    """``grpc_load`` from ``processes`` client processes at once (one Python client tops out
    long before a 16-core gateway does), ``concurrency`` clients each; rows/s summed."""
    if processes <= 1:
        return asyncio.run(grpc_load(url, model, inputs, seconds, concurrency))
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    job = (url, model, inputs, seconds, concurrency)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        parts = list(pool.map(_load_in_process, [job] * processes))
    requests = sum(int(part["requests"]) for part in parts)
    return {
        "rows_per_s": round(sum(part["rows_per_s"] for part in parts), 1),
        "mean_ms": round(sum(part["mean_ms"] * part["requests"] for part in parts) / requests, 3),
        "requests": requests,
        "concurrency": concurrency * processes,
        "client_processes": processes,
    }


Started = tuple[subprocess.Popen, int, int, Path]
#: (model, inputs, seconds, clients), or with a fifth item the client processes
Load = tuple[Any, ...]


def _start(python: Path, repo: Path, env: dict[str, str]) -> Started:
    http_port, grpc_port = _free_port(), _free_port()
    log = Path(tempfile.mkstemp(prefix="infergate-gpu-", suffix=".log")[1])
    command = [str(python), "-m", "service.cli", "serve", "--model-repo", str(repo)]
    command += ["--host", "127.0.0.1", "--http-port", str(http_port)]
    command += ["--grpc-port", str(grpc_port)]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    return process, http_port, grpc_port, log


def _wait_ready(process: subprocess.Popen, base: str, log: Path, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    ready = 0  # with --workers N each fresh connection may reach another worker: N*4 in a row
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}:\n{log.read_text()}")
        try:
            ok = httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            ok = False
        ready = ready + 1 if ok else 0
        if ready >= 64:
            return
        time.sleep(0.01 if ok else 0.2)
    raise RuntimeError(f"gateway not ready after {timeout}s:\n{log.read_text()[-4000:]}")


def _probe(base: str, models: list[str]) -> dict[str, object]:
    import httpx

    found: dict[str, object] = {}
    for model in models:
        config = httpx.get(f"{base}/v2/models/{model}/config", timeout=10).json()
        runtime = config.get("parameters", {}).get("infergate.runtime", {})
        found[model] = json.loads(runtime.get("string_value", "{}"))
    metrics = httpx.get(f"{base}/metrics", timeout=10).text
    keep = ("infergate_model_instance_info{", "nv_gpu_", "infergate_warmup_seconds{")
    found["metrics"] = [line for line in metrics.splitlines() if line.startswith(keep)]
    return found


def serve_and_probe(
    python: Path,
    repo: Path,
    env: dict[str, str],
    loads: dict[str, Load],
    ready_timeout: float = 600,
) -> dict[str, object]:
    """Serve ``repo``, one inference per model, then each named load ((model, inputs, seconds,
    clients[, client processes])); never leaves it running."""
    process, http_port, grpc_port, log = _start(python, repo, env)
    base = f"http://127.0.0.1:{http_port}"
    result: dict[str, object] = {"ok": False}
    try:
        _wait_ready(process, base, log, ready_timeout)
        url = f"127.0.0.1:{grpc_port}"
        smoke = {
            "digits_mlp": digits_inputs(1),
            "minilm_fp16": minilm_inputs(1, 32),
        }
        for model, inputs in smoke.items():
            asyncio.run(grpc_load(url, model, inputs, 0.0, 1))  # returns after one request
        result["runtime"] = _probe(base, list(smoke))
        result["load"] = {label: spread_load(url, *load) for label, load in loads.items()}
        result["ok"] = True
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        text = log.read_text(errors="replace")
        pattern = re.compile(r"FALLBACK|warmup of|uses |Traceback|Error")
        result["log"] = [line[:400] for line in text.splitlines() if pattern.search(line)][-40:]
        log.unlink()
    return result
