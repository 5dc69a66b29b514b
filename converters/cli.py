"""``infergate convert``: export trained models into a Triton repository, proving parity first.

Heavy frameworks are imported inside the commands, so ``infergate --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from converters.cli_common import (
    Atol,
    Cache,
    Embedding,
    Fp16,
    InNames,
    Instances,
    MaxBatch,
    MinCos,
    Name,
    Optimize,
    OutNames,
    Pad,
    Policy,
    Preferred,
    Quantize,
    QueueDelay,
    Repo,
    Rtol,
    Samples,
    TokenizerMaxLength,
    TokenizerPath,
    Version,
    guard,
    out,
    print_rows,
    publish_options,
    reporter,
)

app = typer.Typer(
    help="Export trained models to ONNX/TensorRT in a Triton model repository.",
    no_args_is_help=True,
)


def _finish(result: dict[str, Any]) -> None:
    print_rows([result], "published")
    out.print(f"wrote {result['path']}", markup=False)


@app.command()
def pytorch(
    model: Annotated[str, typer.Argument(help="package.module:factory, or a TorchScript file.")],
    name: Name,
    input: Annotated[list[str], typer.Option("--input", help="name:dims[:dtype]; -1 = dynamic.")],
    repo: Repo = Path("model_repo"),
    output: Annotated[list[str] | None, typer.Option("--output", help="Output names.")] = None,
    weights: Annotated[Path | None, typer.Option("--weights", help="state_dict file.")] = None,
    legacy: Annotated[bool, typer.Option("--legacy", help="Skip the dynamo exporter.")] = False,
    version: Version = None,
    max_batch_size: MaxBatch = 64,
    preferred_batch_size: Preferred = None,
    max_queue_delay_us: QueueDelay = 1000,
    instances: Instances = 1,
    response_cache: Cache = False,
    pad_inputs: Pad = None,
    optimize: Optimize = False,
    quantize: Quantize = None,
    fp16: Fp16 = False,
    samples: Samples = None,
    atol: Atol = None,
    rtol: Rtol = None,
    min_cosine: MinCos = None,
    embedding_output: Embedding = None,
    version_policy: Policy = "all",
    tokenizer: TokenizerPath = None,
    tokenizer_max_length: TokenizerMaxLength = None,
) -> None:
    """Export a PyTorch nn.Module (dynamo exporter, legacy fallback) and publish it."""
    args = dict(locals())

    def run() -> None:
        from converters.pipeline import convert
        from converters.pytorch import InputSpec, export_pytorch, load_module

        opts = publish_options(args)
        specs = [InputSpec.parse(text) for text in input]
        progress = reporter()
        with progress.step("loading the PyTorch model"):
            module = load_module(model, weights)
        exported = export_pytorch(
            module,
            specs,
            output or [],
            dynamo=not legacy,
            embedding_outputs=embedding_output,
            reporter=progress,
        )
        _finish(convert(exported, opts, progress))

    guard(run)


@app.command()
def sklearn(
    model: Annotated[Path, typer.Argument(help="Pickled or joblib estimator/pipeline.")],
    name: Name,
    repo: Repo = Path("model_repo"),
    n_features: Annotated[int | None, typer.Option("--n-features")] = None,
    label: Annotated[bool, typer.Option("--label", help="Also output the label.")] = False,
    version: Version = None,
    max_batch_size: MaxBatch = 64,
    preferred_batch_size: Preferred = None,
    max_queue_delay_us: QueueDelay = 1000,
    instances: Instances = 1,
    response_cache: Cache = False,
    optimize: Optimize = False,
    samples: Samples = None,
    atol: Atol = None,
    rtol: Rtol = None,
    version_policy: Policy = "all",
) -> None:
    """Convert a scikit-learn estimator or pipeline (skl2onnx; probabilities as a tensor)."""
    args = dict(locals())

    def run() -> None:
        from converters.pipeline import convert
        from converters.sklearn import export_sklearn, load_estimator

        opts = publish_options(args)
        progress = reporter()
        with progress.step("loading and converting the estimator (skl2onnx)"):
            exported = export_sklearn(
                load_estimator(model), n_features=n_features, keep_label=label
            )
        _finish(convert(exported, opts, progress))

    guard(run)


@app.command()
def keras(
    model: Annotated[Path, typer.Argument(help="A .keras file (loaded with KERAS_BACKEND=torch).")],
    name: Name,
    repo: Repo = Path("model_repo"),
    input_name: InNames = None,
    output_name: OutNames = None,
    version: Version = None,
    max_batch_size: MaxBatch = 64,
    preferred_batch_size: Preferred = None,
    max_queue_delay_us: QueueDelay = 1000,
    instances: Instances = 1,
    response_cache: Cache = False,
    pad_inputs: Pad = None,
    optimize: Optimize = False,
    quantize: Quantize = None,
    fp16: Fp16 = False,
    samples: Samples = None,
    atol: Atol = None,
    rtol: Rtol = None,
    min_cosine: MinCos = None,
    embedding_output: Embedding = None,
    version_policy: Policy = "all",
) -> None:
    """Export a Keras 3 model (torch backend; TensorFlow models need tf2onnx) and publish it."""
    args = dict(locals())

    def run() -> None:
        from converters.keras import export_keras, load_keras
        from converters.pipeline import convert

        opts = publish_options(args)
        progress = reporter()
        with progress.step("loading and exporting the Keras model"):
            exported = export_keras(
                load_keras(model), input_names=input_name, output_names=output_name
            )
        exported.embedding_outputs = embedding_output or []
        _finish(convert(exported, opts, progress))

    guard(run)


@app.command("onnx")
def onnx_command(
    model: Annotated[Path, typer.Argument(help="An existing .onnx file.")],
    name: Name,
    repo: Repo = Path("model_repo"),
    input_name: InNames = None,
    output_name: OutNames = None,
    version: Version = None,
    max_batch_size: MaxBatch = 64,
    preferred_batch_size: Preferred = None,
    max_queue_delay_us: QueueDelay = 1000,
    instances: Instances = 1,
    response_cache: Cache = False,
    pad_inputs: Pad = None,
    optimize: Optimize = False,
    quantize: Quantize = None,
    fp16: Fp16 = False,
    samples: Samples = None,
    atol: Atol = None,
    rtol: Rtol = None,
    min_cosine: MinCos = None,
    embedding_output: Embedding = None,
    version_policy: Policy = "all",
    tokenizer: TokenizerPath = None,
    tokenizer_max_length: TokenizerMaxLength = None,
) -> None:
    """Check (onnx.checker + shape inference), optionally transform, and publish an ONNX file."""
    args = dict(locals())

    def run() -> None:
        from converters.onnx_model import import_onnx
        from converters.pipeline import convert

        opts = publish_options(args)
        progress = reporter()
        with progress.step("checking the ONNX model"):
            exported = import_onnx(
                model, input_names=input_name, output_names=output_name, batched=max_batch_size > 0
            )
        exported.embedding_outputs = embedding_output or []
        _finish(convert(exported, opts, progress))

    guard(run)


@app.command()
def tensorrt(
    model: Annotated[Path, typer.Argument(help="ONNX file to build an engine from.")],
    name: Name,
    repo: Repo = Path("model_repo"),
    version: Version = None,
    max_batch_size: MaxBatch = 64,
    preferred_batch_size: Preferred = None,
    max_queue_delay_us: QueueDelay = 1000,
    instances: Instances = 1,
    fp16: Annotated[bool, typer.Option("--fp16")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Needs a Q/DQ-quantised graph.")] = False,
    workspace_gib: Annotated[float, typer.Option("--workspace-gib")] = 2.0,
) -> None:
    """Build a TensorRT engine (model.plan, tensorrt_plan); needs tensorrt and a CUDA GPU."""

    def run() -> None:
        from converters.tensorrt import build_tensorrt
        from converters.triton_config import ConfigOptions

        config = ConfigOptions(
            max_batch_size=max_batch_size,
            preferred_batch_sizes=preferred_batch_size or None,
            max_queue_delay_us=max_queue_delay_us,
            instances=instances,
        )
        result = build_tensorrt(
            model,
            repo,
            name,
            version=version,
            config_options=config,
            fp16=fp16,
            int8=int8,
            workspace_gib=workspace_gib,
            reporter=reporter(),
        )
        _finish(result)

    guard(run)


@app.command()
def examples(
    repo: Repo = Path("model_repo"),
    only: Annotated[list[str] | None, typer.Option("--only", help="Build just these.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild complete models.")] = False,
) -> None:
    """Build the example models: digits_mlp, digits_cnn, cancer_gbt, minilm_embed, keras_digits."""

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
