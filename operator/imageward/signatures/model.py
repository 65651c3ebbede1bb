"""Result types shared by the signature formats, and a strict JSON reader.

A check of one signature against one authority ends in a `Check`: data, never an
exception, so that admission can say exactly why a signature did not count.
"""

from __future__ import annotations

from imageward import errors, records

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (PEP 781)

if TYPE_CHECKING:
    from typing import Any, Final, Literal

    # Types only (the annotations are strings at run time).
    Format = Literal["bundle", "legacy", "notation"]

    #: How one signature fared against one authority; also the `result` metric label.
    Result = Literal[
        "verified",
        "invalid_signature",  # the bytes are not signed by the authority's key/certificate
        "identity_mismatch",  # keyless: a trusted certificate, but of another identity
        "untrusted",  # keyless: chain, SCT or transparency-log evidence does not hold
        "expired",  # Notation: an expired signature, or a chain not valid at the signing time
        "revoked",  # Notation: a certificate revoked, or its status unknown with checking on
        "wrong_digest",  # a valid signature over a payload that names another image
        "not_a_signature",  # a valid signature over something that is not an image signature
        "tampered",  # a blob whose bytes do not hash to the digest that names it
        "malformed",  # bytes that cannot be read as the format says
        "unsupported",  # a well-formed variant this verifier does not accept
    ]


#: How far a check got before it failed. Among the failures of one authority, the one
#: that got furthest explains best (a valid signature for another digest says more
#: than a malformed layer next to it).
PROGRESS: Final[dict[Result, int]] = {
    "malformed": 0,
    "unsupported": 1,
    "tampered": 2,
    "invalid_signature": 3,
    "untrusted": 4,
    "identity_mismatch": 5,
    "expired": 6,
    "revoked": 7,
    "not_a_signature": 8,
    "wrong_digest": 9,
    "verified": 10,
}


_set = object.__setattr__  # how a frozen Record's __init__ sets its fields


class Check(records.Record):
    """The outcome of one signature against one authority."""

    __slots__ = ("reason", "result", "signer")
    result: Result
    reason: str  # empty when verified; otherwise a sentence for the refusal message
    #: Who signed, when verified: "key sha256:<spki>" or "keyless <issuer> <subject>".
    #: A threshold counts distinct signers, not authority entries that share one.
    signer: str

    def __init__(
        self,
        result: Result,
        reason: str = "",
        signer: str = "",
    ) -> None:
        _set(self, "result", result)
        _set(self, "reason", reason)
        _set(self, "signer", signer)

    @property
    def verified(self) -> bool:
        return self.result == "verified"

    @property
    def progress(self) -> int:
        return PROGRESS[self.result]


VERIFIED: Final = Check("verified")


class Target(records.Record):
    """The media type and size of the manifest a digest names: a Notation payload names
    all three (cosign payloads name only the digest)."""

    __slots__ = ("media_type", "size")
    media_type: str
    size: int

    def __init__(
        self,
        media_type: str,
        size: int,
    ) -> None:
        _set(self, "media_type", media_type)
        _set(self, "size", size)


class Refused(Exception):
    """Raised inside a format module to stop a check; carries the `Check` to return.

    The format modules' `verify_*`/`check_*` functions return its `check`; their
    `parse_*`/`read_*` helpers let it out, and `verify.verify` turns it into data.
    """

    def __init__(self, result: Result, reason: str) -> None:
        self.check = Check(result, reason)
        super().__init__(reason)


class AuthorityError(errors.ImagewardError):
    """An authority that cannot be used: a bad PEM key, trusted root or identity.

    The policy layer turns it into a `PolicyError` naming the ImagePolicy.
    """

    def __init__(self, authority: str, reason: str) -> None:
        self.authority = authority
        self.reason = reason
        super().__init__(f"authority {authority}: {reason}")


def sha256_digest(data: bytes) -> str:
    import hashlib  # here, not at the top: `imageward check` imports this module every run

    return "sha256:" + hashlib.sha256(data).hexdigest()


def short(digest: str) -> str:
    """`sha256:9f2c4e1a0b3d…` for messages: enough to tell digests apart."""
    return digest[:19] + "…" if len(digest) > 19 else digest


def check_blob(expected: str, data: bytes | None, *, what: str) -> bytes:
    """The blob named `expected`, refused when missing or when its bytes hash elsewhere."""
    if data is None:
        raise Refused("malformed", f"{what} {short(expected)} was not fetched")
    algorithm, _, _ = expected.partition(":")
    if algorithm != "sha256":
        raise Refused("unsupported", f"{what} {short(expected)} uses digest algorithm {algorithm}")
    actual = sha256_digest(data)
    if actual != expected.lower():
        mismatch = f"{what} {short(expected)} hashes to {short(actual)}"
        raise Refused("tampered", f"tampered payload: digest mismatch ({mismatch})")
    return data


_URLSAFE: Final = str.maketrans("-_", "+/")


def decode_base64(text: object, *, what: str) -> bytes:
    """Standard or URL-safe base64, padded or not (protobuf JSON writers differ)."""
    if not isinstance(text, str) or not text:
        raise Refused("malformed", f"{what} is missing or not a base64 string")
    import base64
    import binascii

    stripped = text.strip().translate(_URLSAFE)
    padded = stripped + "=" * (-len(stripped) % 4)
    try:
        return base64.b64decode(padded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise Refused("malformed", f"{what} is not valid base64: {e}") from e


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # Two readers of one signed document must not see two different values.
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def parse_json(data: bytes, *, what: str) -> dict[str, Any]:
    """A JSON object with no duplicate keys, or `Refused(malformed)`."""
    import json

    try:
        value = json.loads(data, object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise Refused("malformed", f"{what} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise Refused("malformed", f"{what} is not a JSON object")
    return value


def field(obj: dict[str, Any], *names: str) -> Any:
    """The first of `names` present in `obj` (protobuf JSON allows camelCase and snake_case)."""
    for name in names:
        if name in obj:
            return obj[name]
    return None
