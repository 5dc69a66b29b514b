"""``infergate serve --workers N``: N=1 vs N=2 (vs N=4), side by side in one run (not a test).

What it measures, each gateway case a fresh ``infergate serve --workers N`` on free ports, with
batch-1 requests at 16 concurrent clients:

- ``ort``: the embedded ONNX Runtime backend, result cache forced off: ``digits_mlp`` over REST
  JSON (``wrk``), REST binary tensors (``perf_analyzer -i http``) and gRPC (``-i grpc``), and
  ``minilm_embed`` (32 token ids, as ``gateway_bench.py`` sends) over gRPC and binary REST;
- ``cache``: the cache forced on and the same request sent again and again, so every request
  after the first is a hit: no batcher or session runs (with N > 1 and no Redis the hit is
  still looked up in the executor's in-process store, one IPC round trip);
- ``triton``: Triton 2.51 itself (the python-backend twin of the same ``digits_mlp`` ONNX file,
  as ``perf_analyzer.py`` starts it) over HTTP and gRPC;
- ``via-triton`` / ``via-triton-nobatch``: the gateway with ``--backend triton`` in front of that
  Triton, with its own batching on (default) and with ``--no-batching`` (every request passed
  straight to Triton's batcher);
- ``minilm_embed`` in-process ONNX Runtime at batch 1, 8 and 32 (``gateway_bench``'s loop), the
  ceiling for the gateway's sequences/s.

For every load it records requests/s, p50/p99, the CPU time of each process tree under test
(the gateway: supervisor + executor + workers, read from ``/proc``; Triton: server + stubs)
divided by the requests the server counted (``/v2/models/M/stats`` success deltas) over the same
window, and the mean batch size (``inference_count / execution_count`` deltas). ``wrk`` runs for
``--duration`` seconds; ``perf_analyzer`` averages three windows of ``--duration / 3`` seconds
(stability loosened to 100% so that it stops after three, as a busy two-core box rarely gives
it 25%). Gateway logs are kept next to the JSON and their warnings/errors are in the report.

    .venv/bin/python bench/workers_bench.py [--duration 10] [--with-4] [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from gateway_bench import model_file, onnxruntime_direct, request_body, wrk  # noqa: E402
from perf_analyzer import setup_perf_analyzer  # noqa: E402

from converters.python_backend import write_python_backend  # noqa: E402
from tests.helpers import Gateway, free_port, start_gateway  # noqa: E402
from tests.triton_server import TritonServer, assemble_triton  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DIGITS, MINILM = "digits_mlp", "minilm_embed"
CACHE_OFF = {"INFERGATE_CACHE_ENABLED": "false"}
CACHE_ON = {"INFERGATE_CACHE_ENABLED": "true"}
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
PROBLEM = re.compile(r" (WARNING|ERROR|CRITICAL) |Traceback|exception", re.IGNORECASE)
Load = tuple[str, str]  # (model, protocol): protocol is rest_json, http or grpc


@dataclass
class Bench:
    """What every case needs: options, perf_analyzer, where files go."""

    repo: Path
    duration: int
    concurrency: int
    quick: bool
    workers: list[int]
    work: Path
    logs: Path
    pa: Path = field(init=False)
    pa_env: dict[str, str] = field(init=False)
    minilm_data: Path = field(init=False)

    def __post_init__(self) -> None:
        self.pa, self.pa_env = setup_perf_analyzer()
        self.minilm_data = self.work / "minilm_input.json"
        tensors = {t["name"]: t for t in request_body(MINILM)["inputs"]}
        entry = {n: {"content": t["data"], "shape": t["shape"][1:]} for n, t in tensors.items()}
        self.minilm_data.write_text(json.dumps({"data": [entry]}))


@dataclass
class Served:
    """A server under load: its addresses, the process trees charged, where its stats are."""

    name: str
    http: str
    grpc: str
    roots: dict[str, int]  # label -> root pid of a process tree
    stats: dict[str, str]  # label -> host:port serving /v2/models/M/stats; the first counts
    parts: dict[str, list[int]] = field(default_factory=dict)  # role -> its processes' pids


# --- process trees and counters ------------------------------------------------------------------


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (``/proc/<pid>/task/<pid>/children``, recursively)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid] + [p for child in children for p in tree_pids(int(child))]


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of the tree: utime + stime (+ reaped children's) of every live member."""
    ticks = 0
    for member in tree_pids(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        ticks += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return ticks / CLOCK_TICK


def pids_cpu_s(pids: list[int]) -> float:
    """CPU seconds of these processes alone (their threads included, not their children)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime stime
    return ticks / CLOCK_TICK


def counters(host: str, model: str) -> dict[str, int]:
    """Success, cache-hit, inference and execution counts of ``model`` (all versions), over
    REST, or over gRPC for a ``grpc:host:port`` (the gRPC floor has no REST)."""
    if host.startswith("grpc:"):
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(host.removeprefix("grpc:"))
        try:
            stats = client.get_inference_statistics(model, as_json=True)
        finally:
            client.close()
        for entry in stats["model_stats"]:  # proto JSON: int64 as strings, zeros left out
            entry.setdefault("inference_count", 0)
            entry.setdefault("execution_count", 0)
            for key in ("success", "cache_hit"):
                entry["inference_stats"].setdefault(key, {}).setdefault("count", 0)
    else:
        response = httpx.get(f"http://{host}/v2/models/{model}/stats", timeout=30)
        if response.status_code != 200:
            raise ValueError(
                f"GET /v2/models/{model}/stats: {response.status_code} {response.text}"
            )
        stats = response.json()
    total = {"success": 0, "cache_hit": 0, "inference_count": 0, "execution_count": 0}
    for entry in stats["model_stats"]:
        total["success"] += int(entry["inference_stats"]["success"]["count"])
        total["cache_hit"] += int(entry["inference_stats"]["cache_hit"]["count"])
        total["inference_count"] += int(entry["inference_count"])
        total["execution_count"] += int(entry["execution_count"])
    return total


# --- load generators -----------------------------------------------------------------------------


def perf_analyzer(bench: Bench, url: str, protocol: str, model: str, tag: str) -> dict[str, Any]:
    """One perf_analyzer run, batch 1 at ``bench.concurrency``: three windows averaged."""
    out_csv = bench.work / f"{tag}.csv"
    window_ms = max(1000, bench.duration * 1000 // 3)
    # -x: the version served by default; without it perf_analyzer 2.51 stops with "failed to
    # find the requested model version" on windows of cache hits only (inference_count still)
    version = model_file(bench.repo, model, "").parent.name
    command = [str(bench.pa), "-m", model, "-x", version, "-u", url, "-i", protocol, "-b", "1"]
    command += ["--concurrency-range", f"{bench.concurrency}:{bench.concurrency}"]
    command += ["--measurement-interval", str(window_ms), "--stability-percentage", "100"]
    command += ["--max-trials", "6", "-f", str(out_csv)]
    if model == MINILM:
        command += ["--input-data", str(bench.minilm_data)]
    run = subprocess.run(
        command, env=bench.pa_env, capture_output=True, text=True, timeout=bench.duration * 6 + 120
    )
    (bench.logs / f"{tag}.perf_analyzer.log").write_text(run.stdout + run.stderr)
    rows = list(csv.DictReader(out_csv.read_text().splitlines())) if out_csv.is_file() else []
    if run.returncode != 0 or not rows:
        lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
        return {"error": lines[-1].strip() if lines else f"exit {run.returncode}"}
    return {
        "req_per_s": float(rows[0]["Inferences/Second"]),
        "p50_ms": int(rows[0]["p50 latency"]) / 1000,
        "p99_ms": int(rows[0]["p99 latency"]) / 1000,
    }


def drive(bench: Bench, served: Served, model: str, protocol: str) -> dict[str, Any]:
    """REST JSON with wrk, binary REST and gRPC with perf_analyzer."""
    if protocol == "rest_json":
        url = f"http://{served.http}/v2/models/{model}/infer"
        return wrk(url, request_body(model), bench.concurrency, bench.duration)
    url = served.grpc if protocol == "grpc" else served.http
    tag = f"{served.name}-{model}-{protocol}"
    return perf_analyzer(bench, url, protocol, model, tag)


def measure(bench: Bench, served: Served, model: str, protocol: str) -> dict[str, Any]:
    """One load, with the CPU of each process tree and the counters' deltas over its window."""
    print(f"  {served.name}: {model} over {protocol} ...", flush=True)
    cpu = {label: tree_cpu_s(pid) for label, pid in served.roots.items()}
    cpu.update({role: pids_cpu_s(pids) for role, pids in served.parts.items()})
    before = {label: counters(host, model) for label, host in served.stats.items()}
    started = time.perf_counter()
    result = drive(bench, served, model, protocol)
    elapsed = time.perf_counter() - started
    after = {label: tree_cpu_s(pid) for label, pid in served.roots.items()}
    after.update({role: pids_cpu_s(pids) for role, pids in served.parts.items()})
    cpu = {label: seconds - cpu[label] for label, seconds in after.items()}
    delta = {
        label: {k: v - before[label][k] for k, v in counters(host, model).items()}
        for label, host in served.stats.items()
    }
    front = delta[next(iter(served.stats))]  # the server the clients talk to counts requests
    requests = front["success"]
    result.update(requests_counted=requests, window_s=round(elapsed, 2))
    if "error" in result and requests:  # perf_analyzer gave up: the server's own count
        result["req_per_s_from_stats"] = round(requests / elapsed, 1)
    for label, seconds in cpu.items():
        result[f"{label}_cpu_s"] = round(seconds, 2)
        per_request = seconds / requests * 1e6 if requests else None
        result[f"{label}_cpu_us_per_request"] = per_request and round(per_request, 1)
    for label, counts in delta.items():
        executions = counts["execution_count"]
        batch = counts["inference_count"] / executions if executions else None
        result[f"{label}_mean_batch"] = batch and round(batch, 2)
    if front["cache_hit"]:
        result["cache_hit_fraction"] = round(front["cache_hit"] / requests, 4)
    return result


def warm_up(served: Served, models: set[str]) -> int:
    """A second of JSON load per model (sessions, batchers, connections past their first use);
    returns the errors wrk saw, which a ready server should not give."""
    errors = 0
    for model in sorted(models):
        url = f"http://{served.http}/v2/models/{model}/infer"
        errors += wrk(url, request_body(model), 16, 1)["errors"]
    return errors


# --- cases ---------------------------------------------------------------------------------------


class WorkersReady:
    """Ready when every worker has started serving and ``8 * N`` fresh connections in a row get
    200 from /v2/health/ready (the kernel picks the worker per connection, so one worker still
    answering 503 is all but certain to be hit); ``last`` says what a failed probe saw."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.last = "nothing probed yet"

    def __call__(self, gateway: Gateway) -> bool:
        if not gateway.alive():
            raise RuntimeError(f"gateway exited:\n{gateway.log()[-3000:]}")
        started = gateway.log().count("Started server process")
        if self.workers > 1 and started < self.workers:
            self.last = f"{started} of {self.workers} workers started"
            return False
        answers: dict[int, int] = {}
        for _ in range(8 * self.workers if self.workers > 1 else 1):
            try:
                status = httpx.get(f"{gateway.base_url}/v2/health/ready", timeout=5).status_code
            except httpx.HTTPError:
                status = 0
            answers[status] = answers.get(status, 0) + 1
            if status != 200:
                self.last = f"/v2/health/ready answers by status, fresh connections: {answers}"
                return False
        return True


def start_workers(
    bench: Bench, name: str, workers: int, extra: list[str], env: dict[str, str]
) -> tuple[Gateway | None, list[str]]:
    """A gateway every worker of which is ready; a start that is not within 60 s is recorded
    (its log kept) and retried, twice at most (None: none of the three was)."""
    failures: list[str] = []
    for attempt in range(1, 4):
        args = ["--workers", str(workers), "--http-port", str(free_port()), *extra]
        probe = WorkersReady(workers)
        try:
            return start_gateway(bench.repo, *args, env=env, timeout=60, ready=probe), failures
        except (AssertionError, RuntimeError) as exc:
            found = re.search(r"\((/\S+\.log)\)", str(exc))
            kept = bench.logs / f"{name}-failed-start-{attempt}.log"
            if found and Path(found.group(1)).is_file():
                shutil.move(found.group(1), kept)
            failures.append(f"attempt {attempt}: not ready in 60 s: {probe.last} (log {kept.name})")
            print(f"  {name}: {failures[-1]}", flush=True)
    return None, failures


def log_report(bench: Bench, name: str, gateway: Gateway) -> dict[str, Any]:
    """The process layout the log names, and its warning/error lines; the log is kept."""
    text = gateway.log()
    kept = bench.logs / f"{name}.log"
    shutil.move(gateway.log_path, kept)  # out of /tmp, where start_gateway leaves it
    layout = re.search(r"process layout: (.*)", text)
    problems = [line for line in text.splitlines() if PROBLEM.search(line)]
    return {
        "log": str(kept.relative_to(ROOT) if kept.is_relative_to(ROOT) else kept),
        "layout": layout.group(1) if layout else "single process",
        "log_problems": problems[:30],
        "log_problem_count": len(problems),
    }


def gateway_case(
    bench: Bench,
    name: str,
    workers: int,
    extra: list[str],
    env: dict[str, str],
    loads: list[Load],
    triton: TritonServer | None = None,
) -> dict[str, Any]:
    """A fresh gateway with ``--workers N``: start, wait for every worker, measure, stop."""
    print(f"{name}: infergate serve --workers {workers} {' '.join(extra)}", flush=True)
    gateway, failures = start_workers(bench, name, workers, extra, env)
    if gateway is None:
        return {"workers": workers, "args": extra, "failed_starts": failures, "runs": {}}
    roots, stats = {"gateway": gateway.process.pid}, {"gateway": gateway.http_url}
    if triton is not None and triton.process is not None:
        roots["triton"], stats["triton"] = triton.process.pid, triton.http_url
    served = Served(name, gateway.http_url, gateway.grpc_url, roots, stats, roles(gateway.log()))
    runs: dict[str, Any] = {}
    processes, warm_up_errors = 0, 0
    try:
        warm_up_errors = warm_up(served, {model for model, _ in loads})
        processes = len(tree_pids(gateway.process.pid))
        for model, protocol in loads:
            runs[f"{model}/{protocol}"] = measure_safely(bench, served, model, protocol)
    finally:
        exit_code = gateway.stop()
        report = log_report(bench, name, gateway)
    report.update(workers=workers, args=extra, env=env, processes=processes, exit_code=exit_code)
    report.update(warm_up_errors=warm_up_errors, failed_starts=failures)
    return {**report, "runs": runs}


def roles(log: str) -> dict[str, list[int]]:
    """The executors' and the workers' pids, from the start log's process layout line (none
    for one process: its CPU is the gateway's)."""
    layout = re.search(r"process layout: supervisor pid \d+, (.*)", log)
    if layout is None:
        return {}
    workers = re.search(r"front-end workers pids \[([\d, ]+)\]", layout.group(1))
    return {
        "executor": [int(pid) for pid in re.findall(r"executor pid (\d+)", layout.group(1))],
        "worker": [int(pid) for pid in workers.group(1).split(",")] if workers else [],
    }


@contextmanager
def grpc_floor_server() -> Iterator[subprocess.Popen[bytes]]:
    """``bench/grpc_floor.py`` on a free port, ready when its port answers ServerLive."""
    import tritonclient.grpc as grpcclient

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "grpc_floor.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        for _ in range(300):
            try:
                if client.is_server_live():
                    break
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(0.1)
        process.port = port  # type: ignore[attr-defined]
        yield process
    finally:
        client.close()
        process.terminate()
        process.wait(30)


def grpc_floor(bench: Bench) -> dict[str, Any]:
    """The constant-answer grpc.aio servicer under the same gRPC load as the gateway's."""
    print("grpc floor: a constant-answer grpc.aio servicer (bench/grpc_floor.py)", flush=True)
    with grpc_floor_server() as floor:
        host = f"127.0.0.1:{floor.port}"  # type: ignore[attr-defined]
        served = Served("grpc-floor", "", host, {"gateway": floor.pid}, {"gateway": f"grpc:{host}"})
        return {"runs": {f"{DIGITS}/grpc": measure_safely(bench, served, DIGITS, "grpc")}}


def measure_safely(bench: Bench, served: Served, model: str, protocol: str) -> dict[str, Any]:
    """``measure``, a failure (a stats call refused, a tool that crashed) recorded, not raised."""
    try:
        return measure(bench, served, model, protocol)
    except (httpx.HTTPError, KeyError, ValueError, OSError, subprocess.SubprocessError) as exc:
        print(f"  {served.name}: {model} over {protocol} failed: {exc!r}", flush=True)
        return {"error": f"{type(exc).__name__}: {exc}"}


def triton_direct(bench: Bench, triton: TritonServer, loads: list[Load]) -> dict[str, Any]:
    """Triton 2.51 itself, no gateway: the reference for the same model file."""
    assert triton.process is not None
    print("triton: tritonserver 2.51, python backend twin of digits_mlp", flush=True)
    pid, host = triton.process.pid, triton.http_url
    served = Served("triton", host, triton.grpc_url, {"triton": pid}, {"triton": host})
    warm_up(served, {model for model, _ in loads})
    runs = {
        f"{model}/{protocol}": measure_safely(bench, served, model, protocol)
        for model, protocol in loads
    }
    return {"runs": runs, "processes": len(tree_pids(pid)), "log": str(triton.log_path)}


@contextmanager
def triton_server(bench: Bench) -> Iterator[TritonServer]:
    """tritonserver on the python-backend twin of ``digits_mlp`` (as perf_analyzer.py does)."""
    write_python_backend(bench.repo, bench.work / "python", [DIGITS])
    triton = TritonServer(assemble_triton(), bench.work / "python", bench.logs)
    triton.start()
    try:
        yield triton
    finally:
        triton.stop()


def ort_ceiling(bench: Bench) -> dict[str, Any]:
    """minilm_embed in-process ONNX Runtime (the version the gateway serves by default)."""
    print("onnxruntime in-process: minilm_embed at batch 1..64", flush=True)
    seconds = 1.0 if bench.quick else min(bench.duration, 5)
    direct = onnxruntime_direct(model_file(bench.repo, MINILM, ""), MINILM, seconds)
    by_batch = direct["samples_per_s_by_batch"]
    best = max((1, 8, 32), key=lambda batch: by_batch[batch])
    return {
        "sequences_per_s_by_batch": by_batch,
        "best_batch_of_1_8_32": best,
        "best_sequences_per_s": by_batch[best],
    }


# --- the run -------------------------------------------------------------------------------------


def case_loads(quick: bool) -> dict[str, list[Load]]:
    """The loads of each case family (``--quick`` drops the ones least needed for a smoke run)."""
    loads: dict[str, list[Load]] = {
        "ort": [(DIGITS, "rest_json"), (DIGITS, "http"), (DIGITS, "grpc"), (MINILM, "grpc")],
        "cache": [(DIGITS, "rest_json")],
        "triton": [(DIGITS, "http"), (DIGITS, "grpc")],
        "via-triton": [(DIGITS, "grpc"), (DIGITS, "http")],
        "via-triton-nobatch": [(DIGITS, "grpc"), (DIGITS, "http")],
    }
    if not quick:
        loads["ort"].append((MINILM, "http"))
        loads["cache"].append((DIGITS, "grpc"))
        loads["via-triton"].append((DIGITS, "rest_json"))
    return loads


def run_all(bench: Bench) -> dict[str, Any]:
    """Every case in turn; Triton runs only while its own cases do."""
    loads = case_loads(bench.quick)
    cases: dict[str, Any] = {}
    ceiling = ort_ceiling(bench)
    cases["grpc-floor"] = grpc_floor(bench)
    for n in bench.workers:
        cases[f"ort/w{n}"] = gateway_case(bench, f"ort-w{n}", n, [], CACHE_OFF, loads["ort"])
    for n in bench.workers:
        cases[f"cache/w{n}"] = gateway_case(bench, f"cache-w{n}", n, [], CACHE_ON, loads["cache"])
    with triton_server(bench) as triton:
        cases["triton"] = triton_direct(bench, triton, loads["triton"])
        via = ["--backend", "triton", "--triton-url", triton.grpc_url]
        for family, extra in (("via-triton", via), ("via-triton-nobatch", [*via, "--no-batching"])):
            counts = [1] if bench.quick and family.endswith("nobatch") else bench.workers
            for n in counts:
                name = f"{family}-w{n}"
                cases[f"{family}/w{n}"] = gateway_case(
                    bench, name, n, extra, CACHE_OFF, loads[family], triton
                )
    return {"minilm_ort_in_process": ceiling, "cases": cases}


def rate(cases: dict[str, Any], case: str, load: str, key: str = "req_per_s") -> float | None:
    run = cases.get(case, {}).get("runs", {}).get(load, {})
    value = run.get(key)
    if value is None and key == "req_per_s":
        value = run.get("req_per_s_from_stats")
    return float(value) if value is not None else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def ratios(report: dict[str, Any]) -> dict[str, float | None]:
    """The comparisons the run is for, each from two measurements of this same run."""
    cases, ns, out = report["cases"], report["workers"], {}
    cpu = "gateway_cpu_us_per_request"
    out["gRPC CPU/req: gateway N=1 / grpc.aio floor"] = ratio(
        rate(cases, "ort/w1", "digits_mlp/grpc", cpu),
        rate(cases, "grpc-floor", "digits_mlp/grpc", cpu),
    )
    for load in ("digits_mlp/http", "digits_mlp/grpc", "digits_mlp/rest_json"):
        one = rate(cases, "ort/w1", load, cpu)
        for n in ns[1:]:
            worker = rate(cases, f"ort/w{n}", load, "worker_cpu_us_per_request")
            if worker is not None and one is not None:
                out[f"ort {load}: worker CPU/req N={n} - one process's (µs)"] = round(
                    worker - one, 1
                )
            out[f"ort {load}: mean batch N={n} / N=1"] = ratio(
                rate(cases, f"ort/w{n}", load, "gateway_mean_batch"),
                rate(cases, "ort/w1", load, "gateway_mean_batch"),
            )
    for family in ("ort", "cache", "via-triton", "via-triton-nobatch"):
        for load in cases.get(f"{family}/w1", {}).get("runs", {}):
            for n in ns[1:]:
                here, base = f"{family}/w{n}", f"{family}/w1"
                out[f"{family} {load}: req/s N={n} / N=1"] = ratio(
                    rate(cases, here, load), rate(cases, base, load)
                )
                out[f"{family} {load}: CPU/req N={n} / N=1"] = ratio(
                    rate(cases, here, load, cpu), rate(cases, base, load, cpu)
                )
    for n in ns:
        for load in ("digits_mlp/http", "digits_mlp/grpc"):
            out[f"gateway N={n} / Triton, {load}"] = ratio(
                rate(cases, f"ort/w{n}", load), rate(cases, "triton", load)
            )
            out[f"--backend triton N={n}, {load}: batching on / off"] = ratio(
                rate(cases, f"via-triton/w{n}", load), rate(cases, f"via-triton-nobatch/w{n}", load)
            )
        ceiling = report["minilm_ort_in_process"]["best_sequences_per_s"]
        for load in ("minilm_embed/grpc", "minilm_embed/http"):
            out[f"gateway N={n} minilm seq/s / ORT best batch, {load}"] = ratio(
                rate(cases, f"ort/w{n}", load), ceiling
            )
        out[f"N={n} REST JSON: cache hits / misses req/s"] = ratio(
            rate(cases, f"cache/w{n}", "digits_mlp/rest_json"),
            rate(cases, f"ort/w{n}", "digits_mlp/rest_json"),
        )
    return {key: value for key, value in out.items() if value is not None}


# --- output --------------------------------------------------------------------------------------

COLUMNS = {  # header -> key in a run; one value per N in a cell
    "req/s": "req_per_s",
    "p99 ms": "p99_ms",
    "gateway CPU µs/req": "gateway_cpu_us_per_request",
    "executor µs/req": "executor_cpu_us_per_request",
    "worker µs/req": "worker_cpu_us_per_request",
    "gateway batch": "gateway_mean_batch",
    "Triton CPU µs/req": "triton_cpu_us_per_request",
    "Triton batch": "triton_mean_batch",
}


def cell(runs: list[dict[str, Any]], key: str) -> str:
    values = []
    for run in runs:
        value = run.get(key)
        if value is None and key == "req_per_s":
            value = run.get("req_per_s_from_stats")
            values.append(f"{value:.0f}*" if value is not None else "failed")
            continue
        values.append("-" if value is None else f"{value:.3g}" if value < 10 else f"{value:.0f}")
    return " / ".join(values)


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per case family and load; each cell holds the N=1 / N=2 (/ N=4) values."""
    cases, rows = report["cases"], []
    for family in ("ort", "cache", "triton", "grpc-floor", "via-triton", "via-triton-nobatch"):
        alone = family in ("triton", "grpc-floor")
        names = [family] if alone else [f"{family}/w{n}" for n in report["workers"]]
        present = [name for name in names if name in cases]
        if not present:
            continue
        counts = "-" if alone else "/".join(name.split("/w")[1] for name in present)
        for load in dict.fromkeys(load for name in present for load in cases[name]["runs"]):
            runs = [cases[name]["runs"].get(load, {}) for name in present]
            speedup = (
                ""
                if len(runs) < 2
                else ratio(rate(cases, present[1], load), rate(cases, present[0], load))
            )
            row = [family, load, counts, *(cell(runs, key) for key in COLUMNS.values())]
            rows.append(row[:4] + [f"{speedup}x" if speedup else ""] + row[4:])
    return rows


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    table = Table(
        title=f"--workers N, batch 1 at {report['concurrency']} clients, "
        f"{report['duration_s']} s windows (values for N = 1 / 2 (/ 4); * = perf_analyzer failed, "
        "rate from the server's counters)"
    )
    for header in ("case", "model/protocol", "N", "req/s", "N2/N1", *list(COLUMNS)[1:]):
        table.add_column(
            header, justify="left" if header in ("case", "model/protocol") else "right"
        )
    for row in table_rows(report):
        table.add_row(*row)
    console.print(table)
    ceiling = report["minilm_ort_in_process"]
    console.print(
        f"minilm_embed in-process ONNX Runtime, sequences/s by batch: "
        f"{ceiling['sequences_per_s_by_batch']} (best of 1/8/32: batch "
        f"{ceiling['best_batch_of_1_8_32']}, {ceiling['best_sequences_per_s']:.0f}/s)"
    )
    ratio_table = Table(title="ratios (same run)")
    ratio_table.add_column("comparison")
    ratio_table.add_column("ratio", justify="right")
    for name, value in report["ratios"].items():
        ratio_table.add_row(name, f"{value:.3f}")
    console.print(ratio_table)
    for name, case in report["cases"].items():
        for failure in case.get("failed_starts", []):
            console.print(f"[red]{name}: {failure}[/red]")
        if case.get("warm_up_errors"):
            console.print(f"[red]{name}: {case['warm_up_errors']} errors during the warm-up[/red]")
        for load, run in case.get("runs", {}).items():
            if run.get("errors") or run.get("error"):
                console.print(f"[red]{name} {load}: {run.get('errors') or run.get('error')}[/red]")
        if case.get("log_problem_count"):
            console.print(
                f"[yellow]{name}: {case['log_problem_count']} warning/error lines in "
                f"{case['log']}[/yellow]"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=ROOT / "model_repo")
    parser.add_argument("--duration", type=int, default=None, help="seconds per load (10)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--with-4", action="store_true", help="also --workers 4")
    parser.add_argument("--quick", action="store_true", help="2 s windows, fewer loads")
    parser.add_argument("--out", type=Path, default=RESULTS / "workers_bench.json")
    args = parser.parse_args()
    for tool in ("wrk",):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed: apt-get install {tool}")
    duration = args.duration or (2 if args.quick else 10)
    workers = [1, 2, 4] if args.with_4 else [1, 2]
    logs = args.out.with_suffix("").with_name(args.out.stem + "_logs")
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="infergate-workers-") as work:
        bench = Bench(
            args.repo.resolve(), duration, args.concurrency, args.quick, workers, Path(work), logs
        )
        report: dict[str, Any] = {
            "machine": {"cores": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
            "duration_s": duration,
            "concurrency": args.concurrency,
            "quick": args.quick,
            "workers": workers,
            **run_all(bench),
        }
    report["ratios"] = ratios(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print_report(report)
    print(f"wrote {args.out} (gateway logs in {logs})")


if __name__ == "__main__":
    main()
