"""Shallow twins of the assignment stream's messages, for the agent to fall back on when a
message cannot be parsed in full.

Python protobuf refuses to parse a message nested deeper than 100 levels, and a task's
``task_data`` (a ``google.protobuf.Struct``: two levels per level of JSON) sits three
levels down in a StreamAssignmentsResponse: a task the coordinator accepted may then arrive
as a message the agent cannot read. These twins are copies of StreamAssignmentsResponse,
AssignmentBatch and Assignment, made at import from the generated descriptors, in which
``Assignment.task_data`` is ``bytes``: parsing one never recurses into the Struct, so the
task's id, attempt and fencing token can always be read, and the task reported failed.
The wire format of a message field and of a bytes field is the same (length-delimited),
so the twins parse exactly what the real messages serialize to.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from aitbc.coordinator.v1 import agent_pb2

_PACKAGE = "coordinator.sdk.shallow"
_COPIED = ("StreamAssignmentsResponse", "AssignmentBatch", "Assignment")


def _build() -> dict[str, Any]:
    source = agent_pb2.DESCRIPTOR
    file = descriptor_pb2.FileDescriptorProto(
        name="coordinator/sdk/shallow_agent.proto",
        package=_PACKAGE,
        syntax="proto3",
        # The fields that stay messages (StreamReady, Timestamp, ...) keep their types.
        dependency=[source.name, *(d.name for d in source.dependencies)],
    )
    copied_type_names = {f".{source.package}.{name}": name for name in _COPIED}
    for name in _COPIED:
        message = file.message_type.add()
        source.message_types_by_name[name].CopyToProto(message)
        for field in message.field:
            if field.type_name in copied_type_names:
                field.type_name = f".{_PACKAGE}.{copied_type_names[field.type_name]}"
            if name == "Assignment" and field.name == "task_data":
                field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
                field.ClearField("type_name")
    pool = descriptor_pool.Default()
    pool.AddSerializedFile(file.SerializeToString())
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
        for name in _COPIED
    }


_classes = _build()
StreamAssignmentsResponse: Any = _classes["StreamAssignmentsResponse"]
"""StreamAssignmentsResponse with every Assignment's ``task_data`` left as bytes."""
