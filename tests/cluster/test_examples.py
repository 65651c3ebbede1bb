"""Every file in examples/ is applied and does what its comment (and the README) says.

The examples name kind's local registry `localhost:5001` and the namespace `shop`; the
tests put the session's registry and a fresh namespace in their place, nothing else.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from imageward.localcluster import controlplane, cosign, images, notation, registries
from imageward.prepull import plans
from tests import utils
from tests.conftest import RunningOperator

pytestmark = pytest.mark.cluster

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def test_every_example_is_covered() -> None:
    covered = {
        "policies/signed-only.yaml",
        "policies/size-limits.yaml",
        "policies/production-namespace.yaml",
        "policies/no-critical-cves.yaml",
        "policies/sbom-required.yaml",
        "policies/notation-signed.yaml",
        "prepulls/web-tier.yaml",
        "prepulls/shared-layers.yaml",
        "exceptions/legacy-vendor.yaml",
    }
    present = {str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*.yaml")}
    assert present == covered


class Example:
    def __init__(
        self, cluster: controlplane.ControlPlane, registry: registries.Registry, namespace: str
    ) -> None:
        self.cluster = cluster
        self.registry = registry
        self.namespace = namespace
        self.applied: list[dict[str, Any]] = []
        # Each test its own repositories: the operator caches tag -> digest briefly, and
        # the examples' repository names are the same in every test.
        self.repositories = f"shop-{_uid()}"

    def load(self, relative: str) -> dict[str, Any]:
        text = (EXAMPLES / relative).read_text()
        text = text.replace("localhost:5001", self.registry.host)
        text = text.replace(
            f"{self.registry.host}/shop/", f"{self.registry.host}/{self.repositories}/"
        )
        body: dict[str, Any] = yaml.safe_load(text)
        if body["metadata"].get("namespace") == "shop":
            body["metadata"]["namespace"] = self.namespace
        if body["kind"] == "ImagePolicy":
            body["metadata"]["name"] = f"{body['metadata']['name']}-{_uid()}"
        return body

    def apply(self, relative: str) -> dict[str, Any]:
        body = self.load(relative)
        self.cluster.apply(body)
        self.applied.append(body)
        if body["kind"] == "ImagePolicy":
            name = body["metadata"]["name"]
            utils.wait_for(
                f"{relative} Ready",
                lambda: any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in (self.cluster.get_json("imagepolicy", name).get("status") or {}).get(
                        "conditions", []
                    )
                ),
                timeout=30,
            )
        return body

    def push(self, repository: str, manifest: images.Manifest, tag: str = "1.0") -> str:
        if repository.startswith("shop/"):
            repository = f"{self.repositories}/{repository.removeprefix('shop/')}"
        self.registry.client().push(repository, manifest, tag=tag)
        return f"{self.registry.host}/{repository}:{tag}"

    def run(self, name: str, image: str, namespace: str | None = None) -> Any:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace or self.namespace},
            "spec": {"containers": [{"name": "app", "image": image}]},
        }
        return self.cluster.kubectl("apply", "-f", "-", input=json.dumps(pod), check=False)

    def cleanup(self) -> None:
        for body in self.applied:
            if body["kind"] == "ImagePolicy":
                self.cluster.kubectl(
                    "delete",
                    "imagepolicy",
                    body["metadata"]["name"],
                    "--ignore-not-found",
                    check=False,
                )


@pytest.fixture
def example(
    cluster: controlplane.ControlPlane,
    namespace: str,
    registry_set: registries.Registries,
    imageward_operator: RunningOperator,
) -> Iterator[Example]:
    made = Example(cluster, registry_set.anonymous, namespace)
    yield made
    made.cleanup()


def test_signed_only_admits_signed_and_refuses_unsigned(
    example: Example,
    cluster: controlplane.ControlPlane,
    cosign_tool: cosign.Cosign,
    imageward_operator: RunningOperator,
) -> None:
    key = cosign_tool.generate_key_pair(f"release-{_uid()}")
    # The command the example's comment gives, as a manifest (so it can be applied twice).
    secret = cluster.kubectl(
        "create",
        "secret",
        "generic",
        "release-key",
        "-n",
        imageward_operator.namespace,
        f"--from-file=cosign.pub={key.public_key}",
        "--dry-run=client",
        "-o",
        "json",
    ).stdout
    cluster.kubectl("apply", "-f", "-", input=secret)
    try:
        manifest = images.nonroot_image(f"s-{_uid()}")
        signed = example.push(f"ex/{_uid()}", manifest)
        cosign_tool.sign(f"{signed.rsplit(':', 1)[0]}@{manifest.digest}", key)
        unsigned = example.push(f"ex/{_uid()}", images.nonroot_image(f"u-{_uid()}"))
        policy = example.apply("policies/signed-only.yaml")

        assert example.run("signed", signed).returncode == 0
        refused = example.run("unsigned", unsigned)
        assert refused.returncode != 0
        assert f"ImagePolicy {policy['metadata']['name']}" in refused.stderr
        assert "release-key: no signature found" in refused.stderr
    finally:
        example.cleanup()
        cluster.kubectl(
            "delete",
            "secret",
            "release-key",
            "-n",
            imageward_operator.namespace,
            "--ignore-not-found",
            check=False,
        )


def test_legacy_vendor_exception_lets_labelled_vendor_pods_off_signatures(
    example: Example,
    cluster: controlplane.ControlPlane,
    cosign_tool: cosign.Cosign,
    imageward_operator: RunningOperator,
) -> None:
    key = cosign_tool.generate_key_pair(f"release-{_uid()}")
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "release-key", "namespace": imageward_operator.namespace},
        "stringData": {"cosign.pub": key.public_pem},
    }
    cluster.apply(secret)
    try:
        policy = example.apply("policies/signed-only.yaml")
        exception = example.load("exceptions/legacy-vendor.yaml")
        exception["spec"]["policies"][0]["name"] = policy["metadata"]["name"]
        # The example's date, moved to the future whenever the test runs.
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        exception["spec"]["expires"] = later.strftime("%Y-%m-%dT%H:%M:%SZ")
        cluster.apply(exception)
        vendor = example.push(f"vendor/{_uid()}", images.nonroot_image(f"v-{_uid()}"))

        def labelled(name: str, app: str) -> Any:
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": example.namespace, "labels": {"app": app}},
                "spec": {"containers": [{"name": "app", "image": vendor}]},
            }
            return cluster.kubectl("apply", "-f", "-", input=json.dumps(pod), check=False)

        admitted = utils.wait_for(
            "the exception to let the vendor pod in",
            lambda: (result := labelled("report", "vendor-report")).returncode == 0 and result,
            timeout=30,
        )
        assert "ImagePolicyException" in admitted.stderr and "SEC-1234" in admitted.stderr
        refused = labelled("other", "web")  # not selected by the exception's podSelector
        assert refused.returncode != 0 and "no signature found" in refused.stderr
    finally:
        example.cleanup()
        cluster.kubectl(
            "delete",
            "secret",
            "release-key",
            "-n",
            imageward_operator.namespace,
            "--ignore-not-found",
            check=False,
        )


def test_notation_signed_admits_the_release_identity(
    example: Example,
    cluster: controlplane.ControlPlane,
    notation_tool: notation.Notation,
    imageward_operator: RunningOperator,
    tmp_path: pathlib.Path,
) -> None:
    from tests.unit.notation import pki

    root = pki.ca(pki.name(C="US", ST="WA", O="Acme", CN="Acme Root"))
    root_file = tmp_path / "root.pem"
    root_file.write_bytes(root.pem)
    key_file, chain_file = pki.write_chain(tmp_path, "release", pki.leaf(root), root)
    release = notation.SigningKey(f"release-{_uid()}", key_file, chain_file)
    qa_key, qa_chain = pki.write_chain(
        tmp_path, "qa", pki.leaf(root, pki.name(C="US", ST="WA", O="Acme", CN="qa")), root
    )
    qa = notation.SigningKey(f"qa-{_uid()}", qa_key, qa_chain)
    # The command the example's comment gives, as a manifest (so it can be applied twice).
    config_map = cluster.kubectl(
        "create",
        "configmap",
        "notation-roots",
        "-n",
        imageward_operator.namespace,
        f"--from-file=ca.crt={root_file}",
        "--dry-run=client",
        "-o",
        "json",
    ).stdout
    cluster.kubectl("apply", "-f", "-", input=config_map)
    try:
        signed_manifest = images.nonroot_image(f"n-{_uid()}")
        signed = example.push(f"notary/{_uid()}", signed_manifest)
        notation_tool.sign(f"{signed.rsplit(':', 1)[0]}@{signed_manifest.digest}", release)
        qa_manifest = images.nonroot_image(f"q-{_uid()}")
        by_qa = example.push(f"notary/{_uid()}", qa_manifest)
        notation_tool.sign(f"{by_qa.rsplit(':', 1)[0]}@{qa_manifest.digest}", qa, envelope="cose")
        policy = example.apply("policies/notation-signed.yaml")

        assert example.run("signed", signed).returncode == 0
        refused = example.run("by-qa", by_qa)
        assert refused.returncode != 0
        assert f"ImagePolicy {policy['metadata']['name']}" in refused.stderr
        assert "acme-release: identity not trusted" in refused.stderr
    finally:
        example.cleanup()
        cluster.kubectl(
            "delete",
            "configmap",
            "notation-roots",
            "-n",
            imageward_operator.namespace,
            "--ignore-not-found",
            check=False,
        )


def test_size_limits_warns_but_admits(example: Example) -> None:
    big = example.push(f"ex/{_uid()}", images.large_image(f"b-{_uid()}", size=22 * 1024 * 1024))
    root = example.push(f"ex/{_uid()}", images.root_image(f"r-{_uid()}"))
    example.apply("policies/size-limits.yaml")
    warned = example.run("big", big)
    assert warned.returncode == 0, warned.stderr
    assert "Warning:" in warned.stderr and "over maxCompressedSize 20Mi" in warned.stderr
    assert "over maxLayerSize 10Mi" in warned.stderr
    rooted = example.run("root", root)
    assert rooted.returncode == 0 and "forbidden by forbidRootUser" in rooted.stderr


def test_production_namespace_rules_and_pinning(
    example: Example, cluster: controlplane.ControlPlane
) -> None:
    production = f"prod-{_uid()}"
    cluster.create_namespace(production, labels={"env": "production"})
    try:
        image = example.push(f"ex/{_uid()}", images.nonroot_image(f"p-{_uid()}"))
        latest = example.push(f"ex/{_uid()}", images.nonroot_image(f"l-{_uid()}"), tag="latest")
        policy = example.apply("policies/production-namespace.yaml")
        name = policy["metadata"]["name"]

        foreign = example.run("foreign", "docker.io/library/nginx:1.27", namespace=production)
        assert foreign.returncode != 0 and "not in allowedRegistries" in foreign.stderr
        tagged_latest = example.run("latest", latest, namespace=production)
        assert tagged_latest.returncode != 0 and "forbiddenTags" in tagged_latest.stderr
        assert f"ImagePolicy {name}" in tagged_latest.stderr

        assert example.run("app", image, namespace=production).returncode == 0
        pinned = cluster.get_json("pod", "app", "-n", production)["spec"]["containers"][0]["image"]
        assert pinned.startswith(f"{image}@sha256:")
        # Other namespaces are not production: untouched.
        assert example.run("elsewhere", latest).returncode == 0
        unpinned = cluster.get_json("pod", "elsewhere", "-n", example.namespace)
        assert unpinned["spec"]["containers"][0]["image"] == latest
    finally:
        cluster.kubectl("delete", "namespace", production, "--wait=false", check=False)


def _secret(
    cluster: controlplane.ControlPlane, name: str, namespace: str, pub: pathlib.Path
) -> None:
    secret = cluster.kubectl(
        "create",
        "secret",
        "generic",
        name,
        "-n",
        namespace,
        f"--from-file=cosign.pub={pub}",
        "--dry-run=client",
        "-o",
        "json",
    ).stdout
    cluster.kubectl("apply", "-f", "-", input=secret)


def test_no_critical_cves_scanned_within_seven_days(
    example: Example,
    cluster: controlplane.ControlPlane,
    cosign_tool: cosign.Cosign,
    imageward_operator: RunningOperator,
    tmp_path: pathlib.Path,
) -> None:
    from tests.cluster import test_attestations

    key = cosign_tool.generate_key_pair(f"scanner-{_uid()}")
    _secret(cluster, "scanner-key", imageward_operator.namespace, key.public_key)
    try:
        now = test_attestations.NOW
        cases = {
            "clean": test_attestations.vuln_scan([("CVE-2026-0002", "HIGH")]),
            "ignored": test_attestations.vuln_scan([("CVE-2026-0001", "CRITICAL")]),
            "critical": test_attestations.vuln_scan([("CVE-2026-0666", "CRITICAL")]),
            "stale": test_attestations.vuln_scan([], finished=now - datetime.timedelta(days=8)),
        }
        refs = {}
        for case, scan in cases.items():
            manifest = images.nonroot_image(f"{case}-{_uid()}")
            refs[case] = example.push(f"ex/{_uid()}", manifest)
            predicate = tmp_path / f"{case}.json"
            predicate.write_text(json.dumps(scan))
            pinned = f"{refs[case].rsplit(':', 1)[0]}@{manifest.digest}"
            cosign_tool.attest(
                pinned, key, predicate, predicate_type="vuln", legacy=case == "stale"
            )
        policy = example.apply("policies/no-critical-cves.yaml")
        name = policy["metadata"]["name"]

        assert example.run("clean", refs["clean"]).returncode == 0
        assert example.run("ignored", refs["ignored"]).returncode == 0
        critical = example.run("critical", refs["critical"])
        assert critical.returncode != 0
        assert f"ImagePolicy {name}: {refs['critical']}" in critical.stderr
        assert "CVE-2026-0666 (CRITICAL)" in critical.stderr
        stale = example.run("stale", refs["stale"])
        assert stale.returncode != 0 and "over vulnerabilities.maxScanAge 168h" in stale.stderr
    finally:
        example.cleanup()
        cluster.kubectl(
            "delete",
            "secret",
            "scanner-key",
            "-n",
            imageward_operator.namespace,
            "--ignore-not-found",
            check=False,
        )


def test_sbom_required(
    example: Example, cosign_tool: cosign.Cosign, tmp_path: pathlib.Path
) -> None:
    from tests.cluster import test_attestations

    key = cosign_tool.generate_key_pair(f"build-{_uid()}")
    manifest = images.nonroot_image(f"sbom-{_uid()}")
    with_sbom = example.push(f"ex/{_uid()}", manifest)
    predicate = tmp_path / "sbom.spdx.json"
    predicate.write_text(json.dumps(test_attestations.spdx_document()))
    cosign_tool.attest(
        f"{with_sbom.rsplit(':', 1)[0]}@{manifest.digest}",
        key,
        predicate,
        predicate_type="spdxjson",
    )
    without = example.push(f"ex/{_uid()}", images.nonroot_image(f"nosbom-{_uid()}"))
    body = example.load("policies/sbom-required.yaml")
    body["spec"]["rules"]["attestations"][0]["authorities"][0]["key"]["pem"] = key.public_pem
    example.cluster.apply(body)
    example.applied.append(body)
    name = body["metadata"]["name"]
    utils.wait_for(
        "sbom-required Ready",
        lambda: any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (example.cluster.get_json("imagepolicy", name).get("status") or {}).get(
                "conditions", []
            )
        ),
        timeout=30,
    )
    assert example.run("with-sbom", with_sbom).returncode == 0
    refused = example.run("without", without)
    assert refused.returncode != 0
    assert (
        "attestation sbom: has no attestation of predicateType https://spdx.dev/Document (required)"
    ) in refused.stderr


def _prepull_status(cluster: controlplane.ControlPlane, namespace: str, name: str) -> Any:
    return cluster.get_json("prepull", name, "-n", namespace).get("status") or {}


def test_web_tier_prepull_reaches_every_node(
    example: Example, cluster: controlplane.ControlPlane
) -> None:
    example.push("shop/web", images.nonroot_image(f"w-{_uid()}"))
    example.push("shop/api", images.nonroot_image(f"a-{_uid()}"))
    example.apply("prepulls/web-tier.yaml")

    def ready() -> Any:
        status = _prepull_status(cluster, example.namespace, "web-tier")
        nodes = status.get("nodes") or {}
        return status if nodes.get("desired") and nodes["ready"] == nodes["desired"] else None

    status = utils.wait_for("web-tier ready on every node", ready, timeout=60)
    weights = {i["image"].rsplit("/", 1)[1]: i["weight"] for i in status["images"]}
    assert weights == {"web:1.0": 1, "api:1.0": 3}


def test_shared_layers_prepull_plans_only_shared_layers(
    example: Example, cluster: controlplane.ControlPlane, imageward_operator: RunningOperator
) -> None:
    web, api, _ = images.shared_base_images(3)
    example.push("shop/web", web)
    example.push("shop/api", api)
    example.apply("prepulls/shared-layers.yaml")
    shared = {layer.digest for layer in web.layers} & {layer.digest for layer in api.layers}

    status = utils.wait_for(
        "a plan",
        lambda: (
            (s := _prepull_status(cluster, example.namespace, "shared-layers")).get("plan") and s
        ),
        timeout=60,
    )
    assert status["plan"]["layers"] == len(shared)
    # Layers mode makes nothing in the PrePull's namespace: its plan is a ConfigMap of the
    # operator's namespace, which the node agent there reads.
    assert not cluster.get_json("daemonsets", "-n", example.namespace)["items"]
    assert not [
        c
        for c in cluster.get_json("configmaps", "-n", example.namespace)["items"]
        if "plan.json" in (c.get("data") or {})
    ]
    config_maps = cluster.get_json(
        "configmaps", "-n", imageward_operator.namespace, "-l", plans.build_selector_text()
    )["items"]
    found = [
        json.loads(c["data"]["plan.json"])
        for c in config_maps
        if c["metadata"]["annotations"]["imageward.io/prepull-namespace"] == example.namespace
    ]
    assert len(found) == 1
    assert {layer["digest"] for layer in found[0]["layers"]} == shared
    assert found[0]["prepull"]["name"] == "shared-layers"
