"""A small asyncio client for containerd's gRPC API: content, leases, snapshots, diff.

Only what the Layers-mode agent needs: content Info / Update (labels) / List / Write /
Abort, leases Create / Delete / List / AddResource / ListResources, snapshots Prepare /
Commit / Remove / Stat / List and diff Apply (unpacking a held layer, see `unpack`). No
generated code and no protoc step: the few message types are described at run time
(`descriptor_pb2`) in a private descriptor pool and called through grpc's generic
multi-callables. Field numbers and types are those of containerd's API
(`api/services/content/v1/content.proto`, `api/services/leases/v1/leases.proto`,
`api/services/snapshots/v1/snapshots.proto`, `api/services/diff/v1/diff.proto`,
`api/types/mount.proto` and `descriptor.proto` of 1.6 and 1.7; pinned in
tests/unit/prepull/test_containerd.py); `google.protobuf.Timestamp`,
`FieldMask` and `Empty` are described by wire-identical local copies, so nothing from
the default pool is needed.

containerd scopes every call to a namespace (gRPC metadata `containerd-namespace`) and,
optionally, to a lease (`containerd-lease`): content written under a lease is held by it
until the lease is deleted or expires.

Errors are `errors.ContainerdError` subclasses naming the socket and the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, cast

import grpc
import grpc.aio
from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

from imageward import errors

NAMESPACE_HEADER = "containerd-namespace"
LEASE_HEADER = "containerd-lease"

#: Label holding a lease's (or content's) expiry, RFC 3339; the GC removes expired leases.
LABEL_GC_EXPIRE = "containerd.io/gc.expire"
#: Prefix of the labels naming the repositories a blob can be fetched from, per registry.
LABEL_DISTRIBUTION_SOURCE = "containerd.io/distribution.source."

RESOURCE_CONTENT = "content"


def build_snapshot_resource(snapshotter: str) -> str:
    """A lease's resource type for the snapshots of `snapshotter` (id: a snapshot key)."""
    return f"snapshots/{snapshotter}"


#: Bytes per Write message. containerd accepts 16 MiB messages; 1 MiB keeps memory flat.
WRITE_CHUNK = 1024 * 1024
_MAX_MESSAGE = 16 * 1024 * 1024
_DEFAULT_TIMEOUT = 30.0

WRITE_ACTION_STAT = 0
WRITE_ACTION_WRITE = 1
WRITE_ACTION_COMMIT = 2

# ------------------------------------------------------------------------------ descriptors

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "string": _F.TYPE_STRING,
    "int64": _F.TYPE_INT64,
    "int32": _F.TYPE_INT32,
    "bool": _F.TYPE_BOOL,
    "bytes": _F.TYPE_BYTES,
}
_TYPES_PACKAGE = "imageward.containerd.wire"
_CONTENT_PACKAGE = "containerd.services.content.v1"
_LEASES_PACKAGE = "containerd.services.leases.v1"
_SNAPSHOTS_PACKAGE = "containerd.services.snapshots.v1"
_DIFF_PACKAGE = "containerd.services.diff.v1"
_TIMESTAMP = f".{_TYPES_PACKAGE}.Timestamp"
_FIELD_MASK = f".{_TYPES_PACKAGE}.FieldMask"
_MOUNT = f".{_TYPES_PACKAGE}.Mount"
_DESCRIPTOR = f".{_TYPES_PACKAGE}.Descriptor"

#: containerd.services.snapshots.v1.Kind
SNAPSHOT_KIND_UNKNOWN = 0
SNAPSHOT_KIND_VIEW = 1
SNAPSHOT_KIND_ACTIVE = 2
SNAPSHOT_KIND_COMMITTED = 3


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    name: str
    number: int
    kind: str  # a scalar name, "map" (string -> string), "enum:.pkg.Name" or ".pkg.Message"
    repeated: bool = False


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _message(package: str, name: str, *fields: _Field) -> descriptor_pb2.DescriptorProto:
    proto = descriptor_pb2.DescriptorProto(name=name)
    for field in fields:
        item = proto.field.add(name=field.name, number=field.number, json_name=field.name)
        item.label = _F.LABEL_REPEATED if field.repeated else _F.LABEL_OPTIONAL
        if field.kind == "map":
            entry = proto.nested_type.add(name=f"{_camel(field.name)}Entry")
            entry.options.map_entry = True
            for key_name, number in (("key", 1), ("value", 2)):
                entry.field.add(
                    name=key_name, number=number, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL
                )
            item.label = _F.LABEL_REPEATED
            item.type = _F.TYPE_MESSAGE
            item.type_name = f".{package}.{name}.{entry.name}"
        elif field.kind.startswith("enum:"):
            item.type = _F.TYPE_ENUM
            item.type_name = field.kind.removeprefix("enum:")
        elif field.kind.startswith("."):
            item.type = _F.TYPE_MESSAGE
            item.type_name = field.kind
        else:
            item.type = _SCALARS[field.kind]
    return proto


def _file(
    name: str, package: str, messages: Sequence[descriptor_pb2.DescriptorProto]
) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto3")
    if package != _TYPES_PACKAGE:
        proto.dependency.append("imageward/containerd/wire.proto")
    proto.message_type.extend(messages)
    return proto


def _build_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    types = _TYPES_PACKAGE
    pool.Add(
        _file(
            "imageward/containerd/wire.proto",
            types,
            [
                # google.protobuf.Timestamp, FieldMask and Empty, wire-identical.
                _message(
                    types, "Timestamp", _Field("seconds", 1, "int64"), _Field("nanos", 2, "int32")
                ),
                _message(types, "FieldMask", _Field("paths", 1, "string", repeated=True)),
                _message(types, "Empty"),
                # containerd.types.Mount and Descriptor (api/types), wire-identical.
                _message(
                    types,
                    "Mount",
                    _Field("type", 1, "string"),
                    _Field("source", 2, "string"),
                    _Field("target", 3, "string"),
                    _Field("options", 4, "string", repeated=True),
                ),
                _message(
                    types,
                    "Descriptor",
                    _Field("media_type", 1, "string"),
                    _Field("digest", 2, "string"),
                    _Field("size", 3, "int64"),
                    _Field("annotations", 5, "map"),
                ),
            ],
        )
    )
    c = _CONTENT_PACKAGE
    info = f".{c}.Info"
    content = _file(
        "imageward/containerd/content.proto",
        c,
        [
            _message(
                c,
                "Info",
                _Field("digest", 1, "string"),
                _Field("size", 2, "int64"),
                _Field("created_at", 3, _TIMESTAMP),
                _Field("updated_at", 4, _TIMESTAMP),
                _Field("labels", 5, "map"),
            ),
            _message(c, "InfoRequest", _Field("digest", 1, "string")),
            _message(c, "InfoResponse", _Field("info", 1, info)),
            _message(
                c, "UpdateRequest", _Field("info", 1, info), _Field("update_mask", 2, _FIELD_MASK)
            ),
            _message(c, "UpdateResponse", _Field("info", 1, info)),
            _message(c, "ListContentRequest", _Field("filters", 1, "string", repeated=True)),
            _message(c, "ListContentResponse", _Field("info", 1, info, repeated=True)),
            _message(
                c,
                "WriteContentRequest",
                _Field("action", 1, f"enum:.{c}.WriteAction"),
                _Field("ref", 2, "string"),
                _Field("total", 3, "int64"),
                _Field("expected", 4, "string"),
                _Field("offset", 5, "int64"),
                _Field("data", 6, "bytes"),
                _Field("labels", 7, "map"),
            ),
            _message(
                c,
                "WriteContentResponse",
                _Field("action", 1, f"enum:.{c}.WriteAction"),
                _Field("started_at", 2, _TIMESTAMP),
                _Field("updated_at", 3, _TIMESTAMP),
                _Field("offset", 4, "int64"),
                _Field("total", 5, "int64"),
                _Field("digest", 6, "string"),
            ),
            _message(c, "AbortRequest", _Field("ref", 1, "string")),
        ],
    )
    action = content.enum_type.add(name="WriteAction")
    for value_name, number in (
        ("STAT", WRITE_ACTION_STAT),
        ("WRITE", WRITE_ACTION_WRITE),
        ("COMMIT", WRITE_ACTION_COMMIT),
    ):
        action.value.add(name=value_name, number=number)
    pool.Add(content)
    le = _LEASES_PACKAGE
    pool.Add(
        _file(
            "imageward/containerd/leases.proto",
            le,
            [
                _message(
                    le,
                    "Lease",
                    _Field("id", 1, "string"),
                    _Field("created_at", 2, _TIMESTAMP),
                    _Field("labels", 3, "map"),
                ),
                _message(
                    le, "CreateRequest", _Field("id", 1, "string"), _Field("labels", 3, "map")
                ),
                _message(le, "CreateResponse", _Field("lease", 1, f".{le}.Lease")),
                _message(le, "DeleteRequest", _Field("id", 1, "string"), _Field("sync", 2, "bool")),
                _message(le, "ListRequest", _Field("filters", 1, "string", repeated=True)),
                _message(le, "ListResponse", _Field("leases", 1, f".{le}.Lease", repeated=True)),
                _message(le, "Resource", _Field("id", 1, "string"), _Field("type", 2, "string")),
                _message(
                    le,
                    "AddResourceRequest",
                    _Field("id", 1, "string"),
                    _Field("resource", 2, f".{le}.Resource"),
                ),
                _message(le, "ListResourcesRequest", _Field("id", 1, "string")),
                _message(
                    le,
                    "ListResourcesResponse",
                    _Field("resources", 1, f".{le}.Resource", repeated=True),
                ),
            ],
        )
    )
    sn = _SNAPSHOTS_PACKAGE
    snapshots = _file(
        "imageward/containerd/snapshots.proto",
        sn,
        [
            _message(
                sn,
                "PrepareSnapshotRequest",
                _Field("snapshotter", 1, "string"),
                _Field("key", 2, "string"),
                _Field("parent", 3, "string"),
                _Field("labels", 4, "map"),
            ),
            _message(sn, "PrepareSnapshotResponse", _Field("mounts", 1, _MOUNT, repeated=True)),
            _message(
                sn,
                "RemoveSnapshotRequest",
                _Field("snapshotter", 1, "string"),
                _Field("key", 2, "string"),
            ),
            _message(
                sn,
                "CommitSnapshotRequest",
                _Field("snapshotter", 1, "string"),
                _Field("name", 2, "string"),
                _Field("key", 3, "string"),
                _Field("labels", 4, "map"),
            ),
            _message(
                sn,
                "StatSnapshotRequest",
                _Field("snapshotter", 1, "string"),
                _Field("key", 2, "string"),
            ),
            _message(
                sn,
                "Info",
                _Field("name", 1, "string"),
                _Field("parent", 2, "string"),
                _Field("kind", 3, f"enum:.{sn}.Kind"),
                _Field("created_at", 4, _TIMESTAMP),
                _Field("updated_at", 5, _TIMESTAMP),
                _Field("labels", 6, "map"),
            ),
            _message(sn, "StatSnapshotResponse", _Field("info", 1, f".{sn}.Info")),
            _message(
                sn,
                "ListSnapshotsRequest",
                _Field("snapshotter", 1, "string"),
                _Field("filters", 2, "string", repeated=True),
            ),
            _message(sn, "ListSnapshotsResponse", _Field("info", 1, f".{sn}.Info", repeated=True)),
        ],
    )
    kind = snapshots.enum_type.add(name="Kind")
    for value_name, number in (
        ("UNKNOWN", SNAPSHOT_KIND_UNKNOWN),
        ("VIEW", SNAPSHOT_KIND_VIEW),
        ("ACTIVE", SNAPSHOT_KIND_ACTIVE),
        ("COMMITTED", SNAPSHOT_KIND_COMMITTED),
    ):
        kind.value.add(name=value_name, number=number)
    pool.Add(snapshots)
    d = _DIFF_PACKAGE
    pool.Add(
        _file(
            "imageward/containerd/diff.proto",
            d,
            [
                # payloads (3, map<string, Any>) is left out: nothing is sent in it.
                _message(
                    d,
                    "ApplyRequest",
                    _Field("diff", 1, _DESCRIPTOR),
                    _Field("mounts", 2, _MOUNT, repeated=True),
                ),
                _message(d, "ApplyResponse", _Field("applied", 1, _DESCRIPTOR)),
            ],
        )
    )
    return pool


_POOL = _build_pool()


class MessageClass(Protocol):
    """A message class built at run time from a descriptor in ``_POOL``.

    Its fields are keyword arguments of the constructor, which the protobuf stubs cannot
    know (since types-protobuf 7.35.1.20261122 ``Message()`` takes no arguments at all),
    so the classes are typed by what this module does with them instead.
    """

    def __call__(self, **fields: Any) -> message.Message: ...

    def FromString(self, serialized: bytes) -> message.Message: ...


def _class(full_name: str) -> MessageClass:
    built = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(full_name))
    return cast(MessageClass, built)


def _content(name: str) -> MessageClass:
    return _class(f"{_CONTENT_PACKAGE}.{name}")


def _leases(name: str) -> MessageClass:
    return _class(f"{_LEASES_PACKAGE}.{name}")


def _snapshots(name: str) -> MessageClass:
    return _class(f"{_SNAPSHOTS_PACKAGE}.{name}")


def _diff(name: str) -> MessageClass:
    return _class(f"{_DIFF_PACKAGE}.{name}")


_EMPTY = _class(f"{_TYPES_PACKAGE}.Empty")
_FIELD_MASK_CLASS = _class(f"{_TYPES_PACKAGE}.FieldMask")
_MOUNT_CLASS = _class(f"{_TYPES_PACKAGE}.Mount")
_DESCRIPTOR_CLASS = _class(f"{_TYPES_PACKAGE}.Descriptor")


def _get(msg: message.Message, name: str) -> Any:
    """A field of a runtime-built message (their attributes are not known statically)."""
    return getattr(msg, name)


def _time(msg: message.Message, name: str) -> datetime.datetime | None:
    if not msg.HasField(name):
        return None
    stamp = _get(msg, name)
    seconds, nanos = int(_get(stamp, "seconds")), int(_get(stamp, "nanos"))
    return datetime.datetime.fromtimestamp(seconds + nanos / 1e9, tz=datetime.UTC)


# ------------------------------------------------------------------------------ results


@dataclasses.dataclass(frozen=True, slots=True)
class ContentInfo:
    digest: str
    size: int
    labels: Mapping[str, str]
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None

    @classmethod
    def from_message(cls, msg: message.Message) -> ContentInfo:
        return cls(
            digest=str(_get(msg, "digest")),
            size=int(_get(msg, "size")),
            labels=dict(_get(msg, "labels")),
            created_at=_time(msg, "created_at"),
            updated_at=_time(msg, "updated_at"),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    id: str
    labels: Mapping[str, str]
    created_at: datetime.datetime | None = None

    @classmethod
    def from_message(cls, msg: message.Message) -> Lease:
        return cls(
            id=str(_get(msg, "id")),
            labels=dict(_get(msg, "labels")),
            created_at=_time(msg, "created_at"),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Resource:
    id: str
    type: str


@dataclasses.dataclass(frozen=True, slots=True)
class Mount:
    """What a snapshotter's Prepare answers: mount(8)'s type, source and options."""

    type: str
    source: str
    target: str = ""
    options: tuple[str, ...] = ()

    @classmethod
    def from_message(cls, msg: message.Message) -> Mount:
        return cls(
            type=str(_get(msg, "type")),
            source=str(_get(msg, "source")),
            target=str(_get(msg, "target")),
            options=tuple(str(option) for option in _get(msg, "options")),
        )

    def to_message(self) -> message.Message:
        return _MOUNT_CLASS(
            type=self.type, source=self.source, target=self.target, options=list(self.options)
        )


@dataclasses.dataclass(frozen=True, slots=True)
class SnapshotInfo:
    name: str
    parent: str
    kind: int
    """SNAPSHOT_KIND_*: ACTIVE (prepared, writable) or COMMITTED (a layer)."""

    labels: Mapping[str, str]
    created_at: datetime.datetime | None = None

    @property
    def committed(self) -> bool:
        return self.kind == SNAPSHOT_KIND_COMMITTED

    @classmethod
    def from_message(cls, msg: message.Message) -> SnapshotInfo:
        return cls(
            name=str(_get(msg, "name")),
            parent=str(_get(msg, "parent")),
            kind=int(_get(msg, "kind")),
            labels=dict(_get(msg, "labels")),
            created_at=_time(msg, "created_at"),
        )


# ------------------------------------------------------------------------------ errors

_ERRORS: Mapping[grpc.StatusCode, type[errors.ContainerdError]] = {
    grpc.StatusCode.NOT_FOUND: errors.ContainerdNotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: errors.ContainerdAlreadyExistsError,
    grpc.StatusCode.UNAVAILABLE: errors.ContainerdUnavailableError,
}


def build_error(socket: str, call: str, error: grpc.aio.AioRpcError) -> errors.ContainerdError:
    """The typed error for a failed call (class by gRPC status code)."""
    code = error.code()
    cls = _ERRORS.get(code, errors.ContainerdError)
    return cls(error.details() or code.name, socket=socket, call=call, code=code.name)


# ------------------------------------------------------------------------------ the client


class Client:
    """One channel to containerd's socket, scoped to one namespace.

    Create it inside the event loop and `await close()` it (or use `async with`).
    `timeout` bounds each unary call; writes are bounded by their caller.
    """

    def __init__(self, socket: str, namespace: str, *, timeout: float = _DEFAULT_TIMEOUT) -> None:
        self.socket = socket
        self.namespace = namespace
        self.timeout = timeout
        self._channel = grpc.aio.insecure_channel(
            f"unix://{socket}" if socket.startswith("/") else f"unix:{socket}",
            options=[
                ("grpc.max_send_message_length", _MAX_MESSAGE),
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ],
        )

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    def metadata(self, lease: str | None = None) -> tuple[tuple[str, str], ...]:
        headers = [(NAMESPACE_HEADER, self.namespace)]
        if lease:
            headers.append((LEASE_HEADER, lease))
        return tuple(headers)

    async def _unary(
        self,
        service: str,
        method: str,
        request: message.Message,
        response: MessageClass,
        *,
        lease: str | None = None,
        what: str = "",
        seconds: float | None = None,
    ) -> message.Message:
        call = f"{service.rsplit('.', 1)[-1]}.{method}" + (f" {what}" if what else "")
        callable_ = self._channel.unary_unary(
            f"/{service}/{method}",
            request_serializer=_serialize,
            response_deserializer=response.FromString,
        )
        try:
            answer: message.Message = await callable_(
                request, timeout=seconds or self.timeout, metadata=self.metadata(lease)
            )
        except grpc.aio.AioRpcError as e:
            raise build_error(self.socket, call, e) from e
        return answer

    # -- content ------------------------------------------------------------------

    async def info(self, digest: str) -> ContentInfo:
        """The blob's size and labels; ContainerdNotFoundError when this namespace lacks it."""
        answer = await self._unary(
            f"{_CONTENT_PACKAGE}.Content",
            "Info",
            _content("InfoRequest")(digest=digest),
            _content("InfoResponse"),
            what=digest,
        )
        return ContentInfo.from_message(_get(answer, "info"))

    async def find(self, digest: str) -> ContentInfo | None:
        """`info`, or None when the blob is not in this namespace."""
        try:
            return await self.info(digest)
        except errors.ContainerdNotFoundError:
            return None

    async def update_labels(self, digest: str, labels: Mapping[str, str]) -> ContentInfo:
        """Set these labels on a blob (an empty value removes one); others stay as they are."""
        info = _content("Info")(digest=digest, labels=dict(labels))
        mask = _FIELD_MASK_CLASS(paths=[f"labels.{key}" for key in sorted(labels)])
        answer = await self._unary(
            f"{_CONTENT_PACKAGE}.Content",
            "Update",
            _content("UpdateRequest")(info=info, update_mask=mask),
            _content("UpdateResponse"),
            what=digest,
        )
        return ContentInfo.from_message(_get(answer, "info"))

    async def list_content(self, filters: Sequence[str] = ()) -> list[ContentInfo]:
        """Every blob of the namespace matching any of `filters` (containerd filter syntax)."""
        callable_ = self._channel.unary_stream(
            f"/{_CONTENT_PACKAGE}.Content/List",
            request_serializer=_serialize,
            response_deserializer=_content("ListContentResponse").FromString,
        )
        found: list[ContentInfo] = []
        call = callable_(
            _content("ListContentRequest")(filters=list(filters)),
            timeout=self.timeout,
            metadata=self.metadata(),
        )
        try:
            async for answer in call:
                found.extend(ContentInfo.from_message(item) for item in _get(answer, "info"))
        except grpc.aio.AioRpcError as e:
            raise build_error(self.socket, "Content.List", e) from e
        return found

    async def abort(self, ref: str) -> None:
        """Drop an unfinished write (its partial data); not found is fine."""
        with contextlib.suppress(errors.ContainerdNotFoundError):
            await self._unary(
                f"{_CONTENT_PACKAGE}.Content",
                "Abort",
                _content("AbortRequest")(ref=ref),
                _EMPTY,
                what=ref,
            )

    def writer(
        self, ref: str, *, expected: str, total: int, lease: str | None = None
    ) -> ContentWriter:
        """A streamed write of one blob under `ref` (use `async with`); see ContentWriter."""
        return ContentWriter(self, ref, expected=expected, total=total, lease=lease)

    # -- leases -------------------------------------------------------------------

    async def create_lease(self, lease_id: str, labels: Mapping[str, str] | None = None) -> Lease:
        answer = await self._unary(
            f"{_LEASES_PACKAGE}.Leases",
            "Create",
            _leases("CreateRequest")(id=lease_id, labels=dict(labels or {})),
            _leases("CreateResponse"),
            what=lease_id,
        )
        return Lease.from_message(_get(answer, "lease"))

    async def delete_lease(self, lease_id: str, *, sync: bool = False) -> None:
        """Delete a lease; `sync` waits for the garbage collection it makes due."""
        await self._unary(
            f"{_LEASES_PACKAGE}.Leases",
            "Delete",
            _leases("DeleteRequest")(id=lease_id, sync=sync),
            _EMPTY,
            what=lease_id,
        )

    async def list_leases(self, filters: Sequence[str] = ()) -> list[Lease]:
        answer = await self._unary(
            f"{_LEASES_PACKAGE}.Leases",
            "List",
            _leases("ListRequest")(filters=list(filters)),
            _leases("ListResponse"),
        )
        return [Lease.from_message(item) for item in _get(answer, "leases")]

    async def add_resource(
        self, lease_id: str, resource_id: str, kind: str = RESOURCE_CONTENT
    ) -> None:
        """Make the lease hold a resource (a blob: its digest, type "content"); idempotent."""
        resource = _leases("Resource")(id=resource_id, type=kind)
        await self._unary(
            f"{_LEASES_PACKAGE}.Leases",
            "AddResource",
            _leases("AddResourceRequest")(id=lease_id, resource=resource),
            _EMPTY,
            what=f"{lease_id} {kind} {resource_id}",
        )

    async def list_resources(self, lease_id: str) -> list[Resource]:
        answer = await self._unary(
            f"{_LEASES_PACKAGE}.Leases",
            "ListResources",
            _leases("ListResourcesRequest")(id=lease_id),
            _leases("ListResourcesResponse"),
            what=lease_id,
        )
        return [
            Resource(id=str(_get(item, "id")), type=str(_get(item, "type")))
            for item in _get(answer, "resources")
        ]

    # -- snapshots ----------------------------------------------------------------

    async def prepare_snapshot(
        self,
        snapshotter: str,
        key: str,
        parent: str = "",
        *,
        labels: Mapping[str, str] | None = None,
        lease: str | None = None,
    ) -> list[Mount]:
        """An active snapshot `key` on top of `parent` ("" for none), and its mounts.

        Under `lease`, the lease holds it. ContainerdAlreadyExistsError when `key` exists,
        or when labels name a `containerd.io/snapshot.ref` target that exists (containerd
        then adds that target to the lease: how its own unpacker skips a layer)."""
        answer = await self._unary(
            f"{_SNAPSHOTS_PACKAGE}.Snapshots",
            "Prepare",
            _snapshots("PrepareSnapshotRequest")(
                snapshotter=snapshotter, key=key, parent=parent, labels=dict(labels or {})
            ),
            _snapshots("PrepareSnapshotResponse"),
            lease=lease,
            what=f"{snapshotter} {key}",
        )
        return [Mount.from_message(item) for item in _get(answer, "mounts")]

    async def commit_snapshot(
        self,
        snapshotter: str,
        name: str,
        key: str,
        *,
        labels: Mapping[str, str] | None = None,
        lease: str | None = None,
    ) -> None:
        """Commit active snapshot `key` as `name` (ContainerdAlreadyExistsError if taken)."""
        await self._unary(
            f"{_SNAPSHOTS_PACKAGE}.Snapshots",
            "Commit",
            _snapshots("CommitSnapshotRequest")(
                snapshotter=snapshotter, name=name, key=key, labels=dict(labels or {})
            ),
            _EMPTY,
            lease=lease,
            what=f"{snapshotter} {key} as {name}",
        )

    async def remove_snapshot(self, snapshotter: str, key: str) -> None:
        """Remove a snapshot; not found is fine."""
        with contextlib.suppress(errors.ContainerdNotFoundError):
            await self._unary(
                f"{_SNAPSHOTS_PACKAGE}.Snapshots",
                "Remove",
                _snapshots("RemoveSnapshotRequest")(snapshotter=snapshotter, key=key),
                _EMPTY,
                what=f"{snapshotter} {key}",
            )

    async def stat_snapshot(self, snapshotter: str, key: str) -> SnapshotInfo | None:
        """The snapshot `key` (a committed one's name), or None when there is none."""
        try:
            answer = await self._unary(
                f"{_SNAPSHOTS_PACKAGE}.Snapshots",
                "Stat",
                _snapshots("StatSnapshotRequest")(snapshotter=snapshotter, key=key),
                _snapshots("StatSnapshotResponse"),
                what=f"{snapshotter} {key}",
            )
        except errors.ContainerdNotFoundError:
            return None
        return SnapshotInfo.from_message(_get(answer, "info"))

    async def list_snapshots(
        self, snapshotter: str, filters: Sequence[str] = ()
    ) -> list[SnapshotInfo]:
        callable_ = self._channel.unary_stream(
            f"/{_SNAPSHOTS_PACKAGE}.Snapshots/List",
            request_serializer=_serialize,
            response_deserializer=_snapshots("ListSnapshotsResponse").FromString,
        )
        found: list[SnapshotInfo] = []
        call = callable_(
            _snapshots("ListSnapshotsRequest")(snapshotter=snapshotter, filters=list(filters)),
            timeout=self.timeout,
            metadata=self.metadata(),
        )
        try:
            async for answer in call:
                found.extend(SnapshotInfo.from_message(item) for item in _get(answer, "info"))
        except grpc.aio.AioRpcError as e:
            raise build_error(self.socket, "Snapshots.List", e) from e
        return found

    # -- diff ---------------------------------------------------------------------

    async def apply_diff(
        self,
        *,
        media_type: str,
        digest: str,
        size: int,
        mounts: Sequence[Mount],
        seconds: float | None = None,
    ) -> str:
        """Unpack a layer blob of the content store onto `mounts` (containerd decompresses
        it by `media_type`); returns the digest of what it applied: the diff ID. `seconds`
        bounds the call (the client's timeout by default; a large layer needs longer)."""
        descriptor = _DESCRIPTOR_CLASS(media_type=media_type, digest=digest, size=size)
        answer = await self._unary(
            f"{_DIFF_PACKAGE}.Diff",
            "Apply",
            _diff("ApplyRequest")(diff=descriptor, mounts=[m.to_message() for m in mounts]),
            _diff("ApplyResponse"),
            what=digest,
            seconds=seconds,
        )
        return str(_get(_get(answer, "applied"), "digest"))


def _serialize(msg: message.Message) -> bytes:
    return msg.SerializeToString()


class ContentWriter:
    """One blob streamed into the content store: `write()` chunks, then `commit()`.

    Opening sends a STAT carrying the expected digest and size, so a blob the namespace
    already has fails at once with ContainerdAlreadyExistsError, and a ref another writer
    holds with ContainerdUnavailableError. `restart()` starts over from offset 0 (the
    server truncates), for a download that had to be retried. Leaving the block without
    a commit aborts the write, so no partial ingest stays behind.
    """

    def __init__(
        self, client: Client, ref: str, *, expected: str, total: int, lease: str | None
    ) -> None:
        self.client = client
        self.ref = ref
        self.expected = expected
        self.total = total
        self.lease = lease
        self.offset = 0
        self.committed = False
        self._buffer = bytearray()
        self._call: Any = None

    def _what(self, action: str) -> str:
        return f"Content.Write {action} {self.expected} (ref {self.ref})"

    async def __aenter__(self) -> ContentWriter:
        callable_ = self.client._channel.stream_stream(
            f"/{_CONTENT_PACKAGE}.Content/Write",
            request_serializer=_serialize,
            response_deserializer=_content("WriteContentResponse").FromString,
        )
        self._call = callable_(metadata=self.client.metadata(self.lease))
        try:
            await self._exchange(
                "stat",
                _content("WriteContentRequest")(
                    action=WRITE_ACTION_STAT,
                    ref=self.ref,
                    total=self.total,
                    expected=self.expected,
                ),
            )
        except BaseException:
            call, self._call = self._call, None
            call.cancel()
            raise
        # A stale ingest of the same ref (an earlier attempt that died) may have data;
        # the first write goes to offset 0, which makes the server truncate it.
        self.offset = 0
        return self

    async def __aexit__(self, exc_type: object, exc: object, traceback: object) -> None:
        call, self._call = self._call, None
        if call is None:
            return
        if not self.committed:
            call.cancel()
            # Bounded; it runs even when the fetch was cancelled (the cancellation is
            # already being delivered), so no partial ingest stays behind.
            with contextlib.suppress(errors.ContainerdError, TimeoutError):
                await asyncio.wait_for(self.client.abort(self.ref), 10)

    async def _exchange(self, action: str, request: message.Message) -> message.Message:
        try:
            await self._call.write(request)
            answer = await self._call.read()
        except grpc.aio.AioRpcError as e:
            raise build_error(self.client.socket, self._what(action), e) from e
        if answer is grpc.aio.EOF:
            # The server ended the stream: its status says why.
            try:
                code = await self._call.code()
                details = await self._call.details()
            except grpc.aio.AioRpcError as e:
                raise build_error(self.client.socket, self._what(action), e) from e
            cls = _ERRORS.get(code, errors.ContainerdError)
            raise cls(
                details or "stream ended",
                socket=self.client.socket,
                call=self._what(action),
                code=code.name,
            )
        result: message.Message = answer
        return result

    async def restart(self) -> None:
        """Forget what was written; the next chunk goes to offset 0."""
        self._buffer.clear()
        self.offset = 0

    async def write(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= WRITE_CHUNK:
            chunk = bytes(self._buffer[:WRITE_CHUNK])
            del self._buffer[:WRITE_CHUNK]
            await self._send(chunk)

    async def _send(self, chunk: bytes) -> None:
        answer = await self._exchange(
            "write",
            _content("WriteContentRequest")(
                action=WRITE_ACTION_WRITE, offset=self.offset, data=chunk
            ),
        )
        self.offset = int(_get(answer, "offset"))

    async def commit(self, labels: Mapping[str, str] | None = None) -> str:
        """Write what is buffered and commit; containerd checks size and digest. Returns it.

        ContainerdAlreadyExistsError: another writer committed the same blob meanwhile.
        """
        chunk = bytes(self._buffer)
        self._buffer.clear()
        answer = await self._exchange(
            "commit",
            _content("WriteContentRequest")(
                action=WRITE_ACTION_COMMIT,
                offset=self.offset,
                data=chunk,
                total=self.total,
                expected=self.expected,
                labels=dict(labels or {}),
            ),
        )
        self.committed = True
        self.offset = int(_get(answer, "offset"))
        try:
            await self._call.done_writing()
        except grpc.aio.AioRpcError as e:
            raise build_error(self.client.socket, self._what("commit"), e) from e
        return str(_get(answer, "digest"))
