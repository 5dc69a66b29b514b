"""The executor's CPU per request, without HTTP in the way (not a test).

The executor of ``--workers N`` runs in a child process, as the supervisor starts it; this
process plays N front-end workers (``FrontEndPlane``: validation, admission, the link to the
executor) with ``--concurrency`` requests in flight each, closed loop, for ``--requests``
requests in all, batch-1 ``digits_mlp`` with the result cache off. Reported per request: the
executor's CPU, this process's (the workers' data planes and links), and the mean batch. Rounds
alternate with ``--baseline`` (another checkout) when given, so the two are side by side.

    .venv/bin/python bench/executor_bench.py [--baseline /path/to/checkout] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import asyncio, json, os, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import numpy as np
from service.messages import InferRequest
from service.processes.worker import FrontEndPlane
from service.processes.executor import run_executor
from service.settings import Settings

repo = sys.argv[2]
workers, concurrency, total = (int(value) for value in sys.argv[3:6])
settings = Settings(model_repo=repo, grpc_port=0, cache_enabled=False, max_queue_wait_ms=0)
runtime = Path(tempfile.mkdtemp(prefix="executor-bench-"))
try:  # as the supervisor runs both sides
    import uvloop
    uvloop.install()
except ImportError:
    pass
child = os.fork()
if child == 0:
    run_executor(settings, runtime)
    os._exit(0)
TICK = os.sysconf("SC_CLK_TCK")

def cpu(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK

def request(value: float) -> InferRequest:
    x = np.full((1, 64), value, dtype=np.float32)
    return InferRequest("digits_mlp", "", {"input": x}, {"input": "FP32"})

async def main() -> None:
    socket = str(runtime / "executor.sock")
    while not os.path.exists(socket):
        await asyncio.sleep(0.05)
    planes = [FrontEndPlane(settings, socket) for _ in range(workers)]
    for plane in planes:
        await plane.start()
    while not all(plane.ready() for plane in planes):
        await asyncio.sleep(0.05)
    left = [0]

    async def client(plane: FrontEndPlane, seed: int) -> None:
        while left[0] > 0:
            left[0] -= 1
            await plane.infer(request(seed % 7 / 7))

    async def load(count: int) -> None:
        left[0] = count
        await asyncio.gather(
            *(client(p, i) for p in planes for i in range(concurrency))
        )

    await load(2000)  # warm up
    before = await planes[0].model_statistics("digits_mlp")
    mine, theirs, wall = time.process_time(), cpu(child), time.perf_counter()
    await load(total)
    mine, theirs = time.process_time() - mine, cpu(child) - theirs
    wall = time.perf_counter() - wall
    after = await planes[0].model_statistics("digits_mlp")
    def figure(stats, key):
        return stats["model_stats"][0][key]
    rows = figure(after, "inference_count") - figure(before, "inference_count")
    runs = figure(after, "execution_count") - figure(before, "execution_count")
    print(json.dumps({
        "executor_us": theirs / total * 1e6,
        "workers_us": mine / total * 1e6,
        "req_per_s": total / wall,
        "mean_batch": rows / max(runs, 1),
    }))
    for plane in planes:
        await plane.close()

try:
    asyncio.run(main())
finally:
    os.kill(child, 15)
    os.waitpid(child, 0)
"""


def measure(checkout: Path, args: argparse.Namespace) -> dict[str, float]:
    figures = [str(args.repo), str(args.workers), str(args.concurrency), str(args.requests)]
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(checkout), *figures],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "INFERGATE_LOG_LEVEL": "warning"},
    ).stdout
    return {key: round(value, 1) for key, value in json.loads(out.splitlines()[-1]).items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout, measured alternately")
    parser.add_argument("--repo", type=Path, default=ROOT / "model_repo")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight per worker")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "executor.json")
    args = parser.parse_args()
    checkouts = {"this": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in checkouts}
    for _ in range(args.rounds):
        for name, checkout in checkouts.items():
            runs[name].append(measure(checkout, args))
            print(name, runs[name][-1], flush=True)
    keys = runs["this"][0].keys()
    medians = {
        name: {key: statistics.median(run[key] for run in results) for key in keys}
        for name, results in runs.items()
    }
    result: dict[str, object] = {"runs": runs, "medians": medians}
    if "baseline" in medians:
        result["executor_ratio_this_vs_baseline"] = round(
            medians["this"]["executor_us"] / medians["baseline"]["executor_us"], 3
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for name, median in medians.items():
        print(name, json.dumps(median))
    return 0


if __name__ == "__main__":
    sys.exit(main())
