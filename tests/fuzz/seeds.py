"""Write the seed corpora: the shapes real tools produce, one small file per input.

    .venv/bin/python -m tests.fuzz.seeds        (from the checkout's root)

Manifests, indexes and configs come from `imageward.localcluster.images` (what the
local registries are filled with, byte for byte as pushed), signatures from
`tests/unit/signatures/build.py` (cosign's exact layouts; key signatures made with the
targets' fixed `TEST_KEY`, keyless ones under a fake Sigstore whose trusted root is
written to `keyless_root.json`), admission bodies from the admission tests' samples,
auth headers and files from what Docker Hub, GHCR, Quay, ECR and Harbor send. Each
corpus directory is rewritten whole; file names are the sha1 of the content, as
libFuzzer names them. Re-running changes the keyless seeds and root (fresh keys).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import shutil
from collections.abc import Iterable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from imageward.localcluster import images
from imageward.registry import manifests

from ..unit.admission import samples
from ..unit.signatures import build, fakesigstore
from . import targets

DIGEST = targets.DIGEST


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def key_sign(data: bytes) -> bytes:
    return targets.TEST_KEY.sign(data, ec.ECDSA(hashes.SHA256()))


def prefixed(flags: int, body: bytes) -> bytes:
    return bytes([flags]) + body


def content_type_flags(media_type: str | None) -> int:
    return targets.CONTENT_TYPES.index(media_type)


def reference_seeds() -> Iterable[bytes]:
    hexdigest = DIGEST.partition(":")[2]
    for text in (
        "nginx",
        "nginx:1.25",
        "acme/web",
        "index.docker.io/nginx",
        "GHCR.IO/acme/web:V1",
        "ghcr.io:443/acme/web",
        "localhost/web",
        "localhost:5000/a/b/c:1",
        f"web@sha256:{hexdigest}",
        f"ghcr.io/acme/web:1.4@sha256:{hexdigest}",
        "[::1]:5000/web",
        "ghcr.io/a__b/c.d-e---f",
        "registry-1.docker.io/library/busybox:latest",
        "127.0.0.1:5001/shop/web:1.0",
        "Acme/web",
        "ghcr.io/acme/web@sha512:" + "ab" * 64,
    ):
        yield text.encode()


def manifest_seeds() -> Iterable[bytes]:
    small = images.small_image("seed")
    docker = images.small_image("seed", format="docker")
    index = images.multiarch_index("seed")
    docker_list = images.build_index([docker], format="docker")
    artifact = images.build_artifact(
        [images.Blob.of(b'{"a":1}', build.BUNDLE_V03)],
        artifact_type=build.BUNDLE_V03,
        subject=small,
        annotations={"dev.sigstore.bundle.predicateType": build.SIGN_PREDICATE},
    )
    nested = images.build_index([index, small])
    for manifest in (small, docker, index, docker_list, artifact, nested):
        typed = content_type_flags(manifest.media_type)
        yield prefixed(typed | 0x10 | 0x20, manifest.body)
        yield prefixed(0, manifest.body)
    legacy_manifest, _ = build.legacy_manifest(
        build.LegacyLayer(build.simplesigning_payload(DIGEST), b"sig")
    )
    yield prefixed(content_type_flags(manifests.OCI_MANIFEST), legacy_manifest)
    yield prefixed(0, json.dumps({"schemaVersion": 1, "name": "x", "fsLayers": []}).encode())


def config_seeds() -> Iterable[bytes]:
    for manifest in (
        images.small_image("seed"),
        images.root_image(),
        images.nonroot_image(),
        images.small_image("arm", platform=images.LINUX_ARM64, labels={"a": "b"}),
    ):
        assert manifest.config is not None
        yield manifest.config.data
    yield b"{}"


def legacy_seeds() -> Iterable[bytes]:
    payload = build.simplesigning_payload(DIGEST)
    signed = build.LegacyLayer(payload, key_sign(payload))
    other = build.LegacyLayer(build.simplesigning_payload(targets.OTHER_DIGEST), b"\x30\x00")
    unsigned = build.LegacyLayer(payload, None)
    foreign = build.LegacyLayer(b"{}", None, media_type="application/octet-stream")
    for layers in ((signed,), (signed, other), (unsigned, foreign)):
        manifest, _ = build.legacy_manifest(*layers)
        yield manifest


def payload_seeds() -> Iterable[bytes]:
    yield build.simplesigning_payload(DIGEST)
    yield build.simplesigning_payload(DIGEST, key="Docker-manifest-digest")
    yield build.simplesigning_payload(targets.OTHER_DIGEST)
    yield json.dumps(
        {"critical": {"type": "something else", "image": {"docker-manifest-digest": DIGEST}}}
    ).encode()


def _bundle(statement: bytes) -> dict[str, Any]:
    pae = build.pae(build.INTOTO, statement)
    envelope = {
        "payload": build.b64(statement),
        "payloadType": build.INTOTO,
        "signatures": [{"sig": build.b64(key_sign(pae)), "keyid": ""}],
    }
    return build.key_bundle(envelope)


def referrer_seeds() -> Iterable[bytes]:
    signed = json.dumps(_bundle(build.statement(DIGEST))).encode()
    yield build.referrer_manifest(signed, DIGEST)[0]
    yield build.referrer_manifest(signed, DIGEST, predicate_type=None)[0]
    provenance = "https://slsa.dev/provenance/v1"
    yield build.referrer_manifest(signed, DIGEST, predicate_type=provenance)[0]
    yield images.build_attestation(images.small_image("seed")).body


def bundle_seeds(sigstore: fakesigstore.FakeSigstore, leaf: fakesigstore.Leaf) -> Iterable[bytes]:
    yield json.dumps(_bundle(build.statement(DIGEST))).encode()
    yield json.dumps(
        _bundle(build.statement(DIGEST, predicate_type="https://spdx.dev/Document"))
    ).encode()
    yield json.dumps(build.keyless_bundle(sigstore, leaf, build.statement(DIGEST))).encode()
    yield json.dumps(
        {
            "media_type": "application/vnd.dev.sigstore.bundle+json;version=0.2",
            "message_signature": {"signature": build.b64(b"x")},
        }
    ).encode()


def statement_seeds() -> Iterable[bytes]:
    yield prefixed(0, build.statement(DIGEST))
    yield prefixed(0, build.statement(DIGEST, statement_type="https://in-toto.io/Statement/v0.1"))
    yield prefixed(0, build.statement(DIGEST, predicate_type="https://slsa.dev/provenance/v1"))
    yield prefixed(0, build.statement(targets.OTHER_DIGEST))
    yield prefixed(4, build.statement(DIGEST))


def keyless_legacy_seeds(
    sigstore: fakesigstore.FakeSigstore, leaf: fakesigstore.Leaf
) -> Iterable[bytes]:
    layer = build.keyless_legacy_layer(sigstore, leaf, DIGEST)
    assert layer.payload == targets.keyless_payload()
    yield build.legacy_manifest(layer)[0]
    yield build.legacy_manifest(
        build.keyless_legacy_layer(sigstore, leaf, DIGEST, with_rekor_bundle=False)
    )[0]
    attacker = sigstore.issue(subject="attacker@example.com", issuer="https://evil.test")
    yield build.legacy_manifest(build.keyless_legacy_layer(sigstore, attacker, DIGEST))[0]


def review_seeds() -> Iterable[bytes]:
    for kind in ("Pod", "Deployment", "CronJob"):
        obj = samples.body_of(kind)
        yield json.dumps(
            samples.review(kind={"group": "", "version": "v1", "kind": kind}, object=obj)
        ).encode()
    old = samples.pod()
    new = samples.pod(containers=[{"name": "web", "image": "ghcr.io/acme/web:1.5"}])
    yield json.dumps(samples.review(operation="UPDATE", object=new, oldObject=old)).encode()
    yield json.dumps(
        samples.review(
            subResource="ephemeralcontainers",
            operation="UPDATE",
            object=samples.pod(ephemeralContainers=[{"name": "dbg", "image": "busybox"}]),
            oldObject=old,
        )
    ).encode()
    yield json.dumps(samples.review(operation="DELETE", object=None, oldObject=old)).encode()


def workload_seeds() -> Iterable[bytes]:
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}
                        ]
                    }
                ]
            }
        }
    }
    for index, kind in enumerate(("Pod", "Deployment", "CronJob", "Job")):
        yield prefixed(0, json.dumps(samples.body_of(kind)).encode())
        yield prefixed(index + 1, json.dumps(samples.body_of(kind, affinity=affinity)).encode())
    yield prefixed(
        0,
        json.dumps(
            samples.pod(os={"name": "windows"}, containers=[{"name": "a~b/c", "image": "x"}])
        ).encode(),
    )


def docker_config_seeds() -> Iterable[bytes]:
    yield json.dumps(
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": b64("alice:s3cret")},
                "ghcr.io": {"username": "bob", "password": "pat"},
                "*.registry.test:5000/acme": {"identitytoken": "refresh"},
                "localhost:5000": {"registrytoken": "tok"},
                "quay.io": {},
            },
            "credsStore": "desktop",
        }
    ).encode()
    yield json.dumps({"registry.test": {"auth": b64("u:p"), "email": "u@x"}}).encode()
    yield json.dumps({"auths": {"http://[::1]:5000": {"auth": b64("a:b")}}}).encode()


def pull_secret_seeds() -> Iterable[bytes]:
    for config in docker_config_seeds():
        yield prefixed(0, config)
    yield prefixed(1, json.dumps({"registry.test": {"auth": b64("u:p")}}).encode())
    yield prefixed(8, json.dumps({"auths": {"ghcr.io": {"auth": b64("u:p")}}}).encode())


def challenge_seeds() -> Iterable[bytes]:
    for header in (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/nginx:pull"',
        'Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:acme/web:pull"',
        'Basic realm="https://123456789012.dkr.ecr.us-east-1.amazonaws.com/",'
        'service="ecr.amazonaws.com"',
        'Bearer realm="https://quay.io/v2/auth",service="quay.io",error="insufficient_scope"',
        'Negotiate YWJjZA==, Basic realm="a, b", Bearer realm="r\\"x",scope="s1 s2"',
        'Bearer realm="http://127.0.0.1:5002/token?x=1",service="local"\nBasic realm="local"',
    ):
        yield header.encode()


def token_seeds() -> Iterable[bytes]:
    yield b'{"token":"abc.def","expires_in":300,"issued_at":"2024-01-01T00:00:00Z"}'
    yield b'{"access_token":"abc","expires_in":60.5}'
    yield b'{"token":"abc","access_token":"def","refresh_token":"r"}'


def link_seeds() -> Iterable[bytes]:
    yield f'</v2/acme/web/referrers/{DIGEST}?n=10&last=b>; rel="next"'.encode()
    yield b'<https://other.test/v2/x/referrers/y?last=1>; rel=next, <https://a.test/>; rel="prev"'
    yield b"<//cdn.test/page2>;rel=NEXT"


def retry_after_seeds() -> Iterable[bytes]:
    yield b"120"
    yield b"Wed, 21 Oct 2015 07:28:00 GMT"
    yield b"Sun, 06 Nov 1994 08:49:37 +0100"


def error_body_seeds() -> Iterable[bytes]:
    yield b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}'
    yield b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"},{"code":"DENIED"}]}'
    yield b"<html><body>502 Bad Gateway</body></html>"


def _notation_protected_json(**extra: Any) -> bytes:
    header: dict[str, Any] = {
        "alg": "ES256",
        "cty": "application/vnd.cncf.notary.payload.v1+json",
        "crit": ["io.cncf.notary.signingScheme"],
        "io.cncf.notary.signingScheme": "notary.x509",
        "io.cncf.notary.signingTime": "2026-01-01T00:00:00Z",
        **extra,
    }
    return json.dumps(header).encode()


def _notation_protected_cbor(**extra: Any) -> bytes:
    import cbor2

    header: dict[Any, Any] = {
        1: -7,
        2: ["io.cncf.notary.signingScheme"],
        3: "application/vnd.cncf.notary.payload.v1+json",
        "io.cncf.notary.signingScheme": "notary.x509",
        "io.cncf.notary.signingTime": cbor2.CBORTag(1, 1767225600),
    }
    header.update(extra)
    return cbor2.dumps(header)


def notation_jws_seeds() -> Iterable[bytes]:
    yield _notation_protected_json()
    yield _notation_protected_json(
        **{
            "io.cncf.notary.expiry": "2126-01-01T00:00:00Z",
            "crit": ["io.cncf.notary.signingScheme", "io.cncf.notary.expiry"],
        }
    )
    yield _notation_protected_json(
        **{
            "io.cncf.notary.signingScheme": "notary.x509.signingAuthority",
            "io.cncf.notary.authenticSigningTime": "2026-01-01T00:00:00Z",
            "crit": ["io.cncf.notary.signingScheme", "io.cncf.notary.authenticSigningTime"],
        }
    )


def notation_cose_seeds() -> Iterable[bytes]:
    import cbor2

    yield _notation_protected_cbor()
    yield _notation_protected_cbor(
        **{"io.cncf.notary.expiry": cbor2.CBORTag(1, 4923000000)},
    )


def notation_envelope_seeds() -> Iterable[bytes]:
    payload = targets.notation_payload()
    yield b"\x00" + targets.build_notation_jws(_notation_protected_json(), payload)
    yield b"\x01" + targets.build_notation_cose(_notation_protected_cbor(), payload)


def notation_payload_seeds() -> Iterable[bytes]:
    yield targets.notation_payload()
    yield targets.notation_payload(targets.OTHER_DIGEST)


def main() -> None:
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    sigstore = fakesigstore.FakeSigstore(now=now, name="fuzz")
    leaf = sigstore.issue(subject=build.WORKFLOW, issuer=build.GITHUB)
    targets.KEYLESS_ROOT.write_bytes(sigstore.trusted_root_json())
    corpora: dict[str, Iterable[bytes]] = {
        "reference": reference_seeds(),
        "manifest": manifest_seeds(),
        "config": config_seeds(),
        "legacy_manifest": [*legacy_seeds(), *keyless_legacy_seeds(sigstore, leaf)],
        "legacy_payload": payload_seeds(),
        "referrer_manifest": referrer_seeds(),
        "bundle": bundle_seeds(sigstore, leaf),
        "dsse_statement": statement_seeds(),
        "keyless_legacy": keyless_legacy_seeds(sigstore, leaf),
        "admission_review": review_seeds(),
        "workload": workload_seeds(),
        "docker_config": docker_config_seeds(),
        "pull_secret": pull_secret_seeds(),
        "challenge": challenge_seeds(),
        "token_response": token_seeds(),
        "link": link_seeds(),
        "retry_after": retry_after_seeds(),
        "error_body": error_body_seeds(),
        "notation_envelope": notation_envelope_seeds(),
        "notation_jws": notation_jws_seeds(),
        "notation_cose": notation_cose_seeds(),
        "notation_payload": notation_payload_seeds(),
    }
    assert set(corpora) == set(targets.TARGETS), set(targets.TARGETS) ^ set(corpora)
    for name, inputs in corpora.items():
        folder = targets.CORPUS / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        count = 0
        for data in inputs:
            targets.TARGETS[name].run(data)  # every seed keeps the contract
            (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)
            count += 1
        print(f"{name}: {count} seeds")


if __name__ == "__main__":
    main()
