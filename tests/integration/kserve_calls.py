"""KServe's Python client (``kserve`` 0.21.0) calling a gateway, run as its own process:
``python tests/integration/kserve_calls.py HTTP_BASE_URL GRPC_HOST:PORT ROWS_JSON``.

``kserve`` and ``tritonclient.grpc`` cannot share a process: both register the protobuf
messages of package ``inference`` (``ServerLiveRequest``...) under different file names, and
the second import fails with "duplicate symbol". The test process has tritonclient, so KServe's
client runs here and prints what every call returned as one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

MODEL = "digits_mlp"


def v2_request(rows: np.ndarray, binary: bool) -> InferRequest:
    tensor = InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    outputs = [RequestedOutput("probabilities", {"binary_data": binary})]
    return InferRequest(MODEL, [tensor], request_outputs=outputs)


def output(response: object) -> list[object]:
    found = response.get_output_by_name("probabilities")  # type: ignore[attr-defined]
    return found.as_numpy().tolist()


async def rest(base: str, rows: np.ndarray) -> dict[str, object]:
    results: dict[str, object] = {}
    async with InferenceRESTClient(RESTConfig(protocol="v2")) as client:
        results["live"] = await client.is_server_live(base)
        results["ready"] = await client.is_server_ready(base)
        results["model_ready"] = await client.is_model_ready(base, MODEL)
        results["unknown_model_ready"] = await client.is_model_ready(base, "no_such_model")
        for binary in (False, True):
            response = await client.infer(base, v2_request(rows, binary), MODEL)
            results["binary" if binary else "json"] = output(response)
    async with InferenceRESTClient(RESTConfig(protocol="v1")) as client:
        answer = await client.infer(base, {"instances": rows.tolist()}, MODEL)
        results["v1"] = answer["predictions"]
    return results


async def grpc(url: str, rows: np.ndarray) -> dict[str, object]:
    client = InferenceGRPCClient(url)
    try:
        return {
            "grpc_live": await client.is_server_live(),
            "grpc_ready": await client.is_server_ready(),
            "grpc_model_ready": await client.is_model_ready(MODEL),
            "grpc": output(await client.infer(v2_request(rows, binary=True))),
        }
    finally:
        await client.close()


async def main(base: str, url: str, rows: np.ndarray) -> None:
    print(json.dumps({**await rest(base, rows), **await grpc(url, rows)}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], np.array(json.loads(sys.argv[3]), np.float32)))
