"""The runtime-built containerd messages: field numbers and wire format as containerd's API.

The numbers below are those of containerd's `api/services/content/v1/content.proto`,
`api/services/leases/v1/leases.proto`, `api/services/snapshots/v1/snapshots.proto`,
`api/services/diff/v1/diff.proto` and `api/types/{mount,descriptor}.proto` (1.6, 1.7);
a message that drifted from them would be answered with silently wrong fields, so each
one is pinned here. The real round trips run in tests/cluster/test_agent.py against a
real containerd.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2

from imageward import errors
from imageward.prepull import containerd

CONTENT = "containerd.services.content.v1"
LEASES = "containerd.services.leases.v1"
SNAPSHOTS = "containerd.services.snapshots.v1"
DIFF = "containerd.services.diff.v1"
TYPES = "imageward.containerd.wire"

EXPECTED = {
    f"{CONTENT}.Info": {
        "digest": 1,
        "size": 2,
        "created_at": 3,
        "updated_at": 4,
        "labels": 5,
    },
    f"{CONTENT}.InfoRequest": {"digest": 1},
    f"{CONTENT}.InfoResponse": {"info": 1},
    f"{CONTENT}.UpdateRequest": {"info": 1, "update_mask": 2},
    f"{CONTENT}.UpdateResponse": {"info": 1},
    f"{CONTENT}.ListContentRequest": {"filters": 1},
    f"{CONTENT}.ListContentResponse": {"info": 1},
    f"{CONTENT}.WriteContentRequest": {
        "action": 1,
        "ref": 2,
        "total": 3,
        "expected": 4,
        "offset": 5,
        "data": 6,
        "labels": 7,
    },
    f"{CONTENT}.WriteContentResponse": {
        "action": 1,
        "started_at": 2,
        "updated_at": 3,
        "offset": 4,
        "total": 5,
        "digest": 6,
    },
    f"{CONTENT}.AbortRequest": {"ref": 1},
    f"{LEASES}.Lease": {"id": 1, "created_at": 2, "labels": 3},
    f"{LEASES}.CreateRequest": {"id": 1, "labels": 3},
    f"{LEASES}.CreateResponse": {"lease": 1},
    f"{LEASES}.DeleteRequest": {"id": 1, "sync": 2},
    f"{LEASES}.ListRequest": {"filters": 1},
    f"{LEASES}.ListResponse": {"leases": 1},
    f"{LEASES}.Resource": {"id": 1, "type": 2},
    f"{LEASES}.AddResourceRequest": {"id": 1, "resource": 2},
    f"{LEASES}.ListResourcesRequest": {"id": 1},
    f"{LEASES}.ListResourcesResponse": {"resources": 1},
    f"{TYPES}.Mount": {"type": 1, "source": 2, "target": 3, "options": 4},
    f"{TYPES}.Descriptor": {"media_type": 1, "digest": 2, "size": 3, "annotations": 5},
    f"{SNAPSHOTS}.PrepareSnapshotRequest": {"snapshotter": 1, "key": 2, "parent": 3, "labels": 4},
    f"{SNAPSHOTS}.PrepareSnapshotResponse": {"mounts": 1},
    f"{SNAPSHOTS}.RemoveSnapshotRequest": {"snapshotter": 1, "key": 2},
    f"{SNAPSHOTS}.CommitSnapshotRequest": {"snapshotter": 1, "name": 2, "key": 3, "labels": 4},
    f"{SNAPSHOTS}.StatSnapshotRequest": {"snapshotter": 1, "key": 2},
    f"{SNAPSHOTS}.StatSnapshotResponse": {"info": 1},
    f"{SNAPSHOTS}.Info": {
        "name": 1,
        "parent": 2,
        "kind": 3,
        "created_at": 4,
        "updated_at": 5,
        "labels": 6,
    },
    f"{SNAPSHOTS}.ListSnapshotsRequest": {"snapshotter": 1, "filters": 2},
    f"{SNAPSHOTS}.ListSnapshotsResponse": {"info": 1},
    f"{DIFF}.ApplyRequest": {"diff": 1, "mounts": 2},
    f"{DIFF}.ApplyResponse": {"applied": 1},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_field_numbers_match_containerds_api(name: str) -> None:
    descriptor = containerd._POOL.FindMessageTypeByName(name)
    assert {field.name: field.number for field in descriptor.fields} == EXPECTED[name]


def test_snapshot_kinds_match_containerds_enum() -> None:
    enum = containerd._POOL.FindEnumTypeByName(f"{SNAPSHOTS}.Kind")
    assert {value.name: value.number for value in enum.values} == {
        "UNKNOWN": 0,
        "VIEW": 1,
        "ACTIVE": 2,
        "COMMITTED": 3,
    }


def test_mounts_round_trip_as_prepare_answers_them() -> None:
    mount = containerd.Mount("overlay", "overlay", "", ("index=off", "lowerdir=/a:/b"))
    wire = mount.to_message().SerializeToString()
    assert containerd.Mount.from_message(containerd._MOUNT_CLASS.FromString(wire)) == mount
    assert containerd.build_snapshot_resource("overlayfs") == "snapshots/overlayfs"


def test_write_actions_match_containerds_enum() -> None:
    enum = containerd._POOL.FindEnumTypeByName(f"{CONTENT}.WriteAction")
    assert {value.name: value.number for value in enum.values} == {
        "STAT": 0,
        "WRITE": 1,
        "COMMIT": 2,
    }


def _tags(data: bytes) -> list[tuple[int, int]]:
    """(field number, wire type) of each top-level field of an encoded message."""
    tags, i = [], 0

    def varint() -> int:
        nonlocal i
        result = shift = 0
        while True:
            byte = data[i]
            i += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        tags.append((number, wire))
        if wire == 0:
            varint()
        elif wire == 2:
            length = varint()
            i += length
        else:
            raise AssertionError(f"unexpected wire type {wire}")
    return tags


def test_a_write_request_is_encoded_with_containerds_tags() -> None:
    cls = containerd._content("WriteContentRequest")
    encoded = cls(
        action=containerd.WRITE_ACTION_COMMIT,
        ref="layer-sha256:ab",
        total=5,
        expected="sha256:ab",
        offset=3,
        data=b"xy",
        labels={"containerd.io/distribution.source.example.com": "team/app"},
    ).SerializeToString()
    assert _tags(encoded) == [(1, 0), (2, 2), (3, 0), (4, 2), (5, 0), (6, 2), (7, 2)]


def test_local_well_known_types_are_wire_compatible_with_googles() -> None:
    ours = containerd._class("imageward.containerd.wire.Timestamp")(seconds=1700000000, nanos=5)
    theirs = timestamp_pb2.Timestamp.FromString(ours.SerializeToString())
    assert (theirs.seconds, theirs.nanos) == (1700000000, 5)
    mask = field_mask_pb2.FieldMask(paths=["labels.a", "labels.b"])
    decoded = containerd._FIELD_MASK_CLASS.FromString(mask.SerializeToString())
    assert list(containerd._get(decoded, "paths")) == ["labels.a", "labels.b"]


def test_info_answers_become_plain_data() -> None:
    info_cls = containerd._content("Info")
    stamp = containerd._class("imageward.containerd.wire.Timestamp")(seconds=86400, nanos=0)
    info = containerd.ContentInfo.from_message(
        info_cls(digest="sha256:ab", size=42, created_at=stamp, labels={"a": "b"})
    )
    assert info.digest == "sha256:ab"
    assert info.size == 42
    assert info.labels == {"a": "b"}
    assert info.created_at is not None and info.created_at.year == 1970
    assert info.updated_at is None


class _FakeRpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.NOT_FOUND, errors.ContainerdNotFoundError),
        (grpc.StatusCode.ALREADY_EXISTS, errors.ContainerdAlreadyExistsError),
        (grpc.StatusCode.UNAVAILABLE, errors.ContainerdUnavailableError),
        (grpc.StatusCode.FAILED_PRECONDITION, errors.ContainerdError),
    ],
)
def test_errors_name_the_socket_the_call_and_the_code(
    code: grpc.StatusCode, cls: type[errors.ContainerdError]
) -> None:
    error = containerd.build_error(
        "/run/containerd/containerd.sock", "Leases.Delete x", _FakeRpcError(code, "it failed")
    )
    assert type(error) is cls
    assert str(error) == (
        f"containerd at /run/containerd/containerd.sock: Leases.Delete x: {cls.kind} "
        f"({code.name}): it failed"
    )
