"""Binary entry format: every datatype round-trips; damaged entries are detected, not decoded."""

from __future__ import annotations

import numpy as np
import pytest

from service.cache import codec
from service.datatypes import V2_TO_NUMPY

RNG = np.random.default_rng(7)


def _sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape))
    if datatype == "BYTES":
        items = [f"item-{i}-ü".encode() * (i % 3) for i in range(count)]
        array = np.empty(count, dtype=np.object_)
        array[:] = items
        return array.reshape(shape)
    if datatype == "BOOL":
        return RNG.integers(0, 2, size=shape).astype(np.bool_)
    dtype = V2_TO_NUMPY[datatype]
    if dtype.kind == "f":
        return RNG.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("datatype", list(V2_TO_NUMPY))
@pytest.mark.parametrize("shape", [(2, 3), (1,), (0, 4), ()])
def test_roundtrip_every_datatype(datatype: str, shape: tuple[int, ...]) -> None:
    array = _sample(datatype, shape)
    decoded = codec.decode(codec.encode({"out": array}))
    assert list(decoded) == ["out"]
    result = decoded["out"]
    assert result.shape == array.shape
    if datatype == "BYTES":
        assert result.dtype == np.object_
        assert result.tolist() == array.tolist()
    else:
        assert result.dtype == V2_TO_NUMPY[datatype]
        np.testing.assert_array_equal(result, array)


def test_several_outputs_keep_order_and_are_writable() -> None:
    outputs = {
        "probabilities": np.array([[0.1, 0.9]], dtype=np.float32),
        "label": np.array([1], dtype=np.int64),
        "half": np.array([1.5, -2.25], dtype=np.float16),
        "mask": np.array([True, False, True]),
        "names": np.array([b"cat", b"", b"dog"], dtype=np.object_),
    }
    decoded = codec.decode(codec.encode(outputs))
    assert list(decoded) == list(outputs)
    for name, array in outputs.items():
        assert decoded[name].tolist() == array.tolist()
    decoded["probabilities"][0, 0] = 5.0  # callers may post-process in place
    assert decoded["probabilities"][0, 0] == 5.0


def test_noncontiguous_and_big_endian_outputs_encode_as_little_endian() -> None:
    base = np.arange(12, dtype=">f4").reshape(3, 4)
    view = base[:, ::2]
    decoded = codec.decode(codec.encode({"x": view}))["x"]
    assert decoded.dtype == np.dtype("<f4")
    np.testing.assert_array_equal(decoded, view)


def test_str_outputs_become_bytes() -> None:
    decoded = codec.decode(codec.encode({"s": np.array(["a", "bé"])}))["s"]
    assert decoded.tolist() == [b"a", "bé".encode()]


def test_unsupported_dtype_is_unencodable() -> None:
    with pytest.raises(codec.Unencodable):
        codec.encode({"c": np.array([1 + 2j])})


def _valid() -> bytes:
    return codec.encode(
        {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([b"xy"], dtype=object)}
    )


@pytest.mark.parametrize("cut", [0, 1, 7, 16, 40, -9, -1])
def test_truncated_entry_is_corrupt(cut: int) -> None:
    value = _valid()
    with pytest.raises(codec.CorruptEntry):
        codec.decode(value[:cut])


def test_every_single_bit_flip_is_detected() -> None:
    value = bytearray(_valid())
    for position in range(len(value)):
        damaged = bytearray(value)
        damaged[position] ^= 0x10
        with pytest.raises(codec.CorruptEntry):
            codec.decode(bytes(damaged))


@pytest.mark.parametrize(
    "garbage", [b"", b"garbage", b"\x00" * 64, b"IGC\x01" + b"\xff" * 30, "日本".encode() * 20]
)
def test_garbage_is_corrupt(garbage: bytes) -> None:
    with pytest.raises(codec.CorruptEntry):
        codec.decode(garbage)


def test_other_format_version_is_rejected_even_with_valid_checksum() -> None:
    import xxhash

    body = bytearray(_valid()[:-8])
    body[3] = 2  # format byte
    value = bytes(body) + xxhash.xxh64_intdigest(bytes(body)).to_bytes(8, "little")
    with pytest.raises(codec.CorruptEntry, match="format"):
        codec.decode(value)


def test_inconsistent_shape_with_valid_checksum_is_rejected() -> None:
    import xxhash

    body = bytearray(codec.encode({"a": np.zeros(4, dtype=np.float32)})[:-8])
    # header(8) + name len(2) + "a"(1) + code/ndim(2) -> the first dim (int64)
    body[13:21] = (5).to_bytes(8, "little", signed=True)
    value = bytes(body) + xxhash.xxh64_intdigest(bytes(body)).to_bytes(8, "little")
    with pytest.raises(codec.CorruptEntry, match="do not fit"):
        codec.decode(value)
