"""Helpers shared by the admission cluster tests: policies, pods, pushes, signatures.

Everything here acts through the real apiserver (kubectl) or the real registries, so
the tests built on it see what a user sees.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import subprocess
import urllib.request
import uuid
from typing import Any

import yaml

from imageward.localcluster import controlplane, images, registries
from tests import utils
from tests.unit.signatures import build

BUNDLE_V03 = build.BUNDLE_V03


def uid() -> str:
    return uuid.uuid4().hex[:8]


class Policies:
    """Creates ImagePolicies for one test and deletes them afterwards."""

    def __init__(self, cluster: controlplane.ControlPlane) -> None:
        self.cluster = cluster
        self.names: list[str] = []

    def apply(
        self,
        images_: list[str],
        rules: dict[str, Any],
        *,
        ready: str | None = "True",
        pod_selector: dict[str, Any] | None = None,
        **spec: Any,
    ) -> str:
        """Create a policy; wait until its Ready condition is `ready` (None: do not wait)."""
        name = f"p-{uid()}"
        match: dict[str, Any] = {"images": images_}
        if pod_selector is not None:
            match["podSelector"] = pod_selector
        body = {
            "apiVersion": "imageward.io/v1alpha1",
            "kind": "ImagePolicy",
            "metadata": {"name": name},
            "spec": {"match": match, "rules": rules, **spec},
        }
        self.names.append(name)
        self.cluster.apply(body)
        if ready is not None:
            self.wait_ready(name, ready)
        return name

    def ready_condition(self, name: str) -> dict[str, Any] | None:
        status = self.cluster.get_json("imagepolicy", name).get("status") or {}
        for condition in status.get("conditions") or []:
            if condition["type"] == "Ready":
                return dict(condition)
        return None

    def wait_ready(self, name: str, expected: str, *, timeout: float = 30) -> dict[str, Any]:
        def condition() -> dict[str, Any] | None:
            found = self.ready_condition(name)
            return found if found and found["status"] == expected else None

        return utils.wait_for(f"ImagePolicy {name} Ready={expected}", condition, timeout=timeout)

    def delete_all(self) -> None:
        for name in self.names:
            self.cluster.kubectl("delete", "imagepolicy", name, "--ignore-not-found", check=False)


def pod(name: str, image: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": image}], **spec},
    }


def create(
    cluster: controlplane.ControlPlane,
    namespace: str,
    obj: dict[str, Any],
    *,
    dry_run: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`kubectl apply` as a user would; the caller reads returncode and stderr. With
    `dry_run`, through admission without storing anything (`--dry-run=server`)."""
    extra = ["--dry-run=server"] if dry_run else []
    return cluster.kubectl(
        "apply", "-n", namespace, *extra, "-f", "-", input=json.dumps(obj), check=False
    )


def operator_account(operator: Any) -> str:
    """The ServiceAccount the test operator runs as (the chart's), from its kubeconfig."""
    config = yaml.safe_load(operator.kubeconfig.read_text())
    user: str = config["users"][0]["name"]
    return user.rsplit(":", 1)[1]


def push(
    registry: registries.Registry, manifest: images.Manifest, *, prefix: str = "adm"
) -> tuple[str, str]:
    """Push to a fresh repository under `prefix`; returns (image reference with tag, digest)."""
    repository = f"{prefix}/{uid()}"
    pushed = registry.client().push(repository, manifest, tag="1.0")
    return f"{registry.host}/{repository}:1.0", pushed.digest


def repository_of(image: str) -> tuple[str, str]:
    """("127.0.0.1:5000/adm/x:1.0") -> ("127.0.0.1:5000", "adm/x")."""
    host, _, rest = image.partition("/")
    return host, re.split(r"[:@]", rest, maxsplit=1)[0]


def pinned(image: str, digest: str) -> str:
    host, repository = repository_of(image)
    return f"{host}/{repository}@{digest}"


def dockerconfig_secret(name: str, namespace: str, registry: registries.Registry) -> dict[str, Any]:
    config = json.dumps(registry.docker_config()).encode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(config).decode()},
    }


# -- signatures pushed by hand (what an attacker, or a signer other than cosign, can do) --


def push_bundle_referrer(
    registry: registries.Registry,
    repository: str,
    digest: str,
    bundle: dict[str, Any],
) -> str:
    """Attach `bundle` to `digest` as cosign v3 does against a registry without the
    referrers API: the referrer manifest, then the OCI index at tag `sha256-<hex>`
    listing it (appended to what is already there). Returns the referrer's digest."""
    client = registry.client()
    subject = client.get_manifest(repository, digest)
    raw = json.dumps(bundle).encode()
    referrer = images.build_artifact(
        [images.Blob.of(raw, BUNDLE_V03)],
        artifact_type=BUNDLE_V03,
        subject=images.Manifest(subject.body, subject.media_type, subject.digest),
        annotations={
            "dev.sigstore.bundle.content": "dsse-envelope",
            "dev.sigstore.bundle.predicateType": build.SIGN_PREDICATE,
        },
    )
    client.push(repository, referrer)
    tag = digest.replace(":", "-")
    entries: list[dict[str, Any]] = []
    if client.manifest_digest(repository, tag) is not None:
        entries = client.get_manifest(repository, tag).document.get("manifests") or []
    entries.append(referrer.descriptor())
    index = {"schemaVersion": 2, "mediaType": images.OCI_INDEX, "manifests": entries}
    client.push_manifest(repository, tag, images.canonical_json(index), images.OCI_INDEX)
    return referrer.digest


NOTATION_SIGNATURE = "application/vnd.cncf.notary.signature"


def push_notation_referrer(
    registry: registries.Registry,
    repository: str,
    digest: str,
    envelope: bytes,
    *,
    media_type: str = "application/jose+json",
) -> str:
    """Attach `envelope` (bytes of anyone's choosing) to `digest` as a Notation signature,
    as notation does against a registry without the referrers API: the signature
    manifest, then the OCI index at tag `sha256-<hex>` listing it. Returns the layer's
    digest."""
    client = registry.client()
    subject = client.get_manifest(repository, digest)
    layer = images.Blob.of(envelope, media_type)
    referrer = images.build_artifact(
        [layer],
        artifact_type=NOTATION_SIGNATURE,
        subject=images.Manifest(subject.body, subject.media_type, subject.digest),
        annotations={"io.cncf.notary.x509chain.thumbprint#S256": "[]"},
    )
    client.push(repository, referrer)
    tag = digest.replace(":", "-")
    entries: list[dict[str, Any]] = []
    if client.manifest_digest(repository, tag) is not None:
        entries = client.get_manifest(repository, tag).document.get("manifests") or []
    entries.append({**referrer.descriptor(), "artifactType": NOTATION_SIGNATURE})
    index = {"schemaVersion": 2, "mediaType": images.OCI_INDEX, "manifests": entries}
    client.push_manifest(repository, tag, images.canonical_json(index), images.OCI_INDEX)
    return layer.digest


def pod_review(namespace: str, pod: dict[str, Any]) -> dict[str, Any]:
    """The AdmissionReview the apiserver sends for a dry-run create of `pod`."""
    name = pod["metadata"]["name"]
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": name,
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "tester"},
            "object": pod,
            "oldObject": None,
            "dryRun": True,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def insecure_context() -> ssl.SSLContext:
    """For POSTs straight to a test webhook, whose certificate is made in memory."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def post_review(url: str, review: dict[str, Any]) -> Any:
    """POST an AdmissionReview straight to a webhook endpoint; its JSON answer."""
    request = urllib.request.Request(
        url,
        data=json.dumps(review).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10, context=insecure_context()) as response:
        return json.load(response)
