from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

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


@pytest.mark.parametrize("name", ["load_pem_public_key", "load_der_public_key"])
def test_the_key_loaders_are_cryptographys(name: str) -> None:
    # keys imports the loaders from cryptography's Rust bindings, sparing the
    # serialization package: they must be the very functions serialization exports.
    from cryptography.hazmat.bindings._rust import openssl as rust_openssl

    assert keys._key_loader(name) is getattr(serialization, name)
    assert getattr(rust_openssl.keys, name) is getattr(serialization, name)


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


def _verdict(pem: str | bytes, *, fast: bool, monkeypatch: pytest.MonkeyPatch) -> object:
    """What parse_public_key makes of `pem`: (algorithm, spki, public numbers) or the
    refusal; with `fast=False` cryptography alone decides."""
    with monkeypatch.context() as patch:
        if not fast:
            patch.setattr(keys, "_p256_spki", lambda data: None)
        try:
            key = keys.parse_public_key(pem, authority="a")
        except model.AuthorityError as e:
            return ("refused", str(e))
    numbers = key.key.public_numbers() if hasattr(key.key, "public_numbers") else None
    return (key.algorithm, key.spki, repr(numbers))


def _pem(der: bytes) -> bytes:
    import base64

    body = base64.b64encode(der)
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"-----BEGIN PUBLIC KEY-----\n" + b"\n".join(lines) + b"\n-----END PUBLIC KEY-----\n"


def test_cosigns_p256_keys_are_known_usable_without_cryptography(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for _ in range(50):
        private = ec.generate_private_key(ec.SECP256R1())
        pem = build.public_pem(private)
        assert keys._p256_spki(pem.encode().strip()) is not None
        assert _verdict(pem, fast=True, monkeypatch=monkeypatch) == _verdict(
            pem, fast=False, monkeypatch=monkeypatch
        )
        message = b"payload"
        signature = private.sign(message, ec.ECDSA(hashes.SHA256()))
        assert keys.verify_signature(keys.parse_public_key(pem, authority="a"), signature, message)


def test_a_p256_key_cosign_would_not_write_is_left_to_cryptography(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import random

    rng = random.Random(20261202)
    p = keys._P256_P
    der = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert keys._p256_spki(_pem(der).strip()) == der
    variants: list[bytes] = []
    for _ in range(300):  # points off the curve (or not points), in cosign's layout
        mutated = bytearray(der)
        mutated[rng.randrange(26, 91)] ^= 1 << rng.randrange(8)
        variants.append(_pem(bytes(mutated)))
    x = int.from_bytes(der[27:59], "big")
    y = int.from_bytes(der[59:91], "big")
    for x2, y2 in [(x, p - y), (x + p, y), (x, y + p), (0, 0), (x, 0)]:
        if x2 < 2**256 and y2 < 2**256:  # coordinates as big as p or more, the mirror point
            variants.append(_pem(der[:27] + x2.to_bytes(32, "big") + y2.to_bytes(32, "big")))
    pem = _pem(der)
    variants += [
        pem.replace(b"\n", b"\r\n"),
        pem.replace(b"-----\n", b"-----\n\n", 1),
        pem.replace(b"PUBLIC KEY", b"EC PUBLIC KEY"),
        b" " + pem,
        pem + pem,
        pem[:-1] + b"\n-----BEGIN PUBLIC KEY-----\n",
        _pem(der[:26] + b"\x02" + der[27:59]),  # compressed: cryptography's to judge
        pem.replace(b"\n", b"", 1),
        pem.replace(pem[27:29], pem[27:29].lower()),
    ]
    accepted = []
    for variant in variants:
        if keys._p256_spki(variant.strip()) is not None:
            accepted.append(variant)
        assert _verdict(variant, fast=True, monkeypatch=monkeypatch) == _verdict(
            variant, fast=False, monkeypatch=monkeypatch
        ), variant
    # Only the mirror point (x, p - y), itself a key on the curve, and the key with a
    # space before it (parse_public_key strips it, for cryptography too).
    assert sorted(accepted) == sorted([variants[300], b" " + pem])


def test_a_p256_verification_imports_no_rsa_nor_serialization(
    release_key: build.PrivateKey,
) -> None:
    # `imageward check` verifies a cosign P-256 signature in every run: cryptography's
    # serialization package, its RSA modules and the OpenSSL backend object (each
    # costs milliseconds to import) are needed only by other keys.
    pem = build.public_pem(release_key)
    signature = build.sign(release_key, b"payload")
    script = (
        "import json, sys\n"
        "from imageward.signatures import keys\n"
        "key = keys.parse_public_key(sys.argv[1].encode(), authority='release')\n"
        "ok = keys.verify_signature(key, bytes.fromhex(sys.argv[2]), b'payload')\n"
        "bad = keys.verify_signature(key, bytes.fromhex(sys.argv[2]), b'payload!')\n"
        "print(json.dumps([ok, bad, sorted(sys.modules)]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, pem, signature.hex()],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(pathlib.Path(keys.__file__).parents[2])},
    )
    ok, bad, modules = json.loads(result.stdout)
    assert (ok, bad) == (True, False)
    assert "cryptography.hazmat.primitives.asymmetric.ec" in modules
    heavy = (
        "cryptography.hazmat.primitives.serialization",
        "cryptography.hazmat.primitives.asymmetric.rsa",
        "cryptography.hazmat.primitives.asymmetric.padding",
        "cryptography.hazmat.backends.openssl.backend",
    )
    assert [name for name in heavy if name in modules] == []
