"""``infergate convert``: export trained models into a Triton repository, proving parity first.

Heavy frameworks are imported inside the commands, so ``infergate --help`` stays fast. The options
shared by the export commands are declared once, as flag groups in :mod:`converters.cli_flags`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from converters.cli_common import guard, out, print_rows, reporter
from converters.cli_flags import (
    NETWORK_ONLY,
    OnnxFlags,
    RenameFlags,
    Repo,
    TargetFlags,
    TokenizerMaxLength,
    TokenizerPath,
    export_command,
)

if TYPE_CHECKING:
    from converters.pipeline import Exported
    from converters.progress import Reporter

app = typer.Typer(
    help="Export trained models to ONNX/TensorRT in a Triton model repository.",
    no_args_is_help=True,
)

TorchModel = Annotated[str, typer.Argument(help="package.module:factory, or a TorchScript file.")]
SklearnFile = Annotated[Path, typer.Argument(help="Pickled or joblib estimator/pipeline.")]
KerasFile = Annotated[Path, typer.Argument(help="A .keras file (loaded with KERAS_BACKEND=torch).")]
OnnxFile = Annotated[Path, typer.Argument(help="An existing .onnx file.")]
EngineSource = Annotated[Path, typer.Argument(help="ONNX file to build an engine from.")]


def _finish(result: dict[str, Any]) -> None:
    print_rows([result], "published")
    out.print(f"wrote {result['path']}", markup=False)


def _publish(
    export: Callable[[Reporter], Exported],
    target: TargetFlags,
    onnx: OnnxFlags,
    tokenizer: Path | None = None,
    tokenizer_max_length: int | None = None,
) -> None:
    """Options are checked before the (slow) export; then export, prove parity, publish."""
    from converters.pipeline import convert

    options = onnx.publish_options(target)
    if tokenizer is not None:
        from converters.tokenizer import TokenizerSpec

        options.tokenizer = TokenizerSpec.from_path(tokenizer, tokenizer_max_length)
    progress = reporter()
    exported = export(progress)
    if onnx.embedding_output:
        exported.embedding_outputs = onnx.embedding_output
    _finish(convert(exported, options, progress))


@app.command()
@export_command()
def pytorch(
    model: TorchModel,
    target: TargetFlags,
    input: Annotated[list[str], typer.Option("--input", help="name:dims[:dtype]; -1 = dynamic.")],
    onnx: OnnxFlags,
    output: Annotated[list[str] | None, typer.Option("--output", help="Output names.")] = None,
    weights: Annotated[Path | None, typer.Option("--weights", help="state_dict file.")] = None,
    legacy: Annotated[bool, typer.Option("--legacy", help="Skip the dynamo exporter.")] = False,
    tokenizer: TokenizerPath = None,
    tokenizer_max_length: TokenizerMaxLength = None,
) -> None:
    """Export a PyTorch nn.Module (dynamo exporter, legacy fallback) and publish it."""
    from converters.pytorch import InputSpec, export_pytorch, load_module

    specs = [InputSpec.parse(text) for text in input]

    def export(progress: Reporter) -> Exported:
        with progress.step("loading the PyTorch model"):
            module = load_module(model, weights)
        return export_pytorch(module, specs, output or [], dynamo=not legacy, reporter=progress)

    _publish(export, target, onnx, tokenizer, tokenizer_max_length)


@app.command()
@export_command(without=NETWORK_ONLY)
def sklearn(
    model: SklearnFile,
    target: TargetFlags,
    onnx: OnnxFlags,
    n_features: Annotated[int | None, typer.Option("--n-features")] = None,
    label: Annotated[bool, typer.Option("--label", help="Also output the label.")] = False,
) -> None:
    """Convert a scikit-learn estimator or pipeline (skl2onnx; probabilities as a tensor)."""
    from converters.sklearn import export_sklearn, load_estimator

    def export(progress: Reporter) -> Exported:
        with progress.step("loading the estimator"):
            estimator = load_estimator(model)
        return export_sklearn(estimator, n_features=n_features, keep_label=label, reporter=progress)

    _publish(export, target, onnx)


@app.command()
@export_command()
def keras(model: KerasFile, target: TargetFlags, onnx: OnnxFlags, names: RenameFlags) -> None:
    """Export a Keras 3 model (torch backend; TensorFlow models need tf2onnx) and publish it."""
    from converters.keras import export_keras, load_keras

    def export(progress: Reporter) -> Exported:
        with progress.step("loading the Keras model"):
            loaded = load_keras(model)
        return export_keras(
            loaded, input_names=names.input_name, output_names=names.output_name, reporter=progress
        )

    _publish(export, target, onnx)


@app.command("onnx")
@export_command()
def onnx_command(
    model: OnnxFile,
    target: TargetFlags,
    onnx: OnnxFlags,
    names: RenameFlags,
    tokenizer: TokenizerPath = None,
    tokenizer_max_length: TokenizerMaxLength = None,
) -> None:
    """Check (onnx.checker + shape inference), optionally transform, and publish an ONNX file."""
    from converters.onnx_model import import_onnx

    def export(progress: Reporter) -> Exported:
        with progress.step("checking the ONNX model"):
            batched = target.max_batch_size > 0
            return import_onnx(
                model, input_names=names.input_name, output_names=names.output_name, batched=batched
            )

    _publish(export, target, onnx, tokenizer, tokenizer_max_length)


@app.command()
@export_command()
def tensorrt(
    model: EngineSource,
    target: TargetFlags,
    fp16: Annotated[bool, typer.Option("--fp16")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Needs a Q/DQ-quantised graph.")] = False,
    workspace_gib: Annotated[float, typer.Option("--workspace-gib")] = 2.0,
) -> None:
    """Build a TensorRT engine (model.plan, tensorrt_plan); needs tensorrt and a CUDA GPU."""
    from converters.tensorrt import build_tensorrt

    options = target.publish_options()
    progress = reporter()
    _finish(
        build_tensorrt(
            model, options, fp16=fp16, int8=int8, workspace_gib=workspace_gib, reporter=progress
        )
    )


@app.command()
def examples(
    repo: Repo = Path("model_repo"),
    only: Annotated[list[str] | None, typer.Option("--only", help="Build just these.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild complete models.")] = False,
) -> None:
    """Build the example models: digits_mlp, digits_cnn, cancer_gbt, minilm_embed (fp32) and
    minilm_embed_int8, keras_digits."""

    def run() -> None:
        from converters.examples import build_examples

        rows = build_examples(repo, only=only, force=force, reporter=reporter())
        print_rows(rows, f"example models in {repo}")

    guard(run)


@app.command("python-backend")
def python_backend(
    models: Annotated[list[str] | None, typer.Argument(help="Models (default: all ONNX).")] = None,
    repo: Repo = Path("model_repo"),
    out_dir: Annotated[Path, typer.Option("--out", help="Where to write the copy.")] = Path(
        "triton_repo"
    ),
) -> None:
    """Write a Triton python-backend copy (model.py + model.onnx) for a Triton without ORT."""

    def run() -> None:
        from converters.python_backend import write_python_backend

        for item in write_python_backend(repo, out_dir, models or None):
            out.print(
                f"{item['model']}: versions {item['versions']} -> {item['path']}", markup=False
            )

    guard(run)


if __name__ == "__main__":
    app()
