"""Real `cosign` (built by `make tools`), driven offline against the local registries.

No transparency log or signing config is reachable here, so signing passes
`--tlog-upload=false --use-signing-config=false` and verification `--insecure-ignore-tlog`;
the signatures themselves are the ones cosign writes for real users.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess

from imageward.localcluster import tools

_PASSWORD = "imageward-test"


class CosignError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class KeyPair:
    private_key: pathlib.Path
    public_key: pathlib.Path

    @property
    def public_pem(self) -> str:
        return self.public_key.read_text()


class Cosign:
    """Runs cosign with its own HOME and TUF cache in `workdir`, never the user's."""

    def __init__(self, workdir: pathlib.Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self._env = dict(
            os.environ,
            HOME=str(workdir),
            TUF_ROOT=str(workdir / "tuf"),
            COSIGN_PASSWORD=_PASSWORD,
            DOCKER_CONFIG=str(workdir / "docker"),
        )

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(tools.find("cosign")), *args],
            capture_output=True,
            text=True,
            env=self._env,
            cwd=self.workdir,
            timeout=timeout,
            check=False,
        )
        return result

    def _checked(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = self.run(*args)
        if result.returncode != 0:
            raise CosignError(
                f"cosign {' '.join(args)} failed ({result.returncode}): {result.stderr}"
            )
        return result

    def generate_key_pair(self, name: str) -> KeyPair:
        prefix = self.workdir / name
        self._checked("generate-key-pair", f"--output-key-prefix={prefix}")
        return KeyPair(
            private_key=prefix.with_suffix(".key"), public_key=prefix.with_suffix(".pub")
        )

    def login(self, registry: str, username: str, password: str) -> None:
        """Store credentials for `registry` in this instance's own docker config."""
        self._checked("login", registry, "-u", username, "-p", password)

    def sign(self, image: str, key: KeyPair, *, legacy: bool = False) -> None:
        """Sign `image` (a digest reference): a Sigstore bundle, or the legacy `.sig` tag."""
        args = [
            "sign",
            "--key",
            str(key.private_key),
            "--tlog-upload=false",
            "--use-signing-config=false",
            "--allow-http-registry",
            "--allow-insecure-registry",
            "--yes",
        ]
        if legacy:
            args.append("--new-bundle-format=false")
        self._checked(*args, image)

    def attest(
        self,
        image: str,
        key: KeyPair,
        predicate: pathlib.Path,
        *,
        predicate_type: str,
        legacy: bool = False,
        certificate: pathlib.Path | None = None,
        certificate_chain: pathlib.Path | None = None,
    ) -> None:
        """`cosign attest` of `predicate` (a file) as `predicate_type` (cosign's names:
        vuln, spdxjson, cyclonedx, slsaprovenance1, slsaprovenance02, custom, or a URI):
        a Sigstore bundle referrer, or a layer of the legacy `.att` tag. With a
        certificate (and chain) the attestation carries it, as a keyless one does."""
        args = [
            "attest",
            "--key",
            str(key.private_key),
            "--predicate",
            str(predicate),
            "--type",
            predicate_type,
            "--tlog-upload=false",
            "--use-signing-config=false",
            "--allow-http-registry",
            "--allow-insecure-registry",
            "--yes",
        ]
        if legacy:
            args.append("--new-bundle-format=false")
        if certificate is not None:
            args += ["--certificate", str(certificate)]
        if certificate_chain is not None:
            args += ["--certificate-chain", str(certificate_chain)]
        self._checked(*args, image)

    def verify_attestation(
        self, image: str, key: KeyPair, *, predicate_type: str
    ) -> subprocess.CompletedProcess[str]:
        """`cosign verify-attestation --key`; the caller reads returncode and output."""
        return self.run(
            "verify-attestation",
            "--key",
            str(key.public_key),
            "--type",
            predicate_type,
            "--insecure-ignore-tlog=true",
            "--allow-http-registry",
            "--allow-insecure-registry",
            image,
        )

    def verify(self, image: str, key: KeyPair) -> subprocess.CompletedProcess[str]:
        """`cosign verify --key`; the caller reads returncode and output."""
        return self.run(
            "verify",
            "--key",
            str(key.public_key),
            "--insecure-ignore-tlog=true",
            "--allow-http-registry",
            "--allow-insecure-registry",
            image,
        )
