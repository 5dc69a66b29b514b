"""Wire formats: v2 JSON and binary-tensor REST on Locust's FastHttp client, and gRPC.

Every call ends in exactly one Locust request event, success or failure; a response is a
success only when it decodes and ``check`` finds nothing wrong with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import orjson

from loadtest._check import OutputTensor
from loadtest._inputs import numpy_dtype
from loadtest._model import ModelSpec

Checker = Callable[[dict[str, OutputTensor]], "str | None"]
_HEADER_LENGTH = "Inference-Header-Content-Length"


class ResponseError(ValueError):
    """A response that does not decode as a v2 inference response."""


class Transport(Protocol):
    kind: str

    def infer(
        self, spec: ModelSpec, inputs: dict[str, np.ndarray], name: str, check: Checker
    ) -> bool:
        """Send one request, report it to Locust; True when the answer was right."""
        ...


def _json_data(array: np.ndarray, datatype: str) -> Any:
    if datatype == "BYTES":
        return [item.decode() if isinstance(item, bytes) else str(item) for item in array.ravel()]
    if datatype == "FP16":
        return array.ravel().astype(np.float32)
    return np.ascontiguousarray(array.ravel())


def json_request(spec: ModelSpec, inputs: dict[str, np.ndarray]) -> bytes:
    body = {
        "inputs": [
            {
                "name": name,
                "shape": list(value.shape),
                "datatype": datatype,
                "data": _json_data(value, datatype),
            }
            for name, value in inputs.items()
            for datatype in [_datatype(spec, name)]
        ],
        "outputs": [{"name": name} for name in spec.output_names],
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _datatype(spec: ModelSpec, name: str) -> str:
    tensor = spec.input(name)
    if tensor is None:
        raise ValueError(f"{spec.name} has no input {name}")
    return tensor.datatype


def parse_json_response(body: bytes) -> dict[str, OutputTensor]:
    try:
        outputs = orjson.loads(body)["outputs"]
        decoded = {}
        for output in outputs:
            datatype, shape = output["datatype"], tuple(int(d) for d in output["shape"])
            data = output["data"]
            if datatype == "BYTES":
                data = [item.encode() if isinstance(item, str) else item for item in data]
            array = np.array(data, dtype=numpy_dtype(datatype))
            if array.size != int(np.prod(shape)):
                raise ResponseError(
                    f"{output['name']}: {array.size} values for shape {list(shape)}"
                )
            decoded[output["name"]] = OutputTensor(
                output["name"], datatype, shape, array.reshape(shape)
            )
        return decoded
    except (KeyError, TypeError, orjson.JSONDecodeError) as error:
        raise ResponseError(f"not a v2 inference response: {error!r}") from error


def binary_request(spec: ModelSpec, inputs: dict[str, np.ndarray]) -> tuple[bytes, int | None]:
    import tritonclient.http as httpclient

    tensors = []
    for name, value in inputs.items():
        tensor = httpclient.InferInput(name, list(value.shape), _datatype(spec, name))
        tensor.set_data_from_numpy(value, binary_data=True)
        tensors.append(tensor)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in spec.output_names]
    return httpclient.InferenceServerClient.generate_request_body(tensors, outputs=outputs)


def parse_binary_response(body: bytes, header_length: str | None) -> dict[str, OutputTensor]:
    import tritonclient.http as httpclient

    try:
        result = httpclient.InferenceServerClient.parse_response_body(
            body, header_length=int(header_length) if header_length else None
        )
        decoded = {}
        for output in result.get_response()["outputs"]:
            array = result.as_numpy(output["name"])
            if array is None:
                raise ResponseError(f"{output['name']}: no data")
            shape = tuple(int(d) for d in output["shape"])
            decoded[output["name"]] = OutputTensor(output["name"], output["datatype"], shape, array)
        return decoded
    except (KeyError, TypeError, ValueError) as error:
        raise ResponseError(f"not a v2 inference response: {error!r}") from error


class HttpTransport:
    """KServe v2 REST through Locust's ``FastHttpSession``: ``json`` or ``binary`` tensors."""

    def __init__(self, client: Any, binary: bool) -> None:
        self.client = client
        self.binary = binary
        self.kind = "binary" if binary else "json"

    def infer(
        self, spec: ModelSpec, inputs: dict[str, np.ndarray], name: str, check: Checker
    ) -> bool:
        headers = {"Content-Type": "application/json"}
        if self.binary:
            body, header_length = binary_request(spec, inputs)
            if header_length is not None:
                headers = {
                    "Content-Type": "application/octet-stream",
                    _HEADER_LENGTH: str(header_length),
                }
        else:
            body = json_request(spec, inputs)
        path = f"/v2/models/{spec.name}/infer"
        with self.client.post(
            path, data=body, headers=headers, name=name, catch_response=True
        ) as response:
            if response.status_code != 200:
                detail = response.error or (response.text or "")[:200]
                response.failure(f"HTTP {response.status_code}: {detail}")
                return False
            try:
                if self.binary:
                    outputs = parse_binary_response(
                        response.content, response.headers.get(_HEADER_LENGTH)
                    )
                else:
                    outputs = parse_json_response(response.content)
                problem = check(outputs)
            except ResponseError as error:
                problem = str(error)
            if problem:
                response.failure(problem)
                return False
            response.success()
            return True


class GrpcTransport:
    """``tritonclient.grpc`` under gevent, reporting each call as a ``grpc`` request event."""

    kind = "grpc"

    def __init__(self, environment: Any, target: str) -> None:
        from loadtest._grpc import shared_client

        self.environment = environment
        self.target = target
        self.client = shared_client(target)

    def infer(
        self, spec: ModelSpec, inputs: dict[str, np.ndarray], name: str, check: Checker
    ) -> bool:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        tensors = []
        for input_name, value in inputs.items():
            tensor = grpcclient.InferInput(
                input_name, list(value.shape), _datatype(spec, input_name)
            )
            tensor.set_data_from_numpy(value)
            tensors.append(tensor)
        requested = [grpcclient.InferRequestedOutput(n) for n in spec.output_names]
        start = time.perf_counter()
        elapsed: float | None = None
        length, problem = 0, None
        try:
            result = self.client.infer(spec.name, tensors, outputs=requested)
            elapsed = (time.perf_counter() - start) * 1000
            response = result.get_response()
            length = response.ByteSize()
            outputs = {}
            for output in response.outputs:
                array = result.as_numpy(output.name)
                if array is None:
                    raise ResponseError(f"{output.name}: no data")
                shape = tuple(int(d) for d in output.shape)
                outputs[output.name] = OutputTensor(output.name, output.datatype, shape, array)
            problem = check(outputs)
        except InferenceServerException as error:
            problem = f"gRPC {error.status()}: {error.message()}"
        except ValueError as error:  # ResponseError included
            problem = str(error)
        if elapsed is None:
            elapsed = (time.perf_counter() - start) * 1000
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=elapsed,
            response_length=length,
            exception=ResponseError(problem) if problem else None,
            context={},
        )
        return problem is None
