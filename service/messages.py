"""Protocol-neutral request/response objects that both front ends hand to the data plane."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

#: a numpy tensor of any datatype (BYTES = an object array of ``bytes``)
Array = np.ndarray[tuple[int, ...], np.dtype[np.generic]]
#: named tensors, as inputs or outputs of one request or one batch
Tensors = dict[str, Array]
#: request/response parameters: JSON scalars (gRPC's InferParameter oneof carries the same)
Parameters = dict[str, object]
#: a decoded JSON object
JsonObject = dict[str, object]


@dataclass(slots=True)
class InferRequest:
    """One decoded inference request; tensors are numpy arrays (BYTES = object arrays of bytes)."""

    model_name: str
    model_version: str  # "" = the version the model's version policy makes default
    inputs: Tensors
    datatypes: dict[str, str]  # v2 datatype the client declared for each input
    outputs: list[str] | None = None  # requested output names; None = all
    id: str = ""
    parameters: Parameters = field(default_factory=dict)
    priority: int = 0  # 0 = the model's default priority level
    timeout_us: int = 0  # 0 = the model's / settings' default
    use_cache: bool = True
    #: returns True once the client has hung up (front ends that can tell set it)
    client_gone: Callable[[], bool] | None = None
    #: time.monotonic_ns() when the front end began receiving it (0 = unknown): the budget of
    #: admission covers the request's whole stay from here
    arrival_ns: int = 0
    #: a decoder checked each declared input (name, datatype, shape) against the model version
    #: it hands to the data plane with this request, before reading the data
    declared_checked: bool = False


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: Tensors  # in the order the client asked for (or the model's order)
    id: str = ""
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class ItemsRequest:
    """Independent inputs for a model with a tokenizer (``/v1/embeddings``): texts, or token
    arrays of the model's own vocabulary."""

    model_name: str
    model_version: str
    items: list[str] | list[list[int]]
    truncate: bool = True  # cut inputs longer than the model's max length (False: reject them)
    outputs: list[str] | None = None
    use_cache: bool = True
    client_gone: Callable[[], bool] | None = None
    arrival_ns: int = 0  # as InferRequest.arrival_ns


@dataclass(slots=True)
class ItemsResponse:
    model_name: str
    model_version: str
    outputs: Tensors  # one row per item, in order
    token_count: int  # tokens the model saw, summed over items (usage)
