"""scikit-learn path: pipelines/estimators via skl2onnx, plain probability tensors, bad files."""

from __future__ import annotations

import pickle
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tritonclient.grpc import model_config_pb2 as mc
from typer.testing import CliRunner

from converters.cli import app
from converters.errors import ConversionError
from converters.pipeline import PublishOptions, convert
from converters.sklearn import export_sklearn
from tests.converters.support import check_model_dir, run_session, tree_hash

runner = CliRunner()


@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray]:
    data = load_iris()
    return data.data.astype(np.float32), data.target


def test_pipeline_via_cli_gives_plain_probabilities(tmp_path: Path, iris) -> None:
    x, y = iris
    pipe = make_pipeline(
        StandardScaler(), GradientBoostingClassifier(n_estimators=10, random_state=0)
    )
    pipe.fit(x, y)
    path = tmp_path / "pipe.joblib"
    joblib.dump(pipe, path)
    repo = tmp_path / "repo"
    result = runner.invoke(app, ["sklearn", str(path), "--name", "iris", "--repo", str(repo)])
    assert result.exit_code == 0, result.output
    config, session = check_model_dir(repo / "iris", 1)
    assert [o.name for o in config.output] == ["probabilities"]  # label dropped by default
    assert session.get_outputs()[0].type == "tensor(float)"  # a tensor, not a ZipMap sequence
    got = run_session(session, {"input": x})["probabilities"]
    np.testing.assert_allclose(got, pipe.predict_proba(x), atol=1e-5)


def test_label_output_is_reshaped_for_triton(tmp_path: Path, iris) -> None:
    x, y = iris
    pipe = make_pipeline(
        StandardScaler(), GradientBoostingClassifier(n_estimators=5, random_state=0)
    )
    pipe.fit(x, y)
    convert(export_sklearn(pipe, keep_label=True), PublishOptions(tmp_path, "iris"))
    config, session = check_model_dir(tmp_path / "iris", 1)
    label = next(o for o in config.output if o.name == "label")
    assert label.data_type == mc.TYPE_INT64 and list(label.dims) == [1]
    assert label.HasField("reshape") and list(label.reshape.shape) == []
    np.testing.assert_array_equal(run_session(session, {"input": x})["label"], pipe.predict(x))


def test_regressor_pickle(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    reg = Ridge().fit(x, x @ np.array([1.0, -2.0, 0.5, 3.0]))
    path = tmp_path / "ridge.pkl"
    path.write_bytes(pickle.dumps(reg))
    result = runner.invoke(
        app, ["sklearn", str(path), "--name", "ridge", "--repo", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
    _, session = check_model_dir(tmp_path / "r" / "ridge", 1)
    got = run_session(session, {"input": x})["predictions"]
    np.testing.assert_allclose(got[:, 0], reg.predict(x), rtol=1e-4, atol=1e-4)
    # the neural-network options (precision, padding, cosine) are not offered for estimators
    for flag in ("--quantize", "--pad-inputs", "--min-cosine"):
        result = runner.invoke(app, ["sklearn", str(path), "--name", "ridge", flag, "1"])
        assert result.exit_code == 2 and "No such option" in result.output, flag


def test_unsupported_estimator_is_named(tmp_path: Path) -> None:
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Weird(ClassifierMixin, BaseEstimator):
        def fit(self, x, y):  # noqa: ANN001, ANN202
            self.n_features_in_ = x.shape[1]
            return self

        def predict(self, x):  # noqa: ANN001, ANN202
            return np.zeros(len(x))

    with pytest.raises(ConversionError, match="skl2onnx"):
        export_sklearn(Weird().fit(np.zeros((2, 3)), [0, 1]))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "model file not found"),
        (b"definitely not a pickle", "is not a pickled/joblib scikit-learn model"),
        (pickle.dumps({"weights": [1, 2, 3]}), "holds a dict, not a scikit-learn estimator"),
    ],
)
def test_bad_files_leave_repo_untouched(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "model.pkl"
    if content is not None:
        path.write_bytes(content)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "keep.txt").write_text("existing")
    before = tree_hash(repo)
    result = runner.invoke(app, ["sklearn", str(path), "--name", "m", "--repo", str(repo)])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert tree_hash(repo) == before
