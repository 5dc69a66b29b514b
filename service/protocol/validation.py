"""A decoded request checked against the model's config: names, datatypes, shapes, batch size.

Runs for every protocol before the cache and the batcher, so a bad request never costs a model
execution and gets the same message over REST, gRPC and v1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service.errors import BadRequest
from service.model import ModelVersion, TensorSpec
from service.types import Array, InferRequest


@dataclass(frozen=True, slots=True)
class Admitted:
    """What the batcher needs of a valid request."""

    rows: int  # batch rows the request carries (1 for a model that does not batch)
    signature: tuple[object, ...]  # requests with equal signatures may share a batch
    output_names: list[str]  # the outputs to return, in order
    tokens: int = 0  # sequence length each row takes once padded (0: the model pads nothing)


def validate(model: ModelVersion, request: InferRequest, max_elements: int) -> Admitted:
    """Check ``request`` against ``model``; raise ``BadRequest`` naming the first problem."""
    _check_names(model, request)
    rows = 1
    tokens = 0
    signature: list[object] = []
    for index, (name, spec) in enumerate(model.inputs.items()):
        array = request.inputs[name]
        _check_tensor(model, spec, array, request.datatypes.get(name, spec.datatype), max_elements)
        if model.batches:
            if index == 0:
                rows = _batch_rows(model, name, array)
            elif array.shape[0] != rows:
                raise BadRequest(
                    f"input '{name}' has batch size {array.shape[0]} but other inputs have {rows}"
                )
        if name in model.pad_inputs:
            signature.append(array.ndim)
            tokens = max(tokens, math.prod(array.shape[1:]))
        else:
            signature.append(array.shape[1:])
    return Admitted(rows, tuple(signature), output_names(model, request.outputs), tokens)


def output_names(model: ModelVersion, requested: list[str] | None) -> list[str]:
    """The requested outputs (all of the model's when none were named), each checked."""
    if not requested:
        return model.output_names
    for name in requested:
        if name not in model.outputs:
            raise BadRequest(
                f"unknown output '{name}' for model '{model.name}' "
                f"(outputs: {', '.join(model.outputs)})"
            )
    return requested


def _check_names(model: ModelVersion, request: InferRequest) -> None:
    if request.inputs.keys() == model.inputs.keys():
        return
    unexpected = sorted(set(request.inputs) - set(model.inputs))
    missing = sorted(set(model.inputs) - set(request.inputs))
    detail = (
        f"unexpected input '{unexpected[0]}'" if unexpected else f"missing input '{missing[0]}'"
    )
    raise BadRequest(
        f"{detail} for model '{model.name}' (expected inputs: {', '.join(model.inputs)})"
    )


def _check_tensor(
    model: ModelVersion, spec: TensorSpec, array: Array, declared: str, max_elements: int
) -> None:
    name = spec.name
    if declared != spec.datatype:
        raise BadRequest(f"input '{name}' expected datatype {spec.datatype}, got {declared}")
    expected = (-1, *spec.dims) if model.batches else spec.dims
    shape = array.shape
    if len(shape) != len(expected) or any(
        want != -1 and have != want for have, want in zip(shape, expected)
    ):
        raise BadRequest(f"input '{name}' expected shape {_shape(expected)}, got {_shape(shape)}")
    if array.size > max_elements:
        raise BadRequest(f"input '{name}' has {array.size} elements; the limit is {max_elements}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise BadRequest(f"input '{name}' contains NaN or Inf")


def _batch_rows(model: ModelVersion, name: str, array: Array) -> int:
    rows = int(array.shape[0])
    if rows < 1 or rows > model.max_batch_size:
        raise BadRequest(
            f"input '{name}' batch size {rows} is outside 1..{model.max_batch_size}"
            f" (max_batch_size of model '{model.name}')"
        )
    return rows


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"
