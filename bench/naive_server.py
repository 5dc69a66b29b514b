"""The reference the gateway is measured against: FastAPI calling ``session.run`` per request.

This is the hand-written proxy users have today: parse the JSON, build the arrays, one ORT call
per request on the event loop, answer with Python lists. Run:
``python bench/naive_server.py MODEL_ONNX PORT``.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request

DTYPES = {"FP32": np.float32, "INT64": np.int64}


def build(model_path: str) -> FastAPI:
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    app = FastAPI()

    @app.post("/v2/models/{model}/infer")
    async def infer(model: str, request: Request) -> dict[str, Any]:
        body = await request.json()
        feeds = {
            t["name"]: np.asarray(t["data"], dtype=DTYPES[t["datatype"]]).reshape(t["shape"])
            for t in body["inputs"]
        }
        results = session.run(names, feeds)
        return {
            "model_name": model,
            "outputs": [
                {"name": n, "datatype": "FP32", "shape": list(r.shape), "data": r.ravel().tolist()}
                for n, r in zip(names, results)
            ],
        }

    return app


if __name__ == "__main__":
    uvicorn.run(build(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
