"""KServe v2 datatypes: one table for numpy, Triton's config enum and ONNX Runtime, plus BYTES.

The tables are built once from ``tritonclient.utils`` (the client's own mapping), so the gateway
and its clients cannot disagree; lookups on the hot path are plain dict reads.
"""

from __future__ import annotations

import struct

import numpy as np
from tritonclient.utils import triton_to_np_dtype

from service.errors import BadRequest
from service.messages import Array

#: every v2 datatype the gateway carries (BF16 needs ml_dtypes and no example uses it)
V2_DATATYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
)

# v2 datatype -> numpy dtype, little endian as the binary extension requires.
V2_TO_NUMPY: dict[str, np.dtype[np.generic]] = {
    name: np.dtype(triton_to_np_dtype(name)).newbyteorder("<") for name in V2_DATATYPES
}
_NUMPY_TO_V2: dict[np.dtype[np.generic], str] = {dtype: name for name, dtype in V2_TO_NUMPY.items()}

# Triton model_config DataType enum name (TYPE_FP32) <-> v2 datatype (FP32).
CONFIG_TO_V2: dict[str, str] = {f"TYPE_{name}": name for name in V2_DATATYPES if name != "BYTES"}
CONFIG_TO_V2["TYPE_STRING"] = "BYTES"
V2_TO_CONFIG: dict[str, str] = {v2: config for config, v2 in CONFIG_TO_V2.items()}

# ONNX Runtime type strings ("tensor(float)") -> v2 datatype.
ORT_TO_V2: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


class UnknownDatatype(ValueError):
    """An array's dtype has no v2 datatype. Callers decide what that means for them: a model
    output the gateway cannot send is an internal fault, a cache entry is simply not stored."""


def datatype_of(array: Array) -> str:
    """The v2 datatype of ``array`` (object, bytes and str arrays are BYTES)."""
    dtype = array.dtype
    found = _NUMPY_TO_V2.get(dtype)
    if found is not None:
        return found
    if dtype.kind in "OSU":
        return "BYTES"
    found = _NUMPY_TO_V2.get(dtype.newbyteorder("<"))
    if found is None:
        raise UnknownDatatype(f"dtype {dtype} has no v2 datatype")
    return found


def numpy_dtype(name: str, datatype: object) -> np.dtype[np.generic]:
    """The numpy dtype of a datatype a client declared for input ``name``; 400 if unknown."""
    dtype = V2_TO_NUMPY.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        known = ", ".join(V2_DATATYPES)
        raise BadRequest(f"input '{name}': unknown datatype {datatype!r} (expected one of {known})")
    return dtype


_LENGTH = struct.Struct("<I")


def serialize_bytes(array: Array) -> bytes:
    """Flatten a BYTES tensor into 4-byte little-endian length-prefixed elements."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(_LENGTH.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def deserialize_bytes(buffer: bytes | memoryview, count: int, name: str) -> Array:
    """Parse ``count`` length-prefixed elements, rejecting truncated or trailing data."""
    view = memoryview(buffer)
    items: list[bytes] = []
    offset = 0
    end = len(view)
    for _ in range(count):
        if offset + 4 > end:
            raise BadRequest(f"input '{name}': BYTES data truncated after {len(items)} elements")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > end:
            raise BadRequest(f"input '{name}': BYTES element {len(items)} runs past the data")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != end:
        raise BadRequest(
            f"input '{name}': BYTES data has {end - offset} bytes beyond {count} elements"
        )
    result = np.empty(count, dtype=np.object_)
    result[:] = items
    return result
