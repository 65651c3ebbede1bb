"""Notation signature envelopes built byte-exact in Python (JWS and COSE), for the cases
the real CLI will not write: tampered envelopes, unknown critical headers, another
digest, algorithm confusion, oversized chains."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from tests.unit.notation import pki

PAYLOAD_TYPE = "application/vnd.cncf.notary.payload.v1+json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
_COSE_ALG = {"PS256": -37, "PS384": -38, "PS512": -39, "ES256": -7, "ES384": -35, "ES512": -36}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def payload(digest: str, size: int = 555, media_type: str = MANIFEST_TYPE) -> bytes:
    return json.dumps(
        {"targetArtifact": {"mediaType": media_type, "digest": digest, "size": size}},
        separators=(",", ":"),
    ).encode()


def algorithm(key: pki.PrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return {2048: "PS256", 3072: "PS384", 4096: "PS512"}[key.key_size]
    return {256: "ES256", 384: "ES384", 521: "ES512"}[key.curve.key_size]


def sign_raw(key: pki.PrivateKey, data: bytes, alg: str) -> bytes:
    digest = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}[alg[2:]]
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(
            data, padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size), digest
        )
    r, s = utils.decode_dss_signature(key.sign(data, ec.ECDSA(digest)))
    size = (key.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def _times(
    signing_time: datetime.datetime | None, expiry: datetime.datetime | None, scheme: str
) -> tuple[datetime.datetime, datetime.datetime | None]:
    now = signing_time or datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    return now, expiry


def jws(
    signer: pki.Issued,
    chain: Sequence[pki.Issued],
    body: bytes,
    *,
    scheme: str = "notary.x509",
    signing_time: datetime.datetime | None = None,
    expiry: datetime.datetime | None = None,
    crit: Sequence[str] | None = None,
    extra_protected: Mapping[str, Any] | None = None,
    alg: str | None = None,
    timestamp: bytes | None = None,
    tamper_payload: bytes | None = None,
    drop: Sequence[str] = (),
) -> bytes:
    """A flattened JWS envelope; `tamper_payload` swaps the payload after signing."""
    moment, expiry = _times(signing_time, expiry, scheme)
    alg = alg or algorithm(signer.key)
    protected: dict[str, Any] = {"alg": alg, "cty": PAYLOAD_TYPE}
    protected["io.cncf.notary.signingScheme"] = scheme
    time_header = (
        "io.cncf.notary.signingTime"
        if scheme == "notary.x509"
        else "io.cncf.notary.authenticSigningTime"
    )
    protected[time_header] = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    default_crit = ["io.cncf.notary.signingScheme"]
    if scheme != "notary.x509":
        default_crit.append("io.cncf.notary.authenticSigningTime")
    if expiry is not None:
        protected["io.cncf.notary.expiry"] = expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
        default_crit.append("io.cncf.notary.expiry")
    protected["crit"] = list(crit) if crit is not None else default_crit
    protected.update(extra_protected or {})
    for name in drop:
        protected.pop(name, None)
    protected_segment = b64url(json.dumps(protected, separators=(",", ":")).encode())
    payload_segment = b64url(body)
    signature = sign_raw(
        signer.key, f"{protected_segment}.{payload_segment}".encode(), algorithm(signer.key)
    )
    header: dict[str, Any] = {
        "x5c": [base64.b64encode(c.der).decode() for c in (signer, *chain)],
        "io.cncf.notary.signingAgent": "imageward-tests",
    }
    if timestamp is not None:
        header["io.cncf.notary.timestampSignature"] = base64.b64encode(timestamp).decode()
    return json.dumps(
        {
            "payload": b64url(tamper_payload) if tamper_payload is not None else payload_segment,
            "protected": protected_segment,
            "header": header,
            "signature": b64url(signature),
        }
    ).encode()


def cose(
    signer: pki.Issued,
    chain: Sequence[pki.Issued],
    body: bytes,
    *,
    scheme: str = "notary.x509",
    signing_time: datetime.datetime | None = None,
    expiry: datetime.datetime | None = None,
    crit: Sequence[Any] | None = None,
    extra_protected: Mapping[Any, Any] | None = None,
    timestamp: bytes | None = None,
    tamper_payload: bytes | None = None,
) -> bytes:
    """A COSE_Sign1_Tagged envelope as notation writes it (epoch times as tag 1)."""
    moment, expiry = _times(signing_time, expiry, scheme)
    alg = algorithm(signer.key)
    protected: dict[Any, Any] = {1: _COSE_ALG[alg], 3: PAYLOAD_TYPE}
    protected["io.cncf.notary.signingScheme"] = scheme
    time_header = (
        "io.cncf.notary.signingTime"
        if scheme == "notary.x509"
        else "io.cncf.notary.authenticSigningTime"
    )
    protected[time_header] = cbor2.CBORTag(1, int(moment.timestamp()))
    default_crit: list[Any] = ["io.cncf.notary.signingScheme"]
    if scheme != "notary.x509":
        default_crit.append("io.cncf.notary.authenticSigningTime")
    if expiry is not None:
        protected["io.cncf.notary.expiry"] = cbor2.CBORTag(1, int(expiry.timestamp()))
        default_crit.append("io.cncf.notary.expiry")
    protected[2] = list(crit) if crit is not None else default_crit
    protected.update(extra_protected or {})
    protected_raw = cbor2.dumps(protected)
    to_sign = cbor2.dumps(["Signature1", protected_raw, b"", body])
    signature = sign_raw(signer.key, to_sign, alg)
    unprotected: dict[Any, Any] = {
        33: [c.der for c in (signer, *chain)],
        "io.cncf.notary.signingAgent": "imageward-tests",
    }
    if timestamp is not None:
        unprotected["io.cncf.notary.timestampSignature"] = timestamp
    return cbor2.dumps(
        cbor2.CBORTag(
            18,
            [
                protected_raw,
                unprotected,
                tamper_payload if tamper_payload is not None else body,
                signature,
            ],
        )
    )


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def signature_manifest(
    envelope: bytes, subject: str, *, media_type: str = "application/jose+json"
) -> bytes:
    """A Notation signature manifest naming `envelope` as its one layer."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "artifactType": "application/vnd.cncf.notary.signature",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                "size": 2,
            },
            "layers": [
                {"mediaType": media_type, "digest": digest_of(envelope), "size": len(envelope)}
            ],
            "subject": {"mediaType": MANIFEST_TYPE, "digest": subject, "size": 555},
            "annotations": {"io.cncf.notary.x509chain.thumbprint#S256": "[]"},
        }
    ).encode()
