"""On-demand loading under a memory budget vs every model loaded (not a test).

50 models, copies of the example models (``digits_mlp``, ``digits_cnn``, ``cancer_gbt``,
``keras_digits``, ``minilm_embed_int8`` in turn; the version folders are symlinks), served by the
real data plane with real ONNX Runtime sessions. Zipf-distributed traffic (exponent ``--zipf``,
the popular models drawn at random) from ``--clients`` concurrent clients, the result cache off
so every request runs. Two runs side by side, each in a fresh process so their RSS is their own:

- ``all-loaded``: ``--model-control-mode none`` (all 50 loaded at startup): the baseline. Its
  measured footprints size the budget: ``--fit`` (10) models of the mean footprint (a comma
  list, ``--fit 10,25``, runs one on_demand run per budget).
- ``on_demand``: ``--model-control-mode on_demand --model-memory-budget <that>``.

Reported: hit ratio (requests whose model was resident when they were resolved), p50/p99 of all
requests, of warm ones and of cold ones (a load on the way), loads and evictions, and the
process's RSS sampled every ``--sample-s`` over the run against the all-loaded baseline.

    .venv/bin/python bench/ondemand_bench.py [--requests 2000] [--out bench/results/ondemand.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOURCES = ["digits_mlp", "digits_cnn", "cancer_gbt", "keras_digits", "minilm_embed_int8"]
SHAPES = {
    "digits_mlp": ("input", (1, 64)),
    "digits_cnn": ("input", (1, 1, 8, 8)),
    "cancer_gbt": ("input", (1, 30)),
    "keras_digits": ("input", (1, 8, 8)),
}


def build_repo(repo: Path, count: int) -> dict[str, str]:
    """``count`` models named m00.. as copies of the examples; model -> example it copies."""
    from converters.examples import build_examples
    from converters.triton_config import read_config, render

    examples = ROOT / "model_repo"
    build_examples(examples, only=SOURCES)
    made = {}
    for index in range(count):
        source = SOURCES[index % len(SOURCES)]
        name = f"m{index:02d}"
        (repo / name).mkdir(parents=True)
        config = read_config(examples / source / "config.pbtxt")
        config.name = name
        config.ClearField("response_cache")
        (repo / name / "config.pbtxt").write_text(render(config))
        (repo / name / "1").symlink_to(examples / source / "1", target_is_directory=True)
        made[name] = source
    return made


def request(name: str, source: str, rng: np.random.Generator) -> object:
    from service.messages import InferRequest

    if source in SHAPES:
        tensor, shape = SHAPES[source]
        data = (rng.random(shape) * 16).astype(np.float32)
        return InferRequest(name, "", {tensor: data}, {tensor: "FP32"})
    ids = rng.integers(1000, 5000, size=(1, 32)).astype(np.int64)
    ids[0, 0], ids[0, -1] = 101, 102
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": 0 * ids}
    return InferRequest(name, "", inputs, dict.fromkeys(inputs, "INT64"))


def percentiles(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"count": 0}
    ordered = np.array(values) * 1000
    return {
        "count": len(values),
        "p50_ms": round(float(np.percentile(ordered, 50)), 3),
        "p99_ms": round(float(np.percentile(ordered, 99)), 3),
        "mean_ms": round(float(ordered.mean()), 3),
    }


async def run_scenario(args: argparse.Namespace) -> dict[str, object]:
    """One run in this process: serve the repository, send the Zipf traffic, sample RSS."""
    from service.dataplane.plane import DataPlane
    from service.errors import InferenceError
    from service.host import resident_bytes
    from service.settings import Settings

    models = json.loads(args.models)
    names = sorted(models)
    settings = Settings(
        model_repo=args.repo,
        grpc_port=0,
        cache_enabled=False,
        max_queue_wait_ms=0,
        model_control_mode=args.mode,
        model_memory_budget=args.budget,
        log_level="warning",
    )
    started = time.perf_counter()
    samples: list[tuple[float, int, int]] = [(0.0, resident_bytes(), 0)]
    dataplane = DataPlane(settings)
    await dataplane.start()
    startup_s = time.perf_counter() - started
    residency = dataplane.repository.residency  # type: ignore[attr-defined]

    def sample() -> None:
        samples.append((time.perf_counter() - started, resident_bytes(), len(residency.resident)))

    sample()
    rng = np.random.default_rng(args.seed)
    weights = 1.0 / np.arange(1, len(names) + 1) ** args.zipf
    ranking = rng.permutation(names)  # which models are popular: drawn, not by name or kind
    picks = rng.choice(ranking, size=args.requests, p=weights / weights.sum())
    results: list[tuple[bool, float]] = []
    queue: asyncio.Queue[str] = asyncio.Queue()
    for pick in picks:
        queue.put_nowait(str(pick))

    refused: list[str] = []

    async def client(seed: int) -> None:
        local = np.random.default_rng(seed)
        while not queue.empty():
            name = queue.get_nowait()
            warm = name in residency.resident
            begin = time.perf_counter()
            try:
                await dataplane.infer(request(name, models[name], local))  # type: ignore[arg-type]
            except InferenceError as exc:  # a 503 + Retry-After: counted, not timed
                refused.append(exc.message)
                continue
            results.append((warm, time.perf_counter() - begin))

    async def sampler() -> None:
        while True:
            await asyncio.sleep(args.sample_s)
            sample()

    sampling = asyncio.create_task(sampler())
    traffic = time.perf_counter()
    await asyncio.gather(*(client(args.seed + 1 + i) for i in range(args.clients)))
    traffic_s = time.perf_counter() - traffic
    sampling.cancel()
    sample()
    footprints = {name: f.host_bytes for name, f in residency.measured.items()}
    await dataplane.close()
    warm = [seconds for hot, seconds in results if hot]
    cold = [seconds for hot, seconds in results if not hot]
    rss = [value for _, value, _ in samples[1:]]
    return {
        "mode": args.mode,
        "budget_bytes": int(args.budget),
        "startup_s": round(startup_s, 2),
        "traffic_s": round(traffic_s, 2),
        "requests_per_s": round(len(results) / traffic_s, 1),
        "hit_ratio": round(len(warm) / max(len(results), 1), 4),
        "latency_all": percentiles([seconds for _, seconds in results]),
        "latency_warm": percentiles(warm),
        "latency_cold": percentiles(cold),
        "refused": len(refused),
        "refusals": sorted(set(refused))[:5],
        "loads": sum(residency.loads.values()),
        "evictions": sum(residency.evictions.values()),
        "rss_mib": {
            "after_startup": round(samples[1][1] / 2**20, 1),
            "mean": round(statistics.fmean(rss) / 2**20, 1),
            "max": round(max(rss) / 2**20, 1),
            "last": round(rss[-1] / 2**20, 1),
        },
        "models_resident_mean": round(statistics.fmean(n for _, _, n in samples[1:]), 1),
        "rss_samples": [(round(t, 2), round(v / 2**20, 1), n) for t, v, n in samples],
        "footprints_bytes": footprints,
    }


def scenario(args: argparse.Namespace, mode: str, budget: int, models: dict[str, str]) -> dict:
    """Run one scenario in a fresh interpreter (its own RSS) and read its JSON back."""
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--scenario",
        "--mode", mode,
        "--budget", str(budget),
        "--repo", str(args.repo),
        "--models", json.dumps(models),
        "--requests", str(args.requests),
        "--clients", str(args.clients),
        "--zipf", str(args.zipf),
        "--seed", str(args.seed),
        "--sample-s", str(args.sample_s),
        "--out", str(out),
    ]  # fmt: skip
    print(f"running {mode} (budget {budget} bytes) ...", flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    report = json.loads(out.read_text())
    out.unlink()
    return report


def summary(run: dict) -> str:
    def p50_p99(kind: str) -> str:
        figures = run[f"latency_{kind}"]
        return f"{figures.get('p50_ms', '-')}/{figures.get('p99_ms', '-')} ms"

    return (
        f"{run['mode']:>10}: hit ratio {run['hit_ratio']:.3f}, p50/p99 all {p50_p99('all')}, "
        f"warm {p50_p99('warm')}, cold {p50_p99('cold')} ({run['latency_cold']['count']} cold), "
        f"loads {run['loads']}, evictions {run['evictions']}, refused {run['refused']}, "
        f"RSS mean {run['rss_mib']['mean']} MiB max {run['rss_mib']['max']} MiB, "
        f"{run['models_resident_mean']} models resident on average"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50, help="models in the repository")
    parser.add_argument(
        "--fit", default="10", help="models of mean footprint the budget fits (comma: several runs)"
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the traffic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-s", type=float, default=0.25)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ondemand.json")
    parser.add_argument("--scenario", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--budget", default="0", help=argparse.SUPPRESS)
    parser.add_argument("--repo", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--models", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scenario:
        args.out.write_text(json.dumps(asyncio.run(run_scenario(args))))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    scratch = Path(tempfile.mkdtemp(prefix="ondemand-bench-"))
    runs: dict[str, dict] = {}
    try:
        args.repo = scratch / "repo"
        models = build_repo(args.repo, args.count)
        runs["all_loaded"] = baseline = scenario(args, "none", 0, models)
        sizes = list(baseline["footprints_bytes"].values())
        for fit in (float(f) for f in args.fit.split(",")):
            budget = int(statistics.fmean(sizes) * fit)
            run = scenario(args, "on_demand", budget, models)
            run["budget_fits_mean_models"] = fit
            run["rss_mean_vs_all_loaded"] = round(
                run["rss_mib"]["mean"] / baseline["rss_mib"]["mean"], 3
            )
            runs[f"on_demand_fit_{fit:g}"] = run
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = {
        "machine": {"cores": os.cpu_count()},
        "models": args.count,
        "requests": args.requests,
        "clients": args.clients,
        "zipf": args.zipf,
        "footprint_sum_bytes": sum(sizes),
        "footprint_mean_bytes": int(statistics.fmean(sizes)),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"the {args.count} models measured {sum(sizes) / 2**20:.1f} MiB when all loaded")
    for name, run in runs.items():
        print(summary(run))
        if name != "all_loaded":
            print(
                f"{'':>12}budget {run['budget_bytes'] / 2**20:.1f} MiB (~"
                f"{run['budget_fits_mean_models']:g} models of mean footprint): RSS mean vs "
                f"all-loaded {run['rss_mean_vs_all_loaded']:.3f}"
            )
    print(f"JSON in {args.out}")


if __name__ == "__main__":
    main()
