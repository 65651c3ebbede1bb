"""Pull credentials sealed for the node agent: AES-256-GCM under one key the operator
keeps in a Secret of its namespace, which the agent's pods mount as a file.

Why not a Secret per plan: Kubernetes RBAC cannot limit reading Secrets by label, so an
agent allowed to read its plans' Secrets could read every Secret of the operator's
namespace (the webhook's CA and serving key, the operator's own registry credentials).
Sealed into the plan ConfigMap, a PrePull's credentials need no API right at all on the
agent's side: its ServiceAccount reads ConfigMaps, never Secrets, and the key reaches it
only as a volume of its own pods.

The sealed text names the key (its first 8 bytes of SHA-256, never the key) so an agent
holding another key says so, and binds the plan's identity as associated data: a sealed
value moved into another PrePull's plan does not open.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from imageward import errors

KEY_BYTES = 32
NONCE_BYTES = 12
FORMAT = "iw1"
#: Most plaintext sealed at once (a few pull secrets' worth of docker config).
MAX_PLAINTEXT = 256 * 1024


class SealError(errors.ImagewardError):
    """Sealed text that cannot be opened (wrong key, altered, another plan's)."""


def build_key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


def generate_key() -> bytes:
    return os.urandom(KEY_BYTES)


def parse_key(data: bytes, *, source: str) -> bytes:
    """A key as stored: 32 raw bytes, or their base64 (a file written by hand)."""
    if len(data) == KEY_BYTES:
        return data
    try:
        decoded = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) != KEY_BYTES:
        raise SealError(f"{source}: not a {KEY_BYTES}-byte key (raw or base64)")
    return decoded


def seal(key: bytes, plaintext: bytes, *, context: str, nonce: bytes | None = None) -> str:
    """`iw1.<key id>.<nonce>.<ciphertext>` (base64url); `context` must match on unseal."""
    if len(plaintext) > MAX_PLAINTEXT:
        raise SealError(f"{len(plaintext)} bytes to seal, over the {MAX_PLAINTEXT}-byte cap")
    nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, plaintext, context.encode())
    return ".".join(
        (FORMAT, build_key_id(key), _b64(nonce), _b64(sealed)),
    )


def evaluate_key_id(text: str) -> str | None:
    """The key id a sealed text names, or None when it is not sealed text."""
    parts = text.split(".")
    return parts[1] if len(parts) == 4 and parts[0] == FORMAT else None


def unseal(key: bytes, text: str, *, context: str) -> bytes:
    parts = text.strip().split(".")
    if len(parts) != 4 or parts[0] != FORMAT:
        raise SealError(f"not sealed credentials (expected {FORMAT}.<key>.<nonce>.<data>)")
    _, key_id, nonce_text, data_text = parts
    if key_id != build_key_id(key):
        raise SealError(
            f"sealed with key {key_id}, but this key is {build_key_id(key)} "
            "(the key Secret was replaced: the operator seals again at its next refresh)"
        )
    try:
        nonce, data = _unb64(nonce_text), _unb64(data_text)
    except (binascii.Error, ValueError) as e:
        raise SealError(f"sealed credentials are not base64url: {e}") from e
    if len(nonce) != NONCE_BYTES or len(data) > MAX_PLAINTEXT + 16:
        raise SealError("sealed credentials have a bad nonce or are over the size cap")
    try:
        return AESGCM(key).decrypt(nonce, data, context.encode())
    except InvalidTag as e:
        raise SealError(f"sealed credentials do not open for {context} (altered or moved)") from e


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
