"""A Hugging Face tokenizer published beside a transformer model, so the gateway takes text.

``tokenizer.json`` goes into the version folder and the settings the gateway reads go into
config.pbtxt ``parameters`` (``infergate.tokenizer.*``, see ``service/models/tokenizer.py``), with
the text input declared there too: Triton's ONNX Runtime backend would refuse a config ``input`` the
graph does not have, while it ignores parameters, so the repository still loads in ``tritonserver``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from converters.errors import ConversionError
from service import parameters

TOKENIZER_FILE = "tokenizer.json"


@dataclass
class TokenizerSpec:
    """The tokenizer.json text and how the gateway must apply it."""

    json_text: str
    max_length: int = 512
    truncation_side: str = "right"
    pad_id: int = 0
    text_input: str = "text"

    @classmethod
    def from_path(cls, path: Path, max_length: int | None = None) -> TokenizerSpec:
        """A tokenizer.json file, or a Hugging Face folder holding one (its
        tokenizer_config.json gives ``model_max_length`` and the truncation side)."""
        folder = path if path.is_dir() else path.parent
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            raise ConversionError(f"no {TOKENIZER_FILE} at {path}")
        text = file.read_text()
        settings_path = folder / "tokenizer_config.json"
        settings = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
        limit = max_length or int(settings.get("model_max_length", 512))
        spec = cls(
            text,
            max_length=min(limit, 1 << 20),
            truncation_side=str(settings.get("truncation_side", "right")),
        )
        spec.pad_id = spec.find_pad_id()
        return spec

    def find_pad_id(self) -> int:
        """The pad token's id as the tokenizer.json declares it (0 when it declares none)."""
        try:
            data = json.loads(self.json_text)
        except json.JSONDecodeError as exc:
            raise ConversionError(f"{TOKENIZER_FILE} is not JSON: {exc}") from None
        padding = data.get("padding") or {}
        if "pad_id" in padding:
            return int(padding["pad_id"])
        for token in data.get("added_tokens") or []:
            if token.get("content") in ("[PAD]", "<pad>"):
                return int(token["id"])
        return 0

    def check(self, input_names: list[str]) -> None:
        from tokenizers import Tokenizer

        if "input_ids" not in input_names:
            raise ConversionError(
                f"a tokenizer feeds input_ids, which the graph lacks (inputs: {input_names})"
            )
        if self.truncation_side not in ("right", "left"):
            raise ConversionError(f"truncation side must be right or left: {self.truncation_side}")
        try:
            Tokenizer.from_str(self.json_text)
        except Exception as exc:  # the Rust library raises plain Exception
            raise ConversionError(f"{TOKENIZER_FILE} does not load: {exc}") from None

    def apply(self, config: mc.ModelConfig) -> None:
        """Write the gateway's tokenizer parameters into ``config``."""
        values = {
            parameters.TOKENIZER_TEXT_INPUT: self.text_input,
            parameters.TOKENIZER_MAX_LENGTH: str(self.max_length),
            parameters.TOKENIZER_TRUNCATION_SIDE: self.truncation_side,
            parameters.TOKENIZER_PAD_ID: str(self.pad_id),
        }
        for key, value in values.items():
            config.parameters[key.name].string_value = value
