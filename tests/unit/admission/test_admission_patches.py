from __future__ import annotations

import jsonpatch  # Kopf's own dependency: the library that applies our ops in its handler
import pytest

from imageward import errors
from imageward.admission import patches, workloads
from imageward.registry import model as registry_model

from . import samples

DIGEST = registry_model.Digest(samples.DIGEST)
OTHER = registry_model.Digest(samples.OTHER_DIGEST)


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("ghcr.io/acme/web:1.4", f"ghcr.io/acme/web:1.4@{DIGEST}"),
        ("nginx", f"nginx:latest@{DIGEST}"),
        ("nginx:1.25", f"nginx:1.25@{DIGEST}"),
        ("localhost:5000/app", f"localhost:5000/app:latest@{DIGEST}"),
        ("localhost:5000/app:v2", f"localhost:5000/app:v2@{DIGEST}"),
        ("Docker.io/library/nginx:1", f"Docker.io/library/nginx:1@{DIGEST}"),
    ],
)
def test_pinned_form_keeps_the_text_and_the_tag(image: str, pinned: str) -> None:
    assert patches.build_pinned_image(image, DIGEST) == pinned


def test_already_pinned_images_are_left_alone() -> None:
    assert patches.build_pinned_image(f"nginx@{OTHER}", DIGEST) is None
    assert patches.build_pinned_image(f"nginx:1.25@{OTHER}", DIGEST) is None
    assert patches.build_pinned_image(f"nginx:1.25@{DIGEST}", DIGEST) is None


def test_sha512_digest() -> None:
    digest = registry_model.Digest("sha512:" + "e" * 128)
    assert patches.build_pinned_image("a/b:1", digest) == f"a/b:1@{digest}"


@pytest.mark.parametrize("digest", ["", "sha256:abc", "md5:" + "0" * 32, samples.DIGEST + "\n"])
def test_bad_digest_raises(digest: str) -> None:
    with pytest.raises(errors.InvalidReferenceError, match="cannot pin"):
        patches.build_pinned_image("nginx:1", registry_model.Digest(digest))


def test_bad_image_raises() -> None:
    with pytest.raises(errors.InvalidReferenceError):
        patches.build_pinned_image("ghcr.io/Acme/web:1", DIGEST)


@pytest.mark.parametrize("kind", list(samples.SPEC_POINTERS))
def test_patch_replaces_each_pinned_container(kind: str) -> None:
    body = samples.body_of(kind)
    view = workloads.parse_pod_view(body)
    spec = samples.SPEC_POINTERS[kind]
    operations = patches.build_pin_patch(
        view, {"ghcr.io/acme/web:1.4": DIGEST, "ghcr.io/acme/migrate:2": OTHER}
    )
    assert operations == [
        {
            "op": "replace",
            "path": f"{spec}/containers/0/image",
            "value": f"ghcr.io/acme/web:1.4@{DIGEST}",
        },
        {
            "op": "replace",
            "path": f"{spec}/initContainers/0/image",
            "value": f"ghcr.io/acme/migrate:2@{OTHER}",
        },
    ]
    # Applied as the apiserver applies it, the object runs the pinned images and a second
    # pass finds nothing left to do.
    patched = jsonpatch.apply_patch(body, operations)
    again = workloads.parse_pod_view(patched)
    assert [c.image for c in again.containers] == [
        f"ghcr.io/acme/web:1.4@{DIGEST}",
        "envoyproxy/envoy:v1.30",
        f"ghcr.io/acme/migrate:2@{OTHER}",
    ]
    pins = {image: DIGEST for image in again.images}
    assert patches.build_pin_patch(again, pins) == [
        {
            "op": "replace",
            "path": f"{spec}/containers/1/image",
            "value": f"envoyproxy/envoy:v1.30@{DIGEST}",
        }
    ]


def test_no_pins_no_operations() -> None:
    view = workloads.parse_pod_view(samples.pod())
    assert patches.build_pin_patch(view, {}) == []


def test_already_pinned_container_emits_nothing() -> None:
    body = samples.pod(
        containers=[{"name": "a", "image": f"nginx:1.25@{OTHER}"}], initContainers=None
    )
    view = workloads.parse_pod_view(body)
    assert patches.build_pin_patch(view, {f"nginx:1.25@{OTHER}": DIGEST}) == []


def test_same_image_in_two_containers_and_an_ephemeral_one() -> None:
    body = samples.pod(
        containers=[{"name": "a", "image": "nginx"}, {"name": "b", "image": "nginx"}],
        initContainers=None,
        ephemeralContainers=[{"name": "dbg", "image": "nginx"}],
    )
    operations = patches.build_pin_patch(workloads.parse_pod_view(body), {"nginx": DIGEST})
    assert [op["path"] for op in operations] == [
        "/spec/containers/0/image",
        "/spec/containers/1/image",
        "/spec/ephemeralContainers/0/image",
    ]
    assert {op["value"] for op in operations} == {f"nginx:latest@{DIGEST}"}


def test_pointer_escaping_reaches_the_patch() -> None:
    pointer = workloads.build_json_pointer(("spec", "odd/key~", 0, "image"))
    assert pointer == "/spec/odd~1key~0/0/image"
    view = workloads.PodView(
        kind="Pod",
        name="x",
        namespace=None,
        spec_pointer="/spec",
        labels=(),
        service_account="default",
        image_pull_secrets=(),
        node_arch=None,
        node_os=None,
        containers=(workloads.ContainerImage("containers", 0, "a", "nginx:1", pointer),),
    )
    operations = patches.build_pin_patch(view, {"nginx:1": DIGEST})
    assert operations[0]["path"] == "/spec/odd~1key~0/0/image"
    body = {"spec": {"odd/key~": [{"image": "nginx:1"}]}}
    assert jsonpatch.apply_patch(body, operations) == {
        "spec": {"odd/key~": [{"image": f"nginx:1@{DIGEST}"}]}
    }


def test_update_pins_only_the_containers_it_brings() -> None:
    # Re-pinning a running container's image would restart it: only new images change.
    old = samples.pod(
        containers=[{"name": "a", "image": "nginx:1.25"}, {"name": "b", "image": "redis:7"}],
        initContainers=None,
    )
    new = samples.pod(
        containers=[{"name": "a", "image": "nginx:1.25"}, {"name": "b", "image": "redis:8"}],
        initContainers=None,
        ephemeralContainers=[{"name": "dbg", "image": "busybox:1"}],
    )
    view = workloads.parse_pod_view(new)
    brought = workloads.build_new_containers(old, view, "Pod")
    assert brought == {
        ("containers", "b", "redis:8"),
        ("ephemeralContainers", "dbg", "busybox:1"),
    }
    pins = {"nginx:1.25": DIGEST, "redis:8": DIGEST, "busybox:1": DIGEST}
    operations = patches.build_pin_patch(view, pins, only=brought)
    assert [op["path"] for op in operations] == [
        "/spec/containers/1/image",
        "/spec/ephemeralContainers/0/image",
    ]
    # A CREATE (no old object) brings every container.
    assert len(workloads.build_new_containers(None, view, "Pod")) == 3
