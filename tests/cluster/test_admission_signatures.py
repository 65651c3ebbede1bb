"""Signature policies, credentials, ephemeral containers and glob matching through the
real webhook: `imageward run` as a process, the real apiserver calling it, images in real
registries, signatures written by real cosign or (for what cosign will not write:
tampered payloads, attacker bundles, keyless bundles under a local Sigstore) byte-exact
by `tests.unit.signatures.build`. Each test asserts what the user sees in kubectl."""

from __future__ import annotations

import base64
import datetime
import json
import re
import time
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import oid

from imageward.localcluster import controlplane, cosign, images, registries
from tests import utils
from tests.cluster import helpers
from tests.conftest import RunningOperator
from tests.unit.signatures import build, fakesigstore

pytestmark = pytest.mark.cluster

DENIED = 'admission webhook "validate.imageward.io" denied the request'


@pytest.fixture
def prefix() -> str:
    """A repository prefix of this test alone, so its policies match only its images."""
    return f"sig{helpers.uid()}"


@pytest.fixture(scope="module")
def release_key(cosign_tool: cosign.Cosign) -> cosign.KeyPair:
    return cosign_tool.generate_key_pair(f"release-{helpers.uid()}")


@pytest.fixture(scope="module")
def qa_key(cosign_tool: cosign.Cosign) -> cosign.KeyPair:
    return cosign_tool.generate_key_pair(f"qa-{helpers.uid()}")


def _key_authority(name: str, key: cosign.KeyPair) -> dict[str, Any]:
    return {"name": name, "key": {"pem": key.public_pem}}


def _signature_samples(text: str, policy: str) -> dict[tuple[str, str, str], float]:
    """imageward_signature_verifications_total of one policy: (authority, format, result)."""
    found: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("imageward_signature_verifications_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if labels.get("policy") == policy:
            key = (labels["authority"], labels["format"], labels["result"])
            found[key] = float(line.rsplit(" ", 1)[1])
    return found


# -- legacy payload tampering -------------------------------------------------------------


def test_tampered_legacy_payload_is_refused(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    cosign_tool: cosign.Cosign,
    release_key: cosign.KeyPair,
    prefix: str,
) -> None:
    image, digest = helpers.push(
        anonymous, images.nonroot_image(f"t-{helpers.uid()}"), prefix=prefix
    )
    cosign_tool.sign(helpers.pinned(image, digest), release_key, legacy=True)
    assert cosign_tool.verify(helpers.pinned(image, digest), release_key).returncode == 0
    _, repository = helpers.repository_of(image)
    client = anonymous.client()
    sig_tag = f"sha256-{digest[7:]}.sig"
    original = client.get_manifest(repository, sig_tag)
    document = original.document
    (layer,) = document["layers"]
    payload = json.loads(client.get_blob(repository, layer["digest"]))
    # The attacker rewrites what the signature is about and re-pushes the blob, keeping
    # cosign's signature annotation on the layer.
    payload["optional"] = {"tampered": "by an attacker"}
    tampered = json.dumps(payload, separators=(",", ":")).encode()
    layer["digest"] = client.push_blob(repository, tampered)
    layer["size"] = len(tampered)
    client.push_manifest(repository, sig_tag, json.dumps(document).encode(), original.media_type)
    assert layer["annotations"]["dev.cosignproject.cosign/signature"]
    name = policies.apply(
        [f"{anonymous.host}/{prefix}/**"],
        {"signatures": {"authorities": [_key_authority("release", release_key)]}},
    )

    refused = helpers.create(cluster, namespace, helpers.pod("tampered", image))
    assert refused.returncode != 0
    assert DENIED in refused.stderr
    assert f"ImagePolicy {name}: {image} (sha256:{digest[7:19]}…)" in refused.stderr
    assert "release: signature does not verify with key release" in refused.stderr
    # cosign agrees: the tampered signature does not verify.
    verified = cosign_tool.verify(helpers.pinned(image, digest), release_key)
    assert verified.returncode != 0
    assert "no matching signatures: invalid signature" in verified.stderr


# -- a bundle that brings its own key ------------------------------------------------------


def _self_signed(key: ec.EllipticCurvePrivateKey, subject: str) -> bytes:
    """A certificate an attacker makes for their own key (DER)."""
    name = x509.Name([x509.NameAttribute(oid.NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([oid.ExtendedKeyUsageOID.CODE_SIGNING]), False)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


def test_bundle_carrying_its_own_key_is_refused(
    cluster: controlplane.ControlPlane,
    imageward_operator: RunningOperator,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    release_key: cosign.KeyPair,
    prefix: str,
) -> None:
    image, digest = helpers.push(
        anonymous, images.nonroot_image(f"b-{helpers.uid()}"), prefix=prefix
    )
    _, repository = helpers.repository_of(image)
    attacker = ec.generate_private_key(ec.SECP256R1())
    dsse = build.envelope(build.statement(digest), attacker)
    # A well-formed, correctly signed bundle for this very digest, whose verification
    # material is the attacker's key: in a certificate, and as a key hint.
    certificate = base64.b64encode(_self_signed(attacker, "release")).decode()
    with_certificate = {
        "mediaType": build.BUNDLE_V03,
        "verificationMaterial": {"certificate": {"rawBytes": certificate}, "tlogEntries": []},
        "dsseEnvelope": dsse,
    }
    with_hint = build.key_bundle(dsse, hint_key=attacker)
    helpers.push_bundle_referrer(anonymous, repository, digest, with_certificate)
    helpers.push_bundle_referrer(anonymous, repository, digest, with_hint)
    name = policies.apply(
        [f"{anonymous.host}/{prefix}/**"],
        {"signatures": {"authorities": [_key_authority("release", release_key)]}},
    )

    refused = helpers.create(cluster, namespace, helpers.pod("own-key", image))
    assert refused.returncode != 0
    assert f"ImagePolicy {name}: {image} (sha256:{digest[7:19]}…)" in refused.stderr
    # Found (not "no signature found"), tried with the policy's key, and refused.
    assert "release: signature does not verify with key release" in refused.stderr
    samples = _signature_samples(imageward_operator.metrics(), name)
    assert set(samples) == {("release", "bundle", "invalid_signature")}, samples
    assert samples[("release", "bundle", "invalid_signature")] >= 2  # both bundles


# -- keyless ---------------------------------------------------------------------------------


def test_keyless_identity_is_checked_against_a_trusted_root_from_a_config_map(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    prefix: str,
) -> None:
    sigstore = fakesigstore.FakeSigstore(name=f"local{helpers.uid()}")
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "sigstore-root", "namespace": namespace},
            "data": {"trusted_root.json": sigstore.trusted_root_json().decode()},
        }
    )
    good, good_digest = helpers.push(
        anonymous, images.nonroot_image(f"k-{helpers.uid()}"), prefix=prefix
    )
    evil, evil_digest = helpers.push(
        anonymous, images.nonroot_image(f"e-{helpers.uid()}"), prefix=prefix
    )
    evil_subject = "https://github.com/evil/web/.github/workflows/release.yml@refs/heads/main"
    for image, digest, subject in (
        (good, good_digest, build.WORKFLOW),
        (evil, evil_digest, evil_subject),
    ):
        leaf = sigstore.issue(subject=subject, issuer=build.GITHUB)
        signed = build.keyless_bundle(sigstore, leaf, build.statement(digest))
        helpers.push_bundle_referrer(anonymous, helpers.repository_of(image)[1], digest, signed)
    name = policies.apply(
        [f"{anonymous.host}/{prefix}/**"],
        {
            "signatures": {
                "authorities": [
                    {
                        "name": "github-actions",
                        "keyless": {
                            "issuer": build.GITHUB,
                            "subject": build.WORKFLOW,
                            "trustedRoot": {
                                "configMapRef": {"namespace": namespace, "name": "sigstore-root"}
                            },
                        },
                    }
                ]
            }
        },
    )

    admitted = helpers.create(cluster, namespace, helpers.pod("good", good))
    assert admitted.returncode == 0, admitted.stderr
    refused = helpers.create(cluster, namespace, helpers.pod("evil", evil))
    assert refused.returncode != 0
    assert f"ImagePolicy {name}: {evil} (sha256:{evil_digest[7:19]}…)" in refused.stderr
    assert (
        f"github-actions: identity mismatch: issuer {build.GITHUB} subject {evil_subject} "
        f"(want issuer {build.GITHUB}, subject {build.WORKFLOW})"
    ) in refused.stderr


# -- a key in a Secret -----------------------------------------------------------------------


def test_key_from_a_secret_and_readiness_while_it_is_missing(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    cosign_tool: cosign.Cosign,
    release_key: cosign.KeyPair,
    prefix: str,
) -> None:
    image, digest = helpers.push(
        anonymous, images.nonroot_image(f"s-{helpers.uid()}"), prefix=prefix
    )
    cosign_tool.sign(helpers.pinned(image, digest), release_key)
    authority = {
        "name": "release",
        "key": {"secretRef": {"namespace": namespace, "name": "release-key"}},
    }
    name = policies.apply(
        [f"{anonymous.host}/{prefix}/**"],
        {"signatures": {"authorities": [authority]}},
        ready="False",
    )
    condition = policies.wait_ready(name, "False")
    assert condition["reason"] == "InvalidPolicy"
    assert condition["message"] == (
        f"authority release: Secret {namespace}/release-key key cosign.pub not found; "
        "images it matches are refused"
    )
    closed = helpers.create(cluster, namespace, helpers.pod("closed", image))
    assert closed.returncode != 0
    assert f"ImagePolicy {name}: {image}" in closed.stderr
    assert f"Secret {namespace}/release-key key cosign.pub not found" in closed.stderr

    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "release-key", "namespace": namespace},
            "stringData": {"cosign.pub": release_key.public_pem},
        }
    )
    # The operator may not watch this Secret (the chart grants only `get`): it is read
    # once every IMAGEWARD_KEY_MATERIAL_REFRESH (15 s), and the policy loaded again.
    ready = policies.wait_ready(name, "True", timeout=40)
    assert ready["reason"] == "Valid"
    admitted = helpers.create(cluster, namespace, helpers.pod("signed", image))
    assert admitted.returncode == 0, admitted.stderr


def _grant_watch(
    cluster: controlplane.ControlPlane,
    operator: RunningOperator,
    namespace: str,
    secret: str,
) -> None:
    """What chart value keyMaterial.watch makes: get/list/watch on this one Secret."""
    account = helpers.operator_account(operator)
    cluster.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "watch-key", "namespace": namespace},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["secrets"],
                    "resourceNames": [secret],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "watch-key", "namespace": namespace},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "watch-key",
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": account, "namespace": operator.namespace}
            ],
        },
    )


def _reloads(operator: RunningOperator, trigger: str) -> float:
    for line in operator.metrics().splitlines():
        if line.startswith(f'imageward_policy_reloads_total{{trigger="{trigger}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_rotated_key_watched_by_name_reaches_admission_at_once(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    imageward_operator: RunningOperator,
    anonymous: registries.Registry,
    cosign_tool: cosign.Cosign,
    release_key: cosign.KeyPair,
    qa_key: cosign.KeyPair,
    prefix: str,
) -> None:
    image, digest = helpers.push(
        anonymous, images.nonroot_image(f"r-{helpers.uid()}"), prefix=prefix
    )
    cosign_tool.sign(helpers.pinned(image, digest), release_key)
    _grant_watch(cluster, imageward_operator, namespace, "rotating-key")

    def key_secret(key: cosign.KeyPair) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "rotating-key", "namespace": namespace},
            "stringData": {"cosign.pub": key.public_pem},
        }

    cluster.apply(key_secret(qa_key))  # the wrong key, for now
    authority = {
        "name": "release",
        "key": {"secretRef": {"namespace": namespace, "name": "rotating-key"}},
    }
    name = policies.apply(
        [f"{anonymous.host}/{prefix}/**"], {"signatures": {"authorities": [authority]}}
    )
    refused = helpers.create(cluster, namespace, helpers.pod("before", image))
    assert refused.returncode != 0 and "signature does not verify" in refused.stderr
    watched = _reloads(imageward_operator, "watch")

    cluster.apply(key_secret(release_key))
    rotated = time.monotonic()
    # A watch of that one Secret: well within the 15 s a read on a timer could take.
    utils.wait_for(
        "the rotated key to admit the signed pod",
        lambda: (
            helpers.create(
                cluster, namespace, helpers.pod(f"after-{helpers.uid()}", image), dry_run=True
            ).returncode
            == 0
        ),
        timeout=10,
        interval=0.2,
    )
    assert time.monotonic() - rotated < 5
    assert _reloads(imageward_operator, "watch") > watched

    # The Secret goes: the policy is unusable, says so in its status (the leader's
    # follower writes it) and refuses, fail closed.
    cluster.kubectl("delete", "secret", "rotating-key", "-n", namespace)
    condition = policies.wait_ready(name, "False", timeout=10)
    assert "rotating-key key cosign.pub not found" in condition["message"]


# -- thresholds ------------------------------------------------------------------------------


def test_threshold_two_of_two_with_one_signature_names_the_missing_authority(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    cosign_tool: cosign.Cosign,
    release_key: cosign.KeyPair,
    qa_key: cosign.KeyPair,
    prefix: str,
) -> None:
    image, digest = helpers.push(
        anonymous, images.nonroot_image(f"h-{helpers.uid()}"), prefix=prefix
    )
    cosign_tool.sign(helpers.pinned(image, digest), release_key)
    name = policies.apply(
        [f"{anonymous.host}/{prefix}/**"],
        {
            "signatures": {
                "threshold": 2,
                "authorities": [
                    _key_authority("release", release_key),
                    _key_authority("qa", qa_key),
                ],
            }
        },
    )
    refused = helpers.create(cluster, namespace, helpers.pod("half", image))
    assert refused.returncode != 0
    assert (
        f"ImagePolicy {name}: {image} (sha256:{digest[7:19]}…) is verified by 1 of 2 "
        "authorities, under signatures threshold 2 (qa: signature does not verify with key qa)"
    ) in refused.stderr
    assert "release:" not in refused.stderr  # the authority that verified is not blamed

    cosign_tool.sign(helpers.pinned(image, digest), qa_key)

    def admitted() -> bool:
        return helpers.create(cluster, namespace, helpers.pod("half", image)).returncode == 0

    # The referrers tag just moved; the operator may hold the old one for a few seconds.
    utils.wait_for("the second signature to admit the pod", admitted, timeout=40, interval=2)


# -- registry credentials ----------------------------------------------------------------


def _deployment(name: str, image: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}], **spec},
            },
        },
    }


def test_image_pull_secrets_of_the_service_account_are_used(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    registry_set: registries.Registries,
    prefix: str,
) -> None:
    private = registry_set.htpasswd
    image, _ = helpers.push(private, images.nonroot_image(f"p-{helpers.uid()}"), prefix=prefix)
    name = policies.apply([f"{private.host}/{prefix}/**"], {"maxLayers": 10})
    cluster.apply(helpers.dockerconfig_secret("registry-pull", namespace, private))
    cluster.kubectl(
        "patch",
        "serviceaccount",
        "default",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"imagePullSecrets": [{"name": "registry-pull"}]}),
    )
    cluster.kubectl("create", "serviceaccount", "without-secrets", "-n", namespace)

    # Without credentials the image cannot be looked up (first: once looked up, its facts
    # are cached by digest, whoever asks next).
    refused = helpers.create(
        cluster,
        namespace,
        _deployment("no-creds", image, serviceAccountName="without-secrets"),
    )
    assert refused.returncode != 0
    assert f"ImagePolicy {name}: {image}" in refused.stderr
    assert "lookup failed" in refused.stderr and "unauthorized" in refused.stderr.lower()
    # A workload template names no pull secret, and the apiserver adds none to templates:
    # imageward reads the ServiceAccount's itself.
    admitted = helpers.create(cluster, namespace, _deployment("through-sa", image))
    assert admitted.returncode == 0, admitted.stderr

    # A bare pod without imagePullSecrets is admitted too (the apiserver's ServiceAccount
    # admission copies the account's secrets into the pod before webhooks run).
    pod = helpers.create(cluster, namespace, helpers.pod("through-sa", image))
    assert pod.returncode == 0, pod.stderr
    created = cluster.get_json("pod", "through-sa", "-n", namespace)
    assert created["spec"]["imagePullSecrets"] == [{"name": "registry-pull"}]


# -- ephemeral containers ------------------------------------------------------------------


def test_ephemeral_container_with_a_refused_image_is_refused(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    prefix: str,
) -> None:
    fat, fat_digest = helpers.push(
        anonymous, images.many_layer_image(f"f-{helpers.uid()}", count=6), prefix=prefix
    )
    slim, _ = helpers.push(anonymous, images.nonroot_image(f"l-{helpers.uid()}"), prefix=prefix)
    name = policies.apply([f"{anonymous.host}/{prefix}/**"], {"maxLayers": 3})
    created = helpers.create(cluster, namespace, helpers.pod("target", slim))
    assert created.returncode == 0, created.stderr

    refused = cluster.kubectl(
        "debug", "target", "-n", namespace, f"--image={fat}", "--container=dbg", check=False
    )
    assert refused.returncode != 0
    assert DENIED in refused.stderr
    assert (
        f"ImagePolicy {name}: {fat} (sha256:{fat_digest[7:19]}…) has 6 layers, over maxLayers 3"
    ) in refused.stderr
    pod = cluster.get_json("pod", "target", "-n", namespace)
    assert not pod["spec"].get("ephemeralContainers")

    allowed = cluster.kubectl(
        "debug", "target", "-n", namespace, f"--image={slim}", "--container=dbg2", check=False
    )
    assert allowed.returncode == 0, allowed.stderr
    pod = cluster.get_json("pod", "target", "-n", namespace)
    assert [c["image"] for c in pod["spec"]["ephemeralContainers"]] == [slim]


# -- glob bypass attempts ----------------------------------------------------------------


def test_glob_bypass_attempts_through_the_webhook(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    prefix: str,
) -> None:
    host = anonymous.host
    client = anonymous.client()
    for repository in (
        f"{prefix}/x",
        f"{prefix}-evil/x",
        f"{prefix}/team/x",
        f"{prefix}-evil/{prefix}/x",
    ):
        client.push(repository, images.nonroot_image(repository), tag="1.0")
    name = policies.apply([f"{host}/{prefix}/**"], {"maxLayers": 1})

    def refused(image: str) -> bool:
        result = helpers.create(cluster, namespace, helpers.pod(f"g{helpers.uid()}", image))
        if result.returncode == 0:
            return False
        assert f"ImagePolicy {name}: {image}" in result.stderr, result.stderr
        assert "has 2 layers, over maxLayers 1" in result.stderr
        return True

    # Anchored: a longer name, a longer host or the prefix elsewhere in the path escape
    # only the glob, never by matching it partially.
    assert refused(f"{host}/{prefix}/x:1.0")
    assert refused(f"{host}/{prefix}/team/x:1.0")
    assert refused(f"{host}/{prefix}/x@{client.manifest_digest(f'{prefix}/x', '1.0')}")
    assert not refused(f"{host}/{prefix}-evil/x:1.0")
    assert not refused(f"{host}/{prefix}-evil/{prefix}/x:1.0")

    # Spellings kubelet would not pull are refused outright, whatever the globs say.
    for invalid, reason in (
        (f"{host}/{prefix.upper()}/x:1.0", "repository path must be lowercase"),
        (f"{host}/{prefix}/../x:1.0", "invalid repository path component '..'"),
    ):
        result = helpers.create(cluster, namespace, helpers.pod(f"g{helpers.uid()}", invalid))
        assert result.returncode != 0, invalid
        assert f"ImagePolicy {name}: invalid image reference '{invalid}': {reason}" in (
            result.stderr
        )


def test_loopback_aliases_are_different_registries(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    prefix: str,
) -> None:
    """`127.0.0.1:PORT` and `localhost:PORT` reach the same registry, but they are two
    registry names to containerd, to kubelet's credential lookup and to imageward: a
    policy written for one does not match the other. The guard against such aliases
    (and against any registry nobody wrote a policy for) is `allowedRegistries` in a
    policy that matches `**`."""
    port = anonymous.port
    anonymous.client().push(f"{prefix}/x", images.nonroot_image(f"a-{prefix}"), tag="1.0")
    host_policy = policies.apply([f"127.0.0.1:{port}/{prefix}/**"], {"maxLayers": 1})
    canonical = helpers.create(
        cluster, namespace, helpers.pod("canonical", f"127.0.0.1:{port}/{prefix}/x:1.0")
    )
    assert canonical.returncode != 0 and f"ImagePolicy {host_policy}" in canonical.stderr
    alias = f"localhost:{port}/{prefix}/x:1.0"
    aliased = helpers.create(cluster, namespace, helpers.pod("aliased", alias))
    assert aliased.returncode == 0, aliased.stderr  # the host-specific policy does not see it

    # Every image, in this test's namespace only (other tests run in this cluster).
    catch_all = policies.apply(
        ["**"],
        {"allowedRegistries": [f"127.0.0.1:{port}", "registry.k8s.io"]},
        match={
            "images": ["**"],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        },
    )
    guarded = helpers.create(cluster, namespace, helpers.pod("guarded", alias))
    assert guarded.returncode != 0
    assert f"ImagePolicy {catch_all}: {alias}" in guarded.stderr
    assert "allowedRegistries" in guarded.stderr
