"""Protobuf -> JSON the way Triton writes it: every field present, 64-bit integers as numbers."""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor, json_format
from google.protobuf.message import Message

_INT64_TYPES = {
    descriptor.FieldDescriptor.TYPE_INT64,
    descriptor.FieldDescriptor.TYPE_UINT64,
    descriptor.FieldDescriptor.TYPE_SINT64,
    descriptor.FieldDescriptor.TYPE_FIXED64,
    descriptor.FieldDescriptor.TYPE_SFIXED64,
}


def message_to_json(message: Message) -> dict[str, Any]:
    data: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _numbers(message.DESCRIPTOR, data)
    return data


def _numbers(message_descriptor: descriptor.Descriptor, data: dict[str, Any]) -> None:
    """json_format writes int64 as strings (JSON doubles lose precision); Triton writes numbers."""
    for field in message_descriptor.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                if value_field.message_type is not None:
                    for item in value.values():
                        _numbers(value_field.message_type, item)
                elif value_field.type in _INT64_TYPES:
                    data[field.name] = {k: int(v) for k, v in value.items()}
            elif _repeated(field):
                for item in value:
                    _numbers(field.message_type, item)
            else:
                _numbers(field.message_type, value)
        elif field.type in _INT64_TYPES:
            data[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)


def _repeated(field: descriptor.FieldDescriptor) -> bool:
    """protobuf >= 7 dropped ``label`` for ``is_repeated`` (which older releases may lack)."""
    is_repeated = getattr(field, "is_repeated", None)
    if is_repeated is not None:
        return bool(is_repeated)
    return bool(field.label == descriptor.FieldDescriptor.LABEL_REPEATED)
