"""KServe v1 / TF-Serving ``{"instances": [...]}`` <-> InferRequest/InferResponse.

For clients without a v2 library. Requests go through the same data plane as v2 ones (validation,
cache, batcher, stats); this module only reshapes instances into tensors and back.
"""

from __future__ import annotations

import numpy as np

from service.errors import BadRequest
from service.messages import Array, InferRequest, InferResponse, JsonObject
from service.models.version import ModelVersion
from service.protocol.request import build_request


def decode_predict(model: ModelVersion, body: JsonObject) -> InferRequest:
    """Instances are rows of the single input, or objects keyed by input name."""
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        raise BadRequest("v1 request needs a non-empty 'instances' list")
    specs = list(model.inputs.values())
    columns: dict[str, list[object]] = {spec.name: [] for spec in specs}
    for instance in instances:
        if isinstance(instance, dict):
            for spec in specs:
                if spec.name not in instance:
                    raise BadRequest(f"instance lacks input '{spec.name}'")
                columns[spec.name].append(instance[spec.name])
        elif len(specs) == 1:
            columns[specs[0].name].append(instance)
        else:
            raise BadRequest(
                f"model '{model.name}' has {len(specs)} inputs: send instances as objects"
            )
    inputs: dict[str, Array] = {}
    for spec in specs:
        try:
            array = np.asarray(columns[spec.name], dtype=spec.dtype)
        except OverflowError:
            raise BadRequest(
                f"input '{spec.name}': a value does not fit datatype {spec.datatype}"
            ) from None
        except (ValueError, TypeError) as exc:
            raise BadRequest(f"input '{spec.name}': {exc}") from exc
        inputs[spec.name] = array if model.batches else array[0]
    datatypes = {spec.name: spec.datatype for spec in specs}
    return build_request(model.name, "", inputs, datatypes, None, "", {})


def encode_predict(model: ModelVersion, response: InferResponse) -> JsonObject:
    """One prediction per instance: the output's row, or an object of outputs by name."""
    names = list(response.outputs)
    rows = len(next(iter(response.outputs.values()))) if model.batches else 1
    predictions: list[object] = []
    for row in range(rows):
        values = {
            name: (
                response.outputs[name][row] if model.batches else response.outputs[name]
            ).tolist()
            for name in names
        }
        predictions.append(values[names[0]] if len(names) == 1 else values)
    return {"predictions": predictions}
