"""tritonclient.grpc (sync and aio) against a real gateway over the example models.

Every answer is compared with ONNX Runtime run directly on the exported ``model.onnx``.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from tests.helpers import Gateway

EXAMPLES = ["digits_mlp", "digits_cnn", "cancer_gbt", "minilm_embed", "keras_digits"]
SEQUENCE = 8  # length chosen for any variable non-batch dimension (token sequences)


def read_config(repo: Path, name: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(
        (repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )


@cache
def session(path: str) -> ort.InferenceSession:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def reference(
    repo: Path, name: str, version: str, feeds: dict[str, np.ndarray], outputs: list[str]
) -> dict[str, np.ndarray]:
    """ONNX Runtime run directly on the file the gateway serves."""
    results = session(str(repo / name / version / "model.onnx")).run(outputs, feeds)
    return dict(zip(outputs, results))


def make_inputs(metadata: Any, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Plausible random inputs from v2 model metadata (token ids small, masks ones)."""
    feeds: dict[str, np.ndarray] = {}
    for tensor in metadata.inputs:
        shape = list(tensor.shape)
        if shape and shape[0] == -1:
            shape[0] = rows
        shape = [SEQUENCE if d == -1 else d for d in shape]
        datatype = tensor.datatype
        if datatype in ("FP32", "FP64", "FP16"):
            dtype = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16}[datatype]
            feeds[tensor.name] = rng.random(shape).astype(dtype)
        elif datatype in ("INT64", "INT32"):
            dtype = np.int64 if datatype == "INT64" else np.int32
            if "mask" in tensor.name:
                feeds[tensor.name] = np.ones(shape, dtype)
            elif "type" in tensor.name:
                feeds[tensor.name] = np.zeros(shape, dtype)
            else:
                feeds[tensor.name] = rng.integers(1, 1000, shape).astype(dtype)
        else:
            pytest.fail(f"no generator for {datatype} input '{tensor.name}'")
    return feeds


def to_inputs(module: Any, feeds: dict[str, np.ndarray]) -> list[Any]:
    tensors = []
    for name, array in feeds.items():
        tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def assert_matches(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    if got.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    else:
        np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> Any:
    with grpcclient.InferenceServerClient(gateway.grpc_url) as c:
        yield c


def test_health_and_server_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata.name == "infergate"
    assert {"model_repository", "statistics", "model_configuration"} <= set(metadata.extensions)
    assert not client.is_model_ready("no_such_model")


def test_repository_index_lists_examples(client: grpcclient.InferenceServerClient) -> None:
    index = client.get_model_repository_index(as_json=True)
    ready = {m["name"] for m in index["models"] if m["state"] == "READY"}
    assert set(EXAMPLES) <= ready


@pytest.mark.parametrize("name", EXAMPLES)
def test_metadata_and_config_match_repository(
    client: grpcclient.InferenceServerClient, example_repo: Path, name: str
) -> None:
    assert client.is_model_ready(name)
    declared = read_config(example_repo, name)
    metadata = client.get_model_metadata(name)
    assert metadata.name == name
    assert metadata.platform == "onnxruntime_onnx"
    on_disk = {p.name for p in (example_repo / name).iterdir() if p.is_dir() and p.name.isdigit()}
    assert set(metadata.versions) <= on_disk and metadata.versions
    config = client.get_model_config(name).config
    assert config.name == name and config.max_batch_size == declared.max_batch_size
    assert [t.name for t in metadata.inputs] == [t.name for t in config.input]
    assert [t.name for t in metadata.outputs] == [t.name for t in config.output]
    if declared.input:
        assert [t.name for t in config.input] == [t.name for t in declared.input]
        for tensor in metadata.inputs:
            dims = list(tensor.shape[1:] if config.max_batch_size > 0 else tensor.shape)
            assert dims == list(next(t.dims for t in config.input if t.name == tensor.name))


@pytest.mark.parametrize("name", EXAMPLES)
def test_infer_matches_onnxruntime(
    client: grpcclient.InferenceServerClient, example_repo: Path, name: str
) -> None:
    metadata = client.get_model_metadata(name)
    version = max(metadata.versions, key=int)
    rows = 3 if client.get_model_config(name).config.max_batch_size >= 3 else 1
    feeds = make_inputs(metadata, rows, np.random.default_rng(EXAMPLES.index(name)))
    outputs = [t.name for t in metadata.outputs]
    want = reference(example_repo, name, version, feeds, outputs)

    result = client.infer(name, to_inputs(grpcclient, feeds), request_id=f"{name}-1")
    assert result.get_response().id == f"{name}-1"
    assert result.get_response().model_name == name
    for output in outputs:
        assert_matches(result.as_numpy(output), want[output])

    # Asking for one output returns only that one.
    last = outputs[-1]
    only = client.infer(
        name, to_inputs(grpcclient, feeds), outputs=[grpcclient.InferRequestedOutput(last)]
    )
    assert [o.name for o in only.get_response().outputs] == [last]
    assert_matches(only.as_numpy(last), want[last])


async def test_aio_infer_and_metadata(gateway: Gateway, example_repo: Path) -> None:
    client = grpcaio.InferenceServerClient(gateway.grpc_url)
    try:
        assert await client.is_server_ready()
        for name in EXAMPLES:
            metadata = await client.get_model_metadata(name)
            version = max(metadata.versions, key=int)
            feeds = make_inputs(metadata, 1, np.random.default_rng(7))
            outputs = [t.name for t in metadata.outputs]
            want = reference(example_repo, name, version, feeds, outputs)
            result = await client.infer(name, to_inputs(grpcaio, feeds))
            for output in outputs:
                assert_matches(result.as_numpy(output), want[output])
    finally:
        await client.close()


def test_statistics_count_inferences(client: grpcclient.InferenceServerClient) -> None:
    name = "digits_mlp"
    metadata = client.get_model_metadata(name)

    def counts() -> tuple[int, int]:
        (stats,) = client.get_inference_statistics(name).model_stats
        assert stats.name == name
        return stats.inference_count, stats.inference_stats.success.count

    rows_before, ok_before = counts()
    rng = np.random.default_rng(11)
    for _ in range(3):
        client.infer(name, to_inputs(grpcclient, make_inputs(metadata, 2, rng)))
    rows_after, ok_after = counts()
    assert ok_after - ok_before == 3
    assert rows_after - rows_before == 6
    everything = client.get_inference_statistics()
    assert set(EXAMPLES) <= {s.name for s in everything.model_stats}


def test_bad_requests_get_precise_errors_and_server_keeps_serving(
    client: grpcclient.InferenceServerClient,
) -> None:
    name = "digits_mlp"
    metadata = client.get_model_metadata(name)
    (spec,) = metadata.inputs
    good = make_inputs(metadata, 1, np.random.default_rng(5))[spec.name]

    def status(call: Any) -> tuple[str, str]:
        with pytest.raises(InferenceServerException) as info:
            call()
        return str(info.value.status()), str(info.value.message())

    code, message = status(lambda: client.infer("no_such_model", to_inputs(grpcclient, {})))
    assert code == "StatusCode.NOT_FOUND" and "no_such_model" in message

    narrow = good[:, :-1].copy()
    code, message = status(lambda: client.infer(name, to_inputs(grpcclient, {spec.name: narrow})))
    assert code == "StatusCode.INVALID_ARGUMENT"
    assert message == (
        f"unexpected shape for input '{spec.name}' for model '{name}'. "
        f"Expected {_shape(spec.shape)}, got {_shape(narrow.shape)}"
    )

    as_double = good.astype(np.float64)
    code, message = status(
        lambda: client.infer(name, to_inputs(grpcclient, {spec.name: as_double}))
    )
    assert code == "StatusCode.INVALID_ARGUMENT"
    assert f"data-type is 'FP64', but model '{name}' expects '{spec.datatype}'" in message

    code, message = status(lambda: client.infer(name, to_inputs(grpcclient, {"bogus": good})))
    assert code == "StatusCode.INVALID_ARGUMENT" and "'bogus'" in message

    result = client.infer(name, to_inputs(grpcclient, {spec.name: good}))
    assert result.as_numpy(metadata.outputs[0].name).shape[0] == 1


def test_concurrent_sync_clients_get_their_own_answers(
    gateway: Gateway, example_repo: Path
) -> None:
    name = "digits_mlp"
    with grpcclient.InferenceServerClient(gateway.grpc_url) as probe:
        metadata = probe.get_model_metadata(name)
    version = max(metadata.versions, key=int)
    output = metadata.outputs[-1].name
    rng = np.random.default_rng(13)
    all_feeds = [make_inputs(metadata, 1, rng) for _ in range(32)]

    def one(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with grpcclient.InferenceServerClient(gateway.grpc_url) as c:
            return c.infer(name, to_inputs(grpcclient, feeds)).as_numpy(output)

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(one, all_feeds))
    for feeds, got in zip(all_feeds, answers):
        assert_matches(got, reference(example_repo, name, version, feeds, [output])[output])


async def test_concurrent_aio_requests_and_stream(gateway: Gateway, example_repo: Path) -> None:
    name = "cancer_gbt"
    client = grpcaio.InferenceServerClient(gateway.grpc_url)
    try:
        metadata = await client.get_model_metadata(name)
        version = max(metadata.versions, key=int)
        outputs = [t.name for t in metadata.outputs]
        rng = np.random.default_rng(17)
        all_feeds = [make_inputs(metadata, 1, rng) for _ in range(64)]
        results = await asyncio.gather(
            *(
                client.infer(name, to_inputs(grpcaio, f), request_id=str(i))
                for i, f in enumerate(all_feeds)
            )
        )
        for i, (feeds, result) in enumerate(zip(all_feeds, results)):
            assert result.get_response().id == str(i)
            want = reference(example_repo, name, version, feeds, outputs)
            for output in outputs:
                assert_matches(result.as_numpy(output), want[output])

        async def requests() -> Any:
            for i, feeds in enumerate(all_feeds):
                yield {
                    "model_name": name,
                    "inputs": to_inputs(grpcaio, feeds),
                    "request_id": str(i),
                }

        streamed: dict[str, Any] = {}
        async with asyncio.timeout(120):
            async for result, error in client.stream_infer(requests()):
                assert error is None, error
                streamed[result.get_response().id] = result
                if len(streamed) == len(all_feeds):
                    break
        for i, feeds in enumerate(all_feeds):
            want = reference(example_repo, name, version, feeds, outputs)
            for output in outputs:
                assert_matches(streamed[str(i)].as_numpy(output), want[output])
    finally:
        await client.close()


def _shape(shape: Any) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"
