"""The example repository (`make models`): six small models built offline, idempotently.

Each model is built into a hidden scratch repository and swapped into place as a whole, so an
interrupted build never leaves a half-built model; complete models are skipped unless ``force``.
MiniLM is built once as the exact fp32 ``minilm_embed`` and its int8 quantisation under its own
name, ``minilm_embed_int8``, so a request without a version (the latest) gets the exact model; a
repository built when the int8 model was ``minilm_embed`` version 2 is split without a rebuild.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from converters.errors import ConversionError
from converters.options import PublishOptions
from converters.pipeline import Exported, convert
from converters.progress import QUIET, Reporter
from converters.publish import swap_in
from converters.tokenizer import TOKENIZER_FILE
from converters.triton_config import ConfigOptions, read_config, render

# name -> versions that a complete build has
EXAMPLES: dict[str, list[int]] = {
    "digits_mlp": [1],
    "digits_cnn": [1],
    "cancer_gbt": [1],
    "minilm_embed": [1],
    "minilm_embed_int8": [1],
    "keras_digits": [1],
}
MINILM, MINILM_INT8 = "minilm_embed", "minilm_embed_int8"


def _small(queue_us: int = 1000, instances: int = 2) -> ConfigOptions:
    return ConfigOptions(max_batch_size=64, max_queue_delay_us=queue_us, instances=instances)


def _accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return round(float(np.mean(np.argmax(probabilities, axis=1) == labels)), 4)


def _build_torch_digits(repo: Path, name: str, reporter: Reporter) -> list[dict[str, Any]]:
    from converters import example_models as em
    from converters.pytorch import InputSpec, export_pytorch

    x_train, x_test, y_train, y_test = em.digits_split()
    shape: tuple[int, ...] = (-1, 64) if name == "digits_mlp" else (-1, 1, 8, 8)
    net = em.torch_digits_mlp() if name == "digits_mlp" else em.torch_digits_cnn()
    spec = InputSpec("input", shape)
    with reporter.step(f"{name}: training (PyTorch, Adam)"):
        em.train_torch(
            net, x_train.reshape(shape), y_train, epochs=30 if name == "digits_mlp" else 10
        )
    test = x_test.reshape(shape)
    exported = export_pytorch(
        net, [spec], ["probabilities"], samples={"input": test[:32]}, reporter=reporter
    )
    row = convert(exported, PublishOptions(repo, name, config=_small()), reporter)
    row["accuracy"] = _accuracy(exported.source({"input": test})["probabilities"], y_test)  # type: ignore[misc]
    return [row]


def _build_cancer(repo: Path, name: str, reporter: Reporter) -> list[dict[str, Any]]:
    from converters import example_models as em
    from converters.sklearn import export_sklearn

    with reporter.step(f"{name}: training (StandardScaler + GradientBoosting)"):
        pipe, x_test, y_test = em.cancer_pipeline()
    exported = export_sklearn(pipe, samples={"input": x_test[:64]}, reporter=reporter)
    row = convert(exported, PublishOptions(repo, name, config=_small(instances=1)), reporter)
    row["accuracy"] = round(float(pipe.score(x_test, y_test)), 4)
    return [row]


def _build_keras(repo: Path, name: str, reporter: Reporter) -> list[dict[str, Any]]:
    from converters import example_models as em
    from converters.keras import export_keras

    x_train, x_test, y_train, y_test = em.digits_split()
    with reporter.step(f"{name}: training (Keras 3, torch backend, Adam)"):
        model = em.keras_digits(x_train, y_train)
    test = x_test.reshape(-1, 8, 8)
    exported = export_keras(
        model,
        input_names=["input"],
        output_names=["probabilities"],
        samples={"input": test[:32]},
        reporter=reporter,
    )
    row = convert(exported, PublishOptions(repo, name, config=_small()), reporter)
    row["accuracy"] = _accuracy(exported.source({"input": test})["probabilities"], y_test)  # type: ignore[misc]
    return [row]


def _build_minilm(repo: Path, name: str, reporter: Reporter) -> list[dict[str, Any]]:
    """Both MiniLM models from one export: ``minilm_embed`` (fp32, the exact model) and
    ``minilm_embed_int8`` (int8 per-channel dynamic quantisation of the same graph)."""
    from converters import example_models as em
    from converters.pytorch import InputSpec, export_pytorch

    with reporter.step(f"{name}: loading all-MiniLM-L6-v2 (offline)"):
        net, tokenizer = em.minilm_embedder()
    samples = em.tokenize(tokenizer, em.SENTENCES)
    specs = [
        InputSpec(n, (-1, -1), "int64") for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    exported: Exported = export_pytorch(
        net,
        specs,
        ["sentence_embedding"],
        embedding_outputs=["sentence_embedding"],
        samples=samples,
        reporter=reporter,
    )
    gap = em.sentence_transformers_gap(samples, exported.source(samples)["sentence_embedding"])  # type: ignore[misc]
    if gap is not None:
        exported.notes.append(f"pooled graph vs sentence-transformers max abs diff {gap:.2e}")
    config = ConfigOptions(
        max_batch_size=32, max_queue_delay_us=2000, instances=1, response_cache=True
    )
    base_notes = list(exported.notes)
    tokenizer = em.minilm_tokenizer_spec()
    exact = PublishOptions(repo, MINILM, config=config, tokenizer=tokenizer)
    rows = [convert(exported, exact, reporter)]
    exported.notes = [*base_notes, f"int8 per-channel dynamic quantisation of {MINILM}'s graph"]
    exported.export_seconds = 0.0  # the int8 model reuses the export: its time is the quantisation
    quantized = PublishOptions(repo, MINILM_INT8, config=config, quantize=True, tokenizer=tokenizer)
    rows.append(convert(exported, quantized, reporter))
    return rows


def _add_minilm_tokenizer(model_dir: Path) -> None:
    """A MiniLM built before tokenizers were published gets one in place, without a rebuild."""
    from converters import example_models as em

    if all((model_dir / str(v) / TOKENIZER_FILE).is_file() for v in EXAMPLES[model_dir.name]):
        return
    spec = em.minilm_tokenizer_spec()
    config = read_config(model_dir / "config.pbtxt")
    spec.apply(config)
    staged = model_dir / ".config.pbtxt.new"
    staged.write_text(render(config))
    staged.replace(model_dir / "config.pbtxt")  # parameters first: the files mark it done
    for version in EXAMPLES[model_dir.name]:
        (model_dir / str(version) / TOKENIZER_FILE).write_text(spec.json_text)


def _split_minilm(repo: Path) -> None:
    """A repository built when the int8 model was ``minilm_embed`` version 2 (so the latest, what
    a request without a version got): that version becomes ``minilm_embed_int8`` version 1,
    copied into place as a whole, and leaves ``minilm_embed``."""
    old = repo / MINILM / "2"
    if not (old / "model.onnx").is_file():
        return
    if not is_complete(repo, MINILM_INT8):
        scratch = Path(tempfile.mkdtemp(prefix=f".split-{MINILM}-", dir=repo))
        try:
            target = scratch / MINILM_INT8
            shutil.copytree(old, target / "1")
            config = read_config(repo / MINILM / "config.pbtxt")
            config.name = MINILM_INT8
            (target / "config.pbtxt").write_text(render(config))
            report_path = target / "1" / "parity.json"
            report = json.loads(report_path.read_text())
            report.update(model=MINILM_INT8, version=1)
            report_path.write_text(json.dumps(report, indent=2))
            swap_in(target, repo / MINILM_INT8)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(old)


BUILDERS: dict[str, Callable[[Path, str, Reporter], list[dict[str, Any]]]] = {
    "digits_mlp": _build_torch_digits,
    "digits_cnn": _build_torch_digits,
    "cancer_gbt": _build_cancer,
    MINILM: _build_minilm,
    MINILM_INT8: _build_minilm,  # built with minilm_embed, from the same export
    "keras_digits": _build_keras,
}


def is_complete(repo: Path, name: str) -> bool:
    model_dir = repo / name
    try:
        read_config(model_dir / "config.pbtxt")
    except (OSError, ConversionError):
        return False
    return all(
        (model_dir / str(v) / "model.onnx").is_file()
        and (model_dir / str(v) / "parity.json").is_file()
        for v in EXAMPLES[name]
    )


def _existing_rows(repo: Path, name: str) -> list[dict[str, Any]]:
    rows = []
    for version in EXAMPLES[name]:
        vdir = repo / name / str(version)
        report = json.loads((vdir / "parity.json").read_text())
        rows.append(
            {
                "model": name,
                "version": version,
                "framework": report.get("framework"),
                "exporter": report.get("exporter"),
                "precision": report.get("precision"),
                "max_abs_err": report.get("max_abs_err"),
                "min_cosine": report.get("min_cosine"),
                "size_bytes": (vdir / "model.onnx").stat().st_size,
                "export_s": report.get("export_s"),
                "path": str(vdir),
                "notes": report.get("notes", []),
                "status": "exists",
            }
        )
    return rows


def build_examples(
    repo: Path, only: list[str] | None = None, force: bool = False, reporter: Reporter = QUIET
) -> list[dict[str, Any]]:
    """Build the example models into ``repo`` (complete ones kept unless ``force``)."""
    names = list(only) if only else list(EXAMPLES)
    unknown = [n for n in names if n not in EXAMPLES]
    if unknown:
        raise ConversionError(f"unknown example models {unknown}; choose from {list(EXAMPLES)}")
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    _split_minilm(repo)
    rows: list[dict[str, Any]] = []
    for name in names:
        if any(row["model"] == name for row in rows):
            continue  # built beside another model of this call
        if not force and is_complete(repo, name):
            if name in (MINILM, MINILM_INT8):
                _add_minilm_tokenizer(repo / name)
            reporter.info(f"{name}: complete in {repo}, skipped (use --force to rebuild)")
            rows.extend(_existing_rows(repo, name))
            continue
        rows.extend(_build_into(repo, name, reporter))
    return rows


def _build_into(repo: Path, name: str, reporter: Reporter) -> list[dict[str, Any]]:
    """Build ``name`` (and what its builder builds beside it) in scratch, then swap each in."""
    scratch = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=repo))
    try:
        start = time.perf_counter()
        built = BUILDERS[name](scratch, name, reporter)
        for row in built:
            row["path"] = str(repo / row["model"] / str(row["version"]))
            row["build_s"] = round(time.perf_counter() - start, 2)
        for model in dict.fromkeys(row["model"] for row in built):
            swap_in(scratch / model, repo / model)
        return built
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
