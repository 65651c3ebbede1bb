"""What `imageward check` prints and exits with, byte for byte, for policy files that
parse, that are not YAML, that break the schema, whose keys are unusable, and that match.

The expected outputs were recorded before `check` learned its fast start-up (the policy
model without dataclasses, ...): a start-up change must not change a byte of them.
Runs that look nothing up go through `cli.main` in this process; runs that look images
up run the CLI in a fresh interpreter (they set logging up). `check_outputs.json` holds
the recorded outputs; a change that means to change one records it again, by hand.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest
import yaml

import imageward
from imageward import cli

OPERATOR = pathlib.Path(imageward.__file__).resolve().parent.parent
#: name -> [exit status, stdout, stderr], as recorded.
EXPECTED: dict[str, list[Any]] = json.loads(
    pathlib.Path(__file__).with_name("check_outputs.json").read_text()
)

P256 = """-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE8nXRh950IZbRj8Ra/N9sbqOPZrfM
5/KAQN0/KjHcorm/J5yctVd7iEcnessRQjU917hmKO6JWVGHpDguIyakZA==
-----END PUBLIC KEY-----
"""
RSA1024 = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDPKNCZI27tt+cNNl2RFtr04/th\n"
    "TQ72WyGAUAZiAAVZVWrRVg4R6mYmPWXzPJkdf1PYxykj2Q6mTRENgKRJNJYa5B/G\n"
    "8bFaVoq8W+44gUZ4AnoZrN7jFLz6IShzbBmWMKzxx2XzkP2BFKJuCFno8Tqokcg6\n"
    "V+TFSz93AyRRqG+Q4wIDAQAB\n"
    "-----END PUBLIC KEY-----\n"
)
ED448 = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MEMwBQYDK2VxAzoA8/iXItgr6drSuSUJJy1iafSCqnqZE7vZJYx18T2NB5guoTKT\n"
    "hIod1f334mOGJ2FdOBu1paUQlBKA\n"
    "-----END PUBLIC KEY-----\n"
)
P192 = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MEkwEwYHKoZIzj0CAQYIKoZIzj0DAQEDMgAEFFv2wz4vFOmoZKiqAtqkLdaAKP3d\n"
    "Ys9Xvx6jMmEUts83HGpqun+2aQG6K7bMWs+i\n"
    "-----END PUBLIC KEY-----\n"
)
ED25519 = """-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEA6W0sjbj2TcImMTuqkLQpNSailoHHB9asVHu0NwL9afw=
-----END PUBLIC KEY-----
"""


def _policy(
    name: str = "bench-cli",
    images: list[str] | None = None,
    authorities: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A policy as bench/peers_bench.py writes it (peers.build_imagepolicy)."""
    if authorities is None:
        authorities = [{"name": "release", "key": {"pem": P256}}]
    return {
        "apiVersion": "imageward.io/v1alpha1",
        "kind": "ImagePolicy",
        "metadata": {"name": name},
        "spec": {
            "match": {"images": images or ["**/bench/**"]},
            "rules": {"signatures": {"authorities": authorities}},
            "pinDigest": True,
            **spec,
        },
    }


def _raw(spec: str, *, match: bool = True) -> str:
    """A policy whose `spec` is YAML text as given (matching `**/bench/**` unless it says
    otherwise: nothing here may look an image up)."""
    return (
        "apiVersion: imageward.io/v1alpha1\nkind: ImagePolicy\nmetadata:\n  name: raw\n"
        "spec:\n" + ("  match: {images: ['**/bench/**']}\n" if match else "") + spec
    )


def _key(pem: str, name: str = "release") -> dict[str, Any]:
    return {"name": name, "key": {"pem": pem}}


HAND_WRITTEN = """\
# A policy as a person writes it: comments, a literal block, flow lists, quotes.
apiVersion: imageward.io/v1alpha1
kind: ImagePolicy
metadata:
  name: "hand-written"
  labels: {team: platform, tier: '1'}
spec:
  mode: Warn
  failurePolicy: Ignore
  match:
    images: ["ghcr.io/acme/**", 'registry.example.com/*/app']
    excludeImages:
      - ghcr.io/acme/sandbox/**
    namespaceSelector:
      matchLabels: {env: production}
  rules:
    allowedRegistries: [ghcr.io, registry.example.com]
    forbiddenTags: ["latest"]
    maxCompressedSize: 200Mi
    maxLayers: 40
    forbidRootUser: yes
    signatures:
      threshold: 1
      authorities:
        - name: release
          key:
            pem: |
              -----BEGIN PUBLIC KEY-----
              MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE8nXRh950IZbRj8Ra/N9sbqOPZrfM
              5/KAQN0/KjHcorm/J5yctVd7iEcnessRQjU917hmKO6JWVGHpDguIyakZA==
              -----END PUBLIC KEY-----
---
---
apiVersion: imageward.io/v1alpha1
kind: ImagePolicy
metadata: {name: second}
spec: {match: {images: ["docker.io/library/*"]}, rules: {requireDigest: true}}
...
"""

#: name -> (policy files, extra arguments before the images, images)
Case = tuple[dict[str, str], list[str], list[str]]
NOMATCH = ["example.invalid/elsewhere/app:1.0"]


def _dump(*documents: object) -> str:
    return yaml.safe_dump_all(documents)


CASES: dict[str, Case] = {
    # Usable policies that match nothing: allowed, nothing looked up.
    "valid": ({"p.yaml": _dump(_policy())}, [], NOMATCH),
    "valid-json": ({"p.yaml": _dump(_policy())}, ["--output", "json"], NOMATCH),
    "valid-images": (
        {"p.yaml": _dump(_policy())},
        [],
        [*NOMATCH, "example.invalid/x@sha256:" + "a" * 64, NOMATCH[0], "busybox"],
    ),
    "valid-json-digest": (
        {"p.yaml": _dump(_policy())},
        ["--output", "json"],
        ["example.invalid/x:1@sha256:" + "b" * 64],
    ),
    "valid-two-files": (
        {"p.yaml": _dump(_policy()), "q.yaml": _dump(_policy("other", ["ghcr.io/**"]))},
        [],
        NOMATCH,
    ),
    "valid-hand-written": ({"p.yaml": HAND_WRITTEN}, [], NOMATCH),
    "valid-flow": ({"p.yaml": yaml.safe_dump(_policy(), default_flow_style=True)}, [], NOMATCH),
    "valid-ed25519": ({"p.yaml": _dump(_policy(authorities=[_key(ED25519)]))}, [], NOMATCH),
    "valid-unicode": (
        {"p.yaml": _dump(_policy(images=["**/bench/**"], mode="Audit")) + "# é ☃ 𝄞\n"},
        [],
        NOMATCH,
    ),
    "valid-merge": (
        {
            "p.yaml": "x-match: &m {images: ['**/bench/**']}\n"
            + _raw("  match: {<<: *m}\n", match=False)
        },
        [],
        NOMATCH,
    ),
    "valid-empty-file": ({"p.yaml": ""}, [], NOMATCH),
    # Not YAML (libyaml refuses, then PyYAML says why).
    "yaml-flow-unclosed": ({"p.yaml": "apiVersion: [1, 2\n"}, [], NOMATCH),
    "yaml-bad-indent": ({"p.yaml": "a:\n  b: 1\n c: 2\n"}, [], NOMATCH),
    "yaml-tab": ({"p.yaml": "a:\n\tb: 1\n"}, [], NOMATCH),
    "yaml-python-tag": ({"p.yaml": "!!python/object/apply:os.system [true]\n"}, [], NOMATCH),
    "yaml-undefined-alias": ({"p.yaml": "a: *nowhere\n"}, [], NOMATCH),
    "yaml-version": ({"p.yaml": "%YAML 2.0\n---\na: 1\n"}, [], NOMATCH),
    "yaml-bad-escape": ({"p.yaml": 'a: "\\q"\n'}, [], NOMATCH),
    "yaml-control-character": ({"p.yaml": "a: b\x07c\n"}, [], NOMATCH),
    "yaml-second-document": ({"p.yaml": _dump(_policy()) + "---\n: : :\n  - [\n"}, [], NOMATCH),
    # YAML 1.1 as PyYAML's safe loader reads it: each value as it types it.
    "yaml-types": (
        {
            "p.yaml": _raw(
                "  pinDigest: [1e3, 1.5e+3, .inf, -.NaN, 0b11, 0o7, 017, 0x1F, 1_0, +1, -0,\n"
                "    1:30, 2001-12-14, 2001-12-14t21:59:43.10-05:00, ~, null, yes, No, off,\n"
                "    'on', \"y\", n, !!str 3, !!int '4', !!binary aGk=, ? a, {b: c}]\n"
            )
        },
        [],
        NOMATCH,
    ),
    "yaml-merge-and-anchors": (
        {
            "p.yaml": "x-match: &m {images: ['**/bench/**']}\n"
            + _raw("  mode: &e Warn\n  match: {<<: *m, excludeImages: [*e]}\n", match=False)
        },
        [],
        NOMATCH,
    ),
    "yaml-anchors": (
        {
            "p.yaml": "x-match: &m {images: ['**/bench/**']}\n"
            + _raw("  match: *m\n  rules: {maxLayers: &n 3, forbiddenTags: [*n]}\n", match=False)
        },
        [],
        NOMATCH,
    ),
    "yaml-value-tag": ({"p.yaml": _raw("  mode: =\n")}, [], NOMATCH),
    "yaml-duplicate-key": ({"p.yaml": _raw("  mode: Warn\n  mode: Blah\n")}, [], NOMATCH),
    "yaml-multiline-scalars": (
        {
            "p.yaml": _raw(
                match=False,
                spec="  match:\n    images:\n      - >-\n        **/bench/**\n"
                "  mode: 'Wa\n\n    rn'\n  failurePolicy: \"Ig\\\n    nore\"\n"
                "  pinDigest: |+\n    x\n\n",
            )
        },
        [],
        NOMATCH,
    ),
    "yaml-crlf-bom": (
        {"p.yaml": "\ufeff" + _dump(_policy()).replace("\n", "\r\n")},
        [],
        NOMATCH,
    ),
    # YAML, but not ImagePolicies.
    "not-a-policy": ({"p.yaml": _dump({"apiVersion": "v1", "kind": "Pod"})}, [], NOMATCH),
    "a-list": ({"p.yaml": "- a\n- b\n"}, [], NOMATCH),
    "a-string": ({"p.yaml": "hello\n"}, [], NOMATCH),
    "wrong-api-version": (
        {"p.yaml": _dump({**_policy(), "apiVersion": "imageward.io/v1"})},
        [],
        NOMATCH,
    ),
    "no-such-file": ({}, ["--policy", "missing.yaml"], NOMATCH),
    "policy-path-spellings": (
        {"p.yaml": _dump(_policy())},
        ["--policy", "./p.yaml/", "--policy", ".//p.yaml"],
        NOMATCH,
    ),
    "policy-is-a-directory": ({}, ["--policy", "."], NOMATCH),
    "docker-config-missing": (
        {"p.yaml": _dump(_policy())},
        ["--docker-config", "missing.json"],
        NOMATCH,
    ),
    "docker-config-a-directory": (
        {"p.yaml": _dump(_policy())},
        ["--docker-config", "."],
        NOMATCH,
    ),
    "docker-config-not-json": (
        {"p.yaml": _dump(_policy()), "config.json": "{nope"},
        ["--docker-config", "./config.json/"],
        NOMATCH,
    ),
    "docker-config-given": (
        {"p.yaml": _dump(_policy()), "config.json": '{"auths": {}}'},
        ["--docker-config", "config.json"],
        NOMATCH,
    ),
    # ImagePolicies the schema refuses: unusable, exit 2.
    "schema-typo": ({"p.yaml": _dump(_policy(maxCompresedSize="1Gi"))}, [], NOMATCH),
    "schema-bad-pattern": ({"p.yaml": _dump(_policy(images=["ghcr.io/[x"]))}, [], NOMATCH),
    "schema-bad-name": ({"p.yaml": _dump(_policy(name="Bad_Name"))}, [], NOMATCH),
    "schema-bad-mode": ({"p.yaml": _dump(_policy(mode="Block"))}, [], NOMATCH),
    "schema-threshold": (
        {
            "p.yaml": _dump(
                _policy(rules={"signatures": {"threshold": 2, "authorities": [_key(P256)]}})
            )
        },
        [],
        NOMATCH,
    ),
    "schema-second-of-two": (
        {"p.yaml": _dump(_policy("fine"), _policy("broken", mode="Block"))},
        [],
        NOMATCH,
    ),
    # Keys that cannot be used: unusable, exit 2, even though nothing matches.
    "key-private": (
        {"p.yaml": _dump(_policy(authorities=[_key(P256.replace("PUBLIC", "PRIVATE"))]))},
        [],
        NOMATCH,
    ),
    "key-certificate": (
        {"p.yaml": _dump(_policy(authorities=[_key(P256.replace("PUBLIC KEY", "CERTIFICATE"))]))},
        [],
        NOMATCH,
    ),
    "key-garbage": (
        {"p.yaml": _dump(_policy(authorities=[_key(P256.replace("MFkw", "MFkx"))]))},
        [],
        NOMATCH,
    ),
    "key-not-base64": (
        {"p.yaml": _dump(_policy(authorities=[_key(P256.replace("MFkw", "MF!w"))]))},
        [],
        NOMATCH,
    ),
    "key-rsa-1024": ({"p.yaml": _dump(_policy(authorities=[_key(RSA1024)]))}, [], NOMATCH),
    "key-ed448": ({"p.yaml": _dump(_policy(authorities=[_key(ED448)]))}, [], NOMATCH),
    "key-p192": ({"p.yaml": _dump(_policy(authorities=[_key(P192)]))}, [], NOMATCH),
    "key-folded": (
        {
            "p.yaml": _raw(
                "  rules:\n    signatures:\n      authorities:\n        - name: f\n"
                "          key:\n            pem: >\n"
                + "".join(f"              {line}\n" for line in P256.splitlines())
            )
        },
        [],
        NOMATCH,
    ),
    "key-crlf": (
        {"p.yaml": _dump(_policy(authorities=[_key(P256.replace("\n", "\r\n"))]))},
        [],
        NOMATCH,
    ),
    "key-twice": (
        {"p.yaml": _dump(_policy(authorities=[_key(P256, "a"), _key(P256 + "\n", "b")]))},
        [],
        NOMATCH,
    ),
    "key-from-secret": (
        {
            "p.yaml": _dump(
                _policy(
                    authorities=[
                        {"name": "s", "key": {"secretRef": {"namespace": "ns", "name": "k"}}}
                    ]
                )
            )
        },
        [],
        NOMATCH,
    ),
    "key-two-unusable-files": (
        {
            "p.yaml": _dump(_policy("one", authorities=[_key(RSA1024)])),
            "q.yaml": _dump(_policy("two", rules={"maxLayers": 0})),
        },
        [],
        NOMATCH,
    ),
}

#: Runs that look images up (an unreachable registry: refused at once) and a reference
#: that is not one (the checker says why).
LOOKUP_CASES: dict[str, Case] = {
    "match-unreachable": (
        {"p.yaml": _dump(_policy(images=["127.0.0.1:9/**"]))},
        ["--insecure-registry", "127.0.0.1:9", "--deadline", "5"],
        ["127.0.0.1:9/bench/app:1.0", "example.invalid/x:1"],
    ),
    "match-unreachable-json": (
        {"p.yaml": _dump(_policy(images=["127.0.0.1:9/**"]))},
        ["--insecure-registry", "127.0.0.1:9", "--deadline", "5", "--output", "json"],
        ["127.0.0.1:9/bench/app:1.0"],
    ),
    "invalid-reference": ({"p.yaml": _dump(_policy())}, [], ["BAD REF", *NOMATCH]),
}


def _argv(tmp_path: pathlib.Path, case: Case) -> list[str]:
    files, extra, images = case
    for name, text in files.items():
        (tmp_path / name).write_bytes(text.encode("utf-8", "surrogateescape"))
    policies = [arg for name in files if name.endswith(".yaml") for arg in ("--policy", name)]
    return ["check", *policies, *extra, *images]


def run_in_process(
    tmp_path: pathlib.Path, case: Case, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    argv = _argv(tmp_path, case)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code = cli.main(argv)
    finally:
        os.chdir(cwd)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_in_subprocess(tmp_path: pathlib.Path, case: Case) -> tuple[int, str, str]:
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DOCKER_CONFIG", "XDG_RUNTIME_DIR")},
        "PYTHONPATH": str(OPERATOR),
        "HOME": str(tmp_path),
        "REGISTRY_AUTH_FILE": str(tmp_path / "no-auth.json"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "imageward", *_argv(tmp_path, case)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    return result.returncode, result.stdout, result.stderr


def test_every_case_has_its_recorded_output() -> None:
    assert sorted(EXPECTED) == sorted([*CASES, *LOOKUP_CASES])


@pytest.mark.parametrize("name", list(CASES))
def test_output_without_lookups(
    name: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert list(run_in_process(tmp_path, CASES[name], capsys)) == EXPECTED[name]


@pytest.mark.parametrize("name", list(LOOKUP_CASES))
def test_output_with_lookups(name: str, tmp_path: pathlib.Path) -> None:
    assert list(run_in_subprocess(tmp_path, LOOKUP_CASES[name])) == EXPECTED[name]


def test_a_policy_file_not_in_utf8_is_refused_with_where(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: a UnicodeDecodeError traceback (the file read in the locale's encoding).
    latin1 = "a: caf\udce9\n"  # "café" in Latin-1: 0xe9 is no UTF-8 sequence
    code, out, err = run_in_process(tmp_path, ({"p.yaml": latin1}, [], NOMATCH), capsys)
    assert (code, out) == (2, "")
    assert err == "imageward check: --policy p.yaml: not UTF-8 text: byte 0xe9 at offset 6\n"
