"""gRPC against a real gateway over small hand-made models: BYTES, typed contents, decode errors,
message limits, streaming errors and repository control.

The models are built here (a tiny MLP and a string-echo graph) so this runs without the example
repository; answers are compared with ONNX Runtime run directly on the same files.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from tests.helpers import Gateway, start_gateway
from tests.triton_models import FEATURES, MODEL, write_onnx_repo

MESSAGE_LIMIT = 1 << 20
ECHO = "text_echo"

_ECHO_CONFIG = """name: "text_echo"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "text" data_type: TYPE_STRING dims: [ 1 ] },
        { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "echo" data_type: TYPE_STRING dims: [ 1 ] },
         { name: "x2" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""


def write_echo_model(root: Path) -> None:
    """A graph with a STRING input echoed back and an FP32 input squared."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["text"], ["echo"]),
            helper.make_node("Mul", ["x", "x"], ["x2"]),
        ],
        ECHO,
        [
            helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", 1]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1]),
        ],
        [
            helper.make_tensor_value_info("echo", TensorProto.STRING, ["batch", 1]),
            helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["batch", 1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / ECHO / "1").mkdir(parents=True)
    onnx.save(model, root / ECHO / "1" / "model.onnx")
    (root / ECHO / "config.pbtxt").write_text(_ECHO_CONFIG)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_onnx_repo(tmp_path_factory.mktemp("grpc-repo"))
    write_echo_model(root)
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[Gateway]:
    gateway = start_gateway(
        repo,
        "--model-control-mode",
        "explicit",
        env={"INFERGATE_GRPC_MAX_MESSAGE_BYTES": str(MESSAGE_LIMIT)},
    )
    yield gateway
    gateway.stop()


@pytest.fixture
def client(server: Gateway) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        yield c


@pytest.fixture
def stub(server: Gateway) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    """The generated stub, for messages tritonclient never sends (typed contents, bad sizes)."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def reference(repo: Path, model: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(repo / model / "1" / "model.onnx"))
    return session.run(None, feeds)


def mlp_input(x: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def mlp_request(x: np.ndarray) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    return request


def assert_status(call: object, code: grpc.StatusCode, text: str) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    error = info.value
    assert error.code() == code, error.details()
    assert text in error.details()
    return str(error.details())


def test_bytes_tensor_round_trip(client: grpcclient.InferenceServerClient) -> None:
    text = np.array([[b"hello"], ["w\u00f6rld \u2713".encode()], [b""]], dtype=np.object_)
    x = np.array([[1.5], [-2.0], [3.0]], dtype=np.float32)
    a = grpcclient.InferInput("text", [3, 1], "BYTES")
    a.set_data_from_numpy(text)
    b = grpcclient.InferInput("x", [3, 1], "FP32")
    b.set_data_from_numpy(x)
    result = client.infer(ECHO, [a, b])
    assert result.as_numpy("echo").tolist() == text.tolist()
    np.testing.assert_array_equal(result.as_numpy("x2"), x * x)
    assert [o.datatype for o in result.get_response().outputs] == ["BYTES", "FP32"]


def test_typed_contents_equal_raw_contents(
    stub: pb_grpc.GRPCInferenceServiceStub, repo: Path
) -> None:
    x = np.random.default_rng(1).standard_normal((2, FEATURES)).astype(np.float32)
    typed = pb.ModelInferRequest(model_name=MODEL, id="typed")
    typed.inputs.add(
        name="x",
        datatype="FP32",
        shape=[2, FEATURES],
        contents=pb.InferTensorContents(fp32_contents=x.ravel().tolist()),
    )
    answer = stub.ModelInfer(typed)
    assert answer.id == "typed" and answer.model_name == MODEL
    (output,) = answer.outputs
    got = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(output.shape)
    raw = stub.ModelInfer(mlp_request(x))
    from_raw = np.frombuffer(raw.raw_output_contents[0], np.float32).reshape(got.shape)
    np.testing.assert_allclose(got, from_raw, rtol=1e-6)
    np.testing.assert_allclose(got, reference(repo, MODEL, {"x": x})[0], rtol=1e-5, atol=1e-6)

    echo = pb.ModelInferRequest(model_name=ECHO)
    echo.inputs.add(
        name="text",
        datatype="BYTES",
        shape=[2, 1],
        contents=pb.InferTensorContents(bytes_contents=[b"ab", b"c"]),
    )
    echo.inputs.add(
        name="x",
        datatype="FP32",
        shape=[2, 1],
        contents=pb.InferTensorContents(fp32_contents=[2, 3]),
    )
    result = grpcclient.InferResult(stub.ModelInfer(echo))
    assert result.as_numpy("echo").tolist() == [[b"ab"], [b"c"]]
    np.testing.assert_array_equal(result.as_numpy("x2"), [[4.0], [9.0]])


def test_decode_errors_are_precise(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    x = np.zeros((2, FEATURES), np.float32)

    short = mlp_request(x)
    short.raw_input_contents[0] = x.tobytes()[:-4]
    assert assert_status(lambda: stub.ModelInfer(short), invalid, "binary data") == (
        f"input 'x': {x.nbytes - 4} bytes of binary data do not match shape "
        f"[2, {FEATURES}] of FP32 ({x.nbytes} bytes)"
    )

    extra = mlp_request(x)
    extra.raw_input_contents.append(b"\0" * 4)
    assert_status(lambda: stub.ModelInfer(extra), invalid, "1 inputs but 2 raw_input_contents")

    unknown = mlp_request(x)
    unknown.inputs[0].datatype = "FP8"
    assert_status(lambda: stub.ModelInfer(unknown), invalid, "unknown datatype 'FP8'")

    absurd = mlp_request(x)
    absurd.inputs[0].shape[:] = [1 << 31, 1 << 31]
    assert_status(lambda: stub.ModelInfer(absurd), invalid, "more than the limit")

    mismatch = mlp_request(x)
    mismatch.inputs[0].datatype = "FP64"
    mismatch.raw_input_contents[0] = x.astype(np.float64).tobytes()
    assert_status(
        lambda: stub.ModelInfer(mismatch), invalid, "data-type is 'FP64', but model 'tiny_mlp'"
    )

    missing = pb.ModelInferRequest(model_name="no_such_model")
    assert_status(
        lambda: stub.ModelInfer(missing),
        grpc.StatusCode.NOT_FOUND,
        "Request for unknown model: 'no_such_model' is not found",
    )
    # Every failure above left the server serving.
    assert len(stub.ModelInfer(mlp_request(x)).raw_output_contents) == 1


def test_client_errors_and_unsupported_features(client: grpcclient.InferenceServerClient) -> None:
    x = np.zeros((1, FEATURES - 1), np.float32)
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL, [mlp_input(x)])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert info.value.message() == (
        f"unexpected shape for input 'x' for model '{MODEL}'. "
        f"Expected [-1,{FEATURES}], got [1,{FEATURES - 1}]"
    )

    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("no_such_model")
    assert info.value.status() == "StatusCode.NOT_FOUND"

    with pytest.raises(InferenceServerException) as info:
        client.get_system_shared_memory_status()
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    assert "shared memory is not supported" in info.value.message()

    with pytest.raises(InferenceServerException) as info:
        client.get_trace_settings()
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    assert client.is_server_live()


def test_message_size_limit(client: grpcclient.InferenceServerClient) -> None:
    rows = MESSAGE_LIMIT // (FEATURES * 4) + 1  # just over the limit
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL, [mlp_input(np.zeros((rows, FEATURES), np.float32))])
    assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    result = client.infer(MODEL, [mlp_input(np.zeros((2, FEATURES), np.float32))])
    assert result.as_numpy("probs").shape == (2, 4)


def test_stream_carries_errors_without_ending(
    client: grpcclient.InferenceServerClient, repo: Path
) -> None:
    results: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    rng = np.random.default_rng(2)
    sent: dict[str, np.ndarray] = {}
    try:
        for k in range(12):
            x = rng.standard_normal((1, FEATURES)).astype(np.float32)
            if k % 4 == 3:
                client.async_stream_infer(MODEL, [mlp_input(x[:, :3])], request_id=f"bad{k}")
            else:
                sent[str(k)] = x
                client.async_stream_infer(MODEL, [mlp_input(x)], request_id=str(k))
        answers = [results.get(timeout=60) for _ in range(12)]
    finally:
        client.stop_stream()
    errors = [error for result, error in answers if error is not None]
    assert len(errors) == 3
    assert all("unexpected shape for input" in str(error) for error in errors)
    got = {r.get_response().id: r.as_numpy("probs") for r, e in answers if e is None}
    assert got.keys() == sent.keys()
    for key, x in sent.items():
        np.testing.assert_allclose(got[key], reference(repo, MODEL, {"x": x})[0], rtol=1e-5)


async def test_aio_load_unload(server: Gateway) -> None:
    client = grpcaio.InferenceServerClient(server.grpc_url)
    try:
        await client.unload_model(ECHO)
        assert not await client.is_model_ready(ECHO)
        index = {m.name: m.state for m in (await client.get_model_repository_index()).models}
        assert index == {ECHO: "UNAVAILABLE", MODEL: "READY"}
        with pytest.raises(InferenceServerException) as info:
            await client.get_model_metadata(ECHO)
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        with pytest.raises(InferenceServerException) as info:
            await client.load_model("no_such_model")
        assert info.value.status() == "StatusCode.NOT_FOUND"
        await client.load_model(ECHO)
        assert await client.is_model_ready(ECHO)
        ready = await client.get_model_repository_index()
        assert {m.name for m in ready.models if m.state == "READY"} == {ECHO, MODEL}
    finally:
        await client.close()


async def test_aio_stream_answers_each_request(server: Gateway, repo: Path) -> None:
    rng = np.random.default_rng(3)
    xs = {str(k): rng.standard_normal((1, FEATURES)).astype(np.float32) for k in range(40)}

    async def requests() -> object:
        for key, x in xs.items():
            tensor = grpcaio.InferInput("x", [1, FEATURES], "FP32")
            tensor.set_data_from_numpy(x)
            yield {"model_name": MODEL, "inputs": [tensor], "request_id": key}

    client = grpcaio.InferenceServerClient(server.grpc_url)
    got: dict[str, np.ndarray] = {}
    try:
        async with asyncio.timeout(60):
            async for result, error in client.stream_infer(requests()):
                assert error is None
                got[result.get_response().id] = result.as_numpy("probs")
                if len(got) == len(xs):
                    break
    finally:
        await client.close()
    expected = reference(repo, MODEL, {"x": np.concatenate(list(xs.values()))})[0]
    for row, key in enumerate(xs):
        np.testing.assert_allclose(got[key][0], expected[row], rtol=1e-5, atol=1e-6)
