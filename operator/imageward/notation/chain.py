"""Certificate requirements of the Notary Project signature specification.

The chain an envelope carries is ordered: the signing certificate first, then each
issuer, ending with a self-signed root (or a single self-signed signing certificate).
Each certificate must be issued by the next; CA certificates need a critical
basicConstraints with cA true (pathLenConstraint honoured) and a critical keyUsage
with keyCertSign; the signing certificate needs a critical keyUsage with
digitalSignature and none of the encipherment, agreement or signing-of-certificates
bits, no cA, and an extendedKeyUsage that, when present, holds codeSigning and none of
serverAuth, clientAuth, emailProtection, timeStamping, OCSPSigning or anyExtendedKeyUsage
(the specification allows an EKU without codeSigning; imageward does not). Keys are RSA
2048/3072/4096 or ECDSA P-256/384/521; no certificate may be signed with SHA-1.

Timestamping (TSA) chains follow the same rules with their own leaf requirements: an
extendedKeyUsage of exactly timeStamping, marked critical (RFC 3161 2.3).

Only these extensions are evaluated; validity periods are checked by `verify` against
the time that applies (now, the authentic signing time, or a timestamp's range).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Final

from cryptography import exceptions as crypto_exceptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import oid

from imageward.signatures import model

#: Signature algorithm per key (the specification's "Algorithm Selection").
RSA_SIZES: Final = {2048: "PS256", 3072: "PS384", 4096: "PS512"}
EC_CURVES: Final = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}

_FORBIDDEN_EKUS: Final = {
    oid.ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    oid.ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    oid.ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    oid.ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    oid.ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
    oid.ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "anyExtendedKeyUsage",
}


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _fail(reason: str) -> model.Refused:
    return model.Refused("untrusted", reason)


def algorithm_for(cert: x509.Certificate) -> str:
    """The one signature algorithm a certificate's key may sign with (JWS names)."""
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        found = RSA_SIZES.get(key.key_size)
        if found is None:
            raise _fail(f"certificate {_name(cert)} has an RSA key of {key.key_size} bits")
        return found
    if isinstance(key, ec.EllipticCurvePublicKey):
        found = EC_CURVES.get(key.curve.name)
        if found is None:
            raise _fail(f"certificate {_name(cert)} has a key on curve {key.curve.name}")
        return found
    raise _fail(f"certificate {_name(cert)} has a {type(key).__name__}, not RSA or ECDSA")


def _extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension | None:  # type: ignore[type-arg]
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, crypto_exceptions.InvalidSignature):
        return False
    return True


def _no_sha1(cert: x509.Certificate) -> None:
    try:
        algorithm = cert.signature_hash_algorithm
    except crypto_exceptions.UnsupportedAlgorithm:
        return  # Ed25519 and the like: the key checks refuse what notation does not accept
    if isinstance(algorithm, hashes.SHA1):
        raise _fail(f"certificate {_name(cert)} is signed with SHA-1")


def _ca_requirements(cert: x509.Certificate, below: int) -> None:
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is None or not constraints.critical or not constraints.value.ca:
        raise _fail(
            f"CA certificate {_name(cert)}: basicConstraints must be present, critical and cA"
        )
    path_length = constraints.value.path_length
    if path_length is not None and path_length < below:
        raise _fail(
            f"CA certificate {_name(cert)}: pathLenConstraint {path_length} allows fewer than "
            f"the {below} CA certificates below it"
        )
    usage = _extension(cert, x509.KeyUsage)
    if usage is None or not usage.critical or not usage.value.key_cert_sign:
        raise _fail(f"CA certificate {_name(cert)}: keyUsage must be critical with keyCertSign")


def _leaf_key_usage(cert: x509.Certificate, what: str, *, critical: bool) -> None:
    usage = _extension(cert, x509.KeyUsage)
    if usage is None or (critical and not usage.critical):
        raise _fail(f"{what} {_name(cert)}: keyUsage must be present and critical")
    value = usage.value
    if not value.digital_signature:
        raise _fail(f"{what} {_name(cert)}: keyUsage lacks digitalSignature")
    forbidden = [
        name
        for name, present in (
            ("keyEncipherment", value.key_encipherment),
            ("dataEncipherment", value.data_encipherment),
            ("keyAgreement", value.key_agreement),
            ("keyCertSign", value.key_cert_sign),
            ("cRLSign", value.crl_sign),
            ("encipherOnly", value.key_agreement and value.encipher_only),
            ("decipherOnly", value.key_agreement and value.decipher_only),
        )
        if present
    ]
    if forbidden:
        raise _fail(f"{what} {_name(cert)}: keyUsage must not have {', '.join(forbidden)}")


def _leaf_basics(cert: x509.Certificate, what: str) -> None:
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is not None and constraints.value.ca:
        raise _fail(f"{what} {_name(cert)} is a CA certificate (basicConstraints cA)")


def _code_signing_leaf(cert: x509.Certificate) -> None:
    what = "signing certificate"
    _leaf_basics(cert, what)
    _leaf_key_usage(cert, what, critical=True)
    eku = _extension(cert, x509.ExtendedKeyUsage)
    if eku is not None:
        usages = list(eku.value)
        bad = [name for usage, name in _FORBIDDEN_EKUS.items() if usage in usages]
        if bad:
            raise _fail(f"{what} {_name(cert)}: extendedKeyUsage must not have {', '.join(bad)}")
        if oid.ExtendedKeyUsageOID.CODE_SIGNING not in usages:
            raise _fail(f"{what} {_name(cert)}: extendedKeyUsage lacks codeSigning")
    algorithm_for(cert)


def _timestamping_leaf(cert: x509.Certificate) -> None:
    what = "timestamping certificate"
    _leaf_basics(cert, what)
    _leaf_key_usage(cert, what, critical=False)
    eku = _extension(cert, x509.ExtendedKeyUsage)
    if (
        eku is None
        or not eku.critical
        or list(eku.value) != [oid.ExtendedKeyUsageOID.TIME_STAMPING]
    ):
        raise _fail(
            f"{what} {_name(cert)}: extendedKeyUsage must be critical and timeStamping only"
        )
    algorithm_for(cert)


def _validate(chain: Sequence[x509.Certificate], leaf_check: object, *, what: str) -> None:
    assert callable(leaf_check)
    if not chain:
        raise model.Refused("malformed", f"{what} certificate chain is empty")
    for cert in chain:
        _no_sha1(cert)
    if len(chain) == 1:
        (cert,) = chain
        if not _issued_by(cert, cert):
            raise _fail(f"{what} certificate {_name(cert)} is alone and not self-signed")
        leaf_check(cert)
        return
    for index, cert in enumerate(chain):
        last = index == len(chain) - 1
        if last:
            if not _issued_by(cert, cert):
                raise _fail(f"{what} chain ends with {_name(cert)}, which is not self-signed")
        else:
            if _issued_by(cert, cert):
                raise _fail(
                    f"{what} chain has self-signed {_name(cert)} before its end (position {index})"
                )
            parent = chain[index + 1]
            if not _issued_by(cert, parent):
                raise _fail(
                    f"{what} chain: {_name(cert)} is not issued by the next certificate, "
                    f"{_name(parent)}"
                )
        if index == 0:
            leaf_check(cert)
        else:
            _ca_requirements(cert, index - 1)


def validate_code_signing_chain(chain: Sequence[x509.Certificate]) -> None:
    """Refused(untrusted) naming the requirement a chain misses."""
    _validate(chain, _code_signing_leaf, what="signing")


def validate_timestamping_chain(chain: Sequence[x509.Certificate]) -> None:
    _validate(chain, _timestamping_leaf, what="timestamping")


def valid_at(cert: x509.Certificate, when: datetime.datetime) -> bool:
    return cert.not_valid_before_utc <= when <= cert.not_valid_after_utc
