"""GPU sessions through IO binding with page-locked (pinned) host buffers.

Opt-in per model (``parameters { key: "infergate.io_binding" value: { string_value: "true" } }``):
batch inputs are staged in pinned buffers, so the host->device copy is a DMA without ORT's
intermediate staging, and outputs whose shape the config fixes are written by the device
straight into pinned buffers. Whether it pays depends on tensor sizes and the GPU; it was not
measurable on the CPU-only machines this was written on (see bench/README.md).
Buffers are reused per tensor name; one runner serves one session slot (one thread) at a time.
"""

from __future__ import annotations

import ctypes
import logging

import numpy as np
import onnxruntime as ort

from service.messages import Array, Tensors

log = logging.getLogger(__name__)
_CUDART_NAMES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12")


def _cudart() -> ctypes.CDLL | None:
    for name in _CUDART_NAMES:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


class PinnedBuffers:
    """Grow-only page-locked buffers by name; plain numpy when CUDA's runtime is not loadable."""

    def __init__(self) -> None:
        self._cudart = _cudart()
        if self._cudart is None:
            log.warning("io_binding: libcudart not loadable, staging in pageable memory")
        self._free_host = self._cudart.cudaFreeHost if self._cudart is not None else None
        self._buffers: dict[str, tuple[ctypes.c_void_p, int, Array]] = {}

    def view(self, name: str, dtype: np.dtype[np.generic], shape: tuple[int, ...]) -> Array:
        size = int(np.prod(shape)) * dtype.itemsize
        held = self._buffers.get(name)
        if held is None or held[1] < size:
            self._free(name)
            capacity = max(size, 1) * 2
            pointer = ctypes.c_void_p()
            if self._cudart is not None:
                status = self._cudart.cudaHostAlloc(
                    ctypes.byref(pointer), ctypes.c_size_t(capacity), 0
                )
                if status != 0:  # no driver/device: stage in pageable memory from now on
                    log.warning("io_binding: cudaHostAlloc failed (%d), pageable staging", status)
                    self._cudart, pointer = None, ctypes.c_void_p()
            if pointer.value:
                raw = (ctypes.c_byte * capacity).from_address(pointer.value)
                memory = np.frombuffer(memoryview(raw).cast("B"), dtype=np.uint8)
            else:
                memory = np.empty(capacity, dtype=np.uint8)
            held = (pointer, capacity, memory)
            self._buffers[name] = held
        return held[2][:size].view(dtype).reshape(shape)

    def _free(self, name: str) -> None:
        held = self._buffers.pop(name, None)
        if held is not None and self._free_host is not None and held[0].value:
            self._free_host(held[0])

    def close(self) -> None:
        for name in list(self._buffers):
            self._free(name)


class IoBindingRunner:
    """``run(feeds, outputs)`` for one GPU session, through pinned buffers and IO binding."""

    def __init__(
        self,
        session: ort.InferenceSession,
        device_id: int,
        output_shapes: dict[str, tuple[np.dtype[np.generic], tuple[int, ...]]],
        batches: bool,
    ) -> None:
        self.session = session
        self.device_id = device_id
        self.output_shapes = output_shapes  # dims without batch; -1 = only known after the run
        self.batches = batches
        self.buffers = PinnedBuffers()

    def run(self, feeds: Tensors, output_names: list[str]) -> list[Array]:
        binding = self.session.io_binding()
        batch = next(iter(feeds.values())).shape[0] if self.batches and feeds else None
        for name, array in feeds.items():
            if array.dtype == np.object_:
                binding.bind_cpu_input(name, array)
                continue
            staged = self.buffers.view(f"in:{name}", array.dtype, array.shape)
            np.copyto(staged, array)
            binding.bind_input(name, "cpu", 0, array.dtype, list(array.shape), staged.ctypes.data)
        pinned: Tensors = {}
        for name in output_names:
            dtype, dims = self.output_shapes.get(name, (np.dtype(np.object_), (-1,)))
            shape = ((batch,) if batch is not None else ()) + dims
            if dtype == np.object_ or any(d < 0 for d in shape):
                binding.bind_output(name, "cuda", self.device_id)
                continue
            pinned[name] = self.buffers.view(f"out:{name}", dtype, shape)
            binding.bind_output(name, "cpu", 0, dtype, list(shape), pinned[name].ctypes.data)
        self.session.run_with_iobinding(binding)
        device_outputs = iter(binding.copy_outputs_to_cpu())
        results = []
        for name in output_names:
            copied = next(device_outputs)
            results.append(pinned[name].copy() if name in pinned else copied)
        return results

    def close(self) -> None:
        self.buffers.close()
