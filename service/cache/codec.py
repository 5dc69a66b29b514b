"""Compact binary form of cached outputs: versioned header, raw tensor bytes, xxh64 trailer.

JSON would cost a float->text->float round trip per element; this is a memcpy each way. The checksum
turns a truncated or overwritten entry into a miss instead of a wrong answer.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping

import numpy as np
import xxhash

from service.datatypes import (
    V2_DATATYPES,
    V2_TO_NUMPY,
    UnknownDatatype,
    datatype_of,
    deserialize_bytes,
    serialize_bytes,
)
from service.errors import BadRequest
from service.messages import Array, Tensors

MAGIC = b"IGC"
FORMAT = 1
# A datatype is stored as its index here: the order is part of the format (bump FORMAT if it
# ever changes).
DATATYPES: tuple[str, ...] = V2_DATATYPES
_CODE = {name: code for code, name in enumerate(DATATYPES)}

_HEAD = struct.Struct("<3sBI")  # magic, format, tensor count
_NAME = struct.Struct("<H")
_TYPE = struct.Struct("<BB")  # datatype code, ndim
_DIM = struct.Struct("<q")
_LEN = struct.Struct("<Q")
_SUM = struct.Struct("<Q")


class CorruptEntry(ValueError):
    """The stored value is not a complete entry of this format; treat it as a miss."""


class Unencodable(ValueError):
    """The outputs hold something this format cannot represent; the result is not cached."""


def _datatype(array: Array) -> str:
    try:
        return datatype_of(array)
    except UnknownDatatype as exc:
        raise Unencodable(str(exc)) from exc


def encode(outputs: Mapping[str, Array]) -> bytes:
    """Serialize named output tensors; order is kept so hits answer in the same order."""
    parts: list[bytes] = [_HEAD.pack(MAGIC, FORMAT, len(outputs))]
    for name, value in outputs.items():
        array = np.asarray(value)
        datatype = _datatype(array)
        if datatype == "BYTES":
            data = serialize_bytes(array)
        else:
            data = np.ascontiguousarray(array, dtype=V2_TO_NUMPY[datatype]).tobytes()
        raw_name = name.encode("utf-8")
        if len(raw_name) > 0xFFFF or array.ndim > 0xFF:
            raise Unencodable(f"output {name!r} has too long a name or too many dims")
        parts.append(_NAME.pack(len(raw_name)))
        parts.append(raw_name)
        parts.append(_TYPE.pack(_CODE[datatype], array.ndim))
        parts.extend(_DIM.pack(dim) for dim in array.shape)
        parts.append(_LEN.pack(len(data)))
        parts.append(data)
    body = b"".join(parts)
    return body + _SUM.pack(xxhash.xxh64_intdigest(body))


def decode(value: bytes | bytearray | memoryview) -> Tensors:
    """Parse an entry into writable arrays; raise :class:`CorruptEntry` on any inconsistency."""
    if len(value) < _HEAD.size + _SUM.size:
        raise CorruptEntry(f"entry of {len(value)} bytes is shorter than a header")
    # One copy of the whole entry makes every tensor a writable zero-copy view of it.
    buffer = bytearray(value)
    view = memoryview(buffer)
    end = len(buffer) - _SUM.size
    (stored,) = _SUM.unpack_from(view, end)
    if xxhash.xxh64_intdigest(view[:end]) != stored:
        raise CorruptEntry("checksum mismatch")
    magic, fmt, count = _HEAD.unpack_from(view, 0)
    if magic != MAGIC or fmt != FORMAT:
        raise CorruptEntry(f"unknown entry format {magic!r}/{fmt}")
    outputs: Tensors = {}
    offset = _HEAD.size
    try:
        for _ in range(count):
            (name_len,) = _NAME.unpack_from(view, offset)
            offset += _NAME.size
            name = bytes(view[offset : offset + name_len]).decode("utf-8")
            offset += name_len
            code, ndim = _TYPE.unpack_from(view, offset)
            offset += _TYPE.size
            shape = tuple(_DIM.unpack_from(view, offset + i * _DIM.size)[0] for i in range(ndim))
            offset += ndim * _DIM.size
            (length,) = _LEN.unpack_from(view, offset)
            offset += _LEN.size
            if offset + length > end or code >= len(DATATYPES) or min(shape, default=0) < 0:
                raise CorruptEntry(f"tensor {name!r} header is inconsistent")
            outputs[name] = _tensor(view, offset, length, DATATYPES[code], shape, name)
            offset += length
    except (struct.error, UnicodeDecodeError) as exc:
        raise CorruptEntry(f"malformed entry: {exc}") from exc
    if offset != end:
        raise CorruptEntry(f"{end - offset} unexpected bytes after the last tensor")
    return outputs


def _tensor(
    view: memoryview, offset: int, length: int, datatype: str, shape: tuple[int, ...], name: str
) -> Array:
    count = math.prod(shape)
    if datatype == "BYTES":
        try:
            return deserialize_bytes(view[offset : offset + length], count, name).reshape(shape)
        except BadRequest as exc:
            raise CorruptEntry(exc.message) from exc
    dtype = V2_TO_NUMPY[datatype]
    if count * dtype.itemsize != length:
        raise CorruptEntry(f"tensor {name!r}: {length} bytes do not fit shape {list(shape)}")
    if count == 0:
        return np.empty(shape, dtype=dtype)
    return np.frombuffer(view, dtype=dtype, count=count, offset=offset).reshape(shape)
