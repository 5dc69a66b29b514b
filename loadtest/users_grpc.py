"""gRPC user: ``tritonclient.grpc`` calls reported to Locust as ``grpc`` requests.

The endpoint is ``--grpc-host`` (default: the ``--host`` name on port 8001).
"""

from __future__ import annotations

from locust import User, tag, task

from loadtest._base import InferenceMixin
from loadtest._grpc import ensure_gevent
from loadtest._inputs import make_inputs

ensure_gevent()


class GrpcUser(InferenceMixin, User):
    """Random inputs from model metadata over KServe v2 gRPC."""

    protocol = "grpc"

    def on_start(self) -> None:
        self.setup_inference(None)

    @tag("grpc")
    @task
    def infer_grpc(self) -> None:
        spec = self.pick_spec()
        self.infer(spec, make_inputs(spec, self.options.rows, self.options.seq_len, self.rng))
