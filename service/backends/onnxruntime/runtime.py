"""Running opened sessions: one slot per batch that may run at once, warmup, and reporting.

A slot is what one worker thread runs a batch on: the shared CPU session (``count`` slots), or
one GPU instance (one slot each), optionally through IO binding. ``describe`` writes what really
runs into the served config: ``instance_group`` as resolved (Triton also reports resolved
groups) and ``parameters["infergate.runtime"]``, a JSON string clients that do not know it ignore.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from service import parameters
from service.backends.base import Calibration
from service.backends.onnxruntime.io_binding import IoBindingRunner
from service.backends.onnxruntime.placement import GPU_PROVIDERS, Placement
from service.backends.onnxruntime.sessions import OpenedSession
from service.backends.onnxruntime.warmup import WarmupSample
from service.datatypes import ORT_TO_V2, V2_TO_NUMPY
from service.messages import Array, Tensors

log = logging.getLogger(__name__)

Runner = Callable[[Tensors, list[str]], list[Array]]


@dataclass(frozen=True, slots=True)
class Slot:
    instance: OpenedSession
    run: Runner


def _plain(opened: OpenedSession) -> Runner:
    session = opened.session
    return lambda feeds, names: session.run(names, feeds)


def _graph_output_shapes(
    opened: OpenedSession, batches: bool
) -> dict[str, tuple[np.dtype[np.generic], tuple[int, ...]]]:
    shapes = {}
    for output in opened.session.get_outputs():
        dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in output.shape)
        dtype = V2_TO_NUMPY[ORT_TO_V2[output.type]]
        shapes[output.name] = (dtype, dims[1:] if batches else dims)
    return shapes


def make_slots(
    instances: list[OpenedSession], io_binding: bool, batches: bool
) -> tuple[list[Slot], list[IoBindingRunner]]:
    """Slots for every instance; IO binding only on instances really running on a GPU."""
    slots: list[Slot] = []
    binders: list[IoBindingRunner] = []
    for opened in instances:
        if io_binding and opened.provider in GPU_PROVIDERS:
            binder = IoBindingRunner(
                opened.session,
                opened.plan.device_id,
                _graph_output_shapes(opened, batches),
                batches,
            )
            binders.append(binder)
            runner: Runner = binder.run
        else:
            runner = _plain(opened)
        slots.extend(Slot(opened, runner) for _ in range(opened.plan.slots))
    return slots, binders


def run_warmup(
    slots: list[Slot], samples: list[WarmupSample], label: str
) -> tuple[float, Calibration | None]:
    """Every sample ``count`` times on every instance: seconds taken in all, and the fastest run
    of the last sample as the model's calibration (None without samples)."""
    if not samples:
        return 0.0, None
    instances: dict[int, Slot] = {}
    for slot in slots:
        instances.setdefault(id(slot.instance), slot)
    started = time.perf_counter()
    fastest = float("inf")
    for sample in samples:
        names = [o.name for o in next(iter(instances.values())).instance.session.get_outputs()]
        feeds = {name: _to_ort(array) for name, array in sample.inputs.items()}
        sample_start = time.perf_counter()
        fastest = float("inf")
        for slot in instances.values():
            for _ in range(sample.count):
                run_start = time.perf_counter()
                slot.run(feeds, names)
                fastest = min(fastest, time.perf_counter() - run_start)
        log.info(
            "warmup of %s: sample '%s' x%d on %d instance(s) took %.3f s",
            label,
            sample.name,
            sample.count,
            len(instances),
            time.perf_counter() - sample_start,
        )
    return time.perf_counter() - started, Calibration(samples[-1].units, fastest)


def _to_ort(array: Array) -> Array:
    if array.dtype != np.object_:
        return array
    decoded: Array = np.vectorize(lambda item: item.decode() if isinstance(item, bytes) else item)(
        array
    )
    return decoded


def describe(config: mc.ModelConfig, instances: list[OpenedSession], placement: Placement) -> None:
    """Resolved ``instance_group`` and ``parameters["infergate.runtime"]`` into ``config``."""
    groups: dict[str, mc.ModelInstanceGroup] = {}
    rows = []
    for opened in instances:
        on_gpu = opened.device != "cpu"
        key = "gpu" if on_gpu else "cpu"
        group = groups.get(key)
        if group is None:
            group = groups[key] = mc.ModelInstanceGroup(
                name=f"{config.name}_{key}",
                kind=mc.ModelInstanceGroup.KIND_GPU if on_gpu else mc.ModelInstanceGroup.KIND_CPU,
                count=0,
            )
        if on_gpu:
            if opened.plan.device_id not in group.gpus:
                group.gpus.append(opened.plan.device_id)
            group.count = max(group.count, _per_gpu(instances, opened.plan.device_id))
        else:
            group.count += opened.plan.slots
        rows.append(
            {
                "device": opened.device,
                "providers": opened.used,
                "requested": opened.plan.provider_names,
                "fallback": opened.fallen_back,
                "gpu_mem_limit_bytes": opened.plan.gpu_mem_limit_bytes if on_gpu else 0,
                "slots": opened.plan.slots,
            }
        )
    del config.instance_group[:]
    config.instance_group.extend(groups.values())
    runtime = {"instances": rows, "io_binding": placement.io_binding}
    config.parameters[parameters.RUNTIME.name].string_value = json.dumps(
        runtime, separators=(",", ":")
    )


def _per_gpu(instances: list[OpenedSession], device_id: int) -> int:
    return sum(1 for o in instances if o.device != "cpu" and o.plan.device_id == device_id)
