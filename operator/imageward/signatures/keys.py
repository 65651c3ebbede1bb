"""Public keys of key authorities, and signature checks the way cosign makes them.

Supported: ECDSA P-256, P-384 and P-521, RSA (PKCS#1 v1.5, at least 2048 bits) and
Ed25519. Hashes:

- ECDSA: the curve's own hash (SHA-256 / SHA-384 / SHA-512) or SHA-256. cosign v2
  signs and verifies with SHA-256 whatever the curve (`--signature-digest-algorithm`
  defaults to sha256), while cosign v3 bundles use the curve's hash (sigstore-go key
  details such as PKIX_ECDSA_P384_SHA_384); both hashes are collision resistant, so
  accepting either admits nothing a forger could make.
- RSA: PKCS#1 v1.5 with SHA-256, as cosign and sigstore-go (PKIX_RSA_PKCS1V15_*_SHA256).
- Ed25519: pure Ed25519 over the message.
"""

from __future__ import annotations

import binascii
import functools
from collections.abc import Callable

from imageward import records
from imageward.signatures import model

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (PEP 781)

if TYPE_CHECKING:
    from typing import Any, Final, Literal

    # At run time cryptography is imported by the functions that use it: a P-256 key
    # in cosign's layout (`_p256_spki`) is known usable without it, and `imageward
    # check` loads such a policy on every run.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    CryptoKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    KeyAlgorithm = Literal["ecdsa-p256", "ecdsa-p384", "ecdsa-p521", "rsa", "ed25519"]

MIN_RSA_BITS: Final = 2048

#: The algorithm name of each curve, and the curves of `_curve_signatures`.
_CURVE_NAMES: Final[dict[str, KeyAlgorithm]] = {
    "secp256r1": "ecdsa-p256",
    "secp384r1": "ecdsa-p384",
    "secp521r1": "ecdsa-p521",
}


@functools.cache
def _curve_signatures() -> dict[str, tuple[ec.ECDSA, ...]]:
    """Per curve, the ECDSA signature algorithms to verify with, in the order tried."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    class VerifyingECDSA(ec.ECDSA):
        """`ec.ECDSA(algorithm)` for verifying. ECDSA's own `__init__` imports the
        OpenSSL backend (with the RSA, padding and cipher modules: as much as the rest
        of a P-256 verification) only to check that deterministic signing, an option
        of signing, is supported. cryptography's verify asks an ECDSA instance for its
        `algorithm` alone; tests/unit/signatures/test_keys.py verifies with both."""

        def __init__(self, algorithm: hashes.HashAlgorithm) -> None:
            self._verifying_hash = algorithm

        @property
        def algorithm(self) -> hashes.HashAlgorithm:
            return self._verifying_hash

        @property
        def deterministic_signing(self) -> bool:
            return False

    return {
        "secp256r1": (VerifyingECDSA(hashes.SHA256()),),
        "secp384r1": (VerifyingECDSA(hashes.SHA384()), VerifyingECDSA(hashes.SHA256())),
        "secp521r1": (VerifyingECDSA(hashes.SHA512()), VerifyingECDSA(hashes.SHA256())),
    }


_set = object.__setattr__  # how a frozen Record's __init__ sets its fields


class PublicKey(
    records.Record,
    hidden=(
        "spki",
        "key",
    ),
    uncompared=("key",),
):
    """A parsed public key. Equal keys have equal `spki` (DER SubjectPublicKeyInfo).

    A key `from_crypto_key` makes encodes its `spki` when it is first read: the encoder
    is in cryptography's serialization package (with its SSH and cipher modules), which
    a run that loads a policy with one key and verifies nothing never needs. A P-256 key
    `parse_public_key` read without cryptography (`_p256_spki`) is handed to cryptography
    when its `key` is first read (to verify a signature).
    """

    __slots__ = ("algorithm", "key", "spki")
    algorithm: KeyAlgorithm
    spki: bytes
    key: CryptoKey

    def __init__(
        self,
        algorithm: KeyAlgorithm,
        spki: bytes,
        key: CryptoKey,
    ) -> None:
        _set(self, "algorithm", algorithm)
        _set(self, "spki", spki)
        _set(self, "key", key)

    @classmethod
    def _encoded_when_read(cls, algorithm: KeyAlgorithm, key: CryptoKey) -> PublicKey:
        public = cls.__new__(cls)
        _set(public, "algorithm", algorithm)
        _set(public, "key", key)
        return public

    @classmethod
    def _loaded_when_read(cls, algorithm: KeyAlgorithm, spki: bytes) -> PublicKey:
        public = cls.__new__(cls)
        _set(public, "algorithm", algorithm)
        _set(public, "spki", spki)
        return public

    if not TYPE_CHECKING:  # hidden from mypy, which would allow any attribute otherwise

        def __getattr__(self, name):
            # Only for a slot never set: the `spki` of a key made by _encoded_when_read,
            # the `key` of one made by _loaded_when_read.
            if name == "spki":
                value = _encode_spki(self.key)
            elif name == "key":
                value = _load_der(self.spki)
            else:
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            _set(self, name, value)
            return value

    @property
    def fingerprint(self) -> str:
        """sha256 of the SubjectPublicKeyInfo: what `cosign public-key | sha256sum` pins."""
        import hashlib  # here: loading a policy (every `imageward check`) needs no hashlib

        return "sha256:" + hashlib.sha256(self.spki).hexdigest()

    def __str__(self) -> str:
        return f"{self.algorithm} key {model.short(self.fingerprint)}"


def parse_public_key(pem: str | bytes, *, authority: str) -> PublicKey:
    """Parse a PEM public key (`cosign.pub`), or raise `AuthorityError` saying why not."""
    data = pem.encode("utf-8", "replace") if isinstance(pem, str) else pem
    text = data.decode("utf-8", "replace")
    if "PRIVATE KEY-----" in text:
        # Someone pasted cosign.key: say so, loudly, and never echo the bytes.
        raise model.AuthorityError(
            authority, "this PEM holds a PRIVATE key; give the public key (cosign.pub)"
        )
    if "-----BEGIN CERTIFICATE-----" in text:
        raise model.AuthorityError(
            authority, "this PEM holds a certificate, not a public key; use a keyless authority"
        )
    if "-----BEGIN" not in text:
        raise model.AuthorityError(authority, "not a PEM public key (no -----BEGIN line)")
    spki = _p256_spki(data.strip())
    if spki is not None:
        return PublicKey._loaded_when_read("ecdsa-p256", spki)
    from cryptography import exceptions as crypto_exceptions

    try:
        loaded = _key_loader("load_pem_public_key")(data.strip())
    except crypto_exceptions.UnsupportedAlgorithm as e:
        raise model.AuthorityError(authority, f"unsupported key type: {e}") from e
    except ValueError as e:
        raise model.AuthorityError(authority, f"not a PEM public key: {e}") from e
    return from_crypto_key(loaded, authority=authority)


def load_der_public_key(der: bytes, *, authority: str) -> PublicKey:
    """A DER SubjectPublicKeyInfo, as trusted_root.json carries log keys."""
    from cryptography import exceptions as crypto_exceptions
    from cryptography.hazmat.primitives import serialization

    try:
        loaded = serialization.load_der_public_key(der)
    except crypto_exceptions.UnsupportedAlgorithm as e:
        raise model.AuthorityError(authority, f"unsupported key type: {e}") from e
    except ValueError as e:
        raise model.AuthorityError(authority, f"not a DER public key: {e}") from e
    return from_crypto_key(loaded, authority=authority)


def from_crypto_key(loaded: object, *, authority: str) -> PublicKey:
    """Wrap a `cryptography` public key, refusing types and sizes cosign does not sign with."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    algorithm: KeyAlgorithm
    if isinstance(loaded, ec.EllipticCurvePublicKey):
        curve = loaded.curve.name
        if curve not in _CURVE_NAMES:
            raise model.AuthorityError(
                authority, f"unsupported curve {curve} (use P-256, P-384 or P-521)"
            )
        algorithm = _CURVE_NAMES[curve]
        key: CryptoKey = loaded
    elif isinstance(loaded, rsa.RSAPublicKey):
        if loaded.key_size < MIN_RSA_BITS:
            raise model.AuthorityError(
                authority,
                f"RSA key of {loaded.key_size} bits is too small (at least {MIN_RSA_BITS})",
            )
        algorithm, key = "rsa", loaded
    elif isinstance(loaded, ed25519.Ed25519PublicKey):
        algorithm, key = "ed25519", loaded
    else:
        raise model.AuthorityError(
            authority,
            f"unsupported key type {type(loaded).__name__} (use ECDSA, RSA or Ed25519)",
        )
    return PublicKey._encoded_when_read(algorithm, key)


#: A P-256 SubjectPublicKeyInfo up to its point (id-ecPublicKey, prime256v1, a BIT
#: STRING of 66 bytes), and the curve: y^2 = x^3 - 3x + b over the integers mod p.
_P256_SPKI_PREFIX: Final = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")
_P256_P: Final = 2**256 - 2**224 + 2**192 + 2**96 - 1
_P256_B: Final = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
_PEM_HEADER: Final = b"-----BEGIN PUBLIC KEY-----"
_PEM_FOOTER: Final = b"-----END PUBLIC KEY-----"


def _p256_spki(data: bytes) -> bytes | None:
    """The SubjectPublicKeyInfo in `data` when `data` is exactly one P-256 public key in
    the layout cosign and OpenSSL write it (`cosign.pub`: two base64 lines of 64 and 60
    characters, the point uncompressed) and its point is on the curve; None otherwise.

    Such a key is one cryptography loads, as an `ecdsa-p256` key with this very DER
    encoding (an affine point on the curve is a valid P-256 public key: its cofactor is
    1); so it is known usable without importing cryptography. Anything else, however
    close, is left to cryptography (tests/unit/signatures/test_keys.py compares both).
    """
    lines = data.split(b"\n")
    if (
        len(lines) != 4
        or lines[0] != _PEM_HEADER
        or lines[3] != _PEM_FOOTER
        or len(lines[1]) != 64
        or len(lines[2]) != 60
    ):
        return None
    body = lines[1] + lines[2]
    try:
        der = binascii.a2b_base64(body, strict_mode=True)
    except binascii.Error:
        return None
    if binascii.b2a_base64(der, newline=False) != body:
        return None  # not the canonical spelling of these bytes
    if len(der) != 91 or not der.startswith(_P256_SPKI_PREFIX) or der[26] != 4:
        return None
    x, y = int.from_bytes(der[27:59], "big"), int.from_bytes(der[59:91], "big")
    p = _P256_P
    if x >= p or y >= p or (y * y - (x * x * x - 3 * x + _P256_B)) % p != 0:
        return None
    return der


def _load_der(spki: bytes) -> CryptoKey:
    """The cryptography key of a SubjectPublicKeyInfo `_p256_spki` accepted."""
    from cryptography.hazmat.primitives.asymmetric import ec

    loaded = _key_loader("load_der_public_key")(spki)
    assert isinstance(loaded, ec.EllipticCurvePublicKey)  # as _p256_spki guarantees
    return loaded


def _encode_spki(key: CryptoKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_loader(name: str) -> Callable[[bytes], Any]:
    """cryptography's `serialization.<name>` (`load_pem_public_key`,
    `load_der_public_key`), without importing the serialization package (its SSH, RSA
    and cipher modules cost a P-256 check more than the rest of cryptography): those
    functions *are* `rust_openssl.keys.<name>` (tests/unit/signatures/test_keys.py checks
    that they are the same objects), so every key gets the same verdict. Should a
    cryptography release move them, the package's."""
    try:
        from cryptography.hazmat.bindings._rust import openssl as rust_openssl

        loader: Callable[[bytes], Any] = getattr(rust_openssl.keys, name)
    except (ImportError, AttributeError):  # pragma: no cover (another cryptography)
        from cryptography.hazmat.primitives import serialization

        loader = getattr(serialization, name)
    return loader


def verify_signature(key: PublicKey, signature: bytes, data: bytes) -> bool:
    """Whether `signature` signs `data` with `key`, with the hashes cosign uses."""
    from cryptography import exceptions as crypto_exceptions
    from cryptography.hazmat.primitives.asymmetric import ec

    public = key.key
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            for algorithm in _curve_signatures()[public.curve.name]:
                try:
                    public.verify(signature, data, algorithm)
                except crypto_exceptions.InvalidSignature:
                    continue
                return True
            return False
        # Imported only for the keys that need them: RSA's modules cost a P-256
        # verification as much as the rest of cryptography.
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        if isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
            return True
        public.verify(signature, data)
        return True
    except crypto_exceptions.InvalidSignature:
        return False
