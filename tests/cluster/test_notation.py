"""Notary Project (Notation) signatures written by the real `notation` CLI into real
registries, judged by imageward through the real webhook (Pods and a Deployment) and
`imageward check`, and by `notation verify` with the same trust: the two must agree on
every case.

Admitted: a signed image (notation's own test certificate); an image signed under a
trusted CA by an allowed identity, in JWS and COSE. Refused, each with its own message:
unsigned; an untrusted CA; an identity not in trustedIdentities; an expired signing
certificate without a timestamp; a signature copied from another image; a tampered
envelope; a Notation signature where the policy wants cosign, and a cosign signature
where it wants Notation. The native referrers API is covered against
go-containerregistry's registry.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import pathlib
import re
import time
import uuid
from typing import Any

import pytest

from imageward.localcluster import controlplane, cosign, images, notation, referrers, registries
from tests.cluster import helpers
from tests.cluster.test_check_cli import Check
from tests.conftest import RunningOperator
from tests.unit.notation import pki

pytestmark = pytest.mark.cluster

DENIED = 'admission webhook "validate.imageward.io" denied the request'
RELEASE = "x509.subject: C=US, ST=WA, O=Acme, CN=release"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


@dataclasses.dataclass(frozen=True)
class Keys:
    root: pki.Issued
    release: notation.SigningKey  # CN=release under the trusted root
    qa: notation.SigningKey  # CN=qa under the trusted root: an identity not trusted
    rogue: notation.SigningKey  # CN=release under a root nobody trusts
    test: notation.SigningKey  # `notation cert generate-test`: self-signed

    @property
    def root_pem(self) -> str:
        return self.root.pem.decode()


def _key(
    directory: pathlib.Path, label: str, signer: pki.Issued, *chain: pki.Issued
) -> notation.SigningKey:
    key, certificates = pki.write_chain(directory, label, signer, *chain)
    return notation.SigningKey(f"{label}-{uuid.uuid4().hex[:6]}", key, certificates)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory, notation_tool: notation.Notation) -> Keys:
    directory = tmp_path_factory.mktemp("notation-keys")
    root = pki.ca(pki.name(C="US", ST="WA", O="Acme", CN="Acme Root"))
    rogue_root = pki.ca(pki.name(C="US", ST="WA", O="Acme", CN="Acme Root"))
    return Keys(
        root=root,
        release=_key(directory, "release", pki.leaf(root), root),
        qa=_key(
            directory, "qa", pki.leaf(root, pki.name(C="US", ST="WA", O="Acme", CN="qa")), root
        ),
        rogue=_key(directory, "rogue", pki.leaf(rogue_root), rogue_root),
        test=notation_tool.generate_test(f"wabbit{uuid.uuid4().hex[:6]}"),
    )


def _authority(keys: Keys, **notation_spec: Any) -> dict[str, Any]:
    spec = {"trustStore": {"pem": keys.root_pem}, "trustedIdentities": [RELEASE], **notation_spec}
    return {"name": "acme", "notation": spec}


def _trust_like_the_policy(tool: notation.Notation, keys: Keys) -> None:
    tool.trust({"ca:acme": [keys.root.pem]}, identities=[RELEASE])


def _signature_samples(text: str, policy: str) -> dict[tuple[str, str, str], float]:
    found: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("imageward_signature_verifications_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if labels.get("policy") == policy:
            found[(labels["authority"], labels["format"], labels["result"])] = float(
                line.rsplit(" ", 1)[1]
            )
    return found


def _deployment(name: str, image: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }


# -- admitted ---------------------------------------------------------------------------


@pytest.mark.parametrize("envelope", ["jws", "cose"])
def test_signed_under_a_trusted_ca_by_an_allowed_identity_is_admitted(
    cluster: controlplane.ControlPlane,
    imageward_operator: RunningOperator,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    notation_tool: notation.Notation,
    keys: Keys,
    envelope: str,
) -> None:
    prefix = f"nv{helpers.uid()}"
    image, digest = helpers.push(
        anonymous, images.nonroot_image(f"s-{helpers.uid()}"), prefix=prefix
    )
    notation_tool.sign(helpers.pinned(image, digest), keys.release, envelope=envelope)
    _trust_like_the_policy(notation_tool, keys)
    verified = notation_tool.verify(helpers.pinned(image, digest))
    assert verified.returncode == 0, verified.stderr
    name = policies.apply(
        [f"{anonymous.host}/{prefix}/**"], {"signatures": {"authorities": [_authority(keys)]}}
    )

    admitted = helpers.create(cluster, namespace, helpers.pod("signed", image))
    assert admitted.returncode == 0, admitted.stderr
    deployment = helpers.create(cluster, namespace, _deployment("signed", image))
    assert deployment.returncode == 0, deployment.stderr
    samples = _signature_samples(imageward_operator.metrics(), name)
    assert samples.get(("acme", "notation", "verified"), 0) >= 1, samples


def test_signed_with_notations_test_certificate_is_admitted(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    notation_tool: notation.Notation,
    keys: Keys,
) -> None:
    prefix = f"nt{helpers.uid()}"
    image, digest = helpers.push(
        anonymous, images.nonroot_image(f"t-{helpers.uid()}"), prefix=prefix
    )
    notation_tool.sign(helpers.pinned(image, digest), keys.test)
    notation_tool.trust({"ca:wabbit": [keys.test.chain.read_bytes()]}, identities=["*"])
    assert notation_tool.verify(helpers.pinned(image, digest)).returncode == 0
    authority = {
        "name": "wabbit",
        "notation": {
            "trustStore": {"pem": keys.test.chain.read_text()},
            "trustedIdentities": ["x509.subject: C=US, ST=WA, O=Notary"],
        },
    }
    policies.apply([f"{anonymous.host}/{prefix}/**"], {"signatures": {"authorities": [authority]}})
    admitted = helpers.create(cluster, namespace, helpers.pod("wabbit", image))
    assert admitted.returncode == 0, admitted.stderr


def test_trust_store_from_a_secret_and_a_config_map(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    notation_tool: notation.Notation,
    keys: Keys,
) -> None:
    prefix = f"ns{helpers.uid()}"
    image, digest = helpers.push(
        anonymous, images.nonroot_image(f"r-{helpers.uid()}"), prefix=prefix
    )
    notation_tool.sign(helpers.pinned(image, digest), keys.release, envelope="cose")
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "acme-roots", "namespace": namespace},
            "data": {"ca.crt": base64.b64encode(keys.root.pem).decode()},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "acme-roots", "namespace": namespace},
            "data": {"roots.pem": keys.root_pem},
        },
    )
    for store in (
        {"secretRef": {"namespace": namespace, "name": "acme-roots"}},
        {"configMapRef": {"namespace": namespace, "name": "acme-roots", "key": "roots.pem"}},
    ):
        name = policies.apply(
            [f"{anonymous.host}/{prefix}/**"],
            {"signatures": {"authorities": [_authority(keys, trustStore=store)]}},
        )
        admitted = helpers.create(cluster, namespace, helpers.pod(f"p{helpers.uid()}", image))
        assert admitted.returncode == 0, admitted.stderr
        cluster.kubectl("delete", "imagepolicy", name)
    missing = policies.apply(
        [f"{anonymous.host}/{prefix}/**"],
        {
            "signatures": {
                "authorities": [
                    _authority(
                        keys, trustStore={"secretRef": {"namespace": namespace, "name": "gone"}}
                    )
                ]
            }
        },
        ready="False",
    )
    condition = policies.ready_condition(missing)
    assert condition is not None
    assert (
        f"authority acme: trustStore: Secret {namespace}/gone key ca.crt not found"
        in condition["message"]
    )


# -- refused, each with its own message, and notation verify agrees ----------------------------


def _referrers(client: images.RegistryClient, repository: str, digest: str) -> list[dict[str, Any]]:
    index = client.get_manifest(repository, f"sha256-{digest[7:]}").document
    manifests: list[dict[str, Any]] = index["manifests"]
    return manifests


def _set_referrers(
    client: images.RegistryClient, repository: str, digest: str, manifests: list[dict[str, Any]]
) -> None:
    index = {"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": manifests}
    client.push_manifest(repository, f"sha256-{digest[7:]}", json.dumps(index).encode(), INDEX_TYPE)


def _copy_signature(
    client: images.RegistryClient, repository: str, source: str, target: str
) -> None:
    """An attacker copies image `source`'s Notation signature to image `target` (same
    repository, so the envelope blob is already there), subject rewritten to look right."""
    (descriptor,) = _referrers(client, repository, source)
    manifest = client.get_manifest(repository, descriptor["digest"]).document
    manifest["subject"] = {**manifest["subject"], "digest": target}
    body = json.dumps(manifest).encode()
    copied = client.push_manifest(repository, f"sha256:{_sha256(body)}", body, MANIFEST_TYPE)
    _set_referrers(
        client, repository, target, [{**descriptor, "digest": copied, "size": len(body)}]
    )


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _tamper(client: images.RegistryClient, repository: str, digest: str) -> None:
    """Rewrite the signed payload of a JWS envelope (adding an annotation), keep its
    signature, and re-point the signature manifest and the referrers index at it."""
    (descriptor,) = _referrers(client, repository, digest)
    manifest = client.get_manifest(repository, descriptor["digest"]).document
    (layer,) = manifest["layers"]
    envelope = json.loads(client.get_blob(repository, layer["digest"]))
    padded = envelope["payload"] + "=" * (-len(envelope["payload"]) % 4)
    payload = json.loads(base64.urlsafe_b64decode(padded))
    payload["targetArtifact"]["annotations"] = {"io.wabbit-networks.buildId": "attacker"}
    envelope["payload"] = (
        base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    )
    tampered = json.dumps(envelope).encode()
    layer["digest"] = client.push_blob(repository, tampered)
    layer["size"] = len(tampered)
    body = json.dumps(manifest).encode()
    pushed = client.push_manifest(repository, f"sha256:{_sha256(body)}", body, MANIFEST_TYPE)
    _set_referrers(
        client, repository, digest, [{**descriptor, "digest": pushed, "size": len(body)}]
    )


def test_refusals_each_name_their_reason_and_notation_verify_agrees(
    cluster: controlplane.ControlPlane,
    imageward_operator: RunningOperator,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    notation_tool: notation.Notation,
    cosign_tool: cosign.Cosign,
    registry_set: registries.Registries,
    keys: Keys,
    tmp_path: pathlib.Path,
) -> None:
    prefix, cosign_prefix = f"nr{helpers.uid()}", f"nc{helpers.uid()}"
    client = anonymous.client()

    def push(label: str, *, under: str = prefix) -> tuple[str, str]:
        return helpers.push(
            anonymous, images.nonroot_image(f"{label}-{helpers.uid()}"), prefix=under
        )

    # First the certificate that must expire: notation signs only while it is valid.
    directory = tmp_path / "short"
    not_after = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=15)
    short = _key(
        directory,
        "short",
        pki.leaf(keys.root, not_after=not_after, not_before=pki.NOW - datetime.timedelta(hours=1)),
        keys.root,
    )
    expired, expired_digest = push("expired")
    notation_tool.sign(helpers.pinned(expired, expired_digest), short)

    unsigned, unsigned_digest = push("unsigned")
    untrusted, untrusted_digest = push("untrusted")
    notation_tool.sign(helpers.pinned(untrusted, untrusted_digest), keys.rogue)
    qa, qa_digest = push("qa")
    notation_tool.sign(helpers.pinned(qa, qa_digest), keys.qa, envelope="cose")
    # Two images of one repository: the second gets the first's signature.
    original, original_digest = push("original")
    _, repository = helpers.repository_of(original)
    copy_manifest = images.nonroot_image(f"copy-{helpers.uid()}")
    copy_digest = client.push(repository, copy_manifest, tag="2.0").digest
    copied = f"{anonymous.host}/{repository}:2.0"
    notation_tool.sign(helpers.pinned(original, original_digest), keys.release)
    _copy_signature(client, repository, original_digest, copy_digest)
    tampered, tampered_digest = push("tampered")
    notation_tool.sign(helpers.pinned(tampered, tampered_digest), keys.release)
    _, tampered_repository = helpers.repository_of(tampered)
    _tamper(client, tampered_repository, tampered_digest)
    # Cosign where Notation is wanted, Notation where cosign is.
    cosign_key = cosign_tool.generate_key_pair(f"nc-{helpers.uid()}")
    cosigned, cosigned_digest = push("cosigned")
    cosign_tool.sign(helpers.pinned(cosigned, cosigned_digest), cosign_key)
    notarized, notarized_digest = push("notarized", under=cosign_prefix)
    notation_tool.sign(helpers.pinned(notarized, notarized_digest), keys.release)

    rules = {"signatures": {"authorities": [_authority(keys)]}}
    cosign_rules = {
        "signatures": {"authorities": [{"name": "release", "key": {"pem": cosign_key.public_pem}}]}
    }
    name = policies.apply([f"{anonymous.host}/{prefix}/**"], rules)
    cosign_name = policies.apply([f"{anonymous.host}/{cosign_prefix}/**"], cosign_rules)
    # Wait out the short certificate.
    time.sleep(max(0.0, (not_after - datetime.datetime.now(datetime.UTC)).total_seconds() + 2))

    cases = {
        "unsigned": (unsigned, unsigned_digest, name, "acme: no Notation signature found"),
        "untrusted": (
            untrusted,
            untrusted_digest,
            name,
            "acme: certificate chain does not reach the trustStore (signed by "
            "CN=release,O=Acme,ST=WA,C=US, chain ends at CN=Acme Root,O=Acme,ST=WA,C=US)",
        ),
        "identity": (
            qa,
            qa_digest,
            name,
            "acme: identity not trusted: signing certificate subject CN=qa,O=Acme,ST=WA,C=US "
            f"is not in trustedIdentities ({RELEASE})",
        ),
        "expired": (
            expired,
            expired_digest,
            name,
            "acme: signature expired: certificate CN=release,O=Acme,ST=WA,C=US expired at "
            f"{not_after:%Y-%m-%dT%H:%M:%SZ} and the signature has no timestamp countersignature",
        ),
        "copied": (
            copied,
            copy_digest,
            name,
            f"acme: signature names another digest {original_digest[:19]}… (targetArtifact)",
        ),
        "tampered": (
            tampered,
            tampered_digest,
            name,
            "acme: JWS envelope signature does not verify with its signing certificate "
            "(tampered envelope)",
        ),
        "cosign where Notation is wanted": (
            cosigned,
            cosigned_digest,
            name,
            "acme: no Notation signature found (only cosign signatures)",
        ),
        "Notation where cosign is wanted": (
            notarized,
            notarized_digest,
            cosign_name,
            "release: no signature found for cosign (only Notation signatures, which need a "
            "notation authority)",
        ),
    }
    messages = {case[3] for case in cases.values()}
    assert len(messages) == len(cases)  # each refusal has its own message

    # The real webhook: a Pod per case, and a Deployment for one.
    for label, (image, digest, policy, message) in cases.items():
        refused = helpers.create(cluster, namespace, helpers.pod(f"r{helpers.uid()}", image))
        assert refused.returncode != 0, (label, refused.stdout)
        assert DENIED in refused.stderr, label
        assert f"ImagePolicy {policy}: {image} (sha256:{digest[7:19]}…)" in refused.stderr, (
            label,
            refused.stderr,
        )
        assert message in refused.stderr, (label, refused.stderr)
    deployment = helpers.create(cluster, namespace, _deployment("untrusted", untrusted))
    assert deployment.returncode != 0 and "does not reach the trustStore" in deployment.stderr

    # notation verify, with the trust the policy has, agrees on every Notation case.
    _trust_like_the_policy(notation_tool, keys)
    for label, (image, digest, _, _) in cases.items():
        if label == "Notation where cosign is wanted":
            continue  # notation trusts that one: the cosign policy is what refuses it
        verified = notation_tool.verify(helpers.pinned(image, digest))
        assert verified.returncode != 0, (label, verified.stdout)
    # cosign agrees that the Notation-only image carries no cosign signature.
    assert (
        cosign_tool.verify(helpers.pinned(notarized, notarized_digest), cosign_key).returncode != 0
    )
    assert notation_tool.verify(helpers.pinned(notarized, notarized_digest)).returncode == 0

    # imageward check: the same verdicts and messages.
    check = Check(tmp_path, registry_set)
    policy_file = check.policy_file(
        *(
            {
                "apiVersion": "imageward.io/v1alpha1",
                "kind": "ImagePolicy",
                "metadata": {"name": policy_name},
                "spec": {
                    "match": {"images": [f"{anonymous.host}/{under}/**"]},
                    "rules": policy_rules,
                },
            }
            for policy_name, under, policy_rules in (
                (name, prefix, rules),
                (cosign_name, cosign_prefix, cosign_rules),
            )
        )
    )
    status, report = check.json("--policy", policy_file, *(c[0] for c in cases.values()))
    assert status == 1
    by_image = {entry["image"]: entry for entry in report["images"]}
    for label, (image, _, policy, message) in cases.items():
        entry = by_image[image]
        assert entry["decision"] == "deny", label
        (violation,) = entry["violations"]
        assert violation["policy"] == policy and violation["rule"] == "signatures", label
        assert message in violation["message"], (label, violation["message"])

    samples = _signature_samples(imageward_operator.metrics(), name)
    for result in (
        "untrusted",
        "identity_mismatch",
        "expired",
        "wrong_digest",
        "invalid_signature",
    ):
        assert samples.get(("acme", "notation", result), 0) >= 1, (result, samples)


def test_native_referrers_api(
    notation_tool: notation.Notation, keys: Keys, tmp_path: pathlib.Path
) -> None:
    """Against a registry with the OCI referrers API, imageward finds Notation signatures
    through `GET /v2/<repo>/referrers/<digest>`, JWS and COSE alike."""
    with referrers.ReferrersRegistry() as registry:
        client = registry.client()
        repository = f"native/{uuid.uuid4().hex[:8]}"
        jws = client.push(repository, images.nonroot_image(f"j-{uuid.uuid4().hex}"), tag="jws")
        cose = client.push(repository, images.nonroot_image(f"c-{uuid.uuid4().hex}"), tag="cose")
        client.push(repository, images.nonroot_image(f"u-{uuid.uuid4().hex}"), tag="unsigned")
        for pushed, envelope in ((jws, "jws"), (cose, "cose")):
            notation_tool.sign(
                f"{registry.host}/{repository}@{pushed.digest}",
                keys.release,
                envelope=envelope,
                referrers_api=True,
            )
        # notation (oras-go) falls back to the referrers tag schema when a manifest push
        # answers without OCI-Subject, as this registry does; it still indexed the
        # subjects, so drop the fallback tags: only the referrers API finds them now.
        for pushed in (jws, cose):
            client.request(
                "DELETE",
                f"/v2/{repository}/manifests/sha256-{pushed.digest[7:]}",
                expect=(200, 202),
            )
        assert sorted(client.list_tags(repository)) == ["cose", "jws", "unsigned"]
        listed = client.request("GET", f"/v2/{repository}/referrers/{jws.digest}", expect=(200,))
        assert "application/vnd.cncf.notary.signature" in listed.body.decode()
        check = Check(tmp_path, [registry])
        policy = check.policy_file(
            {
                "apiVersion": "imageward.io/v1alpha1",
                "kind": "ImagePolicy",
                "metadata": {"name": "native"},
                "spec": {
                    "match": {"images": [f"{registry.host}/native/**"]},
                    "rules": {"signatures": {"authorities": [_authority(keys)]}},
                },
            }
        )
        status, report = check.json(
            "--policy",
            policy,
            *(f"{registry.host}/{repository}:{t}" for t in ("jws", "cose", "unsigned")),
        )
        decisions = {i["image"].rsplit(":", 1)[1]: i["decision"] for i in report["images"]}
        assert decisions == {"jws": "allow", "cose": "allow", "unsigned": "deny"}, report
        assert status == 1
        log = registry.request_log()
        assert f"/v2/{repository}/referrers/{jws.digest}" in log
        _trust_like_the_policy(notation_tool, keys)
        for pushed in (jws, cose):
            verified = notation_tool.verify(f"{registry.host}/{repository}@{pushed.digest}")
            assert verified.returncode == 0, verified.stderr


# -- revocation: off by default; when on, OCSP then CRL, and unreachable fails closed ----------


class _Responder:
    """A CA's CRL distribution point and OCSP responder on loopback (plain HTTP, as the
    specification allows), signed by `ca`; `revoked` holds revoked serial numbers."""

    def __init__(self, ca: pki.Issued) -> None:
        import http.server
        import threading

        self.ca = ca
        self.revoked: set[int] = set()
        self.requests: list[str] = []
        responder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, body: bytes, content_type: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path.startswith("/ocsp/"):  # RFC 6960 A.1: GET {url}/{base64 request}
                    import urllib.parse

                    encoded = urllib.parse.unquote(self.path[len("/ocsp/") :])
                    responder.requests.append("GET /ocsp")
                    request = base64.b64decode(encoded + "=" * (-len(encoded) % 4))
                    self._send(responder.ocsp(request), "application/ocsp-response")
                    return
                responder.requests.append(f"GET {self.path}")
                self._send(responder.crl(), "application/pkix-crl")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                responder.requests.append(f"POST {self.path}")
                self._send(responder.ocsp(body), "application/ocsp-response")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.issued: dict[int, pki.Issued] = {}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def crl_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ca.crl"

    @property
    def ocsp_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ocsp"

    def crl(self) -> bytes:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization

        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ca.cert.subject)
            .last_update(now - datetime.timedelta(minutes=5))
            .next_update(now + datetime.timedelta(hours=1))
            .add_extension(x509.CRLNumber(1), critical=False)
        )
        for serial in sorted(self.revoked):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(now - datetime.timedelta(minutes=1))
                .build()
            )
        return builder.sign(self.ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    def ocsp(self, body: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.x509 import ocsp

        request = ocsp.load_der_ocsp_request(body)
        cert = self.issued[request.serial_number]
        now = datetime.datetime.now(datetime.UTC)
        revoked = request.serial_number in self.revoked
        response = (
            ocsp.OCSPResponseBuilder()
            .add_response(
                cert=cert.cert,
                issuer=self.ca.cert,
                algorithm=request.hash_algorithm,
                cert_status=ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD,
                this_update=now - datetime.timedelta(minutes=1),
                next_update=now + datetime.timedelta(hours=1),
                revocation_time=now - datetime.timedelta(minutes=1) if revoked else None,
                revocation_reason=None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, self.ca.cert)
            .sign(self.ca.key, hashes.SHA256())
        )
        return response.public_bytes(serialization.Encoding.DER)

    def leaf(self, cn: str, *, crl: str | None = None, ocsp_url: str | None = None) -> pki.Issued:
        from cryptography import x509
        from cryptography.x509 import oid

        extra: list[x509.ExtensionType] = []
        if crl is not None:
            extra.append(
                x509.CRLDistributionPoints(
                    [
                        x509.DistributionPoint(
                            [x509.UniformResourceIdentifier(crl)], None, None, None
                        )
                    ]
                )
            )
        if ocsp_url is not None:
            extra.append(
                x509.AuthorityInformationAccess(
                    [
                        x509.AccessDescription(
                            oid.AuthorityInformationAccessOID.OCSP,
                            x509.UniformResourceIdentifier(ocsp_url),
                        )
                    ]
                )
            )
        issued = pki.leaf(self.ca, pki.name(C="US", ST="WA", O="Acme", CN=cn), extra=extra)
        self.issued[issued.cert.serial_number] = issued
        return issued


def test_revocation_is_off_by_default_and_fails_closed_when_on(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    notation_tool: notation.Notation,
    registry_set: registries.Registries,
    tmp_path: pathlib.Path,
) -> None:
    from imageward.localcluster import processes

    root = pki.ca(pki.name(C="US", ST="WA", O="Acme", CN="Acme Revoking Root"))
    responder = _Responder(root)
    try:
        closed = f"http://127.0.0.1:{processes.free_port()}/ca.crl"
        leaves = {
            "crl-good": responder.leaf("crl-good", crl=responder.crl_url),
            "crl-revoked": responder.leaf("crl-revoked", crl=responder.crl_url),
            "ocsp-good": responder.leaf("ocsp-good", ocsp_url=responder.ocsp_url),
            "ocsp-revoked": responder.leaf("ocsp-revoked", ocsp_url=responder.ocsp_url),
            "unreachable": responder.leaf("unreachable", crl=closed),
        }
        responder.revoked = {
            leaves["crl-revoked"].cert.serial_number,
            leaves["ocsp-revoked"].cert.serial_number,
        }
        prefix = f"rv{helpers.uid()}"
        pushed: dict[str, tuple[str, str]] = {}
        for label, issued in leaves.items():
            image, digest = helpers.push(
                anonymous, images.nonroot_image(f"{label}-{helpers.uid()}"), prefix=prefix
            )
            notation_tool.sign(
                helpers.pinned(image, digest), _key(tmp_path / "keys", label, issued, root)
            )
            pushed[label] = (image, digest)

        def authority(**extra: Any) -> dict[str, Any]:
            return {
                "name": "acme",
                "notation": {
                    "trustStore": {"pem": root.pem.decode()},
                    "trustedIdentities": ["*"],
                    **extra,
                },
            }

        check = Check(tmp_path, registry_set)

        def decide(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
            policy = check.policy_file(
                {
                    "apiVersion": "imageward.io/v1alpha1",
                    "kind": "ImagePolicy",
                    "metadata": {"name": "revocation"},
                    "spec": {
                        "match": {"images": [f"{anonymous.host}/{prefix}/**"]},
                        "rules": {"signatures": {"authorities": [spec]}},
                    },
                }
            )
            _, report = check.json("--policy", policy, *(image for image, _ in pushed.values()))
            by_image = {entry["image"]: entry for entry in report["images"]}
            return {label: by_image[image] for label, (image, _) in pushed.items()}

        # Off by default: every image is admitted, the unreachable responder included.
        default = decide(authority())
        assert {label: e["decision"] for label, e in default.items()} == dict.fromkeys(
            leaves, "allow"
        )
        notation_tool.trust(
            {"ca:acme": [root.pem]}, identities=["*"], override={"revocation": "skip"}
        )
        for label, (image, digest) in pushed.items():
            assert notation_tool.verify(helpers.pinned(image, digest)).returncode == 0, label

        # On: OCSP or CRL decides; a responder that cannot be reached fails closed.
        enforced = decide(authority(override={"revocation": "enforce"}))
        decisions = {label: e["decision"] for label, e in enforced.items()}
        assert decisions == {
            "crl-good": "allow",
            "crl-revoked": "deny",
            "ocsp-good": "allow",
            "ocsp-revoked": "deny",
            "unreachable": "deny",
        }, enforced
        message = enforced["crl-revoked"]["violations"][0]["message"]
        assert (
            "acme: certificate CN=crl-revoked,O=Acme,ST=WA,C=US is revoked (CRL: revoked at"
            in message
        )
        message = enforced["ocsp-revoked"]["violations"][0]["message"]
        assert (
            "acme: certificate CN=ocsp-revoked,O=Acme,ST=WA,C=US is revoked (OCSP: revoked at"
            in message
        )
        message = enforced["unreachable"]["violations"][0]["message"]
        assert (
            "acme: revocation status of certificate CN=unreachable,O=Acme,ST=WA,C=US could not be "
            f"determined: CRL {closed}: " in message
        ), message
        assert "POST /ocsp" in responder.requests and "GET /ca.crl" in responder.requests
        responder.requests.clear()

        # notation verify at strict (revocation enforced) agrees on each.
        notation_tool.trust({"ca:acme": [root.pem]}, identities=["*"])
        for label, (image, digest) in pushed.items():
            verified = notation_tool.verify(helpers.pinned(image, digest))
            assert (verified.returncode == 0) == (decisions[label] == "allow"), (
                label,
                verified.stderr,
                responder.requests,
            )

        # The webhook fails closed the same way.
        policies.apply(
            [f"{anonymous.host}/{prefix}/**"],
            {"signatures": {"authorities": [authority(override={"revocation": "enforce"})]}},
        )
        image, digest = pushed["unreachable"]
        refused = helpers.create(cluster, namespace, helpers.pod("unreachable", image))
        assert refused.returncode != 0 and "could not be determined" in refused.stderr, (
            refused.stderr
        )
        admitted = helpers.create(cluster, namespace, helpers.pod("good", pushed["ocsp-good"][0]))
        assert admitted.returncode == 0, admitted.stderr
    finally:
        responder.close()


def test_a_timestamped_signature_outlives_its_certificate(
    notation_tool: notation.Notation,
    anonymous: registries.Registry,
    registry_set: registries.Registries,
    keys: Keys,
    tmp_path: pathlib.Path,
) -> None:
    """`notation sign --timestamp-url` against a local RFC 3161 TSA: once the signing
    certificate has expired, the countersignature keeps the signature valid, for
    notation and imageward alike, when the timestampTrustStore holds the TSA's root;
    without that store both refuse."""
    from tests.unit.notation import tsa

    authority = tsa.Authority()
    server = tsa.Server(authority)
    try:
        tsa_root = tmp_path / "tsa-root.pem"
        tsa_root.write_bytes(authority.root_pem)
        not_after = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=10)
        short = _key(
            tmp_path / "keys",
            "stamped",
            pki.leaf(
                keys.root, not_after=not_after, not_before=pki.NOW - datetime.timedelta(hours=1)
            ),
            keys.root,
        )
        prefix = f"ts{helpers.uid()}"
        images_ = {}
        for envelope in ("jws", "cose"):
            image, digest = helpers.push(
                anonymous, images.nonroot_image(f"{envelope}-{helpers.uid()}"), prefix=prefix
            )
            notation_tool.sign(
                helpers.pinned(image, digest),
                short,
                envelope=envelope,
                extra=["--timestamp-url", server.url, "--timestamp-root-cert", str(tsa_root)],
            )
            images_[envelope] = (image, digest)
        assert server.requests == 2
        time.sleep(max(0.0, (not_after - datetime.datetime.now(datetime.UTC)).total_seconds() + 2))

        check = Check(tmp_path, registry_set)

        def decisions(**store: Any) -> dict[str, tuple[str, list[str]]]:
            spec = {"trustStore": {"pem": keys.root_pem}, "trustedIdentities": [RELEASE], **store}
            policy = check.policy_file(
                {
                    "apiVersion": "imageward.io/v1alpha1",
                    "kind": "ImagePolicy",
                    "metadata": {"name": "stamped"},
                    "spec": {
                        "match": {"images": [f"{anonymous.host}/{prefix}/**"]},
                        "rules": {
                            "signatures": {"authorities": [{"name": "acme", "notation": spec}]}
                        },
                    },
                }
            )
            _, report = check.json("--policy", policy, *(i for i, _ in images_.values()))
            by_image = {e["image"]: e for e in report["images"]}
            return {
                kind: (
                    by_image[image]["decision"],
                    [v["message"] for v in by_image[image]["violations"]],
                )
                for kind, (image, _) in images_.items()
            }

        stamped = decisions(timestampTrustStore={"pem": authority.root_pem.decode()})
        assert stamped == {"jws": ("allow", []), "cose": ("allow", [])}, stamped
        notation_tool.trust(
            {"ca:acme": [keys.root.pem], "tsa:acme-tsa": [authority.root_pem]}, identities=[RELEASE]
        )
        for kind, (image, digest) in images_.items():
            verified = notation_tool.verify(helpers.pinned(image, digest))
            assert verified.returncode == 0, (kind, verified.stderr)

        unstamped = decisions()
        for kind, (decision, messages) in unstamped.items():
            assert decision == "deny", kind
            assert "signature expired: certificate CN=release" in messages[0], messages
        _trust_like_the_policy(notation_tool, keys)
        for kind, (image, digest) in images_.items():
            assert notation_tool.verify(helpers.pinned(image, digest)).returncode != 0, kind
    finally:
        server.close()


def test_threshold_counts_cosign_and_notation_signers(
    anonymous: registries.Registry,
    registry_set: registries.Registries,
    notation_tool: notation.Notation,
    cosign_tool: cosign.Cosign,
    keys: Keys,
    tmp_path: pathlib.Path,
) -> None:
    """threshold: 2 over a cosign key and a notation authority: met by one signature of
    each format, not by either alone."""
    prefix = f"nth{helpers.uid()}"
    key = cosign_tool.generate_key_pair(f"th-{helpers.uid()}")
    both, both_digest = helpers.push(
        anonymous, images.nonroot_image(f"b-{helpers.uid()}"), prefix=prefix
    )
    cosign_tool.sign(helpers.pinned(both, both_digest), key)
    notation_tool.sign(helpers.pinned(both, both_digest), keys.release, envelope="cose")
    only, only_digest = helpers.push(
        anonymous, images.nonroot_image(f"o-{helpers.uid()}"), prefix=prefix
    )
    notation_tool.sign(helpers.pinned(only, only_digest), keys.release)
    check = Check(tmp_path, registry_set)
    policy = check.policy_file(
        {
            "apiVersion": "imageward.io/v1alpha1",
            "kind": "ImagePolicy",
            "metadata": {"name": "two-formats"},
            "spec": {
                "match": {"images": [f"{anonymous.host}/{prefix}/**"]},
                "rules": {
                    "signatures": {
                        "threshold": 2,
                        "authorities": [
                            {"name": "release-key", "key": {"pem": key.public_pem}},
                            _authority(keys),
                        ],
                    }
                },
            },
        }
    )
    status, report = check.json("--policy", policy, both, only)
    by_image = {entry["image"]: entry for entry in report["images"]}
    assert by_image[both]["decision"] == "allow", by_image[both]
    assert by_image[only]["decision"] == "deny" and status == 1
    (violation,) = by_image[only]["violations"]
    assert "is verified by 1 of 2 authorities, under signatures threshold 2" in violation["message"]
    assert (
        "release-key: no signature found for cosign (only Notation signatures"
        in violation["message"]
    )
