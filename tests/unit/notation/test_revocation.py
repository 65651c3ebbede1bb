"""Revocation answers read as the specification says: CRLs and OCSP responses signed by
the issuer, not past their next update; anything else undecided (the checker then
fails closed). The look-ups themselves run against a loopback responder in
`tests/cluster/test_notation.py`."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from imageward.notation import revocation
from tests.unit.notation import pki

NOW = datetime.datetime.now(datetime.UTC)


def crl(issuer: pki.Issued, revoked: list[int], *, next_update: datetime.datetime) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(NOW - datetime.timedelta(hours=2))
        .next_update(next_update)
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(NOW - datetime.timedelta(hours=1))
            .build()
        )
    return builder.sign(issuer.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def ocsp_response(
    cert: pki.Issued, issuer: pki.Issued, status: ocsp.OCSPCertStatus, *, signer: pki.Issued
) -> bytes:
    return (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=cert.cert,
            issuer=issuer.cert,
            algorithm=hashes.SHA256(),
            cert_status=status,
            this_update=NOW - datetime.timedelta(minutes=5),
            next_update=NOW + datetime.timedelta(hours=1),
            revocation_time=NOW - datetime.timedelta(minutes=1)
            if status == ocsp.OCSPCertStatus.REVOKED
            else None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, signer.cert)
        .sign(signer.key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


def test_crl() -> None:
    root = pki.ca()
    leaf = pki.leaf(root)
    later = NOW + datetime.timedelta(hours=1)
    good = revocation.evaluate_crl(crl(root, [], next_update=later), leaf.cert, root.cert, NOW)
    assert good == revocation.Status("good", "CRL")
    listed = crl(root, [leaf.cert.serial_number], next_update=later)
    assert revocation.evaluate_crl(listed, leaf.cert, root.cert, NOW).state == "revoked"
    stale = crl(root, [], next_update=NOW - datetime.timedelta(minutes=1))
    assert revocation.evaluate_crl(stale, leaf.cert, root.cert, NOW).detail.startswith(
        "CRL expired at"
    )
    forged = crl(pki.ca(root.cert.subject), [], next_update=later)
    assert revocation.evaluate_crl(forged, leaf.cert, root.cert, NOW) == revocation.Status(
        "unavailable", "CRL is not signed by the certificate's issuer"
    )
    assert revocation.evaluate_crl(b"junk", leaf.cert, root.cert, NOW).state == "unavailable"


def test_ocsp() -> None:
    root = pki.ca()
    leaf = pki.leaf(root)
    good = ocsp_response(leaf, root, ocsp.OCSPCertStatus.GOOD, signer=root)
    assert revocation.evaluate_ocsp(good, leaf.cert, root.cert, NOW) == revocation.Status(
        "good", "OCSP"
    )
    revoked = ocsp_response(leaf, root, ocsp.OCSPCertStatus.REVOKED, signer=root)
    assert revocation.evaluate_ocsp(revoked, leaf.cert, root.cert, NOW).state == "revoked"
    # Signed by someone else: not decided (the caller falls back to CRLs, then fails closed)
    stranger = pki.ca()
    forged = ocsp_response(leaf, root, ocsp.OCSPCertStatus.GOOD, signer=stranger)
    assert revocation.evaluate_ocsp(forged, leaf.cert, root.cert, NOW) is None
    unknown = ocsp_response(leaf, root, ocsp.OCSPCertStatus.UNKNOWN, signer=root)
    assert revocation.evaluate_ocsp(unknown, leaf.cert, root.cert, NOW) is None
    assert revocation.evaluate_ocsp(b"junk", leaf.cert, root.cert, NOW) is None
    later = NOW + datetime.timedelta(hours=2)
    assert revocation.evaluate_ocsp(good, leaf.cert, root.cert, later) is None  # past nextUpdate


async def test_a_chain_without_revocation_information_is_good() -> None:
    root = pki.ca()
    leaf = pki.leaf(root)
    statuses = await revocation.fetch_statuses([leaf.cert, root.cert])
    assert set(statuses.values()) == {
        revocation.Status("good", "no OCSP or CRL information: not revocable")
    }


async def test_only_http_urls_are_fetched() -> None:
    root = pki.ca()
    leaf = pki.leaf(
        root,
        extra=[
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        [x509.UniformResourceIdentifier("https://crl.example/ca.crl")],
                        None,
                        None,
                        None,
                    )
                ]
            )
        ],
    )
    statuses = await revocation.fetch_statuses([leaf.cert, root.cert])
    status = statuses[revocation.fingerprint(leaf.cert)]
    assert status.state == "unavailable"
    assert "is not an http:// URL" in status.detail
