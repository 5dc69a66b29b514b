"""Shapes and tensor data -> numpy arrays, the same way for REST (JSON and binary) and gRPC.

Every check that can be done before allocating is done first: the declared shape and its element
count come before any data is read, so a hostile shape costs nothing.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import numpy as np

from service.datatypes import deserialize_bytes, numpy_dtype
from service.errors import BadRequest
from service.messages import Array

if TYPE_CHECKING:
    from service.models.version import ModelVersion

# A JSON value too large for FP16/FP32 becomes Inf, which validation rejects with a 400: the cast's
# warning would only be noise (and np.errstate per tensor costs more than a small conversion).
warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning, __name__)

#: numpy's own limit on dimensions; any model's inputs have far fewer
MAX_RANK = 64


def element_count(name: str, shape: object, limit: int) -> tuple[tuple[int, ...], int]:
    """Validate a declared shape; return it as a tuple with its element count."""
    if type(shape) is not list and type(shape) is not tuple:  # JSON list, gRPC repeated int64
        raise BadRequest(f"input '{name}': 'shape' must be a list of non-negative integers")
    if len(shape) > MAX_RANK:
        raise BadRequest(f"input '{name}': shape has {len(shape)} dimensions; at most {MAX_RANK}")
    count = 1
    for dim in shape:  # one pass: this runs for every input of every request
        if type(dim) is not int:
            raise BadRequest(f"input '{name}': 'shape' must be a list of non-negative integers")
        if dim < 0:
            raise BadRequest(
                f"input '{name}': shape {list(shape)} has a negative dimension "
                "('shape' must be a list of non-negative integers)"
            )
        count *= dim
    if count > limit:
        raise BadRequest(
            f"input '{name}': shape {list(shape)} has {count} elements, more than the limit "
            f"of {limit}"
        )
    return tuple(shape), count


def array_from_bytes(
    name: str, datatype: str, shape: tuple[int, ...], count: int, raw: bytes | memoryview
) -> Array:
    """Binary tensor data (REST binary extension, gRPC raw contents) -> a zero-copy view."""
    dtype = numpy_dtype(name, datatype)
    if datatype == "BYTES":
        return deserialize_bytes(raw, count, name).reshape(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise BadRequest(
            f"input '{name}': {len(raw)} bytes of binary data do not match shape "
            f"{list(shape)} of {datatype} ({expected} bytes)"
        )
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


def array_from_values(
    name: str, datatype: str, shape: tuple[int, ...], count: int, data: object
) -> Array:
    """JSON tensor data (nested or flat lists) -> an array of ``shape``."""
    dtype = numpy_dtype(name, datatype)
    if datatype == "BYTES":
        flat = np.asarray(data, dtype=np.object_).reshape(-1)
        _check_count(name, shape, count, flat.size)
        result = np.empty(count, dtype=np.object_)
        for index, item in enumerate(flat):
            if not isinstance(item, str):
                raise BadRequest(f"input '{name}': BYTES elements must be strings")
            result[index] = item.encode("utf-8")
        return result.reshape(shape)
    try:
        parsed = np.asarray(data)  # numbers and bools only: "1e3" must not become 1000.0
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"input '{name}': data does not fit datatype {datatype}: {exc}") from exc
    if parsed.size and parsed.dtype.kind not in _JSON_KINDS[dtype.kind]:
        raise BadRequest(
            f"input '{name}': data does not fit datatype {datatype}: JSON "
            f"{_KIND_NAMES.get(parsed.dtype.kind, 'values')} given"
        )
    _check_count(name, shape, count, parsed.size)
    if dtype.kind in "iu" and parsed.size:
        info = np.iinfo(dtype.str)
        if parsed.min() < info.min or parsed.max() > info.max:
            raise BadRequest(
                f"input '{name}': data does not fit datatype {datatype}: values outside "
                f"[{info.min}, {info.max}]"
            )
    # An FP32 overflow becomes Inf, which validation rejects (see the warning filter above).
    return parsed.astype(dtype, copy=False).reshape(shape)


# The JSON value kinds (numpy kinds after parsing) each datatype kind accepts.
_JSON_KINDS = {"b": "b", "i": "biu", "u": "biu", "f": "biuf"}
_KIND_NAMES = {"U": "strings", "S": "strings", "O": "objects", "f": "non-integers", "b": "bools"}


def _check_count(name: str, shape: tuple[int, ...], count: int, got: int) -> None:
    if got != count:
        raise BadRequest(f"input '{name}': shape {list(shape)} needs {count} elements, got {got}")


def binary_work(model: ModelVersion, nbytes: int) -> tuple[int, int]:
    """(rows, tokens per row) that ``nbytes`` of binary tensor data carry for ``model``, as far
    as the bytes alone tell (0 where they cannot): for judging a request before reading it."""
    if not model.batches:
        return 0, 0
    fixed = 0
    token_bytes = 0
    for spec in model.inputs.values():
        size = spec.dtype.itemsize
        if spec.datatype == "BYTES":
            return 0, 0
        if spec.name in model.pad_inputs and list(spec.dims) == [-1]:
            token_bytes += size
        elif -1 in spec.dims:
            return 0, 0
        else:
            fixed += size * math.prod(spec.dims)
    if token_bytes:  # rows x tokens x bytes of each padded input; at least one row
        return 1, nbytes // token_bytes if not fixed else 0
    return (nbytes // fixed if fixed else 0), 0
