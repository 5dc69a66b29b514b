"""One gateway process, this checkout vs an older one vs Triton 2.51, side by side (not a test).

The one-process comparison of the performance issue: ``digits_mlp``, v2 REST JSON at batch 1,
``wrk`` at ``--connections`` (64), against ``infergate serve --workers 1`` from this checkout,
from ``--baseline`` (another checkout, e.g. ``git worktree add /tmp/edbcd36 edbcd36``) and
against Triton 2.51 on the python-backend twin of the same model (as ``perf_analyzer.py``
starts it). Arms alternate for ``--rounds`` rounds, each a fresh server, so a busy machine
disturbs them alike. Per run: requests/s, p50/p99, and the server's CPU time (its process tree,
from ``/proc``) per request wrk completed. The JSON has every run; the table the medians and
the ratios.

    .venv/bin/python bench/one_process_bench.py --baseline /tmp/edbcd36 [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from gateway_bench import request_body, wrk  # noqa: E402
from workers_bench import tree_cpu_s  # noqa: E402

from converters.python_backend import write_python_backend  # noqa: E402
from tests.helpers import free_port, wait_until  # noqa: E402
from tests.triton_server import TritonServer, assemble_triton  # noqa: E402

MODEL = "digits_mlp"
SERVE = "import sys; sys.path.insert(0, sys.argv[1]); sys.argv[1:2] = []; "
SERVE += "from service.cli import app; app()"


@contextmanager
def gateway(checkout: Path, repo: Path, log: Path, one_process_flag: bool) -> Iterator[str]:
    """``infergate serve`` of ``checkout`` (its own code first on sys.path) on free ports."""
    port = free_port()
    command = [sys.executable, "-c", SERVE, str(checkout), "serve", "--model-repo", str(repo)]
    command += ["--host", "127.0.0.1", "--http-port", str(port), "--grpc-port", str(free_port())]
    if one_process_flag:
        command += ["--workers", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "INFERGATE_CACHE_ENABLED": "false"}
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=checkout, env=env, stdout=out, stderr=out)
    host = f"127.0.0.1:{port}"
    try:
        wait_until(lambda: ready(host, process), 120, f"{checkout} to serve ({log})")
        yield f"{host}|{process.pid}"
    finally:
        process.terminate()
        process.wait(60)


def ready(host: str, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"the server exited with {process.returncode}")
    try:
        return httpx.get(f"http://{host}/v2/models/{MODEL}/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def run(where: str, connections: int, duration: int) -> dict[str, Any]:
    """A second of warm-up, then ``duration`` seconds measured: wrk's figures and CPU/request."""
    host, pid = where.split("|")
    url = f"http://{host}/v2/models/{MODEL}/infer"
    body = request_body(MODEL)
    wrk(url, body, connections, 1)
    before = tree_cpu_s(int(pid))
    result = wrk(url, body, connections, duration)
    cpu = tree_cpu_s(int(pid)) - before
    done = result["requests"] - result["errors"]
    result["cpu_us_per_request"] = round(cpu / done * 1e6, 1) if done else None
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout")
    parser.add_argument("--repo", type=Path, default=ROOT / "model_repo")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "one_process.json")
    args = parser.parse_args()
    repo, runs = args.repo.resolve(), {"this": [], "baseline": [], "triton": []}
    with tempfile.TemporaryDirectory(prefix="infergate-one-") as work:
        logs = Path(work)
        write_python_backend(repo, logs / "python", [MODEL])
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}/{args.rounds}", flush=True)
            for name, checkout in (("this", ROOT), ("baseline", args.baseline.resolve())):
                with gateway(checkout, repo, logs / f"{name}.log", name == "this") as where:
                    runs[name].append(run(where, args.connections, args.duration))
            triton = TritonServer(assemble_triton(), logs / "python", logs)
            triton.start()
            try:
                assert triton.process is not None
                where = f"{triton.http_url}|{triton.process.pid}"
                runs["triton"].append(run(where, args.connections, args.duration))
            finally:
                triton.stop()
            time.sleep(1)
    report(args, runs)
    return 0


def report(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> None:
    keys = ("req_per_s", "p50_ms", "p99_ms", "cpu_us_per_request")
    medians = {
        name: {
            key: statistics.median(r[key] for r in results if r.get(key) is not None)
            for key in keys
        }
        for name, results in runs.items()
    }
    ratios = {
        "req/s this / baseline": medians["this"]["req_per_s"] / medians["baseline"]["req_per_s"],
        "req/s this / Triton": medians["this"]["req_per_s"] / medians["triton"]["req_per_s"],
        "req/s baseline / Triton": medians["baseline"]["req_per_s"]
        / medians["triton"]["req_per_s"],
        "CPU/req this / baseline": medians["this"]["cpu_us_per_request"]
        / medians["baseline"]["cpu_us_per_request"],
        "CPU/req this / Triton": medians["this"]["cpu_us_per_request"]
        / medians["triton"]["cpu_us_per_request"],
    }
    result = {
        "baseline": str(args.baseline),
        "connections": args.connections,
        "duration_s": args.duration,
        "cores": os.cpu_count(),
        "runs": runs,
        "medians": medians,
        "ratios": {key: round(value, 3) for key, value in ratios.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for name, median in medians.items():
        per_run = ", ".join(f"{r['req_per_s']:.0f}" for r in runs[name])
        print(
            f"{name:9s} {median['req_per_s']:7.0f} req/s (runs {per_run})  p50 "
            f"{median['p50_ms']:.1f} ms  p99 {median['p99_ms']:.1f} ms  "
            f"CPU {median['cpu_us_per_request']:.0f} µs/request"
        )
    for key, value in result["ratios"].items():
        print(f"{key}: {value:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
