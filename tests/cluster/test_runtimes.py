"""The other real peers: containerd pulls what the registries serve, and real cosign signs
and verifies images in both of its on-registry formats."""

from __future__ import annotations

import pathlib
import time
import uuid

import pytest

from imageward.localcluster import containerd, cosign, images, registries, tools

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("variant", ["anonymous", "htpasswd", "token"])
def test_containerd_pulls_from_each_registry_variant(
    variant: str, registry_set: registries.Registries, containerd_daemon: containerd.Containerd
) -> None:
    registry: registries.Registry = getattr(registry_set, variant)
    repository = f"runtime/{uuid.uuid4().hex[:8]}"
    image = images.small_image(f"pull-{variant}")
    pushed = registry.client().push(repository, image, tag="1.0")
    user = None
    if registry.credentials is not None:
        user = f"{registry.credentials.username}:{registry.credentials.password}"
    containerd_daemon.pull(f"{registry.host}/{repository}:1.0", user=user)

    listed = containerd_daemon.ctr("images", "ls", "-q").stdout.split()
    assert f"{registry.host}/{repository}:1.0" in listed
    stored = containerd_daemon.content_digests()
    assert pushed.digest in stored
    assert {layer.digest for layer in image.layers} <= stored


def test_containerd_refuses_wrong_credentials(
    registry_set: registries.Registries, containerd_daemon: containerd.Containerd
) -> None:
    registry = registry_set.htpasswd
    repository = f"runtime/{uuid.uuid4().hex[:8]}"
    registry.client().push(repository, images.small_image("private"), tag="1.0")
    with pytest.raises(containerd.ContainerdError, match=r"(?i)unauthorized|401"):
        containerd_daemon.pull(f"{registry.host}/{repository}:1.0", user="intruder:guess")


@pytest.mark.parametrize("legacy", [False, True], ids=["bundle", "legacy-sig-tag"])
def test_cosign_signs_and_verifies(
    legacy: bool, registry_set: registries.Registries, cosign_tool: cosign.Cosign
) -> None:
    registry = registry_set.anonymous
    repository = f"signed/{uuid.uuid4().hex[:8]}"
    client = registry.client()
    pushed = client.push(repository, images.small_image(f"signed-{legacy}"), tag="1.0")
    reference = f"{registry.host}/{repository}@{pushed.digest}"
    release = cosign_tool.generate_key_pair(f"release-{uuid.uuid4().hex[:6]}")
    other = cosign_tool.generate_key_pair(f"other-{uuid.uuid4().hex[:6]}")

    unsigned = cosign_tool.verify(reference, release)
    assert unsigned.returncode != 0

    cosign_tool.sign(reference, release, legacy=legacy)
    tags = client.list_tags(repository)
    hex_digest = pushed.digest.removeprefix("sha256:")
    if legacy:
        assert f"sha256-{hex_digest}.sig" in tags
    else:
        # The distribution registry has no referrers API: cosign uses the tag fallback.
        assert f"sha256-{hex_digest}" in tags

    verified = cosign_tool.verify(reference, release)
    assert verified.returncode == 0, verified.stderr
    assert pushed.digest in verified.stdout
    wrong_key = cosign_tool.verify(reference, other)
    assert wrong_key.returncode != 0


def test_scratch_image_with_the_static_helper_runs_in_containerd(
    registry_set: registries.Registries, containerd_daemon: containerd.Containerd
) -> None:
    registry = registry_set.anonymous
    repository = f"scratch/{uuid.uuid4().hex[:8]}"
    helper = tools.find("imageward-helper").read_bytes()
    registry.client().push(repository, images.scratch_image(helper), tag="1.0")
    reference = f"{registry.host}/{repository}:1.0"
    containerd_daemon.pull(reference)
    container = f"scratch-{uuid.uuid4().hex[:6]}"
    # No shell, no libc in the image: only the static helper, which answers and exits.
    result = containerd_daemon.ctr("run", "--rm", reference, container)
    assert result.stdout.strip() == "imageward-helper: ok"


def test_the_event_log_times_what_containerd_does(
    registry_set: registries.Registries,
    containerd_daemon: containerd.Containerd,
    tmp_path: pathlib.Path,
) -> None:
    registry = registry_set.anonymous
    repository = f"runtime/{uuid.uuid4().hex[:8]}"
    registry.client().push(repository, images.small_image("events"), tag="1.0")
    ref = f"{registry.host}/{repository}:1.0"
    with containerd.EventLog(containerd_daemon.socket, tmp_path) as log:
        # `ctr events` subscribes some time after it starts: wait until it sees something.
        probe = f"probe-{uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + 10
        while not any(e.body.get("name") == probe for e in log.events("/namespaces/create")):
            assert time.monotonic() < deadline, "ctr events saw no namespace being created"
            containerd_daemon.ctr("namespaces", "remove", probe, check=False)
            containerd_daemon.ctr("namespaces", "create", probe)
            time.sleep(0.2)
        containerd_daemon.ctr("namespaces", "remove", probe)
        before = time.time()
        containerd_daemon.pull(ref)
        after = time.time()
        deadline = time.monotonic() + 10
        created = []
        while not created and time.monotonic() < deadline:
            created = [e for e in log.events("/images/create") if e.body.get("name") == ref]
            time.sleep(0.1)
    assert created, f"no /images/create event for {ref}"
    assert before - 0.05 <= created[0].time <= after + 0.05
