"""KServe's own Python client (``kserve`` 0.21.0) against a real ``infergate serve``, as a new
user would try it: ``InferenceRESTClient`` (v2 JSON and binary, server health, model readiness,
v1 ``:predict``) and ``InferenceGRPCClient``. Answers must equal ONNX Runtime run directly.

The client runs in its own process (``kserve_calls.py`` says why). KServe's REST client reads
``{"live": true}`` / ``{"ready": true}`` from the health routes, tritonclient only the status:
both are checked against the same gateway.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient

from tests.helpers import ROOT, WAIT_S, Gateway

MODEL = "digits_mlp"


def test_kserve_rest_and_grpc_clients(gateway: Gateway, example_repo: Path) -> None:
    rows = (np.random.default_rng(1).random((3, 64)) * 16).astype(np.float32)
    script = str(ROOT / "tests" / "integration" / "kserve_calls.py")
    done = subprocess.run(
        [sys.executable, script, gateway.base_url, gateway.grpc_url, json.dumps(rows.tolist())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    got = json.loads(done.stdout.splitlines()[-1])
    health = ("live", "ready", "model_ready", "grpc_live", "grpc_ready", "grpc_model_ready")
    assert {name: got[name] for name in health} == dict.fromkeys(health, True)
    assert got["unknown_model_ready"] is False
    session = ort.InferenceSession(str(example_repo / MODEL / "1" / "model.onnx"))
    expected = session.run(None, {"input": rows})[0]
    for call in ("json", "binary", "v1", "grpc"):
        np.testing.assert_allclose(np.array(got[call]), expected, atol=1e-5, err_msg=call)


def test_health_bodies_and_statuses_serve_both_kinds_of_client(gateway: Gateway) -> None:
    base = gateway.base_url
    live, ready = httpx.get(f"{base}/v2/health/live"), httpx.get(f"{base}/v2/health/ready")
    assert (live.status_code, live.json()) == (200, {"live": True})
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    model = httpx.get(f"{base}/v2/models/{MODEL}/ready")
    assert (model.status_code, model.json()) == (200, {"name": MODEL, "ready": True})
    missing = httpx.get(f"{base}/v2/models/no_such_model/ready")
    assert (missing.status_code, missing.json()["ready"]) == (400, False)
    with httpclient.InferenceServerClient(gateway.http_url) as triton:
        assert triton.is_server_live() and triton.is_server_ready()
        assert triton.is_model_ready(MODEL) and not triton.is_model_ready("no_such_model")
