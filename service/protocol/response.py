"""What every front end needs to send outputs back."""

from __future__ import annotations

from service.datatypes import UnknownDatatype, datatype_of
from service.errors import Internal
from service.messages import Array


def output_datatype(name: str, array: Array) -> str:
    """The v2 datatype of a model output (one without is the server's fault, not the client's)."""
    try:
        return datatype_of(array)
    except UnknownDatatype as exc:
        raise Internal(f"output '{name}' has {exc}") from exc
