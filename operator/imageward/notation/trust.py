"""A `notation` authority's trust policy: trust stores, trusted identities, enforcement.

This is the Notary Project trust-policy statement of one authority, minus what an
ImagePolicy already says elsewhere (`registryScopes` is the policy's `match`):

- trust stores of type `ca` (`trustStore`), `signingAuthority`
  (`signingAuthorityTrustStore`) and `tsa` (`timestampTrustStore`), each a PEM bundle;
- `trustedIdentities`: `x509.subject: C=…, ST=…, O=…` distinguished names, or `*`;
- `verificationLevel` (`strict`, `permissive`, `audit`) with an optional `override` of
  single validations, as in the specification's custom verification level;
- `verifyTimestamp` (`always`, `afterCertExpiry`), as notation's trust policy has it.

One difference from notation's defaults: revocation is `skip` unless an override turns
it on (`enforce` or `log`): OCSP responders and CRL distribution points are usually
out of reach of an admission webhook, and a check that cannot be made must not refuse
every image by default. When turned on, an unreachable responder fails the check.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Final, Literal, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import oid

from imageward.signatures import model

Action = Literal["enforce", "log", "skip"]
Level = Literal["strict", "permissive", "audit"]
TimestampOption = Literal["always", "afterCertExpiry"]

#: Validations each level enforces or logs (integrity is always enforced).
LEVELS: Final[dict[str, dict[str, Action]]] = {
    "strict": {
        "authenticity": "enforce",
        "authenticTimestamp": "enforce",
        "expiry": "enforce",
        "revocation": "enforce",
    },
    "permissive": {
        "authenticity": "enforce",
        "authenticTimestamp": "log",
        "expiry": "log",
        "revocation": "log",
    },
    "audit": {
        "authenticity": "log",
        "authenticTimestamp": "log",
        "expiry": "log",
        "revocation": "log",
    },
}
#: What an `override` may set each validation to (the specification's table).
OVERRIDABLE: Final[dict[str, tuple[Action, ...]]] = {
    "authenticity": ("enforce", "log"),
    "authenticTimestamp": ("enforce", "log"),
    "expiry": ("enforce", "log"),
    "revocation": ("enforce", "log", "skip"),
}

#: Caps on what a policy may hand us (a trust store is a handful of roots).
MAX_STORE_CERTIFICATES: Final = 64
MAX_IDENTITIES: Final = 64

#: Subject attributes notation (Go's pkix.Name.String) names; any other attribute in a
#: signing certificate's subject is printed as `OID=#hex`, which notation refuses to
#: compare: imageward refuses it the same way.
_SHORT_NAMES: Final[dict[x509.ObjectIdentifier, str]] = {
    oid.NameOID.COUNTRY_NAME: "C",
    oid.NameOID.STATE_OR_PROVINCE_NAME: "ST",
    oid.NameOID.LOCALITY_NAME: "L",
    oid.NameOID.ORGANIZATION_NAME: "O",
    oid.NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    oid.NameOID.COMMON_NAME: "CN",
    oid.NameOID.SERIAL_NUMBER: "SERIALNUMBER",
    oid.NameOID.STREET_ADDRESS: "STREET",
    oid.NameOID.POSTAL_CODE: "POSTALCODE",
}
_MANDATORY: Final = ("C", "ST", "O")
IDENTITY_PREFIX: Final = "x509.subject"


class DNError(ValueError):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """One trusted `x509.subject`: the attributes a signing certificate must carry."""

    text: str
    attributes: tuple[tuple[str, str], ...]

    def matches(self, subject: Mapping[str, str]) -> bool:
        return all(subject.get(name) == value for name, value in self.attributes)


@dataclasses.dataclass(frozen=True, slots=True)
class Store:
    """A named set of trusted certificates (DER), compared byte for byte."""

    certificates: tuple[bytes, ...]

    def __contains__(self, der: object) -> bool:
        return der in self.certificates

    def parsed(self) -> list[x509.Certificate]:
        return [x509.load_der_x509_certificate(der) for der in self.certificates]

    def __bool__(self) -> bool:
        return bool(self.certificates)


EMPTY: Final = Store(())


@dataclasses.dataclass(frozen=True, slots=True)
class TrustPolicy:
    ca: Store = EMPTY
    signing_authority: Store = EMPTY
    tsa: Store = EMPTY
    identities: tuple[Identity, ...] | None = None  # None: `*`, any identity the stores certify
    level: Level = "strict"
    authenticity: Action = "enforce"
    authentic_timestamp: Action = "enforce"
    expiry: Action = "enforce"
    revocation: Action = "skip"
    verify_timestamp: TimestampOption = "always"

    @property
    def digest(self) -> str:
        """What two authorities that trust exactly the same signers share."""
        parts = [
            b"ca",
            *self.ca.certificates,
            b"sa",
            *self.signing_authority.certificates,
            b"ids",
            *(
                sorted(repr(i.attributes).encode() for i in self.identities)
                if self.identities is not None
                else [b"*"]
            ),
        ]
        return "sha256:" + hashlib.sha256(b"\0".join(parts)).hexdigest()

    def describe_identities(self) -> str:
        if self.identities is None:
            return "*"
        return "; ".join(i.text for i in self.identities)


def parse_certificates(data: str | bytes, *, authority: str, what: str) -> Store:
    """A PEM bundle (one or more CERTIFICATE blocks) or one DER certificate."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        if b"-----BEGIN" in raw:
            loaded = x509.load_pem_x509_certificates(raw)
        else:
            loaded = [x509.load_der_x509_certificate(raw)]
    except ValueError as e:
        raise model.AuthorityError(authority, f"{what} is not a PEM certificate bundle: {e}") from e
    if not loaded:
        raise model.AuthorityError(authority, f"{what} holds no certificate")
    if len(loaded) > MAX_STORE_CERTIFICATES:
        raise model.AuthorityError(
            authority,
            f"{what} holds {len(loaded)} certificates, over the limit of {MAX_STORE_CERTIFICATES}",
        )
    ders = tuple(dict.fromkeys(cert.public_bytes(serialization.Encoding.DER) for cert in loaded))
    return Store(ders)


# -- distinguished names ------------------------------------------------------------------

_SPECIAL: Final = set(',+"\\<>;=# ')
_HEX: Final = set("0123456789abcdefABCDEF")


def _split_rdns(text: str) -> list[tuple[str, bool]]:
    """Split an RFC 4514 string on unescaped commas: (part, ends with an unescaped '+')."""
    parts: list[tuple[str, bool]] = []
    current: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\":
            if index + 1 >= len(text):
                raise DNError("ends with a lone backslash")
            current.append(text[index : index + 2])
            index += 2
            continue
        if char == "+":
            raise DNError("has a multi-valued RDN ('+'), which notation does not support")
        if char in ",;":
            parts.append(("".join(current), False))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append(("".join(current), False))
    return parts


def _unescape(value: str) -> str:
    out = bytearray()
    index = 0
    while index < len(value):
        char = value[index]
        if char == "\\":
            nxt = value[index + 1 : index + 2]
            pair = value[index + 1 : index + 3]
            if len(pair) == 2 and all(c in _HEX for c in pair):
                out.append(int(pair, 16))
                index += 3
                continue
            if nxt in _SPECIAL:
                out += nxt.encode()
                index += 2
                continue
            raise DNError(f"has an invalid escape \\{nxt}")
        out += char.encode()
        index += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DNError("has escaped bytes that are not UTF-8") from e


def _strip(value: str) -> str:
    """Trim unescaped spaces at both ends (an escaped trailing space is kept)."""
    value = value.lstrip(" ")
    while value.endswith(" ") and not value.endswith("\\ "):
        value = value[:-1]
    return value


def parse_dn(text: str) -> dict[str, str]:
    """An RFC 4514 distinguished name as notation reads trusted identities: single-valued
    RDNs, unique attribute types (`S` is `ST`), no `#hex` values, C, ST and O present."""
    attributes: dict[str, str] = {}
    for part, _ in _split_rdns(text):
        name, equals, value = part.partition("=")
        if not equals:
            raise DNError(f"RDN {part.strip()!r} has no '='")
        kind = name.strip().upper()
        if kind == "S":
            kind = "ST"
        if not kind or not all(c.isalnum() or c in ".-" for c in kind):
            raise DNError(f"RDN {part.strip()!r} has an invalid attribute type")
        value = _strip(value)
        if value.startswith("#"):
            raise DNError("has a '#' (hex) value, which notation does not support")
        value = _unescape(value)
        if not value:
            raise DNError(f"attribute {kind} is empty")
        if kind in attributes:
            raise DNError(f"has attribute {kind} twice")
        attributes[kind] = value
    for kind in _MANDATORY:
        if kind not in attributes:
            raise DNError(f"lacks {kind} (C, ST and O are required)")
    return attributes


def certificate_subject(cert: x509.Certificate) -> dict[str, str]:
    """A signing certificate's subject as notation compares it, or DNError."""
    subject: dict[str, str] = {}
    for rdn in cert.subject.rdns:
        if len(rdn) > 1:
            raise DNError("has a multi-valued RDN, which notation does not compare")
        (attribute,) = tuple(rdn)
        name = _SHORT_NAMES.get(attribute.oid)
        if name is None:
            raise DNError(
                f"has attribute {attribute.oid.dotted_string}, which notation does not compare"
            )
        if name in subject:
            raise DNError(f"has attribute {name} twice")
        value = attribute.value
        subject[name] = value if isinstance(value, str) else value.decode("utf-8", "replace")
    return subject


def format_subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def parse_identities(values: Sequence[str], *, authority: str) -> tuple[Identity, ...] | None:
    """`trustedIdentities`: `["*"]` (None), or x509.subject identities that do not overlap."""
    if not values:
        raise model.AuthorityError(authority, 'trustedIdentities is empty (use ["*"] for any)')
    if len(values) > MAX_IDENTITIES:
        raise model.AuthorityError(
            authority, f"trustedIdentities has more than {MAX_IDENTITIES} entries"
        )
    if "*" in values:
        if len(values) > 1:
            raise model.AuthorityError(
                authority, "trustedIdentities: '*' must be the only entry when present"
            )
        return None
    identities: list[Identity] = []
    for value in values:
        prefix, colon, rest = value.partition(":")
        if not colon or prefix.strip() != IDENTITY_PREFIX:
            raise model.AuthorityError(
                authority,
                f"trusted identity {value!r} is not of the form "
                "'x509.subject: C=…, ST=…, O=…' (or '*')",
            )
        try:
            attributes = parse_dn(rest.strip())
        except DNError as e:
            raise model.AuthorityError(authority, f"trusted identity {value!r}: {e}") from None
        identity = Identity(value, tuple(sorted(attributes.items())))
        for other in identities:
            if _overlap(dict(other.attributes), attributes):
                raise model.AuthorityError(
                    authority,
                    f"trusted identities {other.text!r} and {value!r} overlap (one certificate "
                    "could match both)",
                )
        identities.append(identity)
    return tuple(identities)


def _overlap(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    return all(a[key] == b[key] for key in a.keys() & b.keys())


def build_policy(
    *,
    authority: str,
    ca: Store = EMPTY,
    signing_authority: Store = EMPTY,
    tsa: Store = EMPTY,
    identities: Sequence[str],
    level: str = "strict",
    override: Mapping[str, str] | None = None,
    verify_timestamp: str = "always",
) -> TrustPolicy:
    """A trust policy from an authority's (already resolved) fields; AuthorityError if unusable."""
    if not ca and not signing_authority:
        raise model.AuthorityError(
            authority, "notation needs a trustStore (CA roots) or a signingAuthorityTrustStore"
        )
    if level not in LEVELS:
        raise model.AuthorityError(
            authority, f"verificationLevel {level!r} is not one of strict, permissive, audit"
        )
    actions: dict[str, Action] = {**LEVELS[level], "revocation": "skip"}
    for key, value in (override or {}).items():
        value = cast(Action, value)
        allowed = OVERRIDABLE.get(key)
        if allowed is None:
            raise model.AuthorityError(
                authority, f"override {key!r} is not one of {', '.join(OVERRIDABLE)}"
            )
        if value not in allowed:
            raise model.AuthorityError(
                authority, f"override {key}: {value!r} is not one of {', '.join(allowed)}"
            )
        actions[key] = value
    if verify_timestamp not in ("always", "afterCertExpiry"):
        raise model.AuthorityError(
            authority, f"verifyTimestamp {verify_timestamp!r} is not always or afterCertExpiry"
        )
    return TrustPolicy(
        ca=ca,
        signing_authority=signing_authority,
        tsa=tsa,
        identities=parse_identities(identities, authority=authority),
        level=level,  # type: ignore[arg-type]  # checked against LEVELS
        authenticity=actions["authenticity"],
        authentic_timestamp=actions["authenticTimestamp"],
        expiry=actions["expiry"],
        revocation=actions["revocation"],
        verify_timestamp=verify_timestamp,  # type: ignore[arg-type]  # checked above
    )
