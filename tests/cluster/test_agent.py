"""`imageward agent` (PrePull Layers mode) against a real containerd and real registries.

The plan is made the way the controller makes it (`planner.build_plan` over images pushed
to the registry, `daemonset.build_plan_document`), the agent runs as the real command,
and every claim is checked from outside: blob requests counted at a proxy in front of
the registry, `ctr content ls` / `ctr leases ls`, and pulls with `ctr images pull`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import json
import os
import pathlib
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from imageward import constants, errors
from imageward.localcluster import (
    containerd,
    controlplane,
    faultproxy,
    images,
    processes,
    registries,
    tools,
)
from imageward.prepull import agent, daemonset, planner, plans, unpack
from imageward.prepull import containerd as ctrd
from imageward.registry import model, reference
from tests import utils
from tests.cluster import agents
from tests.conftest import RunningOperator

pytestmark = pytest.mark.cluster

SOURCE_LABEL = "containerd.io/distribution.source."
BLOB_PATH = re.compile(r"^/v2/(?P<repository>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})$")


@dataclasses.dataclass(frozen=True, slots=True)
class ImageSet:
    """Images sharing base layers, pushed to a registry, named through `host`."""

    host: str
    repositories: tuple[str, ...]
    manifests: tuple[images.Manifest, ...]

    @property
    def references(self) -> list[str]:
        return [f"{self.host}/{repository}:1.0" for repository in self.repositories]

    def layers(self, index: int) -> set[str]:
        return {layer.digest for layer in self.manifests[index].layers}

    def config(self, index: int) -> str:
        config = self.manifests[index].config
        assert config is not None
        return config.digest

    def plan_images(self, indices: Sequence[int] | None = None) -> list[planner.PlanImage]:
        chosen = range(len(self.manifests)) if indices is None else indices
        return [
            planner.PlanImage(
                image=self.references[i],
                digest=model.Digest(self.manifests[i].digest),
                layers=tuple(
                    model.Layer(model.Digest(layer.digest), layer.size, images.OCI_LAYER_GZIP)
                    for layer in self.manifests[i].layers
                ),
                config=model.Digest(self.config(i)),
            )
            for i in chosen
        ]


def push_images(
    registry: registries.Registry, host: str, *, count: int = 3, top_layer_size: int = 256 * 1024
) -> ImageSet:
    """`count` images with 3 shared base layers and a top layer each (unique content)."""
    name = f"agent-{uuid.uuid4().hex[:8]}"
    manifests = images.shared_base_images(
        count, base_layer_size=512 * 1024, top_layer_size=top_layer_size, name=name
    )
    pusher = registry.client()
    repositories = []
    for index, manifest in enumerate(manifests):
        repository = f"{name}/app-{index}"
        pusher.push(repository, manifest, tag="1.0")
        repositories.append(repository)
    return ImageSet(host, tuple(repositories), tuple(manifests))


def write_plan(
    path: pathlib.Path,
    image_set: ImageSet,
    plan: planner.Plan,
    *,
    prepull: tuple[str, str, str] = ("shop", "web", "uid-1"),
    pull_secrets: Mapping[str, pathlib.Path] | None = None,
    unpack_images: Sequence[planner.PlanImage] = (),
) -> dict[str, Any]:
    """The plan file as the operator's plan ConfigMap holds it (every node), with pull
    secrets kept in test directories (the plan-file form of the credentials); the
    operator's plans list their images for unpacking too (`unpack_images`)."""
    references = {ref: reference.parse_reference(ref) for ref in image_set.references}
    namespace, name, uid = prepull
    document = daemonset.build_plan_document(
        name,
        namespace,
        uid,
        plan,
        references,
        pull_secrets=sorted(pull_secrets or {}),
        images=unpack_images,
    )
    for entry in document["pullSecrets"]:
        entry["path"] = str((pull_secrets or {})[entry["name"]])
    path.write_text(json.dumps(document, sort_keys=True, separators=(",", ":")))
    return document


def agent_argv(
    plan_path: pathlib.Path, daemon: containerd.Containerd, *hosts: str, extra: Sequence[str] = ()
) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "imageward",
        "agent",
        "--plan",
        str(plan_path),
        "--containerd-socket",
        str(daemon.socket),
    ]
    for host in hosts:
        argv += ["--insecure-registry", host]
    return [*argv, *extra]


def run_agent_once(
    plan_path: pathlib.Path, daemon: containerd.Containerd, *hosts: str, extra: Sequence[str] = ()
) -> tuple[int, dict[str, Any], str]:
    result = subprocess.run(
        agent_argv(plan_path, daemon, *hosts, extra=["--once", *extra]),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env=clean_env(),
    )
    progress = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.returncode, progress, result.stderr


def blob_gets(proxy: faultproxy.FaultProxy) -> collections.Counter[str]:
    """Digests of the blobs fetched (GET) through the proxy since its last reset."""
    found: collections.Counter[str] = collections.Counter()
    for item in proxy.seen:
        match = BLOB_PATH.match(item.path)
        if item.method == "GET" and match:
            found[match["digest"]] += 1
    return found


def content_labels(daemon: containerd.Containerd) -> dict[str, str]:
    """`ctr content ls` as {digest: LABELS column}."""
    rows = daemon.ctr("content", "ls").stdout.splitlines()[1:]
    table = {}
    for row in rows:
        fields = row.split()
        if fields:
            table[fields[0]] = fields[-1] if "=" in fields[-1] else ""
    return table


def leases(daemon: containerd.Containerd) -> dict[str, str]:
    """`ctr leases ls` as {id: LABELS column}."""
    rows = daemon.ctr("leases", "ls").stdout.splitlines()[1:]
    return {row.split()[0]: row.split()[-1] for row in rows if row.split()}


def leases_of(daemon: containerd.Containerd, prepull_name: str) -> dict[str, str]:
    marker = f"{agent.LABEL_PREPULL_NAME}={prepull_name}"
    return {lease: labels for lease, labels in leases(daemon).items() if marker in labels}


async def lease_resources(daemon: containerd.Containerd, lease_id: str) -> set[str]:
    async with ctrd.Client(str(daemon.socket), daemon.namespace) as client:
        return {resource.id for resource in await client.list_resources(lease_id)}


def ingest(daemon: containerd.Containerd, digest: str, data: bytes) -> None:
    """`ctr content ingest`: the blob lands under ctr's own short-lived lease."""
    argv = [str(tools.find("ctr")), "--address", str(daemon.socket), "-n", daemon.namespace]
    subprocess.run(
        [*argv, "content", "ingest", "--expected-digest", digest, f"probe-{digest}"],
        input=data,
        capture_output=True,
        timeout=60,
        check=True,
    )


def clean_env() -> dict[str, str]:
    """The agent's environment without the developer's IMAGEWARD_* settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("IMAGEWARD_")}


def await_resources(daemon: containerd.Containerd, lease_id: str) -> set[str]:
    return asyncio.run(lease_resources(daemon, lease_id))


def collect_garbage(daemon: containerd.Containerd) -> None:
    """A real GC: make an empty lease and delete it with --sync (containerd collects
    everything no image, lease or gc.root holds before the delete returns)."""
    probe = f"gc-probe-{uuid.uuid4().hex[:8]}"
    daemon.ctr("leases", "create", "--id", probe)
    daemon.ctr("leases", "delete", "--sync", probe)


@pytest.fixture(scope="module")
def proxy(registry_set: registries.Registries) -> Iterator[faultproxy.FaultProxy]:
    """A counting proxy in front of the anonymous registry; plans and pulls go through it."""
    with faultproxy.FaultProxy(registry_set.anonymous.url) as started:
        yield started


@pytest.fixture
def counting(proxy: faultproxy.FaultProxy) -> faultproxy.FaultProxy:
    proxy.clear()
    return proxy


def test_pull_after_the_agent_downloads_only_unplanned_layers(
    tmp_path: pathlib.Path,
    registry_set: registries.Registries,
    containerd_daemon: containerd.Containerd,
    counting: faultproxy.FaultProxy,
) -> None:
    image_set = push_images(registry_set.anonymous, counting.host)
    # minShare 2: only the three base layers every image shares are planned.
    plan = planner.build_plan(image_set.plan_images(), budget=None, min_share=2)
    base = image_set.layers(0) & image_set.layers(1) & image_set.layers(2)
    assert {layer.digest for layer in plan.layers} == base
    plan_path = tmp_path / "plan.json"
    document = write_plan(plan_path, image_set, plan)

    status, progress, stderr = run_agent_once(plan_path, containerd_daemon, counting.host)
    assert status == 0, stderr
    assert progress["ready"] is True
    assert progress["planHash"] == document["hash"]
    assert progress["layers"] == {
        "total": 3,
        "pending": 0,
        "fetching": 0,
        "held": 3,
        "failed": 0,
    }
    assert progress["bytes"]["held"] == plan.bytes == progress["bytes"]["fetched"]
    assert blob_gets(counting) == collections.Counter(base), "each planned blob fetched once"
    assert base <= containerd_daemon.content_digests()

    # The source labels name the registry and every repository holding the layer.
    labels = content_labels(containerd_daemon)
    # containerd keys the label by the host without its port; so does the agent.
    expected_label = SOURCE_LABEL + "127.0.0.1=" + ",".join(sorted(image_set.repositories))
    for digest in base:
        assert expected_label in labels[digest], labels[digest]

    counting.reset_counts()
    containerd_daemon.pull(image_set.references[0])
    top = image_set.layers(0) - base
    assert blob_gets(counting) == collections.Counter(top | {image_set.config(0)})

    # The pull found the repository in the agent's label and left it as it was.
    assert content_labels(containerd_daemon)[next(iter(base))].count(SOURCE_LABEL) == 1


def chain_ids(manifest: images.Manifest) -> tuple[str, ...]:
    return unpack.build_chain_ids(layer.diff_id for layer in manifest.layers)


def test_the_agent_unpacks_the_planned_prefix_and_a_pull_unpacks_only_the_rest(
    tmp_path: pathlib.Path,
    registry_set: registries.Registries,
    containerd_daemon: containerd.Containerd,
    counting: faultproxy.FaultProxy,
) -> None:
    image_set = push_images(registry_set.anonymous, counting.host, count=2)
    plan = planner.build_plan(image_set.plan_images(), budget=None, min_share=2)
    base = image_set.layers(0) & image_set.layers(1)
    assert {layer.digest for layer in plan.layers} == base
    plan_path = tmp_path / "plan.json"
    document = write_plan(
        plan_path,
        image_set,
        plan,
        prepull=("shop", "unpack", "uid-u"),
        unpack_images=image_set.plan_images(),
    )
    assert len(document["images"]) == 2
    status, progress, stderr = run_agent_once(plan_path, containerd_daemon, counting.host)
    assert status == 0, stderr
    assert progress["ready"] is True
    assert [item["state"] for item in progress["unpack"]] == ["done", "done"], progress
    # The three shared base layers are committed snapshots named by chain ID, made once
    # (both images share them), held by the PrePull's lease; the top layers are not.
    chain = chain_ids(image_set.manifests[0])
    assert chain_ids(image_set.manifests[1])[:3] == chain[:3]
    assert sum(item["made"] for item in progress["unpack"]) == 3
    found = containerd_daemon.snapshots()
    assert found[chain[0]] == ("", "Committed")
    assert found[chain[1]] == (chain[0], "Committed")
    assert found[chain[2]] == (chain[1], "Committed")
    assert chain[3] not in found
    assert not [key for key in found if key.startswith(unpack.KEY_PREFIX)], found
    (lease_id,) = leases_of(containerd_daemon, "unpack")
    assert set(chain[:3]) <= await_resources(containerd_daemon, lease_id)
    # They survive a garbage collection: the lease holds them.
    collect_garbage(containerd_daemon)
    assert set(chain[:3]) <= set(containerd_daemon.snapshots())

    # Again (a resync): nothing is made, nothing is fetched but the config is not either.
    counting.reset_counts()
    status, progress, stderr = run_agent_once(plan_path, containerd_daemon, counting.host)
    assert status == 0, stderr
    assert sum(item["made"] for item in progress["unpack"]) == 0
    assert sum(item["snapshots"] for item in progress["unpack"]) == 6

    # A pull (containerd's own unpacker) finds them and unpacks only the top layer: the
    # agent's snapshots are the ones it keeps (their labels say who made them).
    containerd_daemon.pull(image_set.references[0])
    found = containerd_daemon.snapshots()
    assert found[chain[3]] == (chain[2], "Committed")
    info = json.loads(containerd_daemon.ctr("snapshots", "info", chain[2]).stdout)
    assert info["Labels"].get(constants.LABEL_MANAGED_BY) == constants.MANAGER_NAME, info


def test_the_lease_keeps_blobs_through_garbage_collection(
    tmp_path: pathlib.Path,
    registry_set: registries.Registries,
    containerd_daemon: containerd.Containerd,
    counting: faultproxy.FaultProxy,
) -> None:
    image_set = push_images(registry_set.anonymous, counting.host, count=2)
    plan = planner.build_plan(image_set.plan_images(), budget=None, min_share=1)
    planned = {layer.digest for layer in plan.layers}
    plan_path = tmp_path / "plan.json"
    write_plan(plan_path, image_set, plan, prepull=("shop", "gc", "uid-gc"))
    status, _progress, stderr = run_agent_once(plan_path, containerd_daemon, counting.host)
    assert status == 0, stderr
    held = leases_of(containerd_daemon, "gc")
    assert len(held) == 1
    (lease_id,) = held
    assert f"{agent.LABEL_PLAN_HASH}=" in held[lease_id]
    assert ctrd.LABEL_GC_EXPIRE in held[lease_id]

    # A blob nobody holds, to show the GC really runs: ctr's ingest lease is gone once
    # the ingest returns, so the next collection takes it.
    loose = images.random_layer(64 * 1024, seed=f"loose-{uuid.uuid4().hex}")
    ingest(containerd_daemon, loose.digest, loose.data)
    assert loose.digest in containerd_daemon.content_digests()

    collect_garbage(containerd_daemon)
    stored = containerd_daemon.content_digests()
    assert loose.digest not in stored, "the GC did not run"
    assert planned <= stored, "the lease did not keep the planned blobs"

    # Without the lease the same blobs go at the next collection.
    containerd_daemon.ctr("leases", "delete", "--sync", lease_id)
    assert not planned & containerd_daemon.content_digests()


async def test_a_second_prepull_sharing_layers_fetches_nothing_twice(
    tmp_path: pathlib.Path,
    registry_set: registries.Registries,
    containerd_daemon: containerd.Containerd,
    counting: faultproxy.FaultProxy,
) -> None:
    image_set = push_images(registry_set.anonymous, counting.host)
    first = planner.build_plan(image_set.plan_images([0, 1]), budget=None)
    second = planner.build_plan(image_set.plan_images([1, 2]), budget=None)
    first_blobs = {layer.digest for layer in first.layers}
    second_blobs = {layer.digest for layer in second.layers}
    shared = first_blobs & second_blobs
    assert len(shared) == 4  # the three base layers and image 1's top layer

    first_path, second_path = tmp_path / "first.json", tmp_path / "second.json"
    write_plan(first_path, image_set, first, prepull=("shop", "first", "uid-a"))
    write_plan(second_path, image_set, second, prepull=("shop", "second", "uid-b"))
    status, _, stderr = await asyncio.to_thread(
        run_agent_once, first_path, containerd_daemon, counting.host
    )
    assert status == 0, stderr
    assert blob_gets(counting) == collections.Counter(first_blobs)

    counting.reset_counts()
    status, progress, stderr = await asyncio.to_thread(
        run_agent_once, second_path, containerd_daemon, counting.host
    )
    assert status == 0, stderr
    assert blob_gets(counting) == collections.Counter(second_blobs - first_blobs)
    assert progress["bytes"]["fetched"] == sum(
        layer.size for layer in second.layers if layer.digest not in first_blobs
    )

    (first_lease,) = leases_of(containerd_daemon, "first")
    (second_lease,) = leases_of(containerd_daemon, "second")
    assert await lease_resources(containerd_daemon, first_lease) == first_blobs
    assert await lease_resources(containerd_daemon, second_lease) == second_blobs

    # Either lease alone keeps the shared blobs.
    containerd_daemon.ctr("leases", "delete", "--sync", first_lease)
    stored = containerd_daemon.content_digests()
    assert second_blobs <= stored
    assert not (first_blobs - second_blobs) & stored
    containerd_daemon.ctr("leases", "delete", "--sync", second_lease)


def test_blobs_containerd_has_are_leased_and_labelled_without_a_download(
    tmp_path: pathlib.Path,
    registry_set: registries.Registries,
    containerd_daemon: containerd.Containerd,
    counting: faultproxy.FaultProxy,
) -> None:
    image_set = push_images(registry_set.anonymous, counting.host, count=2)
    # A pull of image 0: containerd has its layers, labelled with its repository only.
    containerd_daemon.pull(image_set.references[0])
    base = image_set.layers(0) & image_set.layers(1)
    before = content_labels(containerd_daemon)
    for digest in base:
        assert f"{SOURCE_LABEL}127.0.0.1={image_set.repositories[0]}" in before[digest]

    counting.reset_counts()
    plan = planner.build_plan(image_set.plan_images(), budget=None)
    plan_path = tmp_path / "plan.json"
    write_plan(plan_path, image_set, plan, prepull=("shop", "present", "uid-p"))
    status, progress, stderr = run_agent_once(plan_path, containerd_daemon, counting.host)
    assert status == 0, stderr
    # Only image 1's top layer was missing; what containerd had was not fetched again.
    top = image_set.layers(1) - image_set.layers(0)
    assert blob_gets(counting) == collections.Counter(top)
    assert progress["bytes"]["fetched"] == sum(
        layer.size for layer in image_set.manifests[1].layers if layer.digest in top
    )
    after = content_labels(containerd_daemon)
    both = ",".join(image_set.repositories)  # app-0 (containerd's) then app-1 (merged in)
    for digest in base:
        assert f"{SOURCE_LABEL}127.0.0.1={both}" in after[digest], after[digest]
    (lease_id,) = leases_of(containerd_daemon, "present")
    assert await_resources(containerd_daemon, lease_id) == {layer.digest for layer in plan.layers}
    containerd_daemon.ctr("leases", "delete", "--sync", lease_id)


def test_blobs_of_a_private_registry_come_with_the_pull_secret(
    tmp_path: pathlib.Path,
    registry_set: registries.Registries,
    containerd_daemon: containerd.Containerd,
) -> None:
    registry = registry_set.htpasswd
    image_set = push_images(registry, registry.host, count=2)
    plan = planner.build_plan(image_set.plan_images(), budget=None, min_share=2)
    secret_dir = tmp_path / "pull-secrets" / "regcred"
    plan_path = tmp_path / "plan.json"
    write_plan(
        plan_path,
        image_set,
        plan,
        prepull=("shop", "private", "uid-s"),
        pull_secrets={"regcred": secret_dir},
    )

    # The Secret volume is optional: a missing Secret leaves nothing there.
    status, progress, _stderr = run_agent_once(plan_path, containerd_daemon, registry.host)
    assert status == 1
    assert progress["ready"] is False
    assert progress["layers"]["failed"] == len(plan.layers)
    reasons = {failure["reason"] for failure in progress["failures"]}
    assert all("unauthorized" in reason and "regcred" in reason for reason in reasons), reasons

    secret_dir.mkdir(parents=True)
    (secret_dir / ".dockerconfigjson").write_text(json.dumps(registry.docker_config()))
    status, progress, stderr = run_agent_once(plan_path, containerd_daemon, registry.host)
    assert status == 0, stderr
    assert progress["ready"] is True
    assert {layer.digest for layer in plan.layers} <= containerd_daemon.content_digests()
    (lease_id,) = leases_of(containerd_daemon, "private")
    containerd_daemon.ctr("leases", "delete", "--sync", lease_id)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_the_running_agent_serves_readiness_follows_plan_changes_and_keeps_its_lease(
    tmp_path: pathlib.Path,
    registry_set: registries.Registries,
    containerd_daemon: containerd.Containerd,
    counting: faultproxy.FaultProxy,
) -> None:
    image_set = push_images(registry_set.anonymous, counting.host)
    first = planner.build_plan(image_set.plan_images([0, 1]), budget=None)
    second = planner.build_plan(image_set.plan_images([1, 2]), budget=None)
    plan_path = tmp_path / "plan.json"
    identity = ("shop", "follow", "uid-f")
    first_doc = write_plan(plan_path, image_set, first, prepull=identity)
    # Slow blobs: the agent is seen not ready, with its progress, before it is ready.
    counting.add(faultproxy.Fault(path=r"/blobs/", method="GET", latency=0.3))
    port = processes.free_port()
    base = f"http://127.0.0.1:{port}"
    argv = agent_argv(
        plan_path,
        containerd_daemon,
        counting.host,
        extra=["--listen", f"127.0.0.1:{port}", "--poll-interval", "0.2", "--concurrency", "2"],
    )

    def start() -> processes.ManagedProcess:
        process = processes.ManagedProcess(
            f"agent-{uuid.uuid4().hex[:6]}",
            argv,
            log_dir=tmp_path / "logs",
            env=clean_env(),
            grace=20,
        )
        process.start()
        processes.wait_for_http(f"{base}/healthz", timeout=30, expect_status=200, process=process)
        return process

    process = start()
    try:
        # /readyz lists every plan the agent serves (here one); 503 until each is held.
        def started() -> dict[str, Any] | None:
            code, answer = _get(f"{base}/readyz")
            document: dict[str, Any] = json.loads(answer)
            plans_ = document["plans"]
            return plans_[0] if code == 503 and plans_ and plans_[0]["layers"]["total"] else None

        assert utils.wait_for("the agent to start", started)["layers"]["total"] == len(first.layers)

        def ready_with(plan_hash: str) -> dict[str, Any] | None:
            code, answer = _get(f"{base}/readyz")
            document: dict[str, Any] = json.loads(answer)
            (plan,) = document["plans"] or [{}]
            return plan if code == 200 and plan.get("planHash") == plan_hash else None

        ready = utils.wait_for("the agent to be ready", lambda: ready_with(first_doc["hash"]))
        assert ready["bytes"]["held"] == first.bytes
        status, text = _get(f"{base}/metrics")
        assert status == 200
        assert 'imageward_agent_fetched_bytes_total{prepull="shop/follow"}' in text.decode()
        assert (
            'imageward_agent_fetch_duration_seconds_count{prepull="shop/follow"}' in text.decode()
        )
        (first_lease,) = leases_of(containerd_daemon, "follow")

        # A new plan: a new lease takes its blobs, then the old lease goes (with a GC).
        counting.clear()
        second_doc = write_plan(plan_path, image_set, second, prepull=identity)
        utils.wait_for("the agent to hold the new plan", lambda: ready_with(second_doc["hash"]))
        utils.wait_for(
            "the old lease to go",
            lambda: first_lease not in leases_of(containerd_daemon, "follow"),
        )
        (second_lease,) = leases_of(containerd_daemon, "follow")
        assert (
            f"{agent.LABEL_PLAN_HASH}={second_doc['hash']}"
            in leases(containerd_daemon)[second_lease]
        )
        first_only = {layer.digest for layer in first.layers} - {
            layer.digest for layer in second.layers
        }
        assert not first_only & containerd_daemon.content_digests()
        assert set(blob_gets(counting)) == {layer.digest for layer in second.layers} - {
            layer.digest for layer in first.layers
        }

        # SIGTERM (what stop() sends first): the agent exits cleanly and the lease stays.
        assert process.stop() == 0, process.log_tail()
        assert second_lease in leases(containerd_daemon)

        # A restarted agent adopts its lease and fetches nothing.
        counting.reset_counts()
        process = start()
        utils.wait_for("the restarted agent to be ready", lambda: ready_with(second_doc["hash"]))
        assert list(leases_of(containerd_daemon, "follow")) == [second_lease]
        assert not blob_gets(counting)
    finally:
        process.stop()
        for lease_id in leases_of(containerd_daemon, "follow"):
            containerd_daemon.ctr("leases", "delete", "--sync", lease_id, check=False)


def test_an_altered_download_is_never_committed(
    tmp_path: pathlib.Path,
    registry_set: registries.Registries,
    containerd_daemon: containerd.Containerd,
    counting: faultproxy.FaultProxy,
) -> None:
    image_set = push_images(registry_set.anonymous, counting.host, count=1)
    plan = planner.build_plan(image_set.plan_images(), budget=None)
    victim = max(plan.layers, key=lambda planned: planned.size).digest
    counting.add(faultproxy.Fault(path=f"/blobs/{victim}$", method="GET", tamper=True))
    plan_path = tmp_path / "plan.json"
    write_plan(plan_path, image_set, plan, prepull=("shop", "tampered", "uid-t"))

    status, progress, _stderr = run_agent_once(plan_path, containerd_daemon, counting.host)
    assert status == 1
    assert progress["layers"]["failed"] == 1
    assert progress["layers"]["held"] == len(plan.layers) - 1
    (failure,) = progress["failures"]
    assert failure["digest"] == victim
    assert "digest mismatch" in failure["reason"]
    assert victim not in containerd_daemon.content_digests()
    # The write was aborted: no partial ingest is left behind.
    assert victim not in containerd_daemon.ctr("content", "active").stdout
    (lease_id,) = leases_of(containerd_daemon, "tampered")
    containerd_daemon.ctr("leases", "delete", "--sync", lease_id)


async def test_the_containerd_client_round_trip(containerd_daemon: containerd.Containerd) -> None:
    data = images.random_layer(3 * 1024 * 1024, seed=f"client-{uuid.uuid4().hex}").data
    digest = images.sha256_digest(data)
    lease_id = f"client-test-{uuid.uuid4().hex[:8]}"
    source = SOURCE_LABEL + "registry.example"
    async with ctrd.Client(str(containerd_daemon.socket), containerd_daemon.namespace) as client:
        lease = await client.create_lease(lease_id, {"purpose": "test"})
        assert lease.labels == {"purpose": "test"}
        assert lease.created_at is not None
        assert await client.find(digest) is None
        async with client.writer(
            agent.build_ingest_ref(digest), expected=digest, total=len(data), lease=lease_id
        ) as writer:
            await writer.write(data[: 1024 * 1024 + 7])
            await writer.restart()  # a retried download starts over: the server truncates
            await writer.write(data)
            assert await writer.commit({source: "team/web"}) == digest
        info = await client.info(digest)
        assert (info.size, dict(info.labels)) == (len(data), {source: "team/web"})
        updated = await client.update_labels(digest, {source: "team/web,team/api"})
        assert updated.labels[source] == "team/web,team/api"
        listed = await client.list_content([f'labels."{source}"=="team/web,team/api"'])
        assert [item.digest for item in listed] == [digest]
        assert [(r.id, r.type) for r in await client.list_resources(lease_id)] == [
            (digest, "content")
        ]
        with pytest.raises(errors.ContainerdAlreadyExistsError, match=re.escape(digest)):
            async with client.writer("another-ref", expected=digest, total=len(data)):
                pass
        await client.delete_lease(lease_id, sync=True)
        assert await client.find(digest) is None
        with pytest.raises(errors.ContainerdNotFoundError, match=f"Leases.Delete {lease_id}"):
            await client.delete_lease(lease_id)
    missing = str(containerd_daemon.workdir / "missing.sock")
    async with ctrd.Client(missing, "k8s.io", timeout=2) as client:
        with pytest.raises(errors.ContainerdUnavailableError, match=re.escape(missing)):
            await client.info(digest)


def test_a_lease_nobody_renews_expires_and_lets_its_blobs_go(
    tmp_path: pathlib.Path,
    registry_set: registries.Registries,
    containerd_daemon: containerd.Containerd,
    counting: faultproxy.FaultProxy,
) -> None:
    """What happens on every node once a PrePull is deleted (its agents stop renewing)."""
    image_set = push_images(registry_set.anonymous, counting.host, count=1)
    plan = planner.build_plan(image_set.plan_images(), budget=None)
    planned = {layer.digest for layer in plan.layers}
    plan_path = tmp_path / "plan.json"
    write_plan(plan_path, image_set, plan, prepull=("shop", "expiring", "uid-e"))
    # 10 s: long enough that a loaded machine still sees the lease before it expires.
    status, _progress, stderr = run_agent_once(
        plan_path, containerd_daemon, counting.host, extra=["--lease-ttl", "10s"]
    )
    assert status == 0, stderr
    ((lease_id, labels),) = leases_of(containerd_daemon, "expiring").items()
    collect_garbage(containerd_daemon)
    assert planned <= containerd_daemon.content_digests(), "collected before it expired"

    # Wait for the expiry the lease carries, not one guessed from when the agent started:
    # on a loaded machine the agent may create its lease seconds after it was launched.
    label_values = dict(pair.split("=", 1) for pair in labels.split(",") if "=" in pair)
    expires = agent.parse_expiry(label_values.get(ctrd.LABEL_GC_EXPIRE))
    assert expires is not None, labels
    remaining = (expires - datetime.datetime.now(datetime.UTC)).total_seconds()
    assert remaining <= 10, f"lease outlives its --lease-ttl: {labels}"
    time.sleep(max(0.0, remaining + 1))
    collect_garbage(containerd_daemon)
    assert lease_id not in leases(containerd_daemon)
    assert not planned & containerd_daemon.content_digests()


# -- the cluster agent (--from-cluster), plans written as the operator writes them -------------


def apply_plan_configmap(
    cluster: controlplane.ControlPlane,
    image_set: ImageSet,
    plan: planner.Plan,
    *,
    name: str,
    node_selector: dict[str, str],
) -> str:
    """A plan ConfigMap in the operator's namespace, as the operator writes it; its key."""
    references = {ref: reference.parse_reference(ref) for ref in image_set.references}
    uid = f"uid-{uuid.uuid4().hex[:8]}"
    document = plans.build_plan_document(
        name, "shop", uid, plan, references, node_selector=node_selector
    )
    cluster.apply(
        plans.build_plan_configmap(
            document,
            namespace=agents.NAMESPACE,
            plan_text=plans.build_plan_text(document),
            sealed_credentials=None,
            content_hash="test",
        )
    )
    return plans.build_prepull_key("shop", name, uid)


def test_the_cluster_agent_follows_its_node_and_sweeps_leases_of_gone_plans(
    tmp_path: pathlib.Path,
    cluster: controlplane.ControlPlane,
    imageward_operator: RunningOperator,
    registry_set: registries.Registries,
    containerd_daemon: containerd.Containerd,
    counting: faultproxy.FaultProxy,
) -> None:
    label = uuid.uuid4().hex[:8]
    node = agents.labelled_node(cluster, label)
    cluster.kubectl("label", "node", node, "imageward-test/moved=yes")
    image_set = push_images(registry_set.anonymous, counting.host, count=2)
    names = {f"keep-{label}", f"moved-{label}", f"elsewhere-{label}"}
    keep, moved, elsewhere = sorted(names)[1], sorted(names)[2], sorted(names)[0]
    selector = {"imageward-test/agent": label, "kubernetes.io/os": "linux"}
    keys = {
        keep: apply_plan_configmap(
            cluster,
            image_set,
            planner.build_plan(image_set.plan_images([0]), budget=None),
            name=keep,
            node_selector=selector,
        ),
        moved: apply_plan_configmap(
            cluster,
            image_set,
            planner.build_plan(image_set.plan_images([1]), budget=None),
            name=moved,
            node_selector={**selector, "imageward-test/moved": "yes"},
        ),
        # For another node only: never applied here.
        elsewhere: apply_plan_configmap(
            cluster,
            image_set,
            planner.build_plan(image_set.plan_images(), budget=None),
            name=elsewhere,
            node_selector={"imageward-test/agent": "some-other-node"},
        ),
    }
    # A lease of a plan-file agent on the same containerd: never the cluster agent's to sweep.
    plan_path = tmp_path / "file-plan.json"
    write_plan(
        plan_path,
        image_set,
        planner.build_plan(image_set.plan_images([0]), budget=None),
        prepull=("shop", f"file-{label}", "uid-file"),
    )
    status, _, stderr = run_agent_once(plan_path, containerd_daemon, counting.host)
    assert status == 0, stderr
    kubeconfig = agents.identity(cluster, tmp_path)

    def start() -> tuple[processes.ManagedProcess, str]:
        return agents.start(
            kubeconfig=kubeconfig,
            node=node,
            pod=None,
            daemon=containerd_daemon,
            key=tmp_path / "no-key",
            insecure=[counting.host],
            log_dir=tmp_path / "logs",
            extra=["--node-refresh", "1s"],
        )

    def served(base: str) -> dict[str, bool]:
        _, body = _get(f"{base}/readyz")
        return {p["prepull"]["name"]: p["ready"] for p in json.loads(body)["plans"] if p["prepull"]}

    process, base = start()
    try:
        utils.wait_for(
            "both plans of this node held",
            lambda: served(base) == {keep: True, moved: True},
            timeout=60,
        )
        assert not leases_of(containerd_daemon, elsewhere)
        (moved_lease,) = leases_of(containerd_daemon, moved)
        assert f"{agent.LABEL_SCOPE}={agents.NAMESPACE}" in leases(containerd_daemon)[moved_lease]

        # The node no longer matches one plan: that plan's lease goes, the other's stays.
        cluster.kubectl("label", "node", node, "imageward-test/moved-")
        utils.wait_for(
            "the plan that no longer selects the node to be dropped",
            lambda: served(base) == {keep: True} and not leases_of(containerd_daemon, moved),
            timeout=30,
        )
        (keep_lease,) = leases_of(containerd_daemon, keep)
        assert process.stop() == 0, process.log_tail()

        # A plan deleted while no agent ran: the next agent sweeps the lease it had made.
        cluster.kubectl(
            "delete", "configmap", plans.build_plan_name(keys[keep]), "-n", agents.NAMESPACE
        )
        assert keep_lease in leases(containerd_daemon)
        process, base = start()
        utils.wait_for(
            "the swept lease", lambda: keep_lease not in leases(containerd_daemon), timeout=30
        )
        assert served(base) == {}
        assert leases_of(containerd_daemon, f"file-{label}"), "a plan-file agent's lease stays"
    finally:
        process.stop()
        for key in keys.values():
            cluster.kubectl(
                "delete",
                "configmap",
                plans.build_plan_name(key),
                "-n",
                agents.NAMESPACE,
                "--ignore-not-found",
                check=False,
            )
        cluster.kubectl("delete", "node", node, check=False)
        for name in (*names, f"file-{label}"):
            for lease_id in leases_of(containerd_daemon, name):
                containerd_daemon.ctr("leases", "delete", lease_id, check=False)
