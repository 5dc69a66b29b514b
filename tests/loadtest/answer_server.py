"""A small real KServe v2 HTTP server for ``tiny_mlp`` that answers right, or wrong on purpose.

It runs the model with ONNX Runtime, then (depending on ``mode``) breaks one part of the
answer, so tests can prove the scenarios count wrong answers as failures.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from tests.loadtest.models import MLP

MODES = ("right", "shape", "values", "names", "dtype")
METADATA = {
    "name": MLP,
    "versions": ["1"],
    "platform": "onnxruntime_onnx",
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
}
CONFIG = {"name": MLP, "max_batch_size": 64}


def answer(session: ort.InferenceSession, body: dict[str, Any], mode: str) -> dict[str, Any]:
    tensor = body["inputs"][0]
    x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    (probabilities,) = session.run(["probabilities"], {"input": x})
    output = {
        "name": "probabilities",
        "datatype": "FP32",
        "shape": list(probabilities.shape),
        "data": probabilities.ravel().tolist(),
    }
    if mode == "shape":  # one class short
        output["shape"] = [x.shape[0], 9]
        output["data"] = probabilities[:, :9].ravel().tolist()
    elif mode == "values":  # right shape and type, wrong numbers
        output["data"] = np.full(probabilities.size, 0.1).tolist()
    elif mode == "names":
        output["name"] = "logits"
    elif mode == "dtype":
        output["datatype"] = "FP64"
    return {"model_name": MLP, "model_version": "1", "outputs": [output]}


@contextmanager
def serve_answers(repo: Path, mode: str) -> Iterator[str]:
    """Serve on a free port in a thread; yields the base URL."""
    session = ort.InferenceSession(str(repo / MLP / "1" / "model.onnx"))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            routes = {f"/v2/models/{MLP}": METADATA, f"/v2/models/{MLP}/config": CONFIG}
            if self.path in routes:
                self._send(200, routes[self.path])
            else:
                self._send(404, {"error": f"unknown path {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path == "/v2/repository/index":
                self._send(200, [{"name": MLP, "version": "1", "state": "READY"}])
            elif self.path == f"/v2/models/{MLP}/infer":
                self._send(200, answer(session, json.loads(body), mode))
            else:
                self._send(404, {"error": f"unknown path {self.path}"})

        def handle(self) -> None:
            with suppress(ConnectionError):  # Locust drops keep-alive connections as it stops
                super().handle()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
