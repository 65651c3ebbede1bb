"""`imageward plan` against a real registry: product.md's JSON, budgets, usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from imageward.localcluster import images, registries

pytestmark = pytest.mark.cluster


def _plan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imageward", "plan", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def shared(registry_set: registries.Registries) -> tuple[str, list[str], list[images.Manifest]]:
    registry = registry_set.anonymous
    client = registry.client()
    manifests = images.shared_base_images(3)
    refs = []
    for manifest in manifests:
        repository = f"plan/{uuid.uuid4().hex[:8]}"
        client.push(repository, manifest, tag="1.0")
        refs.append(f"{registry.host}/{repository}:1.0")
    return registry.host, refs, manifests


def test_plan_json_follows_the_contract(
    shared: tuple[str, list[str], list[images.Manifest]],
) -> None:
    host, refs, manifests = shared
    result = _plan("--insecure-registry", host, "--output", "json", *refs)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert set(document) == {"images", "plan", "savedBytes", "totalBytes"}
    assert [i["image"] for i in document["images"]] == refs
    for item, manifest in zip(document["images"], manifests, strict=True):
        assert item["digest"] == manifest.digest
        assert item["bytes"] == manifest.compressed_size
        assert {layer["digest"] for layer in item["layers"]} == {
            layer.digest for layer in manifest.layers
        }
    assert document["plan"]["budget"] is None
    # No budget: every layer is planned, each image saves all of its bytes.
    assert (
        document["savedBytes"]
        == document["totalBytes"]
        == sum(m.compressed_size for m in manifests)
    )
    shared_layer = manifests[0].layers[0].digest
    planned = {layer["digest"]: layer for layer in document["plan"]["layers"]}
    assert sorted(planned[shared_layer]["images"]) == sorted(refs)


def test_budget_and_min_share_limit_the_plan(
    shared: tuple[str, list[str], list[images.Manifest]],
) -> None:
    host, refs, manifests = shared
    base = {layer.digest for layer in manifests[0].layers} & {
        layer.digest for layer in manifests[1].layers
    }
    result = _plan("--insecure-registry", host, "--min-share", "2", "--output", "json", *refs)
    document = json.loads(result.stdout)
    assert {layer["digest"] for layer in document["plan"]["layers"]} == base
    budget = _plan("--insecure-registry", host, "--budget", "1Ki", "--output", "json", *refs)
    assert json.loads(budget.stdout)["plan"]["bytes"] <= 1024
    text = _plan("--insecure-registry", host, *refs)
    assert text.returncode == 0 and "IMAGE" in text.stdout


def test_usage_errors_exit_2(shared: tuple[str, list[str], list[images.Manifest]]) -> None:
    host, refs, _ = shared
    assert _plan("--budget", "lots", refs[0]).returncode == 2
    assert _plan("--min-share", "0", refs[0]).returncode == 2
    assert _plan("--platform", "linux", refs[0]).returncode == 2
    missing = _plan("--insecure-registry", host, f"{host}/plan/none:1.0")
    assert missing.returncode == 1 and "not found" in missing.stderr
