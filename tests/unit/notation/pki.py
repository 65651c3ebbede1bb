"""Test certificates for Notation: CAs, signing and timestamping certificates made with
`cryptography`, with the extensions the Notary Project signature specification wants
(and, on request, without them)."""

from __future__ import annotations

import dataclasses
import datetime
import pathlib
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import oid

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
NOW = datetime.datetime.now(datetime.UTC)


def name(**attributes: str) -> x509.Name:
    """name(C="US", ST="WA", O="Acme", CN="release") keeps that order."""
    oids = {
        "C": oid.NameOID.COUNTRY_NAME,
        "ST": oid.NameOID.STATE_OR_PROVINCE_NAME,
        "L": oid.NameOID.LOCALITY_NAME,
        "O": oid.NameOID.ORGANIZATION_NAME,
        "OU": oid.NameOID.ORGANIZATIONAL_UNIT_NAME,
        "CN": oid.NameOID.COMMON_NAME,
        "E": oid.NameOID.EMAIL_ADDRESS,
    }
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in attributes.items()])


@dataclasses.dataclass(frozen=True)
class Issued:
    key: PrivateKey
    cert: x509.Certificate

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _key(kind: str) -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    curve = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1()}[kind]
    return ec.generate_private_key(curve)


def _hash_for(key: PrivateKey) -> hashes.HashAlgorithm:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size == 384:
        return hashes.SHA384()
    return hashes.SHA256()


def ca(
    subject: x509.Name | None = None,
    *,
    issuer: Issued | None = None,
    key: str = "p256",
    path_length: int | None = None,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> Issued:
    """A root (self-signed) or, with `issuer`, an intermediate CA."""
    private = _key(key)
    subject = subject or name(C="US", ST="WA", O="Acme", CN=f"Acme CA {id(private) % 10000}")
    signer = issuer.key if issuer else private
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - datetime.timedelta(days=60))
        .not_valid_after(not_after or NOW + datetime.timedelta(days=365))
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
    )
    return Issued(private, builder.sign(signer, _hash_for(signer)))


def leaf(
    issuer: Issued | None,
    subject: x509.Name | None = None,
    *,
    key: str = "p256",
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    ekus: Sequence[x509.ObjectIdentifier] | None = (oid.ExtendedKeyUsageOID.CODE_SIGNING,),
    eku_critical: bool = False,
    key_usage_critical: bool = True,
    extra: Sequence[x509.ExtensionType] = (),
    self_signed: bool = False,
) -> Issued:
    """A signing certificate (codeSigning EKU by default), or a self-signed one."""
    private = _key(key)
    subject = subject or name(C="US", ST="WA", O="Acme", CN="release")
    signer = private if self_signed or issuer is None else issuer.key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if self_signed or issuer is None else issuer.cert.subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - datetime.timedelta(hours=1))
        .not_valid_after(not_after or NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
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
            critical=key_usage_critical,
        )
    )
    if ekus is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=eku_critical)
    for extension in extra:
        builder = builder.add_extension(extension, critical=False)
    return Issued(private, builder.sign(signer, _hash_for(signer)))


def tsa(issuer: Issued) -> Issued:
    """A timestamping certificate: critical EKU timeStamping only."""
    return leaf(
        issuer,
        name(C="US", ST="WA", O="Acme", CN="Acme TSA"),
        ekus=(oid.ExtendedKeyUsageOID.TIME_STAMPING,),
        eku_critical=True,
        not_before=NOW - datetime.timedelta(days=30),
        not_after=NOW + datetime.timedelta(days=3650),
    )


def write_chain(
    directory: pathlib.Path, label: str, signer: Issued, *chain: Issued
) -> tuple[pathlib.Path, pathlib.Path]:
    """(key file, chain file: signer first, root last) for notation's signingkeys.json."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path = directory / f"{label}.key"
    chain_path = directory / f"{label}.crt"
    key_path.write_bytes(signer.key_pem)
    chain_path.write_bytes(b"".join(c.pem for c in (signer, *chain)))
    return key_path, chain_path
