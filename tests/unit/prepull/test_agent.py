"""The agent's pure parts: the plan file, lease ids and roles, source labels, progress,
pacing and its command line. The agent against containerd is in tests/cluster."""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import re
import time
from typing import Any

import pytest

from imageward import constants
from imageward.commands import agent as agent_command
from imageward.prepull import agent, containerd, nodes, planner, plans
from imageward.prepull import model as prepull_model
from imageward.registry import model, reference

#: containerd's identifier rules (pkg/identifiers): what a lease id must look like.
CONTAINERD_ID = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")
NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
DAY = 24 * 3600.0


def digest(char: str) -> model.Digest:
    return model.Digest("sha256:" + char * 64)


def layer(char: str, size: int) -> model.Layer:
    return model.Layer(digest(char), size, "application/vnd.oci.image.layer.v1.tar+gzip")


def make_document(**overrides: Any) -> dict[str, Any]:
    images = [
        planner.PlanImage("registry.example:5000/team/web:1.0", digest("1"), (layer("a", 10),)),
        planner.PlanImage(
            "registry.example:5000/team/api:2.0", digest("2"), (layer("a", 10), layer("b", 5))
        ),
    ]
    plan = planner.build_plan(images, budget=None)
    references = {image.image: reference.parse_reference(image.image) for image in images}
    document = plans.build_plan_document(
        "web",
        "shop",
        "uid-1",
        plan,
        references,
        pull_secrets=["regcred", "gone"],
        missing_pull_secrets=["gone"],
        node_selector={"kubernetes.io/os": "linux", "pool": "gpu"},
        tolerations=[prepull_model.Toleration(key="gpu", operator="Exists", effect="NoSchedule")],
    )
    document.update(overrides)
    return document


def make_plan(**overrides: Any) -> agent.AgentPlan:
    return agent.parse_plan(json.dumps(make_document(**overrides)), source="plan.json")


def test_the_plan_document_of_the_controller_parses() -> None:
    plan = make_plan()
    assert plan.prepull == agent.PrePullIdentity("shop", "web", "uid-1")
    assert plan.containerd_namespace == "k8s.io"
    assert plan.bytes == 15
    by_digest = {blob.digest: blob for blob in plan.blobs}
    assert by_digest[digest("a")].sources == (
        agent.Source("registry.example:5000", "team/api"),
        agent.Source("registry.example:5000", "team/web"),
    )
    assert by_digest[digest("b")].size == 5
    # The operator names the pull secrets; their credentials travel sealed beside the plan.
    assert plan.pull_secrets == (
        agent.PullSecret("regcred", None, found=True),
        agent.PullSecret("gone", None, found=False),
    )
    assert plan.node_selector == {"kubernetes.io/os": "linux", "pool": "gpu"}
    assert plan.tolerations == (
        prepull_model.Toleration(key="gpu", operator="Exists", effect="NoSchedule"),
    )
    assert plan.key == plans.build_prepull_key("shop", "web", "uid-1")


def test_a_plan_is_for_the_nodes_its_selector_and_tolerations_select() -> None:
    plan = make_plan()
    gpu = nodes.NodeView(
        "gpu-1",
        {"kubernetes.io/os": "linux", "pool": "gpu"},
        (nodes.Taint("gpu", "true", "NoSchedule"),),
    )
    assert plan.selects(gpu)
    assert not plan.selects(nodes.NodeView("cpu-1", {"kubernetes.io/os": "linux"}))
    tainted = nodes.NodeView(
        "gpu-2", dict(gpu.labels), (nodes.Taint("dedicated", "db", "NoExecute"),)
    )
    assert not plan.selects(tainted)
    # A plan file written by hand (no nodeSelector) is for every node.
    assert make_plan(nodeSelector=None).selects(tainted)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "version 2 is not 1"),
        ({"prepull": {"namespace": "shop", "name": "web"}}, "prepull.uid: expected str"),
        ({"hash": 7}, "hash: expected str"),
        ({"layers": [{"digest": "sha256:zz", "size": 1, "sources": []}]}, "invalid digest"),
        (
            {"layers": [{"digest": "sha256:" + "a" * 64, "size": 1, "sources": []}]},
            "layers[0].sources: empty",
        ),
        (
            {"layers": [{"digest": "sha256:" + "a" * 64, "size": True, "sources": []}]},
            "layers[0].size: expected int, got bool",
        ),
        ({"pullSecrets": [{"name": "x", "path": 3}]}, "pullSecrets[0].path: expected str"),
        ({"pullSecrets": [{"name": "x", "found": "no"}]}, "pullSecrets[0].found: expected bool"),
        ({"nodeSelector": {"pool": 1}}, "nodeSelector: expected an object of strings"),
        ({"tolerations": [{"operator": "Maybe"}]}, "tolerations[0].operator"),
    ],
)
def test_an_unusable_plan_is_refused_naming_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(agent.PlanFileError) as caught:
        make_plan(**change)
    assert str(caught.value).startswith("plan plan.json: ")
    assert message in str(caught.value)


def test_a_plan_that_is_not_json_is_refused() -> None:
    with pytest.raises(agent.PlanFileError, match=r"plan /x/plan.json: not JSON"):
        agent.parse_plan(b"{", source="/x/plan.json")


def test_lease_ids_fit_containerds_rules_and_name_prepull_and_plan() -> None:
    plan = make_plan()
    lease_id = agent.build_lease_id(plan, NOW)
    assert CONTAINERD_ID.fullmatch(lease_id)
    assert len(lease_id) <= 76
    key = agent.build_prepull_key(plan.prepull)
    assert lease_id == f"imageward.{key}.{plan.hash}.20260102T030405000000"
    recreated = make_plan(prepull={"namespace": "shop", "name": "web", "uid": "uid-2"})
    assert agent.build_prepull_key(recreated.prepull) != key
    odd = make_plan(hash="a/b:c" * 10)
    assert CONTAINERD_ID.fullmatch(agent.build_lease_id(odd, NOW))


def lease(plan: agent.AgentPlan, *, created: datetime.datetime, ttl: float) -> containerd.Lease:
    labels = agent.build_lease_labels(plan, created=created, ttl=ttl)
    return containerd.Lease(id=agent.build_lease_id(plan, created), labels=labels)


def test_lease_labels_carry_the_identity_the_plan_and_the_expiry() -> None:
    plan = make_plan()
    labels = agent.build_lease_labels(plan, created=NOW, ttl=DAY)
    assert labels == {
        constants.LABEL_MANAGED_BY: "imageward",
        agent.LABEL_PREPULL: agent.build_prepull_key(plan.prepull),
        agent.LABEL_PREPULL_NAMESPACE: "shop",
        agent.LABEL_PREPULL_NAME: "web",
        agent.LABEL_PREPULL_UID: "uid-1",
        agent.LABEL_PLAN_HASH: plan.hash,
        containerd.LABEL_GC_EXPIRE: "2026-01-03T03:04:05Z",
    }
    assert containerd.LABEL_GC_EXPIRE not in agent.build_lease_labels(plan, created=NOW, ttl=0)
    assert agent.parse_expiry("2026-01-03T03:04:05Z") == NOW + datetime.timedelta(days=1)
    assert agent.parse_expiry("soon") is None


def test_lease_roles() -> None:
    plan = make_plan()
    fresh = lease(plan, created=NOW, ttl=DAY)
    role = agent.evaluate_lease
    assert role(fresh, plan, now=NOW, ttl=DAY) is agent.LeaseRole.CURRENT
    later = NOW + datetime.timedelta(hours=13)
    assert role(fresh, plan, now=later, ttl=DAY) is agent.LeaseRole.STALE
    # A lease without expiry is current when the agent runs without one, and renewed
    # (into one that expires) when it runs with one; and the other way round.
    forever = lease(plan, created=NOW, ttl=0)
    assert role(forever, plan, now=later, ttl=0) is agent.LeaseRole.CURRENT
    assert role(forever, plan, now=NOW, ttl=DAY) is agent.LeaseRole.STALE
    assert role(fresh, plan, now=NOW, ttl=0) is agent.LeaseRole.STALE

    changed = make_plan(hash="0123456789abcdef")
    assert role(fresh, changed, now=NOW, ttl=DAY) is agent.LeaseRole.OBSOLETE
    recreated = make_plan(prepull={"namespace": "shop", "name": "web", "uid": "uid-2"})
    assert role(fresh, recreated, now=NOW, ttl=DAY) is agent.LeaseRole.OBSOLETE
    other = make_plan(prepull={"namespace": "shop", "name": "api", "uid": "uid-3"})
    assert role(fresh, other, now=NOW, ttl=DAY) is agent.LeaseRole.FOREIGN
    someone_elses = containerd.Lease(id="k8s-pull-123", labels={})
    assert role(someone_elses, plan, now=NOW, ttl=DAY) is agent.LeaseRole.FOREIGN


@pytest.mark.parametrize(
    ("registry", "host"),
    [
        ("docker.io", "docker.io"),
        ("127.0.0.1:5000", "127.0.0.1"),
        ("registry.example:443", "registry.example"),
        ("[::1]:5000", "::1"),
        ("[::1]", "::1"),
    ],
)
def test_source_label_hosts_drop_the_port_as_containerd_does(registry: str, host: str) -> None:
    assert agent.build_source_host(registry) == host


def test_source_labels_are_merged_with_what_containerd_wrote() -> None:
    key = containerd.LABEL_DISTRIBUTION_SOURCE + "registry.example"
    sources = [
        agent.Source("registry.example:5000", "team/web"),
        agent.Source("registry.example:5000", "team/api"),
        agent.Source("docker.io", "library/nginx"),
    ]
    assert agent.build_source_labels(sources, {}) == {
        containerd.LABEL_DISTRIBUTION_SOURCE + "docker.io": "library/nginx",
        key: "team/api,team/web",
    }
    existing = {
        key: "team/web,other/repo",
        containerd.LABEL_DISTRIBUTION_SOURCE + "docker.io": "library/nginx",
    }
    assert agent.build_source_labels(sources, existing) == {key: "team/web,other/repo,team/api"}
    existing[key] = "team/api,team/web"
    assert agent.build_source_labels(sources, existing) == {}


def test_the_ingest_ref_is_the_one_containerds_pulls_use() -> None:
    assert agent.build_ingest_ref("sha256:ab") == "layer-sha256:ab"


def test_progress_reports_counts_bytes_and_failures() -> None:
    plan = make_plan()
    progress = agent.Progress(node="node-1")
    assert not progress.ready
    progress.start(plan)
    assert not progress.ready
    progress.set(digest("a"), agent.BlobState.HELD)
    progress.set(digest("b"), agent.BlobState.FAILED, "registry.example:5000/team/api: denied")
    report = progress.to_json()
    assert report["ready"] is False
    assert report["node"] == "node-1"
    assert report["prepull"] == {"namespace": "shop", "name": "web", "uid": "uid-1"}
    assert report["layers"] == {"total": 2, "pending": 0, "fetching": 0, "held": 1, "failed": 1}
    assert report["bytes"] == {"total": 15, "held": 10, "fetched": 0}
    assert report["failures"] == [
        {"digest": digest("b"), "reason": "registry.example:5000/team/api: denied"}
    ]
    # The same plan again (a resync): what is held stays held, failures are retried.
    progress.start(plan)
    assert progress.states[digest("a")] is agent.BlobState.HELD
    assert progress.states[digest("b")] is agent.BlobState.PENDING
    progress.set(digest("b"), agent.BlobState.HELD)
    assert progress.ready
    assert progress.to_json()["failures"] == []
    # Another plan starts over.
    progress.start(make_plan(hash="0123456789abcdef"))
    assert not progress.ready


async def test_the_rate_limiter_paces_all_fetches_together() -> None:
    limiter = agent.RateLimiter(1_000_000)
    started = time.monotonic()
    for _ in range(4):
        await limiter.acquire(100_000)
    assert time.monotonic() - started >= 0.35
    unlimited = agent.RateLimiter(None)
    started = time.monotonic()
    await unlimited.acquire(10**12)
    assert time.monotonic() - started < 0.05


def test_pull_secrets_are_read_from_their_mounts(tmp_path: pathlib.Path) -> None:
    mounted = tmp_path / "regcred"
    mounted.mkdir()
    config = {"auths": {"registry.example:5000": {"username": "u", "password": "p"}}}
    (mounted / ".dockerconfigjson").write_text(json.dumps(config))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / ".dockerconfigjson").write_text("{")
    configs, missing = agent.read_pull_secrets(
        [
            agent.PullSecret("regcred", str(mounted)),
            agent.PullSecret("absent", str(tmp_path / "absent")),
            agent.PullSecret("broken", str(broken)),
        ]
    )
    assert [c.source for c in configs] == ["pull secret regcred"]
    assert missing == ["absent", "broken"]


def test_listen_addresses() -> None:
    assert agent.parse_listen("0.0.0.0:8081") == ("0.0.0.0", 8081)
    assert agent.parse_listen("[::]:8081") == ("::", 8081)
    assert agent.parse_listen(":9000") == ("0.0.0.0", 9000)
    with pytest.raises(ValueError, match="HOST:PORT"):
        agent.parse_listen("8081x")


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("24h", DAY), ("0", 0.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert agent_command.parse_duration(text) == seconds


def parse_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    agent_command.add_arguments(parser)
    return parser.parse_args(argv)


def test_options_from_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEWARD_INSECURE_REGISTRIES", "a.example:5000")
    monkeypatch.setenv("NODE_NAME", "node-7")
    options = agent_command.build_options(
        parse_args(
            "--plan",
            "/plans/a.json",
            "--plan",
            "/plans/b.json",
            "--max-bytes-per-second",
            "50Mi",
            "--insecure-registry",
            "b.example",
            "--lease-ttl",
            "12h",
            "--containerd-socket",
            "unix:///run/k3s/containerd/containerd.sock",
        )
    )
    assert options.plan_paths == (pathlib.Path("/plans/a.json"), pathlib.Path("/plans/b.json"))
    assert options.cluster is None
    assert options.socket == "/run/k3s/containerd/containerd.sock"
    assert options.max_bytes_per_second == 50 * 1024 * 1024
    assert options.registry.insecure_registries == ("a.example:5000", "b.example")
    assert options.lease_ttl == 12 * 3600
    assert options.concurrency == 3
    assert options.node == "node-7"
    assert options.listen == "0.0.0.0:8081"


def test_cluster_options_from_the_command_line_and_the_downward_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NODE_NAME", "node-7")
    monkeypatch.setenv("POD_NAME", "imageward-agent-x7k2p")
    monkeypatch.setenv("POD_NAMESPACE", "imageward-system")
    options = agent_command.build_options(
        parse_args("--from-cluster", "--node-refresh", "1m", "--report-interval", "2s")
    )
    assert options.plan_paths == ()
    assert options.cluster == agent.ClusterOptions(
        namespace="imageward-system",
        pod="imageward-agent-x7k2p",
        key_path=pathlib.Path("/etc/imageward/agent-key/key"),
        node_refresh=60.0,
        report_interval=2.0,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "name a plan (--plan FILE) or serve the cluster's (--from-cluster)"),
        (["--once", "--plan", "a.json", "--plan", "b.json"], "--once applies exactly one"),
        (["--from-cluster", "--once"], "--once applies a --plan file"),
        (["--from-cluster", "--node", "n1"], "--from-cluster needs --namespace"),
        (["--from-cluster", "--namespace", "ns"], "--from-cluster needs --node"),
        (["--from-cluster", "--namespace", "ns", "--node", "n", "--max-plans", "0"], "--max-plans"),
        (["--max-bytes-per-second", "lots"], "--max-bytes-per-second 'lots'"),
        (["--concurrency", "0"], "--concurrency must be at least 1"),
        (["--lease-ttl", "1y"], "--lease-ttl"),
        (["--listen", "nowhere"], "--listen 'nowhere'"),
    ],
)
def test_bad_options_exit_with_usage_status(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("NODE_NAME", "POD_NAME", "POD_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    assert agent_command.run(parse_args(*argv)) == agent_command.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_once_with_a_missing_plan_exits_with_usage_status(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parse_args("--once", "--plan", str(tmp_path / "nope.json"))
    assert agent_command.run(args) == agent_command.EXIT_USAGE
    assert f"plan {tmp_path / 'nope.json'}" in capsys.readouterr().err
