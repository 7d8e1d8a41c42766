"""Descriptor sets built from the generated modules (no protoc at run time).

Envoy's gRPC-JSON transcoder needs a FileDescriptorSet of the services it
maps; building it from the compiled descriptors guarantees it matches the
stubs the services run.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor


def file_descriptor_set(*files: FileDescriptor) -> descriptor_pb2.FileDescriptorSet:
    """The files and everything they import, dependencies first."""
    ordered: list[FileDescriptor] = []
    seen: set[str] = set()

    def visit(fd: FileDescriptor) -> None:
        if fd.name in seen:
            return
        seen.add(fd.name)
        for dep in fd.dependencies:
            visit(dep)
        ordered.append(fd)

    for fd in files:
        visit(fd)
    out = descriptor_pb2.FileDescriptorSet()
    for fd in ordered:
        proto = out.file.add()
        fd.CopyToProto(proto)
    return out


def serving_descriptor_set() -> bytes:
    from mlmesh.serving.v1 import serving_pb2

    return file_descriptor_set(serving_pb2.DESCRIPTOR).SerializeToString()
