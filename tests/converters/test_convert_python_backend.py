"""python-backend copy: config mirrors the ONNX one; model.py batches, pads and splits correctly.

The real-Triton run of these files lives in tests/integration (Triton fixture); here the generated
``model.py`` is imported with a minimal stand-in for ``triton_python_backend_utils`` (which only
exists inside Triton) and executed against real ONNX Runtime sessions.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import json_format
from typer.testing import CliRunner

from converters.cli import app
from converters.onnx_model import import_onnx
from converters.pipeline import PublishOptions, convert
from converters.triton_config import read_config
from tests.converters import onnx_graphs

runner = CliRunner()


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _Response:
    def __init__(self, output_tensors: list[_Tensor] | None = None, error: object = None) -> None:
        self.output_tensors, self.error = output_tensors or [], error


def _stub_pb_utils() -> types.ModuleType:
    stub = types.ModuleType("triton_python_backend_utils")
    stub.Tensor = _Tensor
    stub.InferenceResponse = _Response
    stub.TritonError = lambda message: message
    stub.get_input_tensor_by_name = lambda request, name: request.get(name)
    dtypes = {"TYPE_FP32": np.float32, "TYPE_INT64": np.int64, "TYPE_FP16": np.float16}
    stub.triton_string_to_numpy = dtypes.__getitem__
    return stub


def _load_model_py(version_dir: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN202
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _stub_pb_utils())
    spec = importlib.util.spec_from_file_location("generated_model", version_dir / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    config = read_config(version_dir.parent / "config.pbtxt")
    model.initialize(
        {
            "model_config": json.dumps(
                json_format.MessageToDict(config, preserving_proto_field_name=True)
            ),
            "model_repository": str(version_dir.parent),
            "model_version": version_dir.name,
        }
    )
    return model


@pytest.fixture
def repos(tmp_path: Path) -> tuple[Path, Path]:
    repo = tmp_path / "repo"
    convert(import_onnx(onnx_graphs.linear(tmp_path / "lin.onnx")), PublishOptions(repo, "lin"))
    convert(
        import_onnx(onnx_graphs.linear(tmp_path / "lin.onnx")),
        PublishOptions(repo, "lin", quantize=True),
    )
    convert(import_onnx(onnx_graphs.token_sum(tmp_path / "tok.onnx")), PublishOptions(repo, "tok"))
    out = tmp_path / "triton_repo"
    result = runner.invoke(app, ["python-backend", "--repo", str(repo), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return repo, out


def test_configs_mirror_the_onnx_repository(repos: tuple[Path, Path]) -> None:
    repo, out = repos
    assert sorted(p.name for p in out.iterdir()) == ["lin", "tok"]
    for name in ("lin", "tok"):
        source, copy = (
            read_config(repo / name / "config.pbtxt"),
            read_config(out / name / "config.pbtxt"),
        )
        assert copy.backend == "python" and not copy.platform
        assert list(copy.input) == list(source.input) and list(copy.output) == list(source.output)
        assert copy.max_batch_size == source.max_batch_size
        assert copy.dynamic_batching == source.dynamic_batching
        assert copy.version_policy == source.version_policy
    for version in ("1", "2"):
        vdir = out / "lin" / version
        assert (vdir / "model.onnx").read_bytes() == (
            repo / "lin" / version / "model.onnx"
        ).read_bytes()
        text = (vdir / "model.py").read_text()
        assert "import onnxruntime" in text and "import torch" not in text


def test_model_py_batches_and_splits(
    repos: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, out = repos
    model = _load_model_py(out / "lin" / "1", monkeypatch)
    session = ort.InferenceSession(str(out / "lin" / "1" / "model.onnx"))
    rng = np.random.default_rng(0)
    requests = [{"x": _Tensor("x", rng.normal(size=(n, 5)).astype(np.float32))} for n in (1, 3, 2)]
    responses = model.execute(requests)
    assert len(responses) == 3
    for request, response in zip(requests, responses, strict=True):
        assert response.error is None
        (tensor,) = response.output_tensors
        want = session.run(["y"], {"x": request["x"].as_numpy()})[0]
        np.testing.assert_allclose(tensor.as_numpy(), want, rtol=1e-6)


def test_model_py_pads_token_inputs(
    repos: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, out = repos
    model = _load_model_py(out / "tok" / "1", monkeypatch)
    assert model.pad_inputs == {"input_ids", "attention_mask"}
    lengths = [(2, 3), (1, 6), (3, 1)]
    requests, want = [], []
    rng = np.random.default_rng(1)
    for batch, length in lengths:
        ids = rng.integers(1, 100, size=(batch, length)).astype(np.int64)
        requests.append(
            {
                "input_ids": _Tensor("input_ids", ids),
                "attention_mask": _Tensor("attention_mask", np.ones_like(ids)),
            }
        )
        want.append(ids.sum(axis=1, keepdims=True).astype(np.float32))
    responses = model.execute(requests)
    for response, expected in zip(responses, want, strict=True):
        assert response.error is None
        np.testing.assert_array_equal(response.output_tensors[0].as_numpy(), expected)


def test_bad_request_fails_alone(repos: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _, out = repos
    model = _load_model_py(out / "lin" / "1", monkeypatch)
    good = {"x": _Tensor("x", np.ones((2, 5), np.float32))}
    responses = model.execute([good, {}, {"x": _Tensor("x", np.ones((1, 4), np.float32))}])
    assert responses[0].error is None and responses[0].output_tensors[0].as_numpy().shape == (2, 3)
    assert "missing input 'x'" in responses[1].error
    assert responses[2].error is not None


def test_unknown_model_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    convert(import_onnx(onnx_graphs.linear(tmp_path / "lin.onnx")), PublishOptions(repo, "lin"))
    result = runner.invoke(
        app, ["python-backend", "nope", "--repo", str(repo), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1 and "not in" in result.output
