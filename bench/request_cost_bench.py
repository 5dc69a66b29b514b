"""CPU cost of one request on the gateway's own path, this checkout vs another (not a test).

In one process per checkout: REST JSON decode -> ``DataPlane.infer`` (validation, batcher, ONNX
Runtime ``digits_mlp``) -> encode, 64 requests at a time, measured in process CPU time per
request, which a busy machine disturbs far less than wall-clock throughput. Checkouts alternate
for ``--rounds`` rounds; the JSON gives every round and the medians.

``--tracing`` adds two runs of this checkout, with tracing on (every request traced, its spans
exported over OTLP/gRPC to a receiver in this process, which counts them) and with the request
log on (its lines written to /dev/null); then every run, the baseline's too, goes through the
whole REST app as uvicorn calls it (``build_app``: the front end opens the server span), not
only the codec and the data plane.

    .venv/bin/python bench/request_cost_bench.py --baseline /path/to/older/checkout [--tracing]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

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
requestlog = None  # tracing and the request log, set up from INFERGATE_* as the gateway does
if os.path.isfile(os.path.join(sys.argv[1], "service", "observability", "requestlog.py")):
    from service.observability import requestlog

BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
).encode()
SCOPE = {
    "type": "http", "method": "POST", "path": "/v2/models/digits_mlp/infer", "scheme": "http",
    "http_version": "1.1", "query_string": b"", "client": ("127.0.0.1", 50000),
    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))],
}

def rest_app(dataplane):  # the REST app as uvicorn calls it, a request per call (--tracing)
    from service.frontends.rest.app import build_app

    app = build_app(dataplane)

    async def receive():
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def one() -> None:
        sent = []

        async def send(message):
            sent.append(message)

        await app(dict(SCOPE), receive, send)
        assert sent[0]["status"] == 200, sent

    return one

async def main() -> None:
    settings = Settings(model_repo=sys.argv[2], grpc_port=0)
    if requestlog is not None:
        requestlog.configure(settings)
    dataplane = DataPlane(settings)
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

    call = rest_app(dataplane) if sys.argv[3] == "app" else one
    for _ in range(50):
        await asyncio.gather(*(call() for _ in range(64)))
    rounds = 300
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(rounds):
        await asyncio.gather(*(call() for _ in range(64)))
    count = rounds * 64
    result = {
        "cpu_us": (time.process_time() - cpu) / count * 1e6,
        "wall_us": (time.perf_counter() - wall) / count * 1e6,
    }
    await dataplane.close()
    if requestlog is not None:
        requestlog.shutdown()  # exports what is queued, after the measured window
    print(json.dumps(result), file=sys.stderr)  # stdout may carry the request log

asyncio.run(main())
"""


#: the runs of ``--tracing``: variables for this checkout's probe
FEATURES = {
    "tracing": {"INFERGATE_OTLP_ENDPOINT": ""},  # the receiver's, once it listens
    "request-log": {"INFERGATE_REQUEST_LOG": "true"},
}


def measure(
    checkout: Path, repo: Path, through: str = "plane", env: dict[str, str] | None = None
) -> dict[str, float]:
    quiet = {"INFERGATE_REQUEST_LOG": "false", "INFERGATE_OTLP_ENDPOINT": ""}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(checkout), str(repo), through],
        cwd=checkout,
        env={**os.environ, **quiet, **(env or {})},
        stdout=subprocess.DEVNULL,  # the request log's lines
        stderr=subprocess.PIPE,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the probe failed in {checkout}:\n{done.stderr}")
    last = done.stderr.strip().splitlines()[-1]
    return {key: round(value, 1) for key, value in json.loads(last).items()}


class SpanCounter(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """An OTLP receiver that only counts what it is sent (``--tracing``)."""

    def __init__(self) -> None:
        self.spans = 0

    def Export(self, request, context):  # noqa: N802 - the proto's name
        scopes = [scope for resource in request.resource_spans for scope in resource.scope_spans]
        self.spans += sum(len(scope.spans) for scope in scopes)
        return trace_service_pb2.ExportTraceServiceResponse()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout")
    parser.add_argument("--repo", type=Path, default=ROOT / "model_repo")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tracing", action="store_true", help="also tracing / request log on")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "request_cost.json"
    )
    args = parser.parse_args()
    through = "app" if args.tracing else "plane"
    arms: dict[str, tuple[Path, dict[str, str]]] = {
        "baseline": (args.baseline.resolve(), {}),
        "this": (ROOT, {}),
    }
    counter, server = SpanCounter(), grpc.server(ThreadPoolExecutor(max_workers=2))
    if args.tracing:
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(counter, server)
        endpoint = f"http://127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        server.start()
        FEATURES["tracing"]["INFERGATE_OTLP_ENDPOINT"] = endpoint
        arms.update({name: (ROOT, env) for name, env in FEATURES.items()})
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
    try:
        for _ in range(args.rounds):
            for name, (checkout, env) in arms.items():
                runs[name].append(measure(checkout, args.repo, through, env))
    finally:
        server.stop(grace=None)
    report(args, runs, counter.spans)
    return 0


def report(args: argparse.Namespace, runs: dict[str, list[dict[str, float]]], spans: int) -> None:
    medians = {
        name: {key: statistics.median(r[key] for r in results) for key in ("cpu_us", "wall_us")}
        for name, results in runs.items()
    }
    cpu = {name: median["cpu_us"] for name, median in medians.items()}
    ratio = cpu["this"] / cpu["baseline"]
    result: dict[str, object] = {
        "through": "rest app" if args.tracing else "codec + data plane",
        "runs": runs,
        "medians": medians,
        "cpu_ratio_this_vs_baseline": round(ratio, 3),
    }
    lines = [f"CPU per request, this / baseline: {ratio:.3f}"]
    for feature in FEATURES:
        if feature in cpu:
            on, extra = cpu[feature] / cpu["this"], cpu[feature] - cpu["this"]
            result[f"cpu_ratio_{feature}_vs_this"] = round(on, 3)
            result[f"cpu_us_per_request_{feature}"] = round(extra, 1)
            lines.append(f"CPU per request, {feature} on / off: {on:.3f} (+{extra:.1f} us)")
    if "tracing" in cpu:  # 350 requests a round (50 of them warm-up) of 64 each
        result["spans_received_per_request"] = round(spans / (args.rounds * 350 * 64), 2)
        lines.append(f"spans received per traced request: {result['spans_received_per_request']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for name, median in medians.items():
        print(f"{name:11s} CPU {median['cpu_us']:.1f} us/request, wall {median['wall_us']:.1f} us")
    print("\n".join(lines) + f"  (wrote {args.out})")


if __name__ == "__main__":
    sys.exit(main())
