"""The native OCI referrers API with real cosign: against a registry that serves it,
cosign attaches its bundle as a referrer (no `sha256-<hex>` tag) and imageward finds it
through `GET /v2/<repo>/referrers/<digest>`. This registry (go-containerregistry's)
reports a referrer's artifactType as its config media type, as some others do: the
bundle must be found anyway."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import uuid

import pytest

from imageward.localcluster import cosign, images, referrers

pytestmark = pytest.mark.cluster


def test_bundle_found_through_the_native_referrers_api(
    cosign_tool: cosign.Cosign, tmp_path: pathlib.Path
) -> None:
    with referrers.ReferrersRegistry() as registry:
        client = registry.client()
        repository = f"native/{uuid.uuid4().hex[:8]}"
        signed = client.push(repository, images.nonroot_image(f"n-{uuid.uuid4().hex}"), tag="1")
        client.push(repository, images.nonroot_image(f"u-{uuid.uuid4().hex}"), tag="2")
        key = cosign_tool.generate_key_pair(f"native-{uuid.uuid4().hex[:6]}")
        cosign_tool.sign(f"{registry.host}/{repository}@{signed.digest}", key)
        # cosign used the API: no fallback tag was written.
        assert client.list_tags(repository) == ["1", "2"]

        policy = tmp_path / "policy.yaml"
        policy.write_text(
            json.dumps(
                {
                    "apiVersion": "imageward.io/v1alpha1",
                    "kind": "ImagePolicy",
                    "metadata": {"name": "native"},
                    "spec": {
                        "match": {"images": [f"{registry.host}/native/**"]},
                        "rules": {
                            "signatures": {
                                "authorities": [{"name": "release", "key": {"pem": key.public_pem}}]
                            }
                        },
                    },
                }
            )
        )
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "imageward",
                "check",
                "--policy",
                str(policy),
                "--insecure-registry",
                registry.host,
                "--output",
                "json",
                f"{registry.host}/{repository}:1",
                f"{registry.host}/{repository}:2",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        report = json.loads(result.stdout)
        decisions = {i["image"].rsplit(":", 1)[1]: i["decision"] for i in report["images"]}
        assert decisions == {"1": "allow", "2": "deny"}, result.stdout
        assert result.returncode == 1
        log = registry.request_log()
        assert f"/v2/{repository}/referrers/{signed.digest}" in log
