"""Signatures built byte-exactly as cosign writes them, for the unit tests.

Legacy: the `sha256-<hex>.sig` OCI manifest with one simple-signing layer per
signature (cosign v2, `cosign sign --key` or `--new-bundle-format=false`). Bundle: the
referrer manifest (artifactType application/vnd.dev.sigstore.bundle.v0.3+json) whose
layer is a Sigstore bundle with a DSSE envelope over an in-toto statement (cosign v3).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from imageward.signatures import keyless, keys, verify

from . import fakesigstore

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

EMPTY_CONFIG = b"{}"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"
SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
INTOTO = "application/vnd.in-toto+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_digest(name: str) -> str:
    """A stand-in image manifest digest, different per name."""
    return digest_of(f"image manifest of {name}".encode())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def generate(kind: str) -> PrivateKey:
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "p521":
        return ec.generate_private_key(ec.SECP521R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise AssertionError(kind)


def public_pem(key: PrivateKey) -> str:
    """What `cosign public-key` prints (cosign.pub)."""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def sign(key: PrivateKey, data: bytes, *, curve_hash: bool = False) -> bytes:
    """Sign as cosign: ECDSA (DER) with SHA-256, or the curve's hash for v3 bundles."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm: hashes.HashAlgorithm = hashes.SHA256()
        if curve_hash and key.curve.name == "secp384r1":
            algorithm = hashes.SHA384()
        elif curve_hash and key.curve.name == "secp521r1":
            algorithm = hashes.SHA512()
        return key.sign(data, ec.ECDSA(algorithm))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(data)


# -- legacy ---------------------------------------------------------------------------


def simplesigning_payload(
    digest: str, *, reference: str = "registry.test/acme/web", key: str = "docker-manifest-digest"
) -> bytes:
    """cosign's payload: Go's json.Marshal of its SimpleContainerImage (no spaces)."""
    return json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": reference},
                "image": {key: digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        },
        separators=(",", ":"),
    ).encode()


@dataclasses.dataclass
class LegacyLayer:
    payload: bytes
    signature: bytes | None
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)
    media_type: str = SIMPLESIGNING


def legacy_layer(key: PrivateKey, digest: str, **annotations: str) -> LegacyLayer:
    payload = simplesigning_payload(digest)
    return LegacyLayer(payload, sign(key, payload), dict(annotations))


def legacy_manifest(*layers: LegacyLayer) -> tuple[bytes, dict[str, bytes]]:
    """The `.sig` manifest and its blobs by digest."""
    blobs = {digest_of(EMPTY_CONFIG): EMPTY_CONFIG}
    entries = []
    for layer in layers:
        annotations = dict(layer.annotations)
        if layer.signature is not None:
            annotations["dev.cosignproject.cosign/signature"] = b64(layer.signature)
        digest = digest_of(layer.payload)
        blobs[digest] = layer.payload
        entries.append(
            {
                "mediaType": layer.media_type,
                "size": len(layer.payload),
                "digest": digest,
                "annotations": annotations,
            }
        )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "size": len(EMPTY_CONFIG),
            "digest": digest_of(EMPTY_CONFIG),
        },
        "layers": entries,
    }
    return json.dumps(manifest).encode(), blobs


# -- bundles --------------------------------------------------------------------------


def statement(
    digest: str, *, predicate_type: str = SIGN_PREDICATE, statement_type: str | None = None
) -> bytes:
    """cosign v3's statement (protojson of an in-toto v1 Statement)."""
    algorithm, _, hex_digest = digest.partition(":")
    return json.dumps(
        {
            "_type": statement_type or "https://in-toto.io/Statement/v1",
            "subject": [{"digest": {algorithm: hex_digest}}],
            "predicateType": predicate_type,
            "predicate": {},
        }
    ).encode()


def pae(payload_type: str, payload: bytes) -> bytes:
    return b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type.encode(), len(payload), payload)


def envelope(payload: bytes, *signers: PrivateKey, payload_type: str = INTOTO) -> dict[str, Any]:
    return {
        "payload": b64(payload),
        "payloadType": payload_type,
        "signatures": [
            {"sig": b64(sign(key, pae(payload_type, payload), curve_hash=True)), "keyid": ""}
            for key in signers
        ],
    }


def key_bundle(dsse: dict[str, Any], *, hint_key: PrivateKey | None = None) -> dict[str, Any]:
    """A `cosign sign --key` bundle: a public-key hint, an (unverified here) tlog entry."""
    hint = ""
    if hint_key is not None:
        spki = hint_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        hint = b64(hashlib.sha256(spki).digest())
    return {
        "mediaType": BUNDLE_V03,
        "verificationMaterial": {
            "publicKey": {"hint": hint},
            "tlogEntries": [
                {
                    "logIndex": "1",
                    "logId": {"keyId": b64(b"\x00" * 32)},
                    "kindVersion": {"kind": "dsse", "version": "0.0.1"},
                    "integratedTime": "1700000000",
                    "canonicalizedBody": b64(b"{}"),
                }
            ],
        },
        "dsseEnvelope": dsse,
    }


def keyless_bundle(
    sigstore: fakesigstore.FakeSigstore,
    leaf: fakesigstore.Leaf,
    payload: bytes,
    *,
    log_payload: bytes | None = None,
) -> dict[str, Any]:
    """A keyless cosign v3 bundle: leaf certificate, Rekor v1 dsse entry, DSSE envelope.

    `log_payload` makes the Rekor entry record another payload than the envelope's.
    """
    signature = sign(leaf.key, pae(INTOTO, payload))
    dsse = {
        "payload": b64(payload),
        "payloadType": INTOTO,
        "signatures": [{"sig": b64(signature), "keyid": ""}],
    }
    body = fakesigstore.dsse_entry_body(
        log_payload or payload, signature, leaf, json.dumps(dsse).encode()
    )
    return {
        "mediaType": BUNDLE_V03,
        "verificationMaterial": {
            "certificate": {"rawBytes": b64(leaf.der)},
            "tlogEntries": [sigstore.tlog_entry(body, kind="dsse")],
        },
        "dsseEnvelope": dsse,
    }


def referrer_manifest(
    bundle: dict[str, Any] | bytes, subject: str, *, predicate_type: str | None = SIGN_PREDICATE
) -> tuple[bytes, dict[str, bytes]]:
    """The referrer manifest cosign v3 pushes for a signature, and its blobs."""
    raw = bundle if isinstance(bundle, bytes) else json.dumps(bundle).encode()
    empty = b"{}"
    annotations = {"dev.sigstore.bundle.content": "dsse-envelope"}
    if predicate_type is not None:
        annotations["dev.sigstore.bundle.predicateType"] = predicate_type
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": BUNDLE_V03,
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "size": len(empty),
            "digest": digest_of(empty),
        },
        "layers": [{"mediaType": BUNDLE_V03, "size": len(raw), "digest": digest_of(raw)}],
        "annotations": annotations,
        "subject": {"mediaType": OCI_MANIFEST, "size": 1234, "digest": subject},
    }
    return json.dumps(manifest).encode(), {digest_of(raw): raw, digest_of(empty): empty}


# -- authorities ----------------------------------------------------------------------

GITHUB = "https://token.actions.githubusercontent.com"
WORKFLOW = "https://github.com/acme/web/.github/workflows/release.yml@refs/heads/main"


def key_authority(name: str, key: PrivateKey) -> verify.KeyAuthority:
    return verify.KeyAuthority(
        name=name, key=keys.parse_public_key(public_pem(key), authority=name)
    )


def keyless_authority(
    root: keyless.TrustedRoot,
    *,
    name: str = "github-actions",
    issuer: str | None = GITHUB,
    subject: str | None = None,
    subject_regexp: str | None = "^https://github.com/acme/",
) -> verify.KeylessAuthority:
    identity = keyless.parse_identity(
        authority=name, issuer=issuer, subject=subject, subject_regexp=subject_regexp
    )
    return verify.KeylessAuthority(name=name, identity=identity, trusted_root=root)


def keyless_legacy_layer(
    sigstore: fakesigstore.FakeSigstore,
    leaf: fakesigstore.Leaf,
    digest: str,
    *,
    log_payload: bytes | None = None,
    rekor: fakesigstore.FakeSigstore | None = None,
    integrated_time: datetime.datetime | None = None,
    with_rekor_bundle: bool = True,
) -> LegacyLayer:
    """A cosign v2 keyless signature: certificate, chain and Rekor SET annotations.

    `rekor` is the log that records the entry (default: `sigstore`'s own);
    `log_payload` makes the entry record another payload.
    """
    payload = simplesigning_payload(digest)
    signature = sign(leaf.key, payload)
    annotations = {
        "dev.sigstore.cosign/certificate": leaf.pem.decode(),
        "dev.sigstore.cosign/chain": sigstore.chain_pem.decode(),
    }
    if with_rekor_bundle:
        body = fakesigstore.hashedrekord_body(log_payload or payload, signature, leaf)
        annotations["dev.sigstore.cosign/bundle"] = (rekor or sigstore).rekor_bundle_annotation(
            body, integrated_time=integrated_time
        )
    return LegacyLayer(payload, signature, annotations)
