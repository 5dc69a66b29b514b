"""Typed publish options: what every export path hands to the shared check-and-publish step."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from converters.parity import Tolerances
from converters.tokenizer import TokenizerSpec
from converters.triton_config import ConfigOptions


@dataclass
class PublishOptions:
    """Where and how to publish; ``pad_inputs=None`` means token-named integer inputs."""

    repo: Path
    name: str
    version: int | None = None
    config: ConfigOptions = field(default_factory=ConfigOptions)
    pad_inputs: list[str] | None = None
    optimize: bool = False
    quantize: bool = False
    fp16: bool = False
    tolerances: Tolerances | None = None
    samples_path: Path | None = None
    n_samples: int = 8
    version_policy: str = "all"
    tokenizer: TokenizerSpec | None = None  # published beside the model: it then takes text
