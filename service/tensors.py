"""Datatype tables and BYTES (length-prefixed) codecs shared by REST, gRPC, cache and backends."""

from __future__ import annotations

import struct

import numpy as np

from service.errors import BadRequest

# KServe v2 datatype -> numpy dtype (little endian, as the binary extension requires).
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}
NUMPY_TO_V2: dict[np.dtype, str] = {dtype: name for name, dtype in V2_TO_NUMPY.items()}

# Triton model_config DataType enum name (TYPE_FP32) <-> v2 datatype (FP32).
CONFIG_TO_V2: dict[str, str] = {f"TYPE_{name}": name for name in V2_TO_NUMPY if name != "BYTES"}
CONFIG_TO_V2["TYPE_STRING"] = "BYTES"
V2_TO_CONFIG: dict[str, str] = {v: k for k, v in CONFIG_TO_V2.items()}

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

_LENGTH = struct.Struct("<I")


def element_size(datatype: str) -> int:
    """Bytes per element of a fixed-size datatype (BYTES has none)."""
    return V2_TO_NUMPY[datatype].itemsize


def serialize_bytes(array: np.ndarray) -> bytes:
    """Flatten a BYTES tensor into 4-byte little-endian length-prefixed elements."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(_LENGTH.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def deserialize_bytes(buffer: bytes | memoryview, count: int, name: str) -> np.ndarray:
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
