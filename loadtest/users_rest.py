"""REST users for any model: v2 JSON tensors and the binary-tensor extension.

Inputs come from each model's metadata, so a new model needs no code:
``locust -f loadtest/ RestJsonUser --model digits_mlp --rows 8``.
"""

from __future__ import annotations

from locust import FastHttpUser, tag, task

from loadtest._base import InferenceMixin
from loadtest._inputs import make_inputs


class _RestUser(InferenceMixin, FastHttpUser):
    abstract = True

    def on_start(self) -> None:
        self.setup_inference(self.client)

    def infer_random(self) -> None:
        spec = self.pick_spec()
        self.infer(spec, make_inputs(spec, self.options.rows, self.options.seq_len, self.rng))


class RestJsonUser(_RestUser):
    """Random inputs as KServe v2 JSON (``"data": [...]``)."""

    protocol = "json"

    @tag("rest", "json")
    @task
    def infer_json(self) -> None:
        self.infer_random()


class RestBinaryUser(_RestUser):
    """Random inputs as raw tensors after the JSON header (Triton's binary extension)."""

    protocol = "binary"

    @tag("rest", "binary")
    @task
    def infer_binary(self) -> None:
        self.infer_random()
