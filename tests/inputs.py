"""Random but valid inputs for any model, generated from its v2 metadata."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.datatypes import V2_TO_NUMPY

TOKEN_INPUTS = {"input_ids", "attention_mask", "token_type_ids"}


def random_inputs(
    metadata: dict[str, Any], rows: int, seed: int, seq_len: int = 12
) -> dict[str, np.ndarray]:
    """One array per input: batch axis ``rows``, dynamic axes ``seq_len``."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for spec in metadata["inputs"]:
        shape = [
            rows if i == 0 else (seq_len if d == -1 else d) for i, d in enumerate(spec["shape"])
        ]
        dtype = V2_TO_NUMPY[spec["datatype"]]
        name = spec["name"]
        if name == "input_ids":
            array = rng.integers(1000, 5000, size=shape).astype(dtype)
            array[:, 0], array[:, -1] = 101, 102
        elif name == "attention_mask":
            array = np.ones(shape, dtype=dtype)
        elif name == "token_type_ids":
            array = np.zeros(shape, dtype=dtype)
        elif dtype.kind == "f":
            array = (rng.random(shape) * 16).astype(dtype)
        else:
            array = rng.integers(0, 10, size=shape).astype(dtype)
        arrays[name] = array
    return arrays
