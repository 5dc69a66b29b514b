"""A request checked against the model's config: names, datatypes, shapes, batch and sequence
limits.

The declared datatype and shape of each input are checked by :func:`check_declared` as the
front end decodes, before any tensor data is read or allocated, so a hostile shape or a huge
body for the wrong input costs nothing. :func:`validate` then checks the whole request (every
protocol, before the cache and the batcher), so a bad request never costs a model execution and
gets the same message over REST, gRPC and v1. Messages start with Triton's wording, which
clients match on, and add the detail after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service.datatypes import numpy_dtype
from service.errors import BadRequest
from service.messages import Array, InferRequest
from service.models.version import ModelVersion, TensorSpec


@dataclass(frozen=True, slots=True)
class Admitted:
    """What the batcher needs of a valid request."""

    rows: int  # batch rows the request carries (1 for a model that does not batch)
    signature: tuple[object, ...]  # requests with equal signatures may share a batch
    output_names: list[str]  # the outputs to return, in order
    tokens: int = 0  # sequence length each row takes once padded (0: the model pads nothing)


def check_declared(model: ModelVersion, name: str, datatype: str, shape: tuple[int, ...]) -> None:
    """One input as declared (name, datatype, shape), before its data is decoded."""
    spec = model.inputs.get(name)
    if spec is None:
        if model.tokenizer is not None and name == model.tokenizer.options.text_input:
            return  # text is checked as it is tokenized (service.protocol.text)
        raise _unexpected_input(model, name)
    if datatype != spec.datatype:
        numpy_dtype(name, datatype)  # an unknown datatype gets its own message first
        raise BadRequest(
            f"inference input '{name}' data-type is '{datatype}', but model '{model.name}' "
            f"expects '{spec.datatype}'"
        )
    if len(shape) != len(spec.shape):
        raise _unexpected_shape(model, spec, shape)
    for axis, size in spec.fixed:
        if shape[axis] != size:
            raise _unexpected_shape(model, spec, shape)
    if model.batches:
        _check_batch_rows(model, name, shape[0])
    if name in model.pad_inputs:
        _check_sequence(model, name, shape)


def validate(model: ModelVersion, request: InferRequest, max_elements: int) -> Admitted:
    """Check ``request`` against ``model``; raise ``BadRequest`` naming the first problem.

    What a decoder already checked as each input was declared (``request.declared_checked``,
    for the version it hands over with the request) is not checked twice."""
    _check_names(model, request)
    declared_checked = request.declared_checked
    rows = 1
    tokens = 0
    signature: list[object] = []
    for index, (name, spec) in enumerate(model.inputs.items()):
        array = request.inputs[name]
        if not declared_checked:
            check_declared(model, name, request.datatypes.get(name, spec.datatype), array.shape)
        _check_values(spec, array, max_elements)
        if name == "input_ids" and model.tokenizer is not None and array.size:
            _check_vocabulary(model, array)
        if model.batches:
            if index == 0:
                rows = array.shape[0]
            elif array.shape[0] != rows:
                raise BadRequest(
                    f"input '{name}' has batch size {array.shape[0]} but other inputs have {rows}"
                )
        if name in model.pad_inputs:
            signature.append(array.ndim)
            tokens = max(tokens, math.prod(array.shape[1:]))
        else:
            signature.append(array.shape[1:])
    if model.pad_inputs:
        _check_paired_sequences(model, request)
    return Admitted(rows, tuple(signature), output_names(model, request.outputs), tokens)


def output_names(model: ModelVersion, requested: list[str] | None) -> list[str]:
    """The requested outputs (all of the model's when none were named), each checked."""
    if not requested:
        return model.output_names
    for name in requested:
        if name not in model.outputs:
            raise BadRequest(
                f"unexpected inference output '{name}' for model '{model.name}' "
                f"(outputs: {', '.join(model.outputs)})"
            )
    return requested


def _check_names(model: ModelVersion, request: InferRequest) -> None:
    if request.inputs.keys() == model.inputs.keys():
        return
    unexpected = sorted(set(request.inputs) - set(model.inputs))
    if unexpected:
        raise _unexpected_input(model, unexpected[0])
    missing = [name for name in model.inputs if name not in request.inputs]
    raise BadRequest(
        f"expected {len(model.inputs)} inputs but got {len(request.inputs)} inputs for model "
        f"'{model.name}': missing required input(s) {missing}"
    )


def _unexpected_shape(model: ModelVersion, spec: TensorSpec, shape: tuple[int, ...]) -> BadRequest:
    return BadRequest(
        f"unexpected shape for input '{spec.name}' for model '{model.name}'. "
        f"Expected {_shape(spec.shape)}, got {_shape(shape)}"
    )


def _unexpected_input(model: ModelVersion, name: str) -> BadRequest:
    return BadRequest(
        f"unexpected inference input '{name}' for model '{model.name}' "
        f"(expected inputs: {', '.join(model.inputs)})"
    )


def _check_values(spec: TensorSpec, array: Array, max_elements: int) -> None:
    if array.size > max_elements:
        raise BadRequest(
            f"input '{spec.name}' has {array.size} elements; the limit is {max_elements}"
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise BadRequest(f"input '{spec.name}' contains NaN or Inf")


def _check_vocabulary(model: ModelVersion, ids: Array) -> None:
    """Token ids of a model with a tokenizer: inside its vocabulary (ONNX ``Gather`` would wrap
    a negative id around, and fail past the end with a message of its own)."""
    tokenizer = model.tokenizer
    assert tokenizer is not None
    if int(ids.min()) < 0 or int(ids.max()) >= tokenizer.vocab_size:
        raise tokenizer.outside_vocabulary("input 'input_ids'")


def _check_batch_rows(model: ModelVersion, name: str, rows: int) -> None:
    if rows < 1 or rows > model.max_batch_size:
        raise BadRequest(
            f"inference request batch-size must be <= {model.max_batch_size} for "
            f"'{model.name}' (input '{name}' has batch size {rows})"
        )


def _check_sequence(model: ModelVersion, name: str, shape: tuple[int, ...]) -> None:
    """Token inputs: no empty sequence, none longer than the model's position embeddings."""
    length = shape[-1] if shape else 0
    if length < 1:
        raise BadRequest(f"input '{name}' of model '{model.name}' has an empty sequence")
    limit = model.max_sequence_length
    if limit and length > limit:
        raise BadRequest(
            f"input '{name}' has a sequence of {length} tokens; model '{model.name}' takes at "
            f"most {limit}"
        )


def _check_paired_sequences(model: ModelVersion, request: InferRequest) -> None:
    """Token ids, attention mask and token types describe the same tokens: equal shapes."""
    shapes = {name: request.inputs[name].shape for name in sorted(model.pad_inputs)}
    if len(set(shapes.values())) > 1:
        described = ", ".join(f"'{name}' {_shape(shape)}" for name, shape in shapes.items())
        raise BadRequest(
            f"inputs of model '{model.name}' must have the same shape, got {described}"
        )


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"
