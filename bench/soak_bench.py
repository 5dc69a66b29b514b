"""Soak: steady load for minutes, the gateway's memory sampled throughout (not a test).

Two wrk streams run side by side against one ``infergate serve``: ``digits_mlp`` (JSON, computed
every time) and ``minilm_embed`` version 1 (one repeated request, so the result cache fills at
once and then serves hits), plus, every few seconds, a rejected hostile request (a million-token
body). RSS is sampled every ``--sample-s`` seconds. After the warm-up, a flat process stays within
a few percent of its mean: the JSON reports the spread, the first and last samples, and wrk's
totals.

    .venv/bin/python bench/soak_bench.py [--minutes 5] [--out bench/results/soak.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gateway_bench import request_body  # noqa: E402

from tests.helpers import start_gateway  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def start_wrk(
    url: str, body: dict[str, object], connections: int, seconds: int
) -> subprocess.Popen[str]:
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)  # noqa: SIM115
    script.write(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [[{json.dumps(body)}]]\n"
    )
    script.close()
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script.name, url]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def hostile_body() -> bytes:
    ids = [1] * 1_000_000
    inputs = [
        {"name": name, "shape": [1, len(ids)], "datatype": "INT64", "data": ids}
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    return json.dumps({"inputs": inputs}).encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=ROOT / "model_repo")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = parser.parse_args()
    seconds = int(args.minutes * 60)
    gateway = start_gateway(args.repo, env={"INFERGATE_MAX_QUEUE_WAIT_MS": "0"})
    hostile = hostile_body()
    try:
        base = gateway.base_url
        minilm = dict(request_body("minilm_embed"), parameters={})  # cacheable: the same each time
        streams = [
            start_wrk(f"{base}/v2/models/digits_mlp/infer", request_body("digits_mlp"), 8, seconds),
            start_wrk(f"{base}/v2/models/minilm_embed/versions/1/infer", minilm, 4, seconds),
        ]
        samples: list[tuple[float, float]] = []
        rejected = 0
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            samples.append((round(elapsed, 1), round(rss_mib(gateway.process.pid), 1)))
            answer = httpx.post(
                f"{base}/v2/models/minilm_embed/versions/1/infer", content=hostile, timeout=60
            )
            rejected += answer.status_code == 400
            time.sleep(args.sample_s)
        totals = [stream.communicate()[0] for stream in streams]
        steady = [rss for at, rss in samples if at >= args.warmup_s]
        mean = statistics.fmean(steady)
        result = {
            "minutes": args.minutes,
            "rss_mib_samples": samples,
            "steady_mean_mib": round(mean, 1),
            "steady_spread_pct": round(100 * (max(steady) - min(steady)) / mean, 2),
            "steady_max_deviation_pct": round(100 * max(abs(r - mean) for r in steady) / mean, 2),
            "hostile_rejected_400": rejected,
            "wrk": [text.strip().splitlines()[-4:] for text in totals],
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(json.dumps({k: v for k, v in result.items() if k != "rss_mib_samples"}, indent=2))
        print(f"wrote {args.out}")
    finally:
        gateway.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
