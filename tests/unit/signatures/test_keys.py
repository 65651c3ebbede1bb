from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from imageward.signatures import keys, model

from . import build, fakesigstore


@pytest.mark.parametrize(
    ("kind", "algorithm"),
    [
        ("p256", "ecdsa-p256"),
        ("p384", "ecdsa-p384"),
        ("p521", "ecdsa-p521"),
        ("rsa", "rsa"),
        ("ed25519", "ed25519"),
    ],
)
def test_parses_every_supported_key(
    private_keys: dict[str, build.PrivateKey], kind: str, algorithm: str
) -> None:
    pem = build.public_pem(private_keys[kind])
    key = keys.parse_public_key(pem, authority="release-key")
    assert key.algorithm == algorithm
    assert key == keys.parse_public_key(pem.encode(), authority="other")  # str or bytes
    assert key.fingerprint.startswith("sha256:") and len(key.fingerprint) == 71


@pytest.mark.parametrize("kind", ["p256", "p384", "p521", "rsa", "ed25519"])
def test_verifies_what_cosign_signs(private_keys: dict[str, build.PrivateKey], kind: str) -> None:
    private = private_keys[kind]
    key = keys.parse_public_key(build.public_pem(private), authority="release-key")
    assert keys.verify_signature(key, build.sign(private, b"payload"), b"payload")
    assert keys.verify_signature(key, build.sign(private, b"payload", curve_hash=True), b"payload")
    assert not keys.verify_signature(key, build.sign(private, b"payload"), b"payload!")


def test_wrong_key_or_garbage_signature_is_false(
    release_key: build.PrivateKey, attacker_key: build.PrivateKey
) -> None:
    key = keys.parse_public_key(build.public_pem(release_key), authority="release-key")
    assert not keys.verify_signature(key, build.sign(attacker_key, b"data"), b"data")
    assert not keys.verify_signature(key, b"not a signature", b"data")
    assert not keys.verify_signature(key, b"", b"data")


def test_p384_accepts_sha256_and_sha384_only(private_keys: dict[str, build.PrivateKey]) -> None:
    private = private_keys["p384"]
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    key = keys.parse_public_key(build.public_pem(private), authority="a")
    assert keys.verify_signature(key, private.sign(b"d", ec.ECDSA(hashes.SHA384())), b"d")
    assert keys.verify_signature(key, private.sign(b"d", ec.ECDSA(hashes.SHA256())), b"d")
    assert not keys.verify_signature(key, private.sign(b"d", ec.ECDSA(hashes.SHA512())), b"d")


def test_rsa_is_pkcs1v15_sha256_as_cosign(private_keys: dict[str, build.PrivateKey]) -> None:
    private = private_keys["rsa"]
    assert isinstance(private, rsa.RSAPrivateKey)
    key = keys.parse_public_key(build.public_pem(private), authority="a")
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    assert not keys.verify_signature(key, private.sign(b"d", pss, hashes.SHA256()), b"d")
    assert not keys.verify_signature(
        key, private.sign(b"d", padding.PKCS1v15(), hashes.SHA512()), b"d"
    )


def _error(pem: str | bytes) -> str:
    with pytest.raises(model.AuthorityError) as caught:
        keys.parse_public_key(pem, authority="release-key")
    assert caught.value.authority == "release-key"
    assert str(caught.value).startswith("authority release-key: ")
    return caught.value.reason


def test_not_pem() -> None:
    assert _error("hello") == "not a PEM public key (no -----BEGIN line)"
    reason = _error("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    assert reason.startswith("not a PEM public key")


def test_private_key_is_refused_without_echoing_it(release_key: build.PrivateKey) -> None:
    pem = release_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    reason = _error(pem)
    assert "PRIVATE key" in reason and "cosign.pub" in reason
    assert pem.splitlines()[1] not in reason
    assert "PRIVATE key" in _error("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nx\n")


def test_unsupported_curve() -> None:
    private = ec.generate_private_key(ec.SECP256K1())
    assert _error(build.public_pem(private)).startswith("unsupported curve secp256k1")


def test_small_rsa_key() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert _error(build.public_pem(private)) == "RSA key of 1024 bits is too small (at least 2048)"


def test_certificate_is_not_a_key(sigstore: fakesigstore.FakeSigstore) -> None:
    reason = _error(sigstore.root.public_bytes(serialization.Encoding.PEM))
    assert "certificate, not a public key" in reason


def test_the_pem_loader_is_cryptographys() -> None:
    # keys imports the loader from cryptography's Rust bindings, sparing the
    # serialization package: it must be the very function serialization exports.
    from cryptography.hazmat.bindings._rust import openssl as rust_openssl

    assert keys._load_pem_public_key() is serialization.load_pem_public_key
    assert rust_openssl.keys.load_pem_public_key is serialization.load_pem_public_key


@pytest.mark.parametrize("kind", ["p256", "p384", "p521", "rsa", "ed25519"])
def test_spki_is_encoded_when_first_read(
    private_keys: dict[str, build.PrivateKey], kind: str
) -> None:
    public = private_keys[kind].public_key()
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    parsed = keys.parse_public_key(build.public_pem(private_keys[kind]), authority="a")
    eager = keys.PublicKey(algorithm=parsed.algorithm, spki=der, key=parsed.key)
    assert parsed == eager and hash(parsed) == hash(eager) and repr(parsed) == repr(eager)
    assert parsed.spki == der and parsed.fingerprint == eager.fingerprint
    assert parsed.__getstate__() == eager.__getstate__()
    with pytest.raises(AttributeError, match="'PublicKey' object has no attribute 'spkj'"):
        parsed.spkj  # type: ignore[attr-defined]  # noqa: B018
