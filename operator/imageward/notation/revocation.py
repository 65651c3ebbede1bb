"""Revocation status of a Notation signing chain: OCSP, then CRL, as the specification says.

Off unless an authority's `override.revocation` is `enforce` or `log`. When on, the
checker looks statuses up before it verifies (`fetch_statuses`, the only I/O here) and
`verify` reads them; a status that could not be determined fails the check, as
"revocation unavailable" does in the specification. Statuses are looked up only for a
chain that already reached the authority's trust store (`verify` is run without
revocation first), so an attacker's certificate can never make the operator call an
address of the attacker's choosing.

For each certificate, leaf first, with the next certificate as its issuer (a
self-signed root is its own issuer):

- no OCSP URL and no CRL distribution point: nothing to check (good);
- OCSP (AIA `http://` URLs, in order, 2 s each): a response signed by the issuer, or by
  a responder the issuer certified for OCSPSigning, not past its nextUpdate;
  `good` or `revoked` decides; `unknown`, errors and timeouts fall back to CRLs;
- CRL (distribution point `http://` URLs, in order, 5 s each, at most `MAX_CRL_BYTES`):
  signed by the issuer, not past its nextUpdate; the serial listed means revoked.

Anything else is `unavailable`. Decided statuses (good, revoked) are kept for
`CACHE_SECONDS` per certificate, so a burst of pods costs one look-up; `unavailable`
is never kept.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
from collections.abc import Mapping, Sequence
from typing import Final, Literal

import aiohttp
import cachetools
from cryptography import exceptions as crypto_exceptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509 import oid as x509_oid

MAX_CRL_BYTES: Final = 4 * 1024 * 1024
MAX_OCSP_BYTES: Final = 64 * 1024
OCSP_TIMEOUT: Final = 2.0
CRL_TIMEOUT: Final = 5.0
MAX_URLS: Final = 4
CACHE_SECONDS: Final = 300.0


@dataclasses.dataclass(frozen=True, slots=True)
class Status:
    state: Literal["good", "revoked", "unavailable"]
    detail: str


#: Status by certificate fingerprint (hex sha256 of the DER certificate).
Statuses = Mapping[str, Status]

_DECIDED: cachetools.TTLCache[str, Status] = cachetools.TTLCache(maxsize=4096, ttl=CACHE_SECONDS)


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _urls(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    ocsp_urls: list[str] = []
    crl_urls: list[str] = []
    try:
        access = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        access = None
    for description in access or ():
        location = description.access_location
        if description.access_method == x509_oid.AuthorityInformationAccessOID.OCSP and isinstance(
            location, x509.UniformResourceIdentifier
        ):
            ocsp_urls.append(location.value)
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        points = None
    for point in points or ():
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier):
                crl_urls.append(name.value)
    return ocsp_urls[:MAX_URLS], crl_urls[:MAX_URLS]


async def _get(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    seconds: float,
    limit: int,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    if not url.startswith("http://"):
        raise ValueError(f"{url} is not an http:// URL (the specification's only kind)")
    async with asyncio.timeout(seconds):
        async with session.request(
            method, url, data=body, headers=headers, allow_redirects=False
        ) as response:
            if response.status // 100 != 2:
                raise ValueError(f"{url} answered HTTP {response.status}")
            data = await response.content.read(limit + 1)
            if len(data) > limit:
                raise ValueError(f"{url} sent more than {limit} bytes")
            return data


def evaluate_ocsp(
    data: bytes, cert: x509.Certificate, issuer: x509.Certificate, now: datetime.datetime
) -> Status | None:
    """A decided status from an OCSP response, or None (fall back to CRLs)."""
    try:
        response = ocsp.load_der_ocsp_response(data)
    except ValueError:
        return None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return None
    if response.serial_number != cert.serial_number:
        return None
    responder = issuer
    for candidate in response.certificates:
        if _issued_by(candidate, issuer) and _has_ocsp_signing(candidate):
            responder = candidate
            break
    try:
        key = responder.public_key()
        hash_algorithm = response.signature_hash_algorithm
        assert hash_algorithm is not None
        _verify_with(key, response.signature, response.tbs_response_bytes, hash_algorithm)
    except (crypto_exceptions.InvalidSignature, AssertionError, TypeError, ValueError):
        return None
    next_update = response.next_update_utc
    if next_update is not None and now > next_update:
        return None
    if response.certificate_status == ocsp.OCSPCertStatus.GOOD:
        return Status("good", "OCSP")
    if response.certificate_status == ocsp.OCSPCertStatus.REVOKED:
        when = response.revocation_time_utc
        return Status("revoked", f"OCSP: revoked at {when:%Y-%m-%dT%H:%M:%SZ}" if when else "OCSP")
    return None


def evaluate_crl(
    data: bytes, cert: x509.Certificate, issuer: x509.Certificate, now: datetime.datetime
) -> Status:
    try:
        crl = (
            x509.load_pem_x509_crl(data)
            if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_crl(data)
        )
    except ValueError as e:
        return Status("unavailable", f"CRL cannot be read: {e}")
    if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
        return Status("unavailable", "CRL is not signed by the certificate's issuer")
    next_update = crl.next_update_utc
    if next_update is not None and now > next_update:
        return Status("unavailable", f"CRL expired at {next_update:%Y-%m-%dT%H:%M:%SZ}")
    revoked = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if revoked is not None:
        return Status(
            "revoked", f"CRL: revoked at {revoked.revocation_date_utc:%Y-%m-%dT%H:%M:%SZ}"
        )
    return Status("good", "CRL")


def _verify_with(
    key: object, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    if isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, data, padding.PKCS1v15(), algorithm)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(algorithm))
    else:
        raise TypeError(f"unsupported responder key {type(key).__name__}")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, crypto_exceptions.InvalidSignature):
        return False
    return True


def _has_ocsp_signing(cert: x509.Certificate) -> bool:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return x509_oid.ExtendedKeyUsageOID.OCSP_SIGNING in eku


async def _status(
    session: aiohttp.ClientSession,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    now: datetime.datetime,
) -> Status:
    ocsp_urls, crl_urls = _urls(cert)
    if not ocsp_urls and not crl_urls:
        return Status("good", "no OCSP or CRL information: not revocable")
    problems: list[str] = []
    if ocsp_urls:
        request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA256()).build()
        body = request.public_bytes(serialization.Encoding.DER)
        for url in ocsp_urls:
            try:
                data = await _get(
                    session,
                    "POST",
                    url,
                    seconds=OCSP_TIMEOUT,
                    limit=MAX_OCSP_BYTES,
                    body=body,
                    headers={"Content-Type": "application/ocsp-request"},
                )
            except (TimeoutError, aiohttp.ClientError, ValueError, OSError) as e:
                problems.append(f"OCSP {url}: {type(e).__name__}: {e}")
                continue
            decided = evaluate_ocsp(data, cert, issuer, now)
            if decided is not None:
                return decided
            problems.append(f"OCSP {url}: no usable response")
    for url in crl_urls:
        try:
            data = await _get(session, "GET", url, seconds=CRL_TIMEOUT, limit=MAX_CRL_BYTES)
        except (TimeoutError, aiohttp.ClientError, ValueError, OSError) as e:
            problems.append(f"CRL {url}: {type(e).__name__}: {e}")
            continue
        found = evaluate_crl(data, cert, issuer, now)
        if found.state != "unavailable":
            return found
        problems.append(f"CRL {url}: {found.detail}")
    return Status("unavailable", "; ".join(problems) or "no usable responder")


async def fetch_statuses(
    certificates: Sequence[x509.Certificate],
    *,
    session: aiohttp.ClientSession | None = None,
    now: datetime.datetime | None = None,
) -> dict[str, Status]:
    """The status of every certificate of an ordered chain, looked up side by side."""
    now = now or datetime.datetime.now(datetime.UTC)
    own = session is None
    session = session or aiohttp.ClientSession()
    try:
        issuers = [*certificates[1:], certificates[-1]]
        found = await asyncio.gather(
            *(
                _cached_status(session, cert, issuer, now)
                for cert, issuer in zip(certificates, issuers, strict=True)
            )
        )
    finally:
        if own:
            await session.close()
    return {fingerprint(cert): status for cert, status in zip(certificates, found, strict=True)}


async def _cached_status(
    session: aiohttp.ClientSession,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    now: datetime.datetime,
) -> Status:
    key = fingerprint(cert) + fingerprint(issuer)
    hit = _DECIDED.get(key)
    if hit is not None:
        return hit
    status = await _status(session, cert, issuer, now)
    if status.state != "unavailable":
        _DECIDED[key] = status
    return status
