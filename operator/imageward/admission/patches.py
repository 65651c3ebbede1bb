"""The JSONPatch that pins admitted images from tag to digest (`pinDigest`).

Each image becomes `<image as written>[:latest]@<digest>`:

- The tag stays. Kubelet and containerd pull by the digest and ignore the tag, so it
  costs nothing, and people reading `kubectl get pod -o yaml` still see which release
  runs. Kyverno's verifyImages `mutateDigest` writes the same `image:tag@digest` form.
- An image written without a tag gets `:latest`, the tag it was resolved from: a
  re-evaluation of the pinned pod then sees the same tag as the original did (a policy
  forbidding `latest` gives the same verdict before and after pinning), and the reader
  sees where the digest came from.
- The registry and repository stay as written (`nginx`, not `docker.io/library/nginx`):
  both pull the same image, and the user's own text stays recognisable.

Images that already carry a digest are left alone (the digest the user chose wins), and
no operation is emitted that would not change the object.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Literal, TypedDict

from imageward import errors
from imageward.admission import workloads
from imageward.registry import model as registry_model
from imageward.registry import reference as registry_reference

IMPLIED_TAG = "latest"


class ReplaceOperation(TypedDict):
    """One RFC 6902 `replace` operation, the only kind this module emits."""

    op: Literal["replace"]
    path: str
    value: str


def build_pinned_image(image: str, digest: registry_model.Digest) -> str | None:
    """`image[:latest]@digest`, or None when `image` already names a digest.

    Raises errors.InvalidReferenceError when `image` is no valid reference or `digest`
    is no valid digest: the result must be a reference kubelet can pull.
    """
    if not isinstance(digest, str) or not registry_reference.DIGEST_RE.fullmatch(digest):
        raise errors.InvalidReferenceError(
            image, f"cannot pin to {str(digest)[:80]!r}: not a sha256 or sha512 digest"
        )
    parsed = registry_reference.parse_reference(image)
    if parsed.digest is not None:
        return None
    name_and_tag = image if registry_reference.has_explicit_tag(image) else f"{image}:{IMPLIED_TAG}"
    return f"{name_and_tag}@{digest}"


def build_pin_patch(
    view: workloads.PodView,
    pins: Mapping[str, registry_model.Digest],
    *,
    only: AbstractSet[tuple[str, str, str]] | None = None,
) -> list[ReplaceOperation]:
    """Replace operations pinning each container whose image `pins` resolves.

    `pins` maps an image exactly as written in the object (`ContainerImage.image`) to
    the digest it resolved to; images not in `pins` are left alone (not resolved, or no
    pinDigest policy matched them). `only`, for an UPDATE, limits the patch to the
    (kind, name, image) of containers the update brings (workloads.build_new_containers).
    Paths are the containers' JSON pointers, in container order. Raises
    errors.InvalidReferenceError for a pin that cannot be written.
    """
    operations: list[ReplaceOperation] = []
    for container in view.containers:
        if only is not None and (container.kind, container.name, container.image) not in only:
            continue
        digest = pins.get(container.image)
        if digest is None:
            continue
        pinned = build_pinned_image(container.image, digest)
        if pinned is None:
            continue
        operations.append({"op": "replace", "path": container.pointer, "value": pinned})
    return operations
