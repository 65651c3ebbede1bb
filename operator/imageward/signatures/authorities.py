"""The authorities a policy trusts, resolved: what `verify` checks signatures against.

Kept apart from `verify` so that loading a policy (`policystore`) needs neither the
verification code nor `cryptography.x509`: `imageward check` loads every policy, and
verifies nothing when no policy matches its images.
"""

from __future__ import annotations

from imageward import records

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (PEP 781)

if TYPE_CHECKING:
    from typing import ClassVar, Literal

    # sigstore costs a third of a second to import: only keyless authorities load it.
    from imageward.notation import trust as notation_trust
    from imageward.signatures import keyless, keys


_set = object.__setattr__  # how a frozen Record's __init__ sets its fields


class KeyAuthority(records.Record):
    """Signatures made with one private key; only `key` (from the policy) is trusted."""

    kind: ClassVar[Literal["key"]] = "key"
    __slots__ = ("key", "name")
    name: str
    key: keys.PublicKey

    def __init__(
        self,
        name: str,
        key: keys.PublicKey,
    ) -> None:
        _set(self, "name", name)
        _set(self, "key", key)


class KeylessAuthority(records.Record):
    """Fulcio-certified signatures of one identity, under one offline trusted root."""

    kind: ClassVar[Literal["keyless"]] = "keyless"
    __slots__ = ("identity", "name", "trusted_root")
    name: str
    identity: keyless.Identity
    trusted_root: keyless.TrustedRoot

    def __init__(
        self,
        name: str,
        identity: keyless.Identity,
        trusted_root: keyless.TrustedRoot,
    ) -> None:
        _set(self, "name", name)
        _set(self, "identity", identity)
        _set(self, "trusted_root", trusted_root)


class NotationAuthority(records.Record):
    """Notary Project signatures whose chain reaches a trust store, of trusted identities."""

    kind: ClassVar[Literal["notation"]] = "notation"
    __slots__ = ("name", "policy")
    name: str
    policy: notation_trust.TrustPolicy

    def __init__(
        self,
        name: str,
        policy: notation_trust.TrustPolicy,
    ) -> None:
        _set(self, "name", name)
        _set(self, "policy", policy)


Authority = KeyAuthority | KeylessAuthority | NotationAuthority
