"""`imageward check` as a CI pipeline runs it: a subprocess against the real registries
(anonymous, htpasswd), images signed by real cosign. No cluster is involved; the tests
are marked `cluster` because they need the registries of the local harness.

Contract (product.md): exit 0 when no image is denied, 1 when one is, 2 for usage
errors and unusable policies; `--output json` prints exactly
`{"images": [{"image", "digest", "decision", "violations": [{"policy", "rule",
"message"}], "warnings"}]}`.
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

from imageward.localcluster import cosign, images, registries
from tests.cluster import helpers

pytestmark = pytest.mark.cluster

IMAGE_KEYS = {"image", "digest", "decision", "violations", "warnings", "attestations"}
ATTESTATION_KEYS = {"policy", "name", "result", "message"}
VIOLATION_KEYS = {"policy", "rule", "message"}


class Check:
    """Runs `imageward check` with its own HOME, so no developer credentials leak in."""

    def __init__(self, workdir: pathlib.Path, registry_set: registries.Registries) -> None:
        self.workdir = workdir
        self.insecure = [f"--insecure-registry={r.host}" for r in registry_set]
        self.env = {
            **{
                k: v for k, v in os.environ.items() if k not in ("DOCKER_CONFIG", "XDG_RUNTIME_DIR")
            },
            "HOME": str(workdir),
            "REGISTRY_AUTH_FILE": str(workdir / "no-auth.json"),
        }

    def policy_file(self, *documents: dict[str, Any]) -> str:
        path = self.workdir / f"policy-{helpers.uid()}.yaml"
        path.write_text(yaml.safe_dump_all(documents))
        return str(path)

    def run(self, *args: str, insecure: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "imageward", "check", *(self.insecure if insecure else ())]
        return subprocess.run(
            [*argv, *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.workdir,
            timeout=120,
            check=False,
        )

    def json(self, *args: str, insecure: bool = True) -> tuple[int, dict[str, Any]]:
        result = self.run("--output=json", *args, insecure=insecure)
        assert "Traceback" not in result.stderr, result.stderr
        assert result.returncode in (0, 1), result.stderr
        report: dict[str, Any] = json.loads(result.stdout)
        _assert_contract(report)
        return result.returncode, report


def _assert_contract(report: dict[str, Any]) -> None:
    assert set(report) == {"images"}
    for image in report["images"]:
        assert set(image) == IMAGE_KEYS, image
        assert isinstance(image["image"], str)
        assert image["digest"] is None or image["digest"].startswith("sha256:")
        assert image["decision"] in ("allow", "deny", "warn")
        assert all(isinstance(w, str) for w in image["warnings"])
        for attestation in image["attestations"]:
            assert set(attestation) == ATTESTATION_KEYS, attestation
            assert attestation["result"] in ("pass", "fail", "error")
        for violation in image["violations"]:
            assert set(violation) == VIOLATION_KEYS, violation
            assert all(isinstance(v, str) for v in violation.values())


def _policy(name: str, images_: list[str], rules: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "imageward.io/v1alpha1",
        "kind": "ImagePolicy",
        "metadata": {"name": name},
        "spec": {"match": {"images": images_}, "rules": rules, **spec},
    }


@pytest.fixture
def check(tmp_path: pathlib.Path, registry_set: registries.Registries) -> Check:
    return Check(tmp_path, registry_set)


@pytest.fixture
def prefix() -> str:
    return f"cli{helpers.uid()}"


# -- decisions and exit statuses ---------------------------------------------------------


def test_allow_deny_and_warn_with_the_json_contract(
    check: Check, anonymous: registries.Registry, prefix: str
) -> None:
    small, small_digest = helpers.push(anonymous, images.nonroot_image(prefix), prefix=prefix)
    many, many_digest = helpers.push(
        anonymous, images.many_layer_image(f"{prefix}-many", count=8), prefix=prefix
    )
    policy = check.policy_file(
        _policy("layers", [f"{anonymous.host}/{prefix}/**"], {"maxLayers": 5})
    )

    status, report = check.json("--policy", policy, small)
    assert status == 0
    assert report == {
        "images": [
            {
                "image": small,
                "digest": small_digest,
                "decision": "allow",
                "violations": [],
                "warnings": [],
                "attestations": [],
            }
        ]
    }

    status, report = check.json("--policy", policy, small, many)
    assert status == 1
    allowed, denied = report["images"]
    assert (allowed["image"], allowed["decision"]) == (small, "allow")
    assert denied == {
        "image": many,
        "digest": many_digest,
        "decision": "deny",
        "violations": [
            {
                "policy": "layers",
                "rule": "maxLayers",
                "message": f"ImagePolicy layers: {many} (sha256:{many_digest[7:19]}…) "
                "has 8 layers, over maxLayers 5",
            }
        ],
        "warnings": [],
        "attestations": [],
    }

    warn = check.policy_file(
        _policy("layers-warn", [f"{anonymous.host}/{prefix}/**"], {"maxLayers": 5}, mode="Warn")
    )
    status, report = check.json("--policy", warn, many)
    assert status == 0
    (warned,) = report["images"]
    assert warned["decision"] == "warn"
    assert warned["violations"] == []
    assert [w for w in warned["warnings"] if "has 8 layers, over maxLayers 5" in w]


def test_image_no_policy_matches_is_allowed_without_a_lookup(
    check: Check, anonymous: registries.Registry, prefix: str
) -> None:
    policy = check.policy_file(_policy("elsewhere", ["ghcr.io/acme/**"], {"maxLayers": 1}))
    status, report = check.json("--policy", policy, f"{anonymous.host}/{prefix}/missing:1.0")
    assert status == 0
    assert report["images"][0]["decision"] == "allow"
    assert report["images"][0]["digest"] is None  # nothing was fetched


def test_text_output_is_readable(check: Check, anonymous: registries.Registry, prefix: str) -> None:
    small, small_digest = helpers.push(anonymous, images.nonroot_image(prefix), prefix=prefix)
    root, root_digest = helpers.push(anonymous, images.root_image(f"{prefix}-root"), prefix=prefix)
    policy = check.policy_file(
        _policy("hardened", [f"{anonymous.host}/{prefix}/**"], {"forbidRootUser": True})
    )
    result = check.run("--policy", policy, small, root)
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [
        f"ALLOW {small} ({small_digest})",
        f"DENY  {root} ({root_digest})",
        f"      [forbidRootUser] ImagePolicy hardened: {root} (sha256:{root_digest[7:19]}…) "
        'runs as root (config User "root"), forbidden by forbidRootUser',
    ]


# -- usage errors ---------------------------------------------------------------------------


def test_usage_errors_exit_2_with_a_message(check: Check, anonymous: registries.Registry) -> None:
    image = f"{anonymous.host}/any/thing:1.0"
    good = check.policy_file(_policy("ok", ["**"], {"maxLayers": 5}))
    cases: list[tuple[list[str], str]] = [
        (
            ["--policy", "does-not-exist.yaml", image],
            "imageward check: --policy does-not-exist.yaml: No such file or directory",
        ),
        (
            [
                "--policy",
                check.policy_file(
                    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
                ),
                image,
            ],
            "document 1 is 'ConfigMap', not an ImagePolicy",
        ),
        (
            [
                "--policy",
                check.policy_file(
                    _policy(
                        "broken-key",
                        ["**"],
                        {"signatures": {"authorities": [{"name": "k", "key": {"pem": "x"}}]}},
                    )
                ),
                image,
            ],
            "imageward check: ImagePolicy broken-key: "
            "spec.rules.signatures.authorities[0].key.pem: is not PEM text",
        ),
        (
            [
                "--policy",
                check.policy_file(
                    _policy(
                        "needs-cluster",
                        ["**"],
                        {
                            "signatures": {
                                "authorities": [
                                    {
                                        "name": "k",
                                        "key": {"secretRef": {"namespace": "n", "name": "s"}},
                                    }
                                ]
                            }
                        },
                    )
                ),
                image,
            ],
            "Secret n/s key cosign.pub cannot be read here (no cluster)",
        ),
        (
            ["--policy", good, "--platform", "linux", image],
            "imageward check: --platform 'linux': expected OS/ARCH or OS/ARCH/VARIANT",
        ),
        (["--policy", good, "--output", "yaml", image], "invalid choice: 'yaml'"),
        (["--policy", good], "the following arguments are required: IMAGE"),
    ]
    for args, message in cases:
        result = check.run(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stdout == ""


# -- platforms, credentials, transport ---------------------------------------------------------


def test_platform_selects_the_manifest_of_a_multi_arch_index(
    check: Check, anonymous: registries.Registry, prefix: str
) -> None:
    amd = images.small_image(f"{prefix}-amd", platform=images.LINUX_AMD64, user="65532")
    arm = images.small_image(f"{prefix}-arm", platform=images.LINUX_ARM64, user="root")
    index = images.build_index([amd, arm], attestations=True)
    image, index_digest = helpers.push(anonymous, index, prefix=prefix)
    policy = check.policy_file(
        _policy("hardened", [f"{anonymous.host}/{prefix}/**"], {"forbidRootUser": True})
    )

    status, report = check.json("--policy", policy, "--platform", "linux/amd64", image)
    assert status == 0 and report["images"][0]["digest"] == index_digest
    status, report = check.json("--policy", policy, "--platform", "linux/arm64", image)
    assert status == 1
    (violation,) = report["images"][0]["violations"]
    assert violation["rule"] == "forbidRootUser" and "linux/arm64" in violation["message"]
    # Without --platform every linux platform must pass.
    status, report = check.json("--policy", policy, image)
    assert status == 1 and "linux/arm64" in report["images"][0]["violations"][0]["message"]


def test_docker_config_gives_credentials_for_a_private_registry(
    check: Check, registry_set: registries.Registries, prefix: str
) -> None:
    private = registry_set.htpasswd
    image, digest = helpers.push(private, images.nonroot_image(prefix), prefix=prefix)
    policy = check.policy_file(_policy("layers", [f"{private.host}/{prefix}/**"], {"maxLayers": 5}))

    status, report = check.json("--policy", policy, image)
    assert status == 1
    (violation,) = report["images"][0]["violations"]
    assert violation["rule"] == "lookup"
    assert "unauthorized" in violation["message"].lower()

    config = check.workdir / "docker-config.json"
    config.write_text(json.dumps(private.docker_config()))
    status, report = check.json("--policy", policy, "--docker-config", str(config), image)
    assert status == 0
    assert report["images"][0]["digest"] == digest

    missing = check.run("--policy", policy, "--docker-config", "nope.json", image)
    assert missing.returncode == 2
    assert "imageward check: --docker-config nope.json: no such file" in missing.stderr


def test_plain_http_needs_insecure_registry(
    check: Check, anonymous: registries.Registry, prefix: str
) -> None:
    image, _ = helpers.push(anonymous, images.nonroot_image(prefix), prefix=prefix)
    policy = check.policy_file(
        _policy("layers", [f"{anonymous.host}/{prefix}/**"], {"maxLayers": 5})
    )
    status, report = check.json("--policy", policy, image, insecure=False)
    assert status == 1
    (item,) = report["images"]
    assert item["digest"] is None
    (violation,) = item["violations"]
    assert violation["rule"] == "lookup"
    assert violation["message"].startswith(f"ImagePolicy layers: {image} lookup failed: ")
    assert f"GET https://{anonymous.host}/v2/" in violation["message"]
    assert "TLS failed" in violation["message"]
    status, _ = check.json("--policy", policy, f"--insecure-registry={anonymous.host}", image)
    assert status == 0


def test_signatures_are_verified_like_cosign(
    check: Check,
    anonymous: registries.Registry,
    cosign_tool: cosign.Cosign,
    prefix: str,
) -> None:
    key = cosign_tool.generate_key_pair(f"cli-{helpers.uid()}")
    signed, signed_digest = helpers.push(anonymous, images.nonroot_image(prefix), prefix=prefix)
    legacy, legacy_digest = helpers.push(
        anonymous, images.nonroot_image(f"{prefix}-legacy"), prefix=prefix
    )
    unsigned, _ = helpers.push(anonymous, images.nonroot_image(f"{prefix}-u"), prefix=prefix)
    cosign_tool.sign(helpers.pinned(signed, signed_digest), key)
    cosign_tool.sign(helpers.pinned(legacy, legacy_digest), key, legacy=True)
    policy = check.policy_file(
        _policy(
            "signed",
            [f"{anonymous.host}/{prefix}/**"],
            {"signatures": {"authorities": [{"name": "release", "key": {"pem": key.public_pem}}]}},
        )
    )
    status, report = check.json("--policy", policy, signed, legacy, unsigned)
    assert status == 1
    assert [i["decision"] for i in report["images"]] == ["allow", "allow", "deny"]
    (violation,) = report["images"][2]["violations"]
    assert violation["rule"] == "signatures"
    assert violation["message"].endswith(
        "is verified by 0 of 1 authorities, under signatures threshold 1 "
        "(release: no signature found)"
    )
