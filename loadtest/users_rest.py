"""REST users for any model: v2 JSON tensors and the binary-tensor extension.

Inputs come from each model's metadata, so a new model needs no code:
``locust -f loadtest/ RestJsonUser --model digits_mlp --rows 8``.
"""

from __future__ import annotations

from collections.abc import Callable

from locust import FastHttpUser, tag, task

from loadtest._base import InferenceMixin
from loadtest._inputs import make_inputs


class _RestUser(InferenceMixin, FastHttpUser):
    abstract = True

    def on_start(self) -> None:
        self.setup_inference(self.client)


def _infer_task(*tags: str) -> Callable[[_RestUser], None]:
    """A fresh task per class, so each class's task carries its own tags."""

    @tag("rest", *tags)
    @task
    def infer_random(user: _RestUser) -> None:
        spec = user.pick_spec()
        user.infer(spec, make_inputs(spec, user.options.rows, user.options.seq_len, user.rng))

    return infer_random


class RestJsonUser(_RestUser):
    """Random inputs as KServe v2 JSON (``"data": [...]``)."""

    protocol = "json"
    infer_json = _infer_task("json")


class RestBinaryUser(_RestUser):
    """Random inputs as raw tensors after the JSON header (Triton's binary extension)."""

    protocol = "binary"
    infer_binary = _infer_task("binary")
