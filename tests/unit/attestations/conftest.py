"""The signature tests' keys and digests, shared."""

from tests.unit.signatures.conftest import (  # noqa: F401 (fixtures)
    attacker_key,
    digest,
    other_digest,
    private_keys,
    release_key,
)
