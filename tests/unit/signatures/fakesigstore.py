"""A Sigstore instance in memory: a Fulcio-like CA, a CT log, a Rekor-like log.

Everything real Sigstore puts in a keyless signature is fabricated here byte by byte,
so keyless verification runs offline: a leaf certificate with the OIDC issuer
extensions, a SAN and an embedded SCT; a Rekor v1 entry with a Merkle inclusion proof,
a signed checkpoint and a signed entry timestamp; and the trusted_root.json naming
these keys. Signatures are made the way cosign makes them (see `build.py`).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
import struct

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import oid

OIDC_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OIDC_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
SCT_LIST = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")

UTC = datetime.UTC


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(key: ec.EllipticCurvePublicKey) -> bytes:
    return hashlib.sha256(spki(key)).digest()


def der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def der_utf8(text: str) -> bytes:
    raw = text.encode()
    return b"\x0c" + der_length(len(raw)) + raw


def der_octets(raw: bytes) -> bytes:
    return b"\x04" + der_length(len(raw)) + raw


def canonical_json(value: object) -> bytes:
    # The SET payload holds ASCII strings and integers only: sorted keys and no spaces
    # are then exactly RFC 8785.
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _ca_certificate(
    *,
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer_name: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    not_before: datetime.datetime,
    path_length: int | None,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(oid.NameOID.COMMON_NAME, name)])
    issuer = x509.Name([x509.NameAttribute(oid.NameOID.COMMON_NAME, issuer_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer_key is not key:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclasses.dataclass(frozen=True, slots=True)
class Leaf:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)


class FakeSigstore:
    """A root and intermediate CA, a CT log key and a Rekor log key, made at `now`."""

    def __init__(self, *, now: datetime.datetime | None = None, name: str = "fake") -> None:
        self.now = now or datetime.datetime.now(UTC).replace(microsecond=0)
        self.name = name
        start = self.now - datetime.timedelta(days=1)
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.root = _ca_certificate(
            name=f"{name}-root",
            key=self.root_key,
            issuer_name=f"{name}-root",
            issuer_key=self.root_key,
            not_before=start,
            path_length=1,
        )
        self.intermediate_key = ec.generate_private_key(ec.SECP384R1())
        self.intermediate = _ca_certificate(
            name=f"{name}-intermediate",
            key=self.intermediate_key,
            issuer_name=f"{name}-root",
            issuer_key=self.root_key,
            not_before=start,
            path_length=0,
        )
        self.ct_key = ec.generate_private_key(ec.SECP256R1())
        self.rekor_key = ec.generate_private_key(ec.SECP256R1())
        self.log_index = 0

    # -- trusted root ----------------------------------------------------------------

    def trusted_root(self) -> dict[str, object]:
        start = (self.now - datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

        def log(key: ec.EllipticCurvePrivateKey, url: str) -> dict[str, object]:
            return {
                "baseUrl": url,
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": b64(spki(key.public_key())),
                    "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": {"start": start},
                },
                "logId": {"keyId": b64(key_id(key.public_key()))},
            }

        return {
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [log(self.rekor_key, f"https://rekor.{self.name}.test")],
            "certificateAuthorities": [
                {
                    "subject": {"organization": self.name, "commonName": f"{self.name}-root"},
                    "uri": f"https://fulcio.{self.name}.test",
                    "certChain": {
                        "certificates": [
                            {"rawBytes": b64(c.public_bytes(serialization.Encoding.DER))}
                            for c in (self.intermediate, self.root)
                        ]
                    },
                    "validFor": {"start": start},
                }
            ],
            "ctlogs": [log(self.ct_key, f"https://ctfe.{self.name}.test")],
            "timestampAuthorities": [],
        }

    def trusted_root_json(self) -> bytes:
        return json.dumps(self.trusted_root(), indent=2).encode()

    @property
    def chain_pem(self) -> bytes:
        return b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (self.intermediate, self.root)
        )

    # -- Fulcio ----------------------------------------------------------------------

    def issue(
        self,
        *,
        subject: str,
        issuer: str,
        not_before: datetime.datetime | None = None,
        issuer_v1: bool = True,
        issuer_v2: bool = True,
        sct: bool = True,
    ) -> Leaf:
        """A Fulcio-style leaf: empty subject, SAN (URI or email), issuer extensions, SCT."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or (self.now - datetime.timedelta(minutes=1))
        san: x509.GeneralName = (
            x509.RFC822Name(subject)
            if "@" in subject and "/" not in subject
            else x509.UniformResourceIdentifier(subject)
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.intermediate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(minutes=10))
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([oid.ExtendedKeyUsageOID.CODE_SIGNING]), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.intermediate_key.public_key()
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName([san]), critical=True)
        )
        if issuer_v1:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(OIDC_ISSUER_V1, issuer.encode()), critical=False
            )
        if issuer_v2:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(OIDC_ISSUER_V2, der_utf8(issuer)), critical=False
            )
        if sct:
            # The SCT signs the precertificate: this very TBS without the SCT extension.
            precert = builder.sign(self.intermediate_key, hashes.SHA256())
            sct_list = self._sct(precert.tbs_certificate_bytes, timestamp=start)
            builder = builder.add_extension(
                x509.UnrecognizedExtension(SCT_LIST, der_octets(sct_list)), critical=False
            )
        return Leaf(builder.sign(self.intermediate_key, hashes.SHA256()), key)

    def _sct(self, tbs: bytes, *, timestamp: datetime.datetime) -> bytes:
        millis = int(timestamp.timestamp() * 1000)
        issuer_key_hash = key_id(self.intermediate_key.public_key())
        signed = (
            struct.pack("!BBQH", 0, 0, millis, 1)
            + issuer_key_hash
            + len(tbs).to_bytes(3, "big")
            + tbs
            + struct.pack("!H", 0)
        )
        signature = self.ct_key.sign(signed, ec.ECDSA(hashes.SHA256()))
        sct = (
            struct.pack("!B", 0)
            + key_id(self.ct_key.public_key())
            + struct.pack("!QH", millis, 0)
            + struct.pack("!BBH", 4, 3, len(signature))
            + signature
        )
        item = struct.pack("!H", len(sct)) + sct
        return struct.pack("!H", len(item)) + item

    # -- Rekor -----------------------------------------------------------------------

    def _set(self, body: bytes, integrated_time: int, log_index: int) -> bytes:
        payload = {
            "body": b64(body),
            "integratedTime": integrated_time,
            "logID": key_id(self.rekor_key.public_key()).hex(),
            "logIndex": log_index,
        }
        return self.rekor_key.sign(canonical_json(payload), ec.ECDSA(hashes.SHA256()))

    def tlog_entry(
        self, body: bytes, *, kind: str, integrated_time: datetime.datetime | None = None
    ) -> dict[str, object]:
        """A Rekor v1 entry as a bundle's `tlogEntries[]`: proof, checkpoint and SET."""
        when = int((integrated_time or self.now).timestamp())
        index = self.log_index
        self.log_index += 1
        # A tree of one leaf: the root hash is the leaf hash and the proof is empty.
        root = hashlib.sha256(b"\x00" + body).digest()
        note = f"{self.name}.test - 1\n1\n{b64(root)}\n"
        kid = key_id(self.rekor_key.public_key())
        note_sig = self.rekor_key.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
        checkpoint = note + "\n" + f"\u2014 {self.name}.test {b64(kid[:4] + note_sig)}\n"
        return {
            "logIndex": str(index),
            "logId": {"keyId": b64(kid)},
            "kindVersion": {"kind": kind, "version": "0.0.1"},
            "integratedTime": str(when),
            "inclusionPromise": {"signedEntryTimestamp": b64(self._set(body, when, index))},
            "inclusionProof": {
                "logIndex": "0",
                "rootHash": b64(root),
                "treeSize": "1",
                "hashes": [],
                "checkpoint": {"envelope": checkpoint},
            },
            "canonicalizedBody": b64(body),
        }

    def rekor_bundle_annotation(
        self, body: bytes, *, integrated_time: datetime.datetime | None = None
    ) -> str:
        """The legacy `dev.sigstore.cosign/bundle` annotation: a SET and its payload."""
        when = int((integrated_time or self.now).timestamp())
        index = self.log_index
        self.log_index += 1
        return json.dumps(
            {
                "SignedEntryTimestamp": b64(self._set(body, when, index)),
                "Payload": {
                    "body": b64(body),
                    "integratedTime": when,
                    "logIndex": index,
                    "logID": key_id(self.rekor_key.public_key()).hex(),
                },
            }
        )


def dsse_entry_body(payload: bytes, signature: bytes, leaf: Leaf, envelope: bytes) -> bytes:
    """What Rekor v1 records for a DSSE envelope (kind dsse, 0.0.1)."""
    return canonical_json(
        {
            "apiVersion": "0.0.1",
            "kind": "dsse",
            "spec": {
                "envelopeHash": {
                    "algorithm": "sha256",
                    "value": hashlib.sha256(envelope).hexdigest(),
                },
                "payloadHash": {
                    "algorithm": "sha256",
                    "value": hashlib.sha256(payload).hexdigest(),
                },
                "signatures": [{"signature": b64(signature), "verifier": b64(leaf.pem)}],
            },
        }
    )


def hashedrekord_body(payload: bytes, signature: bytes, leaf: Leaf) -> bytes:
    """What Rekor v1 records for a legacy cosign signature (kind hashedrekord, 0.0.1)."""
    return canonical_json(
        {
            "apiVersion": "0.0.1",
            "kind": "hashedrekord",
            "spec": {
                "data": {
                    "hash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()}
                },
                "signature": {"content": b64(signature), "publicKey": {"content": b64(leaf.pem)}},
            },
        }
    )
