"""The reference the gateway is measured against: FastAPI calling ``session.run`` per request.

This is the hand-written proxy users have today (pydantic body, Python lists, one ORT call per
request). Run: ``python bench/naive_server.py MODEL_ONNX PORT``.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel


class Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferBody(BaseModel):
    inputs: list[Tensor]


def build(model_path: str) -> FastAPI:
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    types = {i.name: (np.int64 if "int64" in i.type else np.float32) for i in session.get_inputs()}
    app = FastAPI()

    @app.post("/v2/models/{model}/infer")
    def infer(model: str, body: InferBody) -> dict[str, Any]:
        feeds = {
            t.name: np.asarray(t.data, dtype=types[t.name]).reshape(t.shape) for t in body.inputs
        }
        names = [o.name for o in session.get_outputs()]
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
