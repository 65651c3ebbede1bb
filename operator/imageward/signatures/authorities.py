"""The authorities a policy trusts, resolved: what `verify` checks signatures against.

Kept apart from `verify` so that loading a policy (`policystore`) needs neither the
verification code nor `cryptography.x509`: `imageward check` loads every policy, and
verifies nothing when no policy matches its images.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, ClassVar, Literal

if TYPE_CHECKING:
    # sigstore costs a third of a second to import: only keyless authorities load it.
    from imageward.notation import trust as notation_trust
    from imageward.signatures import keyless, keys


@dataclasses.dataclass(frozen=True, slots=True)
class KeyAuthority:
    """Signatures made with one private key; only `key` (from the policy) is trusted."""

    kind: ClassVar[Literal["key"]] = "key"
    name: str
    key: keys.PublicKey


@dataclasses.dataclass(frozen=True, slots=True)
class KeylessAuthority:
    """Fulcio-certified signatures of one identity, under one offline trusted root."""

    kind: ClassVar[Literal["keyless"]] = "keyless"
    name: str
    identity: keyless.Identity
    trusted_root: keyless.TrustedRoot


@dataclasses.dataclass(frozen=True, slots=True)
class NotationAuthority:
    """Notary Project signatures whose chain reaches a trust store, of trusted identities."""

    kind: ClassVar[Literal["notation"]] = "notation"
    name: str
    policy: notation_trust.TrustPolicy


Authority = KeyAuthority | KeylessAuthority | NotationAuthority
