"""Gateway throughput/latency, side by side in one run (not a test).

For ``digits_mlp`` (HTTP-bound) and ``minilm_embed`` (compute-bound) it drives, with ``wrk`` and
batch-1 v2 JSON requests at 1/16/64 connections: the gateway with batching on, the gateway with
``--no-batching``, and (digits_mlp) a naive FastAPI server calling ``session.run`` per request; and
it measures ONNX Runtime in-process on the same inputs at its best batch size. Prints the table and
the ratios, writes ``bench/results/gateway.json``.

    .venv/bin/python bench/gateway_bench.py [--duration 10] [--models digits_mlp,minilm_embed]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import free_port, start_gateway  # noqa: E402

LUA_DONE = """
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %.1f %.1f %.1f\\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout,
    summary.duration, latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


def request_body(model: str, seq_len: int = 32) -> dict:
    rng = np.random.default_rng(0)
    if model.startswith("minilm_embed"):
        ids = rng.integers(1000, 5000, size=seq_len).tolist()
        ids[0], ids[-1] = 101, 102
        return {
            "inputs": [
                {"name": "input_ids", "shape": [1, seq_len], "datatype": "INT64", "data": ids},
                {
                    "name": "attention_mask",
                    "shape": [1, seq_len],
                    "datatype": "INT64",
                    "data": [1] * seq_len,
                },
                {
                    "name": "token_type_ids",
                    "shape": [1, seq_len],
                    "datatype": "INT64",
                    "data": [0] * seq_len,
                },
            ],
            "parameters": {"cache": False},
        }
    return {
        "inputs": [
            {
                "name": "input",
                "shape": [1, 64],
                "datatype": "FP32",
                "data": (rng.random(64) * 16).round(3).tolist(),
            }
        ]
    }


def wrk(url: str, body: dict, connections: int, duration: int, threads: int = 2) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = [[{json.dumps(body)}]]\n{LUA_DONE}"
        )
    out = subprocess.run(
        [
            "wrk",
            f"-t{min(threads, connections)}",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "10s",
            "-s",
            script.name,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)
    match = re.search(r"RESULT (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+)", out)
    assert match, out
    requests, errors, duration_us, p50, p99, mean = match.groups()
    seconds = int(duration_us) / 1e6
    return {
        "connections": connections,
        "requests": int(requests),
        "errors": int(errors),
        "req_per_s": round(int(requests) / seconds, 1),
        "p50_ms": round(float(p50) / 1000, 3),
        "p99_ms": round(float(p99) / 1000, 3),
    }


def onnxruntime_direct(model_file: Path, model: str, duration: float) -> dict:
    """In-process ORT at batch sizes 1..64 on the same cores; the best one is the ceiling."""
    options = ort.SessionOptions()
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    body = request_body(model)
    base = {
        t["name"]: np.asarray(
            t["data"], dtype=np.int64 if t["datatype"] == "INT64" else np.float32
        ).reshape(t["shape"])
        for t in body["inputs"]
    }
    results = {}
    for batch in (1, 8, 16, 32, 64):
        feeds = {name: np.repeat(array, batch, axis=0) for name, array in base.items()}
        session.run(None, feeds)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < duration:
            session.run(None, feeds)
            count += 1
        results[batch] = round(count * batch / (time.perf_counter() - started), 1)
    best = max(results, key=results.get)
    return {
        "samples_per_s_by_batch": results,
        "best_batch": best,
        "best_samples_per_s": results[best],
    }


def model_file(repo: Path, model: str, version: str) -> Path:
    """The version's model.onnx; "" = the highest version, the one the gateway serves by default."""
    version = version or str(max(int(p.name) for p in (repo / model).iterdir() if p.name.isdigit()))
    return repo / model / version / "model.onnx"


def serve_naive(model_file: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "naive_server.py"), str(model_file), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            httpx.get(f"http://127.0.0.1:{port}/docs", timeout=0.5)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    return process, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", type=Path, default=ROOT / "model_repo")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", default="1,16,64")
    parser.add_argument(
        "--models",
        default="digits_mlp,minilm_embed:1,minilm_embed_int8:1",
        help="MODEL or MODEL:VERSION, comma-separated",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gateway.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    connections = [int(c) for c in args.connections.split(",")]
    report: dict = {"machine": {"cores": os.cpu_count()}, "models": {}}
    for spec in args.models.split(","):
        model, _, version = spec.partition(":")
        body = request_body(model)
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        rows: dict[str, list[dict]] = {}
        for label, extra in (("gateway_batching", []), ("gateway_no_batching", ["--no-batching"])):
            gateway = start_gateway(args.repo, *extra, "--grpc-port", "0")
            try:
                wrk(gateway.base_url + path, body, 16, 2)  # warm-up
                rows[label] = [
                    wrk(gateway.base_url + path, body, c, args.duration) for c in connections
                ]
            finally:
                gateway.stop()
        if model == "digits_mlp":
            process, url = serve_naive(model_file(args.repo, model, version))
            try:
                wrk(url + path, body, 16, 2)
                rows["naive_fastapi"] = [
                    wrk(url + path, body, c, args.duration) for c in connections
                ]
            finally:
                process.terminate()
                process.wait()
        onnx_file = model_file(args.repo, model, version)
        direct = onnxruntime_direct(onnx_file, model, min(args.duration, 5))
        report["models"][spec] = {"runs": rows, "onnxruntime_direct": direct}
        print_model(spec, rows, direct, connections)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.exists():  # keep other models' results from earlier runs
        report["models"] = {
            **json.loads(args.out.read_text()).get("models", {}),
            **report["models"],
        }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")


def print_model(
    model: str, rows: dict[str, list[dict]], direct: dict, connections: list[int]
) -> None:
    print(f"\n== {model}  (batch-1 v2 JSON requests; wrk)")
    print(f"{'server':22} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for label, runs in rows.items():
        for run in runs:
            print(
                f"{label:22} {run['connections']:>5} {run['req_per_s']:>9.0f} "
                f"{run['p50_ms']:>8.2f} {run['p99_ms']:>8.2f} {run['errors']:>6}"
            )
    print(f"onnxruntime in-process: {direct['samples_per_s_by_batch']} samples/s by batch size")
    by_conn = {label: {r["connections"]: r for r in runs} for label, runs in rows.items()}
    top = max(connections)
    batched = by_conn["gateway_batching"][top]["req_per_s"]
    unbatched = by_conn["gateway_no_batching"][top]["req_per_s"]
    print(f"ratio batching on / off at {top} conns: {batched / unbatched:.2f}x")
    if "naive_fastapi" in by_conn:
        naive = by_conn["naive_fastapi"][top]["req_per_s"]
        print(f"ratio gateway / naive FastAPI at {top} conns: {batched / naive:.2f}x")
    ceiling = direct["best_samples_per_s"]
    print(f"ratio gateway / ORT best batch ({direct['best_batch']}): {batched / ceiling:.2%}")
    if 1 in connections:
        on, off = (
            by_conn["gateway_batching"][1]["p50_ms"],
            by_conn["gateway_no_batching"][1]["p50_ms"],
        )
        print(
            f"idle p50 (1 conn): batching on {on:.2f} ms, off {off:.2f} ms, diff {on - off:+.2f} ms"
        )


if __name__ == "__main__":
    main()
