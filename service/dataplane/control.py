"""Triton's model repository extension as the data plane applies it: which loads and unloads the
model control mode allows, and a load's ``config`` parameter in place of config.pbtxt."""

from __future__ import annotations

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from service.errors import BadRequest, NotFound
from service.messages import Parameters
from service.models.repository import RepositoryView
from service.models.version import check_config
from service.settings import Settings


def check_model_control(settings: Settings, repository: RepositoryView, name: str) -> None:
    """Explicit loads and unloads: only in explicit mode, as on Triton (and on_demand, where an
    unloaded model loads again on its next request)."""
    if settings.model_control_mode in ("explicit", "on_demand"):
        return
    if name not in repository.models:
        raise NotFound(f"Request for unknown model: '{name}' is not found")
    raise BadRequest("explicit model load / unload is not allowed if polling is enabled")


def config_override(
    settings: Settings, name: str, parameters: Parameters
) -> model_config_pb2.ModelConfig | None:
    """The ``config`` load parameter (JSON of a model configuration), or None; files are not
    taken (they belong in the repository)."""
    files = sorted(key for key in parameters if key.startswith("file:"))
    if files:
        raise BadRequest(
            f"failed to load '{name}': file overrides ({', '.join(files)}) are not supported "
            "by this server; put the files in the model repository"
        )
    text = parameters.get("config")
    if text is None:
        return None
    if settings.backend == "triton":
        raise BadRequest(
            f"failed to load '{name}': with --backend triton, load config overrides on Triton"
        )
    if not isinstance(text, str):
        raise BadRequest(f"failed to load '{name}': 'config' must be a JSON string")
    try:
        config = json_format.Parse(text, model_config_pb2.ModelConfig())
        check_config(config)
    except (json_format.ParseError, ValueError) as exc:
        raise BadRequest(f"failed to load '{name}': the config override is invalid: {exc}") from exc
    return config
