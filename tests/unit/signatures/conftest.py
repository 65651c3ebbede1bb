"""Keys, a fake Sigstore and authorities shared by the signature tests."""

from __future__ import annotations

import pytest

from imageward.registry import model as registry_model
from imageward.signatures import keyless, verify

from . import build, fakesigstore


@pytest.fixture(scope="session")
def private_keys() -> dict[str, build.PrivateKey]:
    """One key of each kind, made once: RSA generation is slow."""
    return {kind: build.generate(kind) for kind in ("p256", "p384", "p521", "rsa", "ed25519")}


@pytest.fixture(scope="session")
def release_key(private_keys: dict[str, build.PrivateKey]) -> build.PrivateKey:
    return private_keys["p256"]


@pytest.fixture(scope="session")
def attacker_key() -> build.PrivateKey:
    return build.generate("p256")


@pytest.fixture
def digest() -> registry_model.Digest:
    return registry_model.Digest(build.image_digest("web"))


@pytest.fixture
def other_digest() -> registry_model.Digest:
    return registry_model.Digest(build.image_digest("other"))


@pytest.fixture
def release_authority(release_key: build.PrivateKey) -> verify.KeyAuthority:
    return build.key_authority("release-key", release_key)


@pytest.fixture(scope="session")
def sigstore() -> fakesigstore.FakeSigstore:
    return fakesigstore.FakeSigstore(name="local")


@pytest.fixture(scope="session")
def trusted_root(sigstore: fakesigstore.FakeSigstore) -> keyless.TrustedRoot:
    return keyless.parse_trusted_root(sigstore.trusted_root_json(), authority="github-actions")


@pytest.fixture
def github_authority(trusted_root: keyless.TrustedRoot) -> verify.KeylessAuthority:
    return build.keyless_authority(trusted_root)
