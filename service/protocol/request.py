"""Request parameters and building ``InferRequest``: one set of rules for every front end."""

from __future__ import annotations

from collections.abc import Mapping

from service.errors import BadRequest
from service.messages import Array, InferRequest, Parameters


def int_parameter(parameters: Parameters, key: str) -> int:
    """A non-negative integer request parameter (``priority``, ``timeout``); 0 when absent."""
    value = parameters.get(key)
    if value is None:
        return 0
    if type(value) is not int:
        raise BadRequest(f"parameter '{key}' must be a non-negative integer, got {value!r}")
    if value < 0:
        raise BadRequest(f"parameter '{key}' must be a non-negative integer, got {value}")
    return value


def build_request(
    model_name: str,
    model_version: str,
    inputs: dict[str, Array],
    datatypes: dict[str, str],
    outputs: list[str] | None,
    request_id: str,
    parameters: Mapping[str, object],
) -> InferRequest:
    """The protocol-neutral request, with ``priority``/``timeout``/``cache`` read once here."""
    if not parameters:  # most requests: nothing to read
        return InferRequest(model_name, model_version, inputs, datatypes, outputs, request_id)
    params = dict(parameters)
    return InferRequest(
        model_name=model_name,
        model_version=model_version,
        inputs=inputs,
        datatypes=datatypes,
        outputs=outputs,
        id=request_id,
        parameters=params,
        priority=int_parameter(params, "priority"),
        timeout_us=int_parameter(params, "timeout"),
        use_cache=params.get("cache", True) is not False,
    )
