"""RFC 3161 timestamp countersignatures of Notation signatures.

The envelope's `io.cncf.notary.timestampSignature` is a TimeStampToken (CMS SignedData
over a TSTInfo) whose message imprint is the hash of the envelope's signature bytes.
rfc3161-client (Trail of Bits, the library sigstore-python verifies timestamps with)
checks the CMS signature, the TSA chain to the authority's `timestampTrustStore` at
the token's genTime, the critical timeStamping EKU and the imprint; it reads responses,
so the token is wrapped in a granted TimeStampResp first. Then the TSA chain meets the
specification's timestamping requirements (`chain.validate_timestamping_chain`), and
the timestamp's range, genTime ± accuracy (1 s for the baseline policy 0.4.0.2023.1.1
when no accuracy is given), is what `verify` compares with the signing chain's validity.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from typing import Final

import rfc3161_client
from cryptography import x509

from imageward.notation import chain
from imageward.signatures import model

_BASELINE_POLICY: Final = x509.ObjectIdentifier("0.4.0.2023.1.1")
_GRANTED: Final = bytes.fromhex("3003020100")  # PKIStatusInfo { status granted(0) }


@dataclasses.dataclass(frozen=True, slots=True)
class Timestamp:
    lower: datetime.datetime
    upper: datetime.datetime
    tsa: str  # the TSA certificate's subject, for messages

    def within(self, cert: x509.Certificate) -> bool:
        return cert.not_valid_before_utc <= self.lower and self.upper <= cert.not_valid_after_utc


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(encoded)]) + encoded


def wrap_token(token: bytes) -> bytes:
    """TimeStampResp ::= SEQUENCE { status PKIStatusInfo, timeStampToken }."""
    body = _GRANTED + token
    return b"\x30" + _der_length(len(body)) + body


def verify_token(token: bytes, signature: bytes, roots: Sequence[x509.Certificate]) -> Timestamp:
    """The authentic time range a token gives `signature`, or Refused(untrusted)."""
    try:
        response = rfc3161_client.decode_timestamp_response(wrap_token(token))
    except (ValueError, rfc3161_client.VerificationError) as e:
        raise model.Refused("malformed", f"timestamp countersignature cannot be read: {e}") from e
    try:
        builder = rfc3161_client.VerifierBuilder()
        for root in roots:
            builder = builder.add_root_certificate(root)
        builder.build().verify_message(response, signature)
    except (rfc3161_client.VerificationError, ValueError) as e:
        raise model.Refused(
            "untrusted",
            f"timestamp countersignature does not verify with the timestampTrustStore: {e}",
        ) from e
    signed_data = response.signed_data
    certificates = [x509.load_der_x509_certificate(der) for der in signed_data.certificates]
    (signer,) = signed_data.signer_infos  # verify_message insists on exactly one
    leaf = next(
        (
            c
            for c in certificates
            if c.issuer == signer.issuer and c.serial_number == signer.serial_number
        ),
        None,
    )
    if leaf is None:
        raise model.Refused("untrusted", "timestamp token does not carry its TSA certificate")
    chain.validate_timestamping_chain(_order(leaf, certificates, roots))
    info = response.tst_info
    gen_time = info.gen_time
    if gen_time.tzinfo is None:
        gen_time = gen_time.replace(tzinfo=datetime.UTC)
    accuracy = info.accuracy
    if accuracy is not None:
        slack = datetime.timedelta(
            seconds=accuracy.seconds or 0,
            milliseconds=accuracy.millis or 0,
            microseconds=accuracy.micros or 0,
        )
    elif info.policy == _BASELINE_POLICY:
        slack = datetime.timedelta(seconds=1)
    else:
        slack = datetime.timedelta(0)
    return Timestamp(gen_time - slack, gen_time + slack, leaf.subject.rfc4514_string())


def _order(
    leaf: x509.Certificate,
    certificates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
) -> list[x509.Certificate]:
    """The TSA chain from its leaf to a trusted root (the token may list certificates in
    any order and may leave the root out)."""
    ordered = [leaf]
    pool = [*certificates, *roots]
    while len(ordered) <= 8:
        current = ordered[-1]
        if current.issuer == current.subject:
            try:
                current.verify_directly_issued_by(current)
                return ordered
            except Exception:  # not self-signed after all: look for the issuer
                pass
        parent = next(
            (
                c
                for c in pool
                if c.subject == current.issuer and c not in ordered and _signs(c, current)
            ),
            None,
        )
        if parent is None:
            return ordered
        ordered.append(parent)
    return ordered


def _signs(issuer: x509.Certificate, cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # any failure: not this issuer
        return False
    return True
