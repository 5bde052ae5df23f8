"""Server reflection that keeps the proto comments and resolves every symbol.

grpcio-reflection's servicer re-serialises descriptors from the runtime pool: under
protobuf's upb backend that drops ``source_code_info`` (so ``grpcurl describe`` would show no
comments) and cannot resolve method names (so describing an RPC fails). This servicer answers
from file descriptors it indexes itself: our files as the exact bytes of the descriptor set
that ``make protos`` builds with ``--include_source_info --include_imports``, and the stock
files of the health and reflection services copied from the runtime pool.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

DESCRIPTOR_SET = resources.files("aitbc.coordinator.v1").joinpath("descriptor_set.binpb")


def _symbols(file: descriptor_pb2.FileDescriptorProto) -> Iterable[str]:
    """Every fully qualified name a reflection client may ask about in ``file``."""
    prefix = f"{file.package}." if file.package else ""

    def enum(scope: str, value: descriptor_pb2.EnumDescriptorProto) -> Iterable[str]:
        yield scope + value.name
        yield from (scope + v.name for v in value.value)  # values are the enum's siblings

    def message(scope: str, value: descriptor_pb2.DescriptorProto) -> Iterable[str]:
        name = scope + value.name
        yield name
        yield from (f"{name}.{f.name}" for f in [*value.field, *value.extension])
        yield from (f"{name}.{o.name}" for o in value.oneof_decl)
        for nested in value.nested_type:
            yield from message(f"{name}.", nested)
        for nested_enum in value.enum_type:
            yield from enum(f"{name}.", nested_enum)

    for top_message in file.message_type:
        yield from message(prefix, top_message)
    for top_enum in file.enum_type:
        yield from enum(prefix, top_enum)
    for service in file.service:
        yield prefix + service.name
        yield from (f"{prefix}{service.name}.{m.name}" for m in service.method)
    yield from (prefix + e.name for e in file.extension)


def _stock_files(service_names: Iterable[str]) -> list[descriptor_pb2.FileDescriptorProto]:
    """File descriptors of services registered from the runtime pool, with their imports."""
    pool = descriptor_pool.Default()
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    pending = []
    for name in service_names:
        try:
            pending.append(pool.FindFileContainingSymbol(name))
        except KeyError:
            continue
    while pending:
        file = pending.pop()
        if file.name not in files:
            files[file.name] = descriptor_pb2.FileDescriptorProto()
            file.CopyToProto(files[file.name])
            pending.extend(file.dependencies)
    return list(files.values())


class SourceInfoReflectionServicer(ReflectionServicer):
    """Reflection from an index of file descriptors (see the module docstring)."""

    def __init__(
        self,
        service_names: Iterable[str],
        files: Iterable[descriptor_pb2.FileDescriptorProto],
    ) -> None:
        super().__init__(service_names)
        self._files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        self._file_of_symbol: dict[str, str] = {}
        for file in files:
            self._files.setdefault(file.name, file)
            for symbol in _symbols(file):
                self._file_of_symbol.setdefault(symbol, file.name)

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
        """``file_name`` and its transitive imports, each once."""
        if file_name in out or file_name not in self._files:
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
        file_name = self._file_of_symbol.get(fully_qualified_name.lstrip("."))
        if file_name is not None:
            return self._response_for(request, file_name)
        return super()._file_containing_symbol(request, fully_qualified_name)  # type: ignore[no-any-return]


def enable(
    server: grpc.aio.Server, own_services: Iterable[str], stock_services: Iterable[str]
) -> None:
    """Register reflection on ``server`` for our services (from the descriptor set, with
    comments) and for stock services such as health (from the runtime pool)."""
    stock = [*stock_services, reflection.SERVICE_NAME]
    own_files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes()).file
    servicer = SourceInfoReflectionServicer(
        [*own_services, *stock], [*own_files, *_stock_files(stock)]
    )
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
