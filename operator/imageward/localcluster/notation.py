"""Real `notation` (the Notary Project CLI, built by `make tools`), driven offline.

Each `Notation` has its own configuration directory (`XDG_CONFIG_HOME`): signing keys
(`signingkeys.json`, local key and certificate-chain files), trust stores
(`truststore/x509/{ca,signingAuthority,tsa}/<name>/`) and one trust policy
(`trustpolicy.json`), so a test can give `notation verify` exactly the trust an
ImagePolicy authority has and compare the two verdicts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from imageward.localcluster import tools


class NotationError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class SigningKey:
    """A key notation signs with: a PKCS#8 PEM key and its chain (leaf first, root last)."""

    name: str
    key: pathlib.Path
    chain: pathlib.Path


class Notation:
    def __init__(self, workdir: pathlib.Path) -> None:
        self.workdir = workdir
        self.config = workdir / "notation"
        self.config.mkdir(parents=True, exist_ok=True)
        self._env = dict(
            os.environ,
            HOME=str(workdir),
            XDG_CONFIG_HOME=str(workdir),
            NOTATION_EXPERIMENTAL="0",
        )

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(tools.find("notation")), *args],
            capture_output=True,
            text=True,
            env=self._env,
            cwd=self.workdir,
            timeout=timeout,
            check=False,
        )

    def _checked(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = self.run(*args)
        if result.returncode != 0:
            raise NotationError(
                f"notation {' '.join(args)} failed ({result.returncode}): {result.stderr}"
            )
        return result

    def add_key(self, key: SigningKey) -> None:
        """Register a local signing key (what `notation key add` does for plugin keys)."""
        path = self.config / "signingkeys.json"
        document: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"keys": []}
        document["keys"] = [k for k in document["keys"] if k.get("name") != key.name]
        document["keys"].append(
            {"name": key.name, "keyPath": str(key.key), "certPath": str(key.chain)}
        )
        path.write_text(json.dumps(document, indent=2))

    def generate_test(self, name: str) -> SigningKey:
        """`notation cert generate-test`: a self-signed RSA signing certificate and key."""
        self._checked("cert", "generate-test", name)
        keys = self.config / "localkeys"
        return SigningKey(name, keys / f"{name}.key", keys / f"{name}.crt")

    def sign(
        self,
        image: str,
        key: SigningKey,
        *,
        envelope: str = "jws",
        referrers_api: bool = False,
        extra: Sequence[str] = (),
    ) -> None:
        """Sign `image` (a digest reference) with `key`: a JWS or COSE envelope, stored
        through the referrers API (`referrers_api`) or the referrers tag schema."""
        self.add_key(key)
        self._checked(
            "sign",
            "--insecure-registry",
            "--key",
            key.name,
            "--signature-format",
            envelope,
            f"--force-referrers-tag={'false' if referrers_api else 'true'}",
            *extra,
            image,
        )

    def trust(
        self,
        stores: dict[str, Sequence[bytes]],
        *,
        identities: Sequence[str] = ("*",),
        level: str = "strict",
        override: dict[str, str] | None = None,
        verify_timestamp: str | None = None,
    ) -> None:
        """Replace the trust stores and trust policy: `stores` maps `ca:name`,
        `signingAuthority:name` or `tsa:name` to PEM certificates."""
        root = self.config / "truststore" / "x509"
        shutil.rmtree(root, ignore_errors=True)
        for store, certificates in stores.items():
            kind, _, name = store.partition(":")
            directory = root / kind / name
            directory.mkdir(parents=True, exist_ok=True)
            for index, pem in enumerate(certificates):
                (directory / f"cert{index}.pem").write_bytes(pem)
        verification: dict[str, Any] = {"level": level}
        if override:
            verification["override"] = override
        if verify_timestamp:
            verification["verifyTimestamp"] = verify_timestamp
        policy = {
            "version": "1.0",
            "trustPolicies": [
                {
                    "name": "imageward-test",
                    "registryScopes": ["*"],
                    "signatureVerification": verification,
                    "trustStores": list(stores),
                    "trustedIdentities": list(identities),
                }
            ],
        }
        (self.config / "trustpolicy.json").write_text(json.dumps(policy, indent=2))

    def verify(self, image: str) -> subprocess.CompletedProcess[str]:
        """`notation verify` with the current trust; the caller reads returncode/output."""
        return self.run("verify", "--insecure-registry", image)
