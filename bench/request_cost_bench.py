"""CPU cost of one request on the gateway's own path, this checkout vs another (not a test).

In one process per checkout: REST JSON decode -> ``DataPlane.infer`` (validation, batcher, ONNX
Runtime ``digits_mlp``) -> encode, 64 requests at a time, measured in process CPU time per
request, which a busy machine disturbs far less than wall-clock throughput. Checkouts alternate
for ``--rounds`` rounds; the JSON gives every round and the medians.

    .venv/bin/python bench/request_cost_bench.py --baseline /path/to/older/checkout
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs inside the checkout under test, with that checkout first on sys.path.
PROBE = r"""
import asyncio, inspect, json, sys, time
sys.path.insert(0, sys.argv[1])
import os
if os.path.isdir(os.path.join(sys.argv[1], "service", "frontends")):  # the layered packages
    from service.frontends.rest import codec as rest_codec
    from service.dataplane.plane import DataPlane
else:  # older checkouts: flat modules
    from service import rest_codec
    from service.dataplane import DataPlane
from service.settings import Settings

BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
).encode()

async def main() -> None:
    dataplane = DataPlane(Settings(model_repo=sys.argv[2], grpc_port=0))
    await dataplane.start()
    takes_model = "model" in inspect.signature(rest_codec.decode_request).parameters
    hands_model = "model" in inspect.signature(DataPlane.infer).parameters

    async def one() -> None:
        target = dataplane.model("digits_mlp", "") if takes_model else "digits_mlp"
        request, encoding = rest_codec.decode_request(BODY, None, target, "", 1 << 26)
        if hands_model:
            response = await dataplane.infer(request, target)
        else:
            response = await dataplane.infer(request)
        rest_codec.encode_response(response, encoding)

    for _ in range(50):
        await asyncio.gather(*(one() for _ in range(64)))
    rounds = 300
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(rounds):
        await asyncio.gather(*(one() for _ in range(64)))
    count = rounds * 64
    print(json.dumps({
        "cpu_us": (time.process_time() - cpu) / count * 1e6,
        "wall_us": (time.perf_counter() - wall) / count * 1e6,
    }))
    await dataplane.close()

asyncio.run(main())
"""


def measure(checkout: Path, repo: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(checkout), str(repo)],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {key: round(value, 1) for key, value in json.loads(out.splitlines()[-1]).items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout")
    parser.add_argument("--repo", type=Path, default=ROOT / "model_repo")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "request_cost.json"
    )
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"baseline": [], "this": []}
    for _ in range(args.rounds):
        runs["baseline"].append(measure(args.baseline.resolve(), args.repo))
        runs["this"].append(measure(ROOT, args.repo))
    medians = {
        name: {key: statistics.median(r[key] for r in results) for key in ("cpu_us", "wall_us")}
        for name, results in runs.items()
    }
    ratio = medians["this"]["cpu_us"] / medians["baseline"]["cpu_us"]
    result = {"runs": runs, "medians": medians, "cpu_ratio_this_vs_baseline": round(ratio, 3)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for name, median in medians.items():
        print(f"{name:9s} CPU {median['cpu_us']:.1f} us/request, wall {median['wall_us']:.1f} us")
    print(f"CPU per request, this / baseline: {ratio:.3f}  (wrote {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
