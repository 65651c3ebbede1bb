"""Data the registry client returns: references, platforms, layers and image facts.

Frozen and slotted; shared by policy evaluation, signature checks and layer planning.
"""

from __future__ import annotations

from imageward import records

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (PEP 781)

if TYPE_CHECKING:
    from typing import NewType

    Digest = NewType("Digest", str)  # "sha256:<64 hex>"
else:

    def Digest(value):  # what a NewType is at run time: the value itself
        return value


DEFAULT_REGISTRY = "docker.io"


_set = object.__setattr__  # how a frozen Record's __init__ sets its fields


class ImageReference(records.Record):
    """A parsed image reference, normalised the way containerd and kubelet do.

    `registry` is the host[:port] ("docker.io" for Docker Hub), `repository` the path
    ("library/nginx" for "nginx"), and at least one of `tag` and `digest` is set once
    defaults are applied (tag "latest" when neither is given).
    """

    __slots__ = ("digest", "original", "registry", "repository", "tag")
    registry: str
    repository: str
    tag: str | None
    digest: Digest | None
    original: str

    def __init__(
        self,
        registry: str,
        repository: str,
        tag: str | None = None,
        digest: Digest | None = None,
        original: str = "",
    ) -> None:
        _set(self, "registry", registry)
        _set(self, "repository", repository)
        _set(self, "tag", tag)
        _set(self, "digest", digest)
        _set(self, "original", original)

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def with_digest(self, digest: Digest) -> ImageReference:
        return records.replace(self, digest=digest)

    def with_tag(self, tag: str) -> ImageReference:
        """The same repository at another tag (and no digest): `sha256-<hex>.sig` and the like."""
        return records.replace(self, tag=tag, digest=None, original="")


class Platform(records.Record):
    """An OCI platform: os, architecture and variant (`linux/arm64/v8`)."""

    __slots__ = ("architecture", "os", "variant")
    os: str
    architecture: str
    variant: str | None

    def __init__(
        self,
        os: str,
        architecture: str,
        variant: str | None = None,
    ) -> None:
        _set(self, "os", os)
        _set(self, "architecture", architecture)
        _set(self, "variant", variant)

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


class Layer(records.Record):
    """One layer of a platform image, as its manifest describes it."""

    __slots__ = ("digest", "media_type", "size")
    digest: Digest
    size: int
    media_type: str

    def __init__(
        self,
        digest: Digest,
        size: int,
        media_type: str,
    ) -> None:
        _set(self, "digest", digest)
        _set(self, "size", size)
        _set(self, "media_type", media_type)


class ImageConfig(records.Record):
    """The few config fields policies and the planner read."""

    __slots__ = ("architecture", "created", "labels", "os", "user", "variant")
    user: str | None
    os: str | None
    architecture: str | None
    created: str | None
    labels: tuple[tuple[str, str], ...]
    variant: str | None

    def __init__(
        self,
        user: str | None,
        os: str | None,
        architecture: str | None,
        created: str | None,
        labels: tuple[tuple[str, str], ...] = (),
        variant: str | None = None,
    ) -> None:
        _set(self, "user", user)
        _set(self, "os", os)
        _set(self, "architecture", architecture)
        _set(self, "created", created)
        _set(self, "labels", labels)
        _set(self, "variant", variant)


class PlatformImage(records.Record):
    """One runnable image: a platform manifest, its layers and config."""

    __slots__ = (
        "config",
        "config_digest",
        "config_problem",
        "digest",
        "layers",
        "media_type",
        "platform",
        "size",
    )
    digest: Digest  # digest of the platform manifest
    platform: Platform | None
    media_type: str
    layers: tuple[Layer, ...]
    config_digest: Digest
    config: ImageConfig
    #: Why the config could not be read, when the registry served one that is missing,
    #: oversized or malformed: the rules that need the config refuse with this reason,
    #: the others (sizes, signatures) still decide.
    config_problem: str | None
    #: Bytes of the manifest (what a descriptor of it says; Notation payloads name it).
    size: int | None

    def __init__(
        self,
        digest: Digest,
        platform: Platform | None,
        media_type: str,
        layers: tuple[Layer, ...],
        config_digest: Digest,
        config: ImageConfig,
        config_problem: str | None = None,
        size: int | None = None,
    ) -> None:
        _set(self, "digest", digest)
        _set(self, "platform", platform)
        _set(self, "media_type", media_type)
        _set(self, "layers", layers)
        _set(self, "config_digest", config_digest)
        _set(self, "config", config)
        _set(self, "config_problem", config_problem)
        _set(self, "size", size)

    @property
    def compressed_size(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def largest_layer(self) -> Layer | None:
        return max(self.layers, key=lambda layer: layer.size, default=None)


class ImageFacts(records.Record):
    """Everything known about one reference: the digest it resolves to and its images.

    `digest` is the digest the reference resolved to (an index or a single manifest).
    `images` holds the platform images selected (one for a single manifest; for an
    index, the entries nodes allowed by the platform choice would run, chosen as
    containerd chooses: see `registry.platforms`).
    """

    __slots__ = ("digest", "images", "is_index", "media_type", "reference", "size")
    reference: ImageReference
    digest: Digest
    media_type: str
    is_index: bool
    images: tuple[PlatformImage, ...]
    #: Bytes of the manifest or index `digest` names.
    size: int | None

    def __init__(
        self,
        reference: ImageReference,
        digest: Digest,
        media_type: str,
        is_index: bool,
        images: tuple[PlatformImage, ...],
        size: int | None = None,
    ) -> None:
        _set(self, "reference", reference)
        _set(self, "digest", digest)
        _set(self, "media_type", media_type)
        _set(self, "is_index", is_index)
        _set(self, "images", images)
        _set(self, "size", size)
