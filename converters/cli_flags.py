"""The export commands' shared options, declared once as typed flag groups.

A command takes a group as a parameter (``target: TargetFlags``); :func:`export_command` turns
the group's fields into command-line options and hands the command the built group. To add an
option to every export command, add a field to :class:`TargetFlags` (to the ONNX commands:
:class:`OnnxFlags`) and read it where the group is turned into publish options.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_type_hints

import typer

from converters.cli_common import guard

if TYPE_CHECKING:
    from converters.options import PublishOptions
    from converters.triton_config import ConfigOptions

Repo = Annotated[Path, typer.Option("--repo", help="Triton model repository to publish into.")]
Name = Annotated[str, typer.Option("--name", help="Model name in the repository.")]
Version = Annotated[int | None, typer.Option("--version", help="Version to write (default: next).")]
MaxBatch = Annotated[int, typer.Option("--max-batch-size", help="0 disables batching.")]
Preferred = Annotated[list[int] | None, typer.Option("--preferred-batch-size", help="Repeatable.")]
QueueDelay = Annotated[int, typer.Option("--max-queue-delay-us", help="Dynamic batching delay.")]
Instances = Annotated[int, typer.Option("--instances", help="instance_group count (per GPU).")]
Device = Annotated[
    str, typer.Option("--device", help="cpu | gpu | auto: KIND_CPU or KIND_GPU instances.")
]
Gpus = Annotated[
    str | None, typer.Option("--gpus", help="KIND_GPU device ids, e.g. 0,1 (default: all).")
]
Cache = Annotated[bool, typer.Option("--response-cache", help="response_cache { enable: true }.")]
Pad = Annotated[
    str | None, typer.Option("--pad-inputs", help="Comma list (default: token-named int inputs).")
]
Optimize = Annotated[bool, typer.Option("--optimize", help="Save ONNX Runtime's optimised graph.")]
Quantize = Annotated[str | None, typer.Option("--quantize", help="'int8': dynamic, per channel.")]
Fp16 = Annotated[bool, typer.Option("--fp16", help="fp16 weights, fp32 inputs/outputs.")]
Samples = Annotated[Path | None, typer.Option("--samples", help=".npy/.npz parity inputs.")]
Atol = Annotated[float | None, typer.Option("--atol", help="Absolute tolerance.")]
Rtol = Annotated[float | None, typer.Option("--rtol", help="Relative tolerance.")]
MinCos = Annotated[float | None, typer.Option("--min-cosine", help="Row-wise cosine floor.")]
Embedding = Annotated[list[str] | None, typer.Option("--embedding-output", help="Judge by cosine.")]
Policy = Annotated[str, typer.Option("--version-policy", help="all | latest | keep.")]
InNames = Annotated[list[str] | None, typer.Option("--input-name", help="Rename inputs, in order.")]
OutNames = Annotated[
    list[str] | None, typer.Option("--output-name", help="Rename outputs, in order.")
]
TokenizerPath = Annotated[
    Path | None,
    typer.Option(
        "--tokenizer", help="tokenizer.json or a Hugging Face folder: the model then takes text."
    ),
]
TokenizerMaxLength = Annotated[
    int | None,
    typer.Option("--tokenizer-max-length", help="Tokens per text (default: model_max_length)."),
]


def parse_gpus(text: str | None) -> list[int]:
    """``--gpus 0,1`` -> [0, 1]; a precise error for anything else."""
    from converters.errors import ConversionError

    parts = [part.strip() for part in (text or "").split(",") if part.strip()]
    if not all(part.isdigit() for part in parts):
        raise ConversionError(f"--gpus takes comma-separated device ids such as 0,1, not '{text}'")
    return [int(part) for part in parts]


@dataclass
class TargetFlags:
    """Where to publish and how to batch: options of every export command."""

    name: Name
    repo: Repo = Path("model_repo")
    version: Version = None
    max_batch_size: MaxBatch = 64
    preferred_batch_size: Preferred = None
    max_queue_delay_us: QueueDelay = 1000
    instances: Instances = 1
    device: Device = "cpu"
    gpus: Gpus = None

    def config_options(self, response_cache: bool = False) -> ConfigOptions:
        from converters.triton_config import ConfigOptions

        return ConfigOptions(
            max_batch_size=self.max_batch_size,
            preferred_batch_sizes=self.preferred_batch_size or None,
            max_queue_delay_us=self.max_queue_delay_us,
            instances=self.instances,
            response_cache=response_cache,
            device=self.device,
            gpus=parse_gpus(self.gpus),
        )

    def publish_options(self) -> PublishOptions:
        """For publishers without the ONNX options (TensorRT): default tolerances and policy."""
        from converters.options import PublishOptions

        return PublishOptions(
            repo=self.repo, name=self.name, version=self.version, config=self.config_options()
        )


@dataclass
class OnnxFlags:
    """Caching, transforms, parity and version policy: the commands that publish ONNX."""

    response_cache: Cache = False
    pad_inputs: Pad = None
    optimize: Optimize = False
    quantize: Quantize = None
    fp16: Fp16 = False
    samples: Samples = None
    atol: Atol = None
    rtol: Rtol = None
    min_cosine: MinCos = None
    embedding_output: Embedding = None
    version_policy: Policy = "all"

    def publish_options(self, target: TargetFlags) -> PublishOptions:
        from converters.errors import ConversionError
        from converters.options import PublishOptions
        from converters.parity import Tolerances

        if self.quantize not in (None, "int8"):
            raise ConversionError(f"--quantize supports 'int8', not '{self.quantize}'")
        precision = "int8" if self.quantize else "fp16" if self.fp16 else "fp32"
        tolerances = Tolerances.for_precision(precision, bool(self.embedding_output))
        for key in ("atol", "rtol", "min_cosine"):
            if getattr(self, key) is not None:
                setattr(tolerances, key, getattr(self, key))
        pad = self.pad_inputs
        return PublishOptions(
            repo=target.repo,
            name=target.name,
            version=target.version,
            config=target.config_options(response_cache=self.response_cache),
            pad_inputs=None if pad is None else [p.strip() for p in pad.split(",") if p.strip()],
            optimize=self.optimize,
            quantize=bool(self.quantize),
            fp16=self.fp16,
            tolerances=tolerances,
            samples_path=self.samples,
            version_policy=self.version_policy,
        )


@dataclass
class RenameFlags:
    """New names for a graph's inputs and outputs (Keras and ONNX files name them poorly)."""

    input_name: InNames = None
    output_name: OutNames = None


FLAG_GROUPS: tuple[type, ...] = (TargetFlags, OnnxFlags, RenameFlags)
# OnnxFlags options that only make sense for neural networks (not offered for scikit-learn).
NETWORK_ONLY = ("pad_inputs", "quantize", "fp16", "min_cosine", "embedding_output")


def _group_parameters(group: type, without: tuple[str, ...]) -> list[inspect.Parameter]:
    hints = get_type_hints(group, include_extras=True)
    return [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=hints[f.name],
            default=inspect.Parameter.empty if f.default is MISSING else f.default,
        )
        for f in fields(group)
        if f.name not in without
    ]


def export_command(
    without: tuple[str, ...] = (),
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the options of each flag group it takes, and run it under :func:`guard`.

    A parameter typed ``TargetFlags`` (etc.) becomes that group's options on the command line
    (except the fields named in ``without``, which keep their defaults); the command receives
    the group built from them.
    """

    offered = {f.name for group in FLAG_GROUPS for f in fields(group)}
    if set(without) - offered:
        raise TypeError(f"export_command(without=...) names no option: {set(without) - offered}")

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        hints = get_type_hints(command, include_extras=True)
        params: list[inspect.Parameter] = []
        groups: dict[str, type] = {}
        for param in inspect.signature(command).parameters.values():
            if hints[param.name] in FLAG_GROUPS:
                groups[param.name] = hints[param.name]
                params.extend(_group_parameters(hints[param.name], without))
            else:
                keyword = param.replace(kind=inspect.Parameter.KEYWORD_ONLY)
                params.append(keyword.replace(annotation=hints[param.name]))
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            raise TypeError(f"{command.__name__}: an option is declared twice in {names}")

        @functools.wraps(command)
        def run(**values: Any) -> None:
            built = {
                param: group(
                    **{f.name: values.pop(f.name) for f in fields(group) if f.name in values}
                )
                for param, group in groups.items()
            }
            guard(lambda: command(**values, **built))

        run.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return decorate
