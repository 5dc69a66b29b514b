"""What a scenario knows about a model: its v2 metadata and config, fetched once per process.

Everything is read from the server (``GET /v2/models/{m}`` and ``/config``, or their gRPC
twins), so a new model needs no code, and the same scenarios run against Triton itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx

logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per metadata GET is noise
_cache: dict[tuple[str, str], ModelSpec] = {}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as metadata declares it; ``shape`` includes the batch axis (-1)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    @property
    def output_names(self) -> list[str]:
        return [output.name for output in self.outputs]

    def input(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    @classmethod
    def from_v2(cls, metadata: dict[str, Any], config: dict[str, Any] | None) -> ModelSpec:
        """Build from v2 metadata JSON; ``config`` (Triton JSON) only supplies max_batch_size."""

        def tensors(key: str) -> tuple[TensorSpec, ...]:
            return tuple(
                TensorSpec(t["name"], t["datatype"], tuple(int(d) for d in t["shape"]))
                for t in metadata.get(key, [])
            )

        inputs = tensors("inputs")
        if config is not None:
            max_batch = int(config.get("max_batch_size", 0) or 0)
        else:  # no config endpoint: a leading -1 on every input is Triton's batch axis
            max_batch = 1 if inputs and all(t.shape[:1] == (-1,) for t in inputs) else 0
        versions = metadata.get("versions") or [""]
        return cls(metadata["name"], str(versions[-1]), inputs, tensors("outputs"), max_batch)


class SpecError(RuntimeError):
    """The model is unknown to the server or its metadata cannot be read."""


def fetch_spec_http(base_url: str, model: str, timeout: float = 30) -> ModelSpec:
    key = (base_url, model)
    if key not in _cache:
        url = f"{base_url.rstrip('/')}/v2/models/{model}"
        try:
            metadata = httpx.get(url, timeout=timeout)
            if metadata.status_code != 200:
                raise SpecError(f"GET {url}: HTTP {metadata.status_code} {metadata.text[:200]}")
            config = httpx.get(f"{url}/config", timeout=timeout)
        except httpx.HTTPError as error:
            raise SpecError(f"GET {url}: {error}") from error
        config_json = config.json() if config.status_code == 200 else None
        _cache[key] = ModelSpec.from_v2(metadata.json(), config_json)
    return _cache[key]


def fetch_spec_grpc(client: Any, target: str, model: str) -> ModelSpec:
    """Same as HTTP through a ``tritonclient.grpc.InferenceServerClient``."""
    from tritonclient.utils import InferenceServerException

    key = (f"grpc://{target}", model)
    if key not in _cache:
        try:
            metadata = client.get_model_metadata(model, as_json=True)
            config = client.get_model_config(model, as_json=True).get("config", {})
        except InferenceServerException as error:
            raise SpecError(f"gRPC ModelMetadata({model}): {error}") from error
        _cache[key] = ModelSpec.from_v2(metadata, config)
    return _cache[key]


def ready_models_http(base_url: str, timeout: float = 30) -> list[str]:
    """Every READY model in the repository index (``POST /v2/repository/index``)."""
    url = f"{base_url.rstrip('/')}/v2/repository/index"
    try:
        response = httpx.post(url, json={"ready": True}, timeout=timeout)
    except httpx.HTTPError as error:
        raise SpecError(f"POST {url}: {error}") from error
    if response.status_code != 200:
        raise SpecError(f"POST {url}: HTTP {response.status_code} {response.text[:200]}")
    return sorted({m["name"] for m in response.json() if m.get("state", "READY") == "READY"})


def ready_models_grpc(client: Any) -> list[str]:
    from tritonclient.utils import InferenceServerException

    try:
        index = client.get_model_repository_index(as_json=True).get("models", [])
    except InferenceServerException as error:
        raise SpecError(f"gRPC RepositoryIndex: {error}") from error
    return sorted({m["name"] for m in index if m.get("state", "READY") == "READY"})
