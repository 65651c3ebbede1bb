"""Notation signature envelopes: JWS (flattened JSON) and COSE_Sign1, read into one shape.

Both carry the same signed attributes (protected headers): `alg`, content type
(`application/vnd.cncf.notary.payload.v1+json`), `crit`, the signing scheme
(`notary.x509` or `notary.x509.signingAuthority`), the signing time (or, for a
signing authority, the authentic signing time) and an optional expiry; and the same
unsigned ones: the certificate chain (`x5c` / `x5chain`), an optional RFC 3161
timestamp countersignature and a signing agent.

Everything here comes from whoever can push to the registry: the parsers refuse
duplicate keys (JSON and CBOR), indefinite CBOR lengths, deep nesting, unknown top-level
members, and anything over the caps below, each as `Refused(malformed)` naming what.
A critical header imageward does not know (`crit`) refuses the signature, as the
specification requires: that includes notation's verification-plugin headers, since
no plugin runs here.

The signature is checked with the signing certificate's key and the one algorithm
that key allows (`chain.algorithm_for`), never the algorithm the header names alone:
JWS through joserfc (its `crit` and header checks, with notation's headers
registered), COSE with `cryptography` over the `Sig_structure`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

import cbor2
from cryptography import exceptions as crypto_exceptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from joserfc import errors as jose_errors
from joserfc import jwk, jws
from joserfc import registry as jose_registry
from joserfc._rfc7515 import types as jws_types

from imageward.notation import chain
from imageward.signatures import model

JWS_MEDIA_TYPE: Final = "application/jose+json"
COSE_MEDIA_TYPE: Final = "application/cose"
PAYLOAD_TYPE: Final = "application/vnd.cncf.notary.payload.v1+json"
SCHEME_X509: Final = "notary.x509"
SCHEME_SIGNING_AUTHORITY: Final = "notary.x509.signingAuthority"

H_SCHEME: Final = "io.cncf.notary.signingScheme"
H_SIGNING_TIME: Final = "io.cncf.notary.signingTime"
H_AUTHENTIC_TIME: Final = "io.cncf.notary.authenticSigningTime"
H_EXPIRY: Final = "io.cncf.notary.expiry"
H_PLUGIN: Final = "io.cncf.notary.verificationPlugin"
H_PLUGIN_VERSION: Final = "io.cncf.notary.verificationPluginMinVersion"
U_TIMESTAMP: Final = "io.cncf.notary.timestampSignature"
U_AGENT: Final = "io.cncf.notary.signingAgent"
_KNOWN_SIGNED: Final = frozenset({H_SCHEME, H_SIGNING_TIME, H_AUTHENTIC_TIME, H_EXPIRY})

#: Caps. An envelope is a few KiB (a chain of three certificates, a timestamp token).
MAX_CERTIFICATES: Final = 10
MAX_CERTIFICATE_BYTES: Final = 16 * 1024
MAX_PAYLOAD_BYTES: Final = 64 * 1024
MAX_HEADER_BYTES: Final = 16 * 1024
MAX_TIMESTAMP_BYTES: Final = 64 * 1024
MAX_CBOR_DEPTH: Final = 16
MAX_CBOR_ITEMS: Final = 4096

_COSE_ALGORITHMS: Final = {
    -37: "PS256",
    -38: "PS384",
    -39: "PS512",
    -7: "ES256",
    -35: "ES384",
    -36: "ES512",
}
_HASHES: Final[dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
_RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})"
)


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed envelope; nothing in it is trusted until `verify_signature` passed."""

    media_type: str
    payload: bytes
    algorithm: str
    signing_scheme: str
    signing_time: datetime.datetime | None  # notary.x509: the signer's (unauthenticated) clock
    authentic_signing_time: datetime.datetime | None  # notary.x509.signingAuthority
    expiry: datetime.datetime | None
    certificates: tuple[x509.Certificate, ...]
    signature: bytes
    timestamp: bytes | None
    #: What the signature covers: the JWS signing input or the COSE Sig_structure.
    signed: bytes = dataclasses.field(repr=False)
    #: The JWS as parsed JSON (joserfc verifies it); None for COSE.
    jws_document: Mapping[str, Any] | None = dataclasses.field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return "JWS" if self.media_type == JWS_MEDIA_TYPE else "COSE"

    @property
    def leaf(self) -> x509.Certificate:
        return self.certificates[0]


def _malformed(reason: str) -> model.Refused:
    return model.Refused("malformed", reason)


def parse_envelope(media_type: str, raw: bytes) -> Envelope:
    if media_type == JWS_MEDIA_TYPE:
        return parse_jws(raw)
    if media_type == COSE_MEDIA_TYPE:
        return parse_cose(raw)
    raise model.Refused("unsupported", f"Notation envelope media type {media_type!r}")


# -- shared semantics -----------------------------------------------------------------


def _certificates(values: object, what: str) -> tuple[x509.Certificate, ...]:
    if not isinstance(values, (list, tuple)) or not values:
        raise _malformed(f"{what} is missing or not a list of certificates")
    if len(values) > MAX_CERTIFICATES:
        raise _malformed(
            f"{what} has {len(values)} certificates, over the limit of {MAX_CERTIFICATES}"
        )
    found = []
    for index, value in enumerate(values):
        if not isinstance(value, bytes) or len(value) > MAX_CERTIFICATE_BYTES:
            raise _malformed(
                f"{what}[{index}] is not a certificate of at most {MAX_CERTIFICATE_BYTES} bytes"
            )
        try:
            found.append(x509.load_der_x509_certificate(value))
        except ValueError as e:
            raise _malformed(f"{what}[{index}] is not a DER certificate: {e}") from e
    return tuple(found)


def _check_signed_attributes(
    *,
    critical: Sequence[Any],
    present: set[Any],
    scheme: object,
    signing_time: datetime.datetime | None,
    authentic_time: datetime.datetime | None,
    expiry: datetime.datetime | None,
    content_type: object,
) -> str:
    """The specification's rules for signed attributes; returns the signing scheme."""
    if content_type != PAYLOAD_TYPE:
        raise model.Refused(
            "unsupported", f"payload content type {content_type!r}, not {PAYLOAD_TYPE}"
        )
    if scheme == SCHEME_X509:
        if authentic_time is not None:
            raise _malformed(f"{H_AUTHENTIC_TIME} must not be present for {SCHEME_X509}")
        if signing_time is None:
            raise _malformed(f"{H_SIGNING_TIME} is required for {SCHEME_X509}")
    elif scheme == SCHEME_SIGNING_AUTHORITY:
        if signing_time is not None:
            raise _malformed(f"{H_SIGNING_TIME} must not be present for {SCHEME_SIGNING_AUTHORITY}")
        if authentic_time is None:
            raise _malformed(f"{H_AUTHENTIC_TIME} is required for {SCHEME_SIGNING_AUTHORITY}")
    else:
        raise model.Refused("unsupported", f"signing scheme {scheme!r}")
    if not critical:
        raise _malformed("crit is missing or empty")
    must = {H_SCHEME}
    if expiry is not None:
        must.add(H_EXPIRY)
    if scheme == SCHEME_SIGNING_AUTHORITY:
        must.add(H_AUTHENTIC_TIME)
    for name in critical:
        if name not in present:
            raise _malformed(f"header {name!r} is marked critical but not present")
        if name in (H_PLUGIN, H_PLUGIN_VERSION):
            raise model.Refused(
                "unsupported",
                f"the signature requires a Notation verification plugin ({name}), which "
                "imageward does not run",
            )
        if name not in _KNOWN_SIGNED:
            raise model.Refused("unsupported", f"unknown critical header {name!r}")
        must.discard(name)
    if must:
        raise _malformed(f"headers not marked critical: {', '.join(sorted(must))}")
    moment = signing_time or authentic_time
    if expiry is not None and moment is not None and expiry <= moment:
        raise _malformed("expiry is not after the signing time")
    return str(scheme)


# -- JWS ------------------------------------------------------------------------------


def _b64url(value: object, what: str, *, limit: int) -> bytes:
    if not isinstance(value, str) or not _B64URL.fullmatch(value):
        raise _malformed(f"JWS {what} is not unpadded base64url text")
    if len(value) > limit * 4 // 3 + 4:
        raise _malformed(f"JWS {what} is over {limit} bytes")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as e:
        raise _malformed(f"JWS {what} is not valid base64url: {e}") from e


def _b64(value: object, what: str, *, limit: int) -> bytes:
    if not isinstance(value, str) or len(value) > limit * 4 // 3 + 4:
        raise _malformed(f"JWS {what} is not base64 text of at most {limit} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _malformed(f"JWS {what} is not valid base64: {e}") from e


def _rfc3339(value: object, what: str) -> datetime.datetime | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise _malformed(f"{what} is not an RFC 3339 time: {value!r}")
    text = value.upper().replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # Python reads at most microseconds
        digits = re.match(r"\d+", rest)
        assert digits is not None
        text = f"{head}.{digits.group()[:6].ljust(6, '0')}{rest[digits.end() :]}"
    try:
        return datetime.datetime.fromisoformat(text).astimezone(datetime.UTC)
    except ValueError as e:
        raise _malformed(f"{what} is not a valid time: {e}") from e


def parse_jws(raw: bytes) -> Envelope:
    document = model.parse_json(raw, what="JWS envelope")
    unknown = set(document) - {"payload", "protected", "header", "signature"}
    if unknown:
        raise _malformed(f"JWS envelope has members {sorted(unknown)} (flattened JSON only)")
    payload = _b64url(document.get("payload"), "payload", limit=MAX_PAYLOAD_BYTES)
    protected_raw = _b64url(document.get("protected"), "protected header", limit=MAX_HEADER_BYTES)
    signature = _b64url(document.get("signature"), "signature", limit=1024)
    header = document.get("header")
    if not isinstance(header, dict):
        raise _malformed("JWS envelope has no unprotected header object")
    if "crit" in header:
        raise _malformed("JWS crit must be a protected header")
    protected = model.parse_json(protected_raw, what="JWS protected header")
    algorithm = protected.get("alg")
    if not isinstance(algorithm, str):
        raise _malformed("JWS protected header has no alg")
    critical = protected.get("crit")
    if critical is not None and not (
        isinstance(critical, list) and all(isinstance(c, str) for c in critical)
    ):
        raise _malformed("JWS crit is not a list of header names")
    signing_time = _rfc3339(protected.get(H_SIGNING_TIME), H_SIGNING_TIME)
    authentic_time = _rfc3339(protected.get(H_AUTHENTIC_TIME), H_AUTHENTIC_TIME)
    expiry = _rfc3339(protected.get(H_EXPIRY), H_EXPIRY)
    scheme = _check_signed_attributes(
        critical=critical or [],
        present=set(protected),
        scheme=protected.get(H_SCHEME),
        signing_time=signing_time,
        authentic_time=authentic_time,
        expiry=expiry,
        content_type=protected.get("cty"),
    )
    x5c = header.get("x5c")
    if not isinstance(x5c, list):
        raise _malformed("JWS header has no x5c certificate chain")
    certificates = _certificates(
        [
            _b64(value, f"x5c[{i}]", limit=MAX_CERTIFICATE_BYTES)
            for i, value in enumerate(x5c[: MAX_CERTIFICATES + 1])
        ],
        "JWS x5c",
    )
    timestamp_value = header.get(U_TIMESTAMP)
    timestamp = (
        None
        if timestamp_value is None
        else _b64(timestamp_value, U_TIMESTAMP, limit=MAX_TIMESTAMP_BYTES)
    )
    return Envelope(
        media_type=JWS_MEDIA_TYPE,
        payload=payload,
        algorithm=algorithm,
        signing_scheme=scheme,
        signing_time=signing_time,
        authentic_signing_time=authentic_time,
        expiry=expiry,
        certificates=certificates,
        signature=signature,
        timestamp=timestamp,
        signed=f"{document['protected']}.{document['payload']}".encode(),
        jws_document=document,
    )


_JWS_REGISTRY_HEADERS: Final = {
    name: jose_registry.HeaderParameter(name, "str")
    for name in (H_SCHEME, H_SIGNING_TIME, H_AUTHENTIC_TIME, H_EXPIRY)
}


def _verify_jws(envelope: Envelope, key: Any) -> bool:
    registry = jws.JWSRegistry(
        header_registry=dict(_JWS_REGISTRY_HEADERS),
        algorithms=[envelope.algorithm],
        strict_check_header=False,
    )
    registry.max_header_length = MAX_HEADER_BYTES * 2
    registry.max_payload_length = MAX_PAYLOAD_BYTES * 2
    assert envelope.jws_document is not None
    try:
        jws.deserialize_json(
            cast(jws_types.FlattenedJSONSerialization, dict(envelope.jws_document)),
            key,
            algorithms=[envelope.algorithm],
            registry=registry,
        )
    except jose_errors.BadSignatureError:
        return False
    except (jose_errors.JoseError, ValueError, TypeError) as e:
        raise _malformed(f"JWS envelope cannot be verified: {type(e).__name__}: {e}") from e
    return True


# -- COSE -----------------------------------------------------------------------------


def _cbor_head(data: bytes, offset: int) -> tuple[int, int, int]:
    """(major type, argument, offset after the head) of the item at `offset`."""
    if offset >= len(data):
        raise _malformed("COSE envelope ends inside a CBOR item")
    initial = data[offset]
    major, info = initial >> 5, initial & 0x1F
    offset += 1
    if info < 24:
        return major, info, offset
    if info > 27:
        raise _malformed("COSE envelope has an indefinite-length or reserved CBOR item")
    size = 1 << (info - 24)
    if offset + size > len(data):
        raise _malformed("COSE envelope ends inside a CBOR item")
    return major, int.from_bytes(data[offset : offset + size], "big"), offset + size


def check_cbor(data: bytes) -> None:
    """One definite-length CBOR item filling `data`, no map with a key twice, bounded
    depth and item count: what go-cose (notation's reader) also insists on."""
    count = 0

    def item(offset: int, depth: int) -> int:
        nonlocal count
        count += 1
        if count > MAX_CBOR_ITEMS or depth > MAX_CBOR_DEPTH:
            raise _malformed("COSE envelope nests or counts too many CBOR items")
        major, argument, offset = _cbor_head(data, offset)
        if major in (2, 3):
            if offset + argument > len(data):
                raise _malformed("COSE envelope ends inside a CBOR string")
            return offset + argument
        if major == 4:
            for _ in range(argument):
                offset = item(offset, depth + 1)
            return offset
        if major == 5:
            keys: set[bytes] = set()
            for _ in range(argument):
                start = offset
                offset = item(offset, depth + 1)
                key = data[start:offset]
                if key in keys:
                    raise _malformed("COSE envelope has a CBOR map with a key twice")
                keys.add(key)
                offset = item(offset, depth + 1)
            return offset
        if major == 6:
            if argument not in (1, 18):  # epoch times and COSE_Sign1_Tagged, nothing else
                raise _malformed(f"COSE envelope has CBOR tag {argument}")
            return item(offset, depth + 1)
        return offset  # integers, simple values, floats

    end = item(0, 0)
    if end != len(data):
        raise _malformed("COSE envelope has bytes after its CBOR item")


def _cbor(data: bytes, what: str) -> Any:
    check_cbor(data)
    try:
        return cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, OverflowError) as e:
        raise _malformed(f"{what} is not valid CBOR: {e}") from e


def _cose_time(value: object, what: str) -> datetime.datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime.datetime) or value.tzinfo is None:
        raise _malformed(f"{what} is not a CBOR epoch time (tag 1)")
    return value.astimezone(datetime.UTC)


def parse_cose(raw: bytes) -> Envelope:
    document = _cbor(raw, "COSE envelope")
    if not isinstance(document, cbor2.CBORTag) or document.tag != 18:
        raise _malformed("COSE envelope is not a COSE_Sign1_Tagged (tag 18)")
    value = document.value
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise _malformed("COSE_Sign1 is not an array of four items")
    protected_raw, unprotected, payload, signature = value
    if not isinstance(protected_raw, bytes) or not protected_raw:
        raise _malformed("COSE protected header is not a byte string")
    if not isinstance(unprotected, Mapping):  # cbor2 reads maps inside tags as frozendict
        raise _malformed("COSE unprotected header is not a map")
    if not isinstance(payload, bytes):
        raise _malformed("COSE payload is detached or not a byte string")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise _malformed(f"COSE payload is over {MAX_PAYLOAD_BYTES} bytes")
    if not isinstance(signature, bytes):
        raise _malformed("COSE signature is not a byte string")
    if len(protected_raw) > MAX_HEADER_BYTES:
        raise _malformed(f"COSE protected header is over {MAX_HEADER_BYTES} bytes")
    protected = _cbor(protected_raw, "COSE protected header")
    if not isinstance(protected, Mapping):
        raise _malformed("COSE protected header is not a map")
    algorithm = _COSE_ALGORITHMS.get(protected.get(1))  # type: ignore[arg-type]
    if algorithm is None:
        raise model.Refused("unsupported", f"COSE algorithm {protected.get(1)!r}")
    critical = protected.get(2)
    if critical is not None and not (
        isinstance(critical, (list, tuple)) and all(isinstance(c, (str, int)) for c in critical)
    ):
        raise _malformed("COSE crit is not a list of labels")
    if any(isinstance(c, int) and 0 <= c <= 8 for c in critical or []):
        raise _malformed("COSE crit lists a label of 0 to 8")
    if 258 in protected:
        raise model.Refused("unsupported", "COSE Hash Envelope (payload hash alg)")
    signing_time = _cose_time(protected.get(H_SIGNING_TIME), H_SIGNING_TIME)
    authentic_time = _cose_time(protected.get(H_AUTHENTIC_TIME), H_AUTHENTIC_TIME)
    expiry = _cose_time(protected.get(H_EXPIRY), H_EXPIRY)
    scheme = _check_signed_attributes(
        critical=critical or [],
        present=set(protected),
        scheme=protected.get(H_SCHEME),
        signing_time=signing_time,
        authentic_time=authentic_time,
        expiry=expiry,
        content_type=protected.get(3),
    )
    x5chain = unprotected.get(33, protected.get(33))
    if isinstance(x5chain, bytes):
        x5chain = [x5chain]
    certificates = _certificates(x5chain, "COSE x5chain")
    timestamp = unprotected.get(U_TIMESTAMP)
    if timestamp is not None and (
        not isinstance(timestamp, bytes) or len(timestamp) > MAX_TIMESTAMP_BYTES
    ):
        raise _malformed(
            f"COSE {U_TIMESTAMP} is not a byte string of at most {MAX_TIMESTAMP_BYTES}"
        )
    signed = cbor2.dumps(["Signature1", protected_raw, b"", payload])
    return Envelope(
        media_type=COSE_MEDIA_TYPE,
        payload=payload,
        algorithm=algorithm,
        signing_scheme=scheme,
        signing_time=signing_time,
        authentic_signing_time=authentic_time,
        expiry=expiry,
        certificates=certificates,
        signature=signature,
        timestamp=timestamp,
        signed=signed,
    )


# -- the signature ----------------------------------------------------------------------


def _verify_raw(envelope: Envelope, key: Any) -> bool:
    algorithm = envelope.algorithm
    digest = _HASHES[algorithm[2:]]()
    try:
        if algorithm.startswith("ES"):
            assert isinstance(key, ec.EllipticCurvePublicKey)
            size = (key.curve.key_size + 7) // 8
            if len(envelope.signature) != 2 * size:
                return False
            r = int.from_bytes(envelope.signature[:size], "big")
            s = int.from_bytes(envelope.signature[size:], "big")
            key.verify(utils.encode_dss_signature(r, s), envelope.signed, ec.ECDSA(digest))
        else:
            assert isinstance(key, rsa.RSAPublicKey)
            key.verify(
                envelope.signature,
                envelope.signed,
                padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size),
                digest,
            )
    except crypto_exceptions.InvalidSignature:
        return False
    return True


def verify_signature(envelope: Envelope) -> bool:
    """Whether the envelope is signed by its signing certificate's key, with the one
    algorithm that key allows (Refused when the header names another)."""
    expected = chain.algorithm_for(envelope.leaf)
    if envelope.algorithm != expected:
        raise model.Refused(
            "invalid_signature",
            f"the envelope says {envelope.algorithm} but its signing certificate's key signs "
            f"with {expected}",
        )
    key = envelope.leaf.public_key()
    if envelope.media_type == JWS_MEDIA_TYPE:
        imported: Any = (
            jwk.ECKey.import_key(key)
            if isinstance(key, ec.EllipticCurvePublicKey)
            else jwk.RSAKey.import_key(key)  # type: ignore[arg-type]
        )
        return _verify_jws(envelope, imported)
    return _verify_raw(envelope, key)
