"""Behaviour every scenario shares: options, model specs, transport, answer checks."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from locust.exception import StopUser

from loadtest import _arguments  # noqa: F401  (registers the custom options)
from loadtest._check import OutputTensor, check_structure, reference_for
from loadtest._model import (
    ModelSpec,
    SpecError,
    fetch_spec_grpc,
    fetch_spec_http,
    ready_models_grpc,
    ready_models_http,
)
from loadtest._options import LoadOptions, grpc_target
from loadtest._transport import GrpcTransport, HttpTransport, Transport


class InferenceMixin:
    """Mixed into a Locust ``User``; ``protocol`` fixes the wire format (None: ``--protocol``)."""

    protocol: str | None = None
    environment: Any
    host: str | None
    options: LoadOptions
    transport: Transport
    specs: list[ModelSpec]
    rng: np.random.Generator

    def wait_time(self) -> float:
        options = getattr(self, "options", None)
        return options.think_time_ms / 1000 if options is not None else 0.0

    def setup_inference(self, http_client: Any, embedding: bool = False) -> None:
        """Resolve options, open the transport and fetch every model's spec; on error stop."""
        try:
            self.options = LoadOptions.from_parsed(self.environment.parsed_options)
            self.rng = np.random.default_rng()
            kind = self.protocol or self.options.protocol
            if kind == "grpc":
                target = grpc_target(self.host, self.options.grpc_host)
                self.transport = GrpcTransport(self.environment, target)
            else:
                self.transport = HttpTransport(http_client, binary=kind == "binary")
            names = [self.options.embed_model] if embedding else list(self.options.models)
            self.specs = [self._spec(name) for name in names or self._ready_models()]
            if not self.specs:
                raise SpecError("the server has no READY model")
        except (SpecError, ValueError) as error:
            self.environment.events.request.fire(
                request_type="setup",
                name=f"{type(self).__name__} setup",
                response_time=0,
                response_length=0,
                exception=error,
                context={},
            )
            raise StopUser(f"{type(self).__name__} cannot start: {error}") from error

    def _spec(self, model: str) -> ModelSpec:
        if isinstance(self.transport, GrpcTransport):
            return fetch_spec_grpc(self.transport.client, self.transport.target, model)
        return fetch_spec_http(self.host or "", model)

    def _ready_models(self) -> list[str]:
        if isinstance(self.transport, GrpcTransport):
            return ready_models_grpc(self.transport.client)
        return ready_models_http(self.host or "")

    def pick_spec(self) -> ModelSpec:
        return self.specs[int(self.rng.integers(len(self.specs)))]

    def infer(self, spec: ModelSpec, inputs: dict[str, np.ndarray], label: str = "") -> bool:
        """One request named ``"<model> <wire>[ label]"`` in Locust's statistics."""
        name = f"{spec.name} {self.transport.kind}{f' {label}' if label else ''}"
        return self.transport.infer(spec, inputs, name, partial(self.check, spec, inputs))

    def check(
        self, spec: ModelSpec, inputs: dict[str, np.ndarray], outputs: dict[str, OutputTensor]
    ) -> str | None:
        """Structure always; values for a sampled share when a local model file exists."""
        problem = check_structure(spec, inputs, outputs)
        options = self.options
        if problem or not options.model_repo or self.rng.random() >= options.check_fraction:
            return problem
        reference = reference_for(options.model_repo, spec, options.tolerance)
        return reference.compare(inputs, outputs) if reference is not None else None
