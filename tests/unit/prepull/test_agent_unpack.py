"""The agent's unpacking against a fake containerd: which calls it makes, that it leaves
existing snapshots alone, removes a failed Prepare and reports what it could not do.
The same against a real containerd and kubelet is in tests/cluster."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from imageward import errors
from imageward.prepull import agent, containerd, planner, plans, unpack
from imageward.registry import model, reference

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
SN = "overlayfs"
LEASE = "lease-1"


def digest(char: str) -> model.Digest:
    return model.Digest("sha256:" + char * 64)


LAYERS = (
    model.Layer(digest("a"), 10, GZIP),
    model.Layer(digest("b"), 20, GZIP),
    model.Layer(digest("c"), 40, GZIP),
)
DIFF_IDS = (digest("1"), digest("2"), digest("3"))
CHAIN = unpack.build_chain_ids(DIFF_IDS)
CONFIG_BODY = json.dumps({"rootfs": {"type": "layers", "diff_ids": list(DIFF_IDS)}}).encode()
CONFIG = model.Digest("sha256:" + hashlib.sha256(CONFIG_BODY).hexdigest())
IMAGE = "registry.example:5000/team/web:1.0"


@dataclasses.dataclass
class Snapshot:
    parent: str
    committed: bool


class FakeCtr:
    """The containerd calls the unpacking makes, over dicts; records each call."""

    namespace = "k8s.io"

    def __init__(self, *, diff_ids: Mapping[str, str] | None = None) -> None:
        self.snapshots: dict[str, Snapshot] = {}
        self.resources: set[tuple[str, str, str]] = set()
        self.calls: list[tuple[str, ...]] = []
        default = {lay.digest: diff_id for lay, diff_id in zip(LAYERS, DIFF_IDS, strict=True)}
        self.diff_ids = dict(diff_ids or default)
        self.fail_apply: set[str] = set()
        self.commit_race = False

    async def stat_snapshot(self, snapshotter: str, key: str) -> containerd.SnapshotInfo | None:
        self.calls.append(("stat", key))
        found = self.snapshots.get(key)
        if found is None:
            return None
        kind = containerd.SNAPSHOT_KIND_COMMITTED if found.committed else 2
        return containerd.SnapshotInfo(key, found.parent, kind, {})

    async def prepare_snapshot(
        self,
        snapshotter: str,
        key: str,
        parent: str = "",
        *,
        labels: Mapping[str, str] | None = None,
        lease: str | None = None,
    ) -> list[containerd.Mount]:
        self.calls.append(("prepare", key, parent))
        target = (labels or {}).get(unpack.LABEL_SNAPSHOT_REF)
        if target in self.snapshots:
            raise errors.ContainerdAlreadyExistsError("exists", socket="s", call="c", code="x")
        assert parent == "" or self.snapshots[parent].committed
        self.snapshots[key] = Snapshot(parent, committed=False)
        if lease:
            self.resources.add((lease, key, containerd.build_snapshot_resource(snapshotter)))
        return [containerd.Mount("overlay", "overlay", "", (f"upperdir={key}",))]

    async def apply_diff(
        self,
        *,
        media_type: str,
        digest: str,
        size: int,
        mounts: Sequence[containerd.Mount],
        seconds: float | None = None,
    ) -> str:
        self.calls.append(("apply", digest))
        if digest in self.fail_apply:
            raise errors.ContainerdError("disk full", socket="s", call="Diff.Apply", code="x")
        return self.diff_ids[digest]

    async def commit_snapshot(
        self,
        snapshotter: str,
        name: str,
        key: str,
        *,
        labels: Mapping[str, str] | None = None,
        lease: str | None = None,
    ) -> None:
        self.calls.append(("commit", name))
        if self.commit_race:
            self.snapshots[name] = Snapshot(self.snapshots[key].parent, committed=True)
        if name in self.snapshots:
            raise errors.ContainerdAlreadyExistsError("exists", socket="s", call="c", code="x")
        active = self.snapshots.pop(key)
        self.snapshots[name] = Snapshot(active.parent, committed=True)
        if lease:
            self.resources.add((lease, name, containerd.build_snapshot_resource(snapshotter)))

    async def remove_snapshot(self, snapshotter: str, key: str) -> None:
        self.calls.append(("remove", key))
        self.snapshots.pop(key, None)

    async def add_resource(self, lease_id: str, resource_id: str, kind: str = "content") -> None:
        self.resources.add((lease_id, resource_id, kind))


class FakeRegistry:
    def __init__(self, body: bytes = CONFIG_BODY) -> None:
        self.body = body
        self.fetches = 0

    async def fetch_blob(
        self, ref: model.ImageReference, digest: model.Digest, *, max_bytes: int, **_: Any
    ) -> bytes:
        self.fetches += 1
        if len(self.body) > max_bytes:
            raise errors.TooLargeError(
                "too large", registry=ref.registry, repository=ref.repository, reference=digest
            )
        return self.body


def make_plan(layers: Sequence[model.Layer] = LAYERS, planned: int = 3) -> agent.AgentPlan:
    images = [planner.PlanImage(IMAGE, digest("f"), tuple(layers), config=CONFIG)]
    plan = planner.build_plan(images, budget=sum(lay.size for lay in layers[:planned]) or None)
    references = {IMAGE: reference.parse_reference(IMAGE)}
    document = plans.build_plan_document("web", "shop", "uid-1", plan, references, images=images)
    return agent.parse_plan(json.dumps(document), source="plan.json")


def make_agent(ctr: FakeCtr, registry: FakeRegistry, plan: agent.AgentPlan) -> agent.Agent:
    progress = agent.Progress()
    progress.start(plan)
    for blob in plan.blobs:
        progress.set(blob.digest, agent.BlobState.HELD)
    return agent.Agent(agent.Options(), ctr, registry, progress)  # type: ignore[arg-type]


def run(ctr: FakeCtr, registry: FakeRegistry, plan: agent.AgentPlan) -> agent.UnpackProgress:
    worker = make_agent(ctr, registry, plan)
    (image,) = plan.unpack
    return asyncio.run(worker._unpack_image(plan, LEASE, image, []))


def test_the_plan_lists_the_image_prefix_and_its_hash_covers_it() -> None:
    plan = make_plan()
    (image,) = plan.unpack
    assert image.layers == LAYERS and image.layer_count == 3 and image.config == CONFIG
    # Two of three planned: only those two are listed, and the hash differs.
    half = make_plan(planned=2)
    assert half.unpack[0].layers == LAYERS[:2]
    assert half.hash != plan.hash


def test_held_layers_become_committed_snapshots_held_by_the_lease() -> None:
    ctr, registry = FakeCtr(), FakeRegistry()
    result = run(ctr, registry, make_plan())
    assert result == agent.UnpackProgress(agent.UnpackState.DONE, 3, 3, 3)
    assert {k: (s.parent, s.committed) for k, s in ctr.snapshots.items()} == {
        CHAIN[0]: ("", True),
        CHAIN[1]: (CHAIN[0], True),
        CHAIN[2]: (CHAIN[1], True),
    }
    for chain_id in CHAIN:
        assert (LEASE, chain_id, "snapshots/overlayfs") in ctr.resources
    prepared = [call for call in ctr.calls if call[0] == "prepare"]
    assert [call[2] for call in prepared] == ["", CHAIN[0], CHAIN[1]]
    assert all(call[1].startswith("imageward-extract-") for call in prepared)


def test_existing_snapshots_are_left_alone_and_taken_by_the_lease() -> None:
    ctr, registry = FakeCtr(), FakeRegistry()
    plan = make_plan()
    run(ctr, registry, plan)
    ctr.calls.clear()
    ctr.resources.clear()
    again = run(ctr, registry, plan)
    assert again == agent.UnpackProgress(agent.UnpackState.DONE, 3, 3, 0)
    assert [call[0] for call in ctr.calls] == ["stat", "stat", "stat"]
    assert {(LEASE, c, "snapshots/overlayfs") for c in CHAIN} <= ctr.resources


def test_only_the_held_prefix_is_unpacked() -> None:
    ctr, registry = FakeCtr(), FakeRegistry()
    plan = make_plan()
    worker = make_agent(ctr, registry, plan)
    worker.progress.set(digest("b"), agent.BlobState.FAILED, "gone")
    result = asyncio.run(worker._unpack_image(plan, LEASE, plan.unpack[0], []))
    assert (result.layers, result.snapshots) == (1, 1)
    assert set(ctr.snapshots) == {CHAIN[0]}


def test_a_failed_apply_removes_its_prepare_and_is_reported() -> None:
    ctr, registry = FakeCtr(), FakeRegistry()
    ctr.fail_apply.add(digest("b"))
    result = run(ctr, registry, make_plan())
    assert result.state is agent.UnpackState.FAILED and "disk full" in (result.reason or "")
    assert result.snapshots == 1
    assert set(ctr.snapshots) == {CHAIN[0]}  # no active snapshot left behind
    assert any(call[0] == "remove" for call in ctr.calls)


def test_a_layer_that_unpacks_to_another_diff_id_is_not_committed() -> None:
    ctr = FakeCtr(diff_ids={digest("a"): digest("9"), digest("b"): DIFF_IDS[1]})
    result = run(ctr, FakeRegistry(), make_plan())
    assert result.state is agent.UnpackState.FAILED
    assert f"unpacks to {digest('9')}, the config says {DIFF_IDS[0]}" in (result.reason or "")
    assert ctr.snapshots == {}


def test_a_commit_that_lost_the_race_keeps_the_winner() -> None:
    ctr = FakeCtr()
    ctr.commit_race = True
    result = run(ctr, FakeRegistry(), make_plan())
    assert result == agent.UnpackProgress(agent.UnpackState.DONE, 3, 3, 0)
    assert all(s.committed for s in ctr.snapshots.values()) and set(ctr.snapshots) == set(CHAIN)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"x" * (3 * 1024 * 1024), "too large"),
        (b"{", "not JSON"),
        (json.dumps({"rootfs": {"type": "layers", "diff_ids": [DIFF_IDS[0]]}}).encode(), "lists 1"),
    ],
)
def test_an_unusable_config_is_reported_and_nothing_is_unpacked(body: bytes, message: str) -> None:
    ctr = FakeCtr()
    result = run(ctr, FakeRegistry(body), make_plan())
    assert result.state is agent.UnpackState.FAILED and message in (result.reason or "")
    assert ctr.snapshots == {}


def test_progress_waits_for_unpacking_and_reports_it() -> None:
    plan = make_plan()
    progress = agent.Progress()
    progress.start(plan)
    for blob in plan.blobs:
        progress.set(blob.digest, agent.BlobState.HELD)
    ready, reason, message = progress.summary()
    assert (ready, reason) == (False, "Unpacking")
    progress.unpacks[IMAGE] = agent.UnpackProgress(agent.UnpackState.DONE, 3, 3, 3)
    ready, reason, message = progress.summary()
    assert (ready, reason) == (True, "Held") and message.endswith(", 3 unpacked")
    progress.unpacks[IMAGE] = agent.UnpackProgress(agent.UnpackState.FAILED, 3, 0, 0, "bad")
    ready, reason, message = progress.summary()
    assert ready and f"unpacking {IMAGE} failed: bad" in message
    assert progress.to_json()["unpack"] == [
        {"image": IMAGE, "state": "failed", "layers": 3, "snapshots": 0, "made": 0, "reason": "bad"}
    ]
    # The same plan again (a resync) keeps what is known: readiness does not flap.
    progress.start(plan)
    assert progress.ready


def test_the_config_is_fetched_once_per_plan() -> None:
    ctr, registry = FakeCtr(), FakeRegistry()
    plan = make_plan()
    worker = make_agent(ctr, registry, plan)
    for _ in range(2):
        asyncio.run(worker._unpack_image(plan, LEASE, plan.unpack[0], []))
    assert registry.fetches == 1
