"""What `imageward check` imports: its start-up is part of every CI step that runs it.

Each case runs the CLI in a fresh interpreter (the worktree's code) and reports the
modules it loaded. No timings are asserted; what is asserted is what a user notices as
start-up time: a run that looks nothing up, and `check --help`, import neither asyncio
nor the checker and its stack, and a run that looks images up imports neither aiohttp
nor prometheus_client.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import yaml

import imageward

#: The code under test runs in the subprocesses too, wherever it was imported from.
OPERATOR = pathlib.Path(imageward.__file__).resolve().parent.parent

# Runs cli.main with the arguments given, then writes the names of the loaded modules
# to the file named by the first argument, whatever main did (exit, exception).
_WRAPPER = """
import json, sys
report, *argv = sys.argv[1:]
sys.argv = ["imageward", *argv]
try:
    from imageward import cli
    sys.exit(cli.main())
finally:
    with open(report, "w") as out:
        json.dump(sorted(sys.modules), out)
"""

#: What a run that looks nothing up must not load (each costs tens of milliseconds).
HEAVY = (
    "asyncio",
    "aiohttp",
    "ssl",
    "logging",
    "cryptography.x509",
    "prometheus_client",
    "kubernetes",
    "kopf",
    "sigstore",
    "imageward.checker",
    "imageward.imagesource",
    "imageward.metrics",
    "imageward.registry.client",
    "imageward.settings",
    "imageward.signatures.verify",
)

PEM = """-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE8nXRh950IZbRj8Ra/N9sbqOPZrfM
5/KAQN0/KjHcorm/J5yctVd7iEcnessRQjU917hmKO6JWVGHpDguIyakZA==
-----END PUBLIC KEY-----
"""


def _policy(tmp_path: pathlib.Path, images: list[str]) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "imageward.io/v1alpha1",
                "kind": "ImagePolicy",
                "metadata": {"name": "signed"},
                "spec": {
                    "match": {"images": images},
                    "pinDigest": True,
                    "rules": {
                        "signatures": {"authorities": [{"name": "release", "key": {"pem": PEM}}]}
                    },
                },
            }
        )
    )
    return str(path)


def _run(tmp_path: pathlib.Path, *argv: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    report = tmp_path / "modules.json"
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DOCKER_CONFIG", "XDG_RUNTIME_DIR")},
        "PYTHONPATH": str(OPERATOR),
        "HOME": str(tmp_path),
        "REGISTRY_AUTH_FILE": str(tmp_path / "no-auth.json"),
    }
    result = subprocess.run(
        [sys.executable, "-c", _WRAPPER, str(report), *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    return result, set(json.loads(report.read_text()))


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return [name for name in names if name in modules]


def test_an_image_no_policy_matches_is_allowed_without_the_checker(
    tmp_path: pathlib.Path,
) -> None:
    policy = _policy(tmp_path, ["**/bench/**"])
    result, modules = _run(tmp_path, "check", "--policy", policy, "example.invalid/app:1.0")
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        "ALLOW example.invalid/app:1.0\n",
        "",
    )
    assert _loaded(modules, HEAVY) == []
    # The policy was loaded for real (its key parsed), only nothing else was needed; a
    # policy file as yaml.safe_dump writes it is read without PyYAML (yamlsubset), and
    # what only other policies or lookups need is imported by the code that needs it.
    assert "imageward.signatures.keys" in modules
    assert _loaded(modules, ("yaml", "hashlib", "decimal", "datetime", "base64")) == []
    # Nor dataclasses (the classes on the way are records.Record), nor cryptography: the
    # key is P-256 as cosign writes it, known usable without it (keys._p256_spki).
    assert _loaded(modules, ("dataclasses", "cryptography")) == []
    # Nor pathlib (with urllib.parse and ipaddress): configpaths names files as it would.
    assert _loaded(modules, ("pathlib", "urllib.parse", "ipaddress")) == []
    # Nor shutil (with bz2 and lzma), which argparse imports for the terminal's width.
    assert _loaded(modules, ("shutil", "bz2", "lzma")) == []
    # Nor typing (with contextlib): the modules on the way import it for mypy only.
    assert _loaded(modules, ("typing", "contextlib")) == []
    # Nor argparse (with gettext, locale and warnings): `check` spelled the common way is
    # parsed by cli._parse_check (tests/unit/commands/test_check_argv.py).
    assert _loaded(modules, ("argparse", "gettext", "locale", "warnings", "importlib")) == []


def test_json_output_without_a_match_needs_no_checker_either(tmp_path: pathlib.Path) -> None:
    policy = _policy(tmp_path, ["**/bench/**"])
    result, modules = _run(
        tmp_path, "check", "--output", "json", "--policy", policy, "example.invalid/app:1.0"
    )
    assert result.returncode == 0
    assert json.loads(result.stdout) == {
        "images": [
            {
                "image": "example.invalid/app:1.0",
                "digest": None,
                "decision": "allow",
                "violations": [],
                "warnings": [],
                "attestations": [],
            }
        ]
    }
    assert _loaded(modules, HEAVY) == []


def test_check_help_imports_no_implementation(tmp_path: pathlib.Path) -> None:
    result, modules = _run(tmp_path, "check", "--help")
    assert result.returncode == 0 and "--policy FILE" in result.stdout
    assert _loaded(modules, (*HEAVY, "yaml", "pathlib", "imageward.policystore")) == []
    assert not [
        m
        for m in modules
        if m.startswith("imageward.commands.") and m != "imageward.commands.check"
    ]


def test_a_lookup_imports_neither_aiohttp_nor_prometheus_client(tmp_path: pathlib.Path) -> None:
    # Port 9 (discard) refuses at once: the lookup fails, and the image is denied.
    policy = _policy(tmp_path, ["127.0.0.1:9/**"])
    result, modules = _run(
        tmp_path,
        "check",
        "--policy",
        policy,
        "--insecure-registry",
        "127.0.0.1:9",
        "--deadline",
        "5",
        "127.0.0.1:9/bench/app:1.0",
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("DENY  127.0.0.1:9/bench/app:1.0\n      [lookup] ")
    assert "imageward.checker" in modules
    # Plain HTTP needs no TLS context; key authorities need no x509.
    assert (
        _loaded(
            modules, ("aiohttp", "prometheus_client", "kubernetes", "kopf", "cryptography.x509")
        )
        == []
    )
    # Nor dataclasses: the classes of the checker, the registry client and signature
    # verification are records.Record, whose methods cost nothing at import (a frozen
    # dataclass's cost a millisecond each, and they were forty). Nor multidict (with
    # platform): the one-shot transport has headers of its own (streams.Headers).
    assert _loaded(modules, ("dataclasses", "multidict", "platform")) == []
