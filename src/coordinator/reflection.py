"""Server reflection that keeps the proto comments.

grpcio-reflection's servicer re-serialises descriptors from the runtime pool, and under
protobuf's upb backend that drops ``source_code_info``, so ``grpcurl describe`` would show
no comments. This servicer answers for our files with the exact bytes of the descriptor set
that ``make protos`` builds with ``--include_source_info --include_imports``, and falls back
to the stock behaviour for everything else (health, reflection).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

DESCRIPTOR_SET = resources.files("aitbc.coordinator.v1").joinpath("descriptor_set.binpb")


class SourceInfoReflectionServicer(ReflectionServicer):
    """Reflection serving our files' descriptors with their comments."""

    def __init__(self, service_names: Iterable[str], descriptor_set: bytes) -> None:
        super().__init__(service_names)
        file_set = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
        self._files = {f.name: f for f in file_set.file}
        self._own_pool = descriptor_pool.DescriptorPool()
        for file_proto in file_set.file:  # --include_imports puts dependencies first
            self._own_pool.Add(file_proto)

    def _response_for(
        self, request: reflection_pb2.ServerReflectionRequest, file_name: str
    ) -> reflection_pb2.ServerReflectionResponse:
        wanted: list[str] = []
        self._collect(file_name, wanted)
        return reflection_pb2.ServerReflectionResponse(
            valid_host=request.host,
            original_request=request,
            file_descriptor_response=reflection_pb2.FileDescriptorResponse(
                file_descriptor_proto=[self._files[name].SerializeToString() for name in wanted]
            ),
        )

    def _collect(self, file_name: str, out: list[str]) -> None:
        if file_name in out:
            return
        out.append(file_name)
        for dependency in self._files[file_name].dependency:
            self._collect(dependency, out)

    def _file_by_filename(
        self, request: reflection_pb2.ServerReflectionRequest, filename: str
    ) -> reflection_pb2.ServerReflectionResponse:
        if filename in self._files:
            return self._response_for(request, filename)
        return super()._file_by_filename(request, filename)  # type: ignore[no-any-return]

    def _file_containing_symbol(
        self, request: reflection_pb2.ServerReflectionRequest, fully_qualified_name: str
    ) -> reflection_pb2.ServerReflectionResponse:
        try:
            found = self._own_pool.FindFileContainingSymbol(fully_qualified_name)
        except KeyError:
            return super()._file_containing_symbol(request, fully_qualified_name)  # type: ignore[no-any-return]
        return self._response_for(request, found.name)


def enable(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Register reflection for ``service_names`` (plus reflection itself) on ``server``."""
    names = [*service_names, reflection.SERVICE_NAME]
    servicer = SourceInfoReflectionServicer(names, DESCRIPTOR_SET.read_bytes())
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
