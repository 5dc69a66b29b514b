"""Result cache: hit vs miss throughput and latency through a running gateway (not a test).

Starts a redis-server and ``infergate serve --redis-url`` (cache forced on for both models), then
drives batch-1 v2 JSON requests with ``wrk``, side by side in one run, per model:

* ``miss``   - every request has new random inputs (lookup, model execution, fire-and-forget SET)
* ``hit``    - a pool of distinct cached requests (one Redis GET each, no model execution)
* ``hot``    - one cached request from every connection (mostly coalesced in-process)
* ``outage`` - like ``miss`` but with Redis killed (circuit breaker open): errors must stay 0

at 16 connections for throughput and 1 connection for p50 latency, in interleaved rounds (median
kept: the machine is shared). Also reports the gateway's own time per request from
``/v2/models/m/stats`` (success ns / count) and the cache lookup time. Prints the ratios and
writes ``bench/results/cache.json``.

    .venv/bin/python bench/cache_bench.py [--duration 4] [--slow-duration 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import Gateway, start_gateway  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

MODELS = ("minilm_embed", "digits_mlp")

LUA_DONE = """
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %.1f %.1f\\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout, summary.duration, latency:percentile(50), latency:percentile(99)))
end
"""

# Each wrk thread numbers itself; (thread, counter) is folded into the inputs so that no two
# requests of a "miss" run are identical, the rest is random.
LUA_RANDOM = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
setup = function(thread) n = n + 1; thread:set("tid", n) end
init = function(args) counter = 0; math.randomseed(tid * 7919 + os.time()) end
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, body(tid, counter))
end
"""

LUA_MINILM = """
body = function(tid, c)
  local ids = {101, 1000 + tid, 1000 + c %% 4000, 1000 + math.floor(c / 4000) %% 4000}
  for i = 5, %(seq)d - 1 do ids[i] = math.random(1000, 5000) end
  ids[%(seq)d] = 102
  local t = table.concat(ids, ",")
  local ones, zeros = {}, {}
  for i = 1, %(seq)d do ones[i] = 1; zeros[i] = 0 end
  return '{"inputs":[{"name":"input_ids","shape":[1,%(seq)d],"datatype":"INT64","data":[' .. t
    .. ']},{"name":"attention_mask","shape":[1,%(seq)d],"datatype":"INT64","data":['
    .. table.concat(ones, ",") .. ']},{"name":"token_type_ids","shape":[1,%(seq)d],'
    .. '"datatype":"INT64","data":[' .. table.concat(zeros, ",") .. ']}]}'
end
"""

LUA_DIGITS = """
body = function(tid, c)
  local x = {tid, c}
  for i = 3, 64 do x[i] = string.format("%.4f", math.random() * 16) end
  return '{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":['
    .. table.concat(x, ",") .. ']}]}'
end
"""


def bodies(model: str, seq_len: int, count: int, seed: int = 1) -> list[str]:
    """``count`` distinct batch-1 v2 JSON request bodies."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        if model == "minilm_embed":
            ids = rng.integers(1000, 5000, size=seq_len)
            ids[0], ids[-1] = 101, 102
            tensors = {
                "input_ids": ids.tolist(),
                "attention_mask": [1] * seq_len,
                "token_type_ids": [0] * seq_len,
            }
            inputs = [
                {"name": n, "shape": [1, seq_len], "datatype": "INT64", "data": d}
                for n, d in tensors.items()
            ]
        else:
            x = np.round(rng.random(64) * 16, 4).tolist()
            inputs = [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x}]
        out.append(json.dumps({"inputs": inputs}, separators=(",", ":")))
    return out


def pool_script(pool: list[str], threads: int = 2) -> str:
    """wrk cycles through ``pool``; each thread through its own slice, so two connections rarely
    send the same request at once (that would be coalesced, not looked up)."""
    table = ",\n".join(f"[==[{body}]==]" for body in pool)
    share = max(1, len(pool) // threads)
    return (
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"local bodies = {{{table}}}\n"
        "local n = 0\n"
        'setup = function(thread) n = n + 1; thread:set("tid", n) end\n'
        "init = function(args) i = 0 end\n"
        "request = function() i = i + 1\n"
        f"  local k = ((tid - 1) * {share} + i % {share}) % #bodies + 1\n"
        "  return wrk.format(nil, nil, nil, bodies[k]) end\n"
    )


def wrk(url: str, script: str, connections: int, duration: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script + LUA_DONE)
    try:
        out = subprocess.run(
            ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{duration}s",
             "--timeout", "10s", "-s", handle.name, url],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    finally:
        os.unlink(handle.name)
    line = next(row for row in out.splitlines() if row.startswith("RESULT"))
    requests, errors, micros, p50_us, p99_us = (float(v) for v in line.split()[1:])
    return {
        "connections": connections,
        "requests": requests,
        "errors": errors,
        "req_per_s": requests / (micros / 1e6),
        "p50_ms": p50_us / 1000,
        "p99_ms": p99_us / 1000,
    }


def gateway_stats(gateway: Gateway, model: str) -> dict[str, int]:
    body = httpx.get(f"{gateway.base_url}/v2/models/{model}/versions/1/stats").json()
    entry = body["model_stats"][0]["inference_stats"]
    return {
        "success": entry["success"]["count"],
        "success_ns": entry["success"]["ns"],
        "hits": entry["cache_hit"]["count"],
        "hit_ns": entry["cache_hit"]["ns"],
        "misses": entry["cache_miss"]["count"],
        "executions": body["model_stats"][0]["execution_count"],
        "coalesced": coalesced(gateway, model),
    }


def coalesced(gateway: Gateway, model: str) -> int:
    needle = f'infergate_cache_coalesced_total{{model="{model}",version="1"}}'
    for line in httpx.get(f"{gateway.base_url}/metrics").text.splitlines():
        if line.startswith(needle):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def phase(
    gateway: Gateway, model: str, script: str, connections: int, duration: int
) -> dict[str, Any]:
    url = f"{gateway.base_url}/v2/models/{model}/versions/1/infer"
    before = gateway_stats(gateway, model)
    result: dict[str, Any] = wrk(url, script, connections, duration)
    after = gateway_stats(gateway, model)
    d = {k: after[k] - before[k] for k in after}
    result["gateway_ms_mean"] = d["success_ns"] / max(d["success"], 1) / 1e6
    result["cache_lookup_ms_mean"] = d["hit_ns"] / max(d["hits"], 1) / 1e6 if d["hits"] else None
    result["hit_fraction"] = d["hits"] / max(d["success"], 1)
    result["executions"] = d["executions"]
    result["coalesced"] = d["coalesced"]
    return result


def wait_until_hits(gateway: Gateway, model: str, body: str, timeout_s: float = 60) -> None:
    """Block until a repeated request is a cache hit (Redis reachable, breaker closed)."""
    url = f"{gateway.base_url}/v2/models/{model}/versions/1/infer"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        httpx.post(url, content=body).raise_for_status()
        time.sleep(0.1)
        before = gateway_stats(gateway, model)["hits"]
        httpx.post(url, content=body).raise_for_status()
        if gateway_stats(gateway, model)["hits"] > before:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{model}: the gateway never hit the cache")


def bench_model(
    gateway: Gateway, redis: RedisServer, model: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Interleaved rounds (the machine is shared: noise hits every kind of run alike)."""
    duration = args.slow_duration if model == "minilm_embed" else args.duration
    pool = bodies(model, args.seq_len, args.pool)
    warm_pool(gateway, model, pool)
    wait_until_hits(gateway, model, pool[0])
    scripts = {
        "miss": LUA_RANDOM
        + (LUA_MINILM % {"seq": args.seq_len} if model == "minilm_embed" else LUA_DIGITS),
        "hit": pool_script(pool),
        "hot": pool_script(pool[:1]),
    }
    phase(gateway, model, scripts["miss"], 16, 2)  # warm-up
    rounds: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.rounds):
        for kind in ("miss", "hit", "hot"):
            rounds.setdefault(f"{kind}_c16", []).append(
                phase(gateway, model, scripts[kind], 16, duration)
            )
        for kind in ("miss", "hit"):
            rounds.setdefault(f"{kind}_c1", []).append(
                phase(gateway, model, scripts[kind], 1, duration)
            )
    runs = {label: median_run(results) for label, results in rounds.items()}
    redis.kill()
    try:
        runs["outage_c16"] = phase(gateway, model, scripts["miss"], 16, duration)
    finally:
        redis.start()
    wait_until_hits(gateway, model, pool[0])
    warm_pool(gateway, model, pool)  # the restarted Redis is empty
    runs["after_restart_hit_c16"] = phase(gateway, model, scripts["hit"], 16, duration)
    return runs


def warm_pool(gateway: Gateway, model: str, pool: list[str], passes: int = 4) -> None:
    """Put every pool entry into the cache: repeat until one pass is all hits."""
    url = f"{gateway.base_url}/v2/models/{model}/versions/1/infer"
    for _ in range(passes):
        before = gateway_stats(gateway, model)["hits"]
        with ThreadPoolExecutor(8) as executor:
            list(executor.map(lambda b: httpx.post(url, content=b, timeout=120), pool))
        if gateway_stats(gateway, model)["hits"] - before >= len(pool):
            return
        time.sleep(0.5)  # let fire-and-forget writes land


def median_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median throughput, plus every round's throughput."""
    ordered = sorted(results, key=lambda r: r["req_per_s"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["rounds_req_per_s"] = [round(r["req_per_s"], 1) for r in results]
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", type=Path, default=ROOT / "model_repo")
    parser.add_argument("--duration", type=int, default=4, help="seconds per run (digits_mlp)")
    parser.add_argument(
        "--slow-duration", type=int, default=10, help="seconds per run for minilm_embed"
    )
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; median kept")
    parser.add_argument("--seq-len", type=int, default=128, help="minilm_embed tokens")
    parser.add_argument("--pool", type=int, default=64, help="distinct cached requests for hits")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cache.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    repo = Path(tempfile.mkdtemp(prefix="cache-bench-repo-"))
    for model in args.models.split(","):
        if not (args.repo / model / "config.pbtxt").is_file():
            sys.exit(f"{model} missing in {args.repo}: run `make models`")
        (repo / model).symlink_to((args.repo / model).resolve(), target_is_directory=True)
    env = {"INFERGATE_CACHE_ENABLED": "true", "INFERGATE_CACHE_BREAKER_RESET_S": "1"}
    report: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "load_avg_1m_at_start": os.getloadavg()[0]},
        "settings": {k: str(v) for k, v in vars(args).items()},
    }
    with RedisServer() as redis:
        gateway = start_gateway(repo, "--redis-url", redis.url, "--grpc-port", "0", env=env)
        try:
            report["models"] = {
                model: bench_model(gateway, redis, model, args) for model in args.models.split(",")
            }
        finally:
            gateway.stop()
    shutil.rmtree(repo, ignore_errors=True)
    summarize(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")


def summarize(report: dict[str, Any]) -> None:
    print(f"\n{'model':13} {'run':22} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'gw ms':>6} "
          f"{'hit %':>6} {'coal.':>6} {'execs':>6} {'errors':>6}")  # fmt: skip
    for model, runs in report["models"].items():
        for label, r in runs.items():
            print(
                f"{model:13} {label:22} {r['req_per_s']:>8.0f} {r['p50_ms']:>7.2f} "
                f"{r['p99_ms']:>7.2f} {r['gateway_ms_mean']:>6.2f} {100 * r['hit_fraction']:>6.1f} "
                f"{r['coalesced']:>6} {r['executions']:>6} {r['errors']:>6.0f}"
            )
        ratios = {
            "hit_vs_miss_throughput": runs["hit_c16"]["req_per_s"] / runs["miss_c16"]["req_per_s"],
            "hot_key_vs_miss_throughput": runs["hot_c16"]["req_per_s"]
            / runs["miss_c16"]["req_per_s"],
            "miss_vs_hit_p50_latency": runs["miss_c1"]["p50_ms"] / runs["hit_c1"]["p50_ms"],
            "outage_vs_miss_throughput": runs["outage_c16"]["req_per_s"]
            / runs["miss_c16"]["req_per_s"],
        }
        report.setdefault("ratios", {})[model] = ratios
        hit = runs["hit_c1"]
        print(
            f"  {model}: hit/miss throughput {ratios['hit_vs_miss_throughput']:.1f}x "
            f"(hot key {ratios['hot_key_vs_miss_throughput']:.1f}x), "
            f"miss/hit p50 {ratios['miss_vs_hit_p50_latency']:.1f}x; "
            f"hit p50 {hit['p50_ms']:.2f} ms at the client, "
            f"{hit['gateway_ms_mean']:.3f} ms mean in the gateway "
            f"(Redis GET + decode {hit['cache_lookup_ms_mean'] or 0:.3f} ms); Redis killed: "
            f"{ratios['outage_vs_miss_throughput']:.2f}x miss throughput, "
            f"{runs['outage_c16']['errors']:.0f} errors"
        )


if __name__ == "__main__":
    main()
