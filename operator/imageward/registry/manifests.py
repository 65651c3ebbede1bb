"""Manifests, indexes and image configs as data: parse, check digests, select platforms.

No I/O: the client hands over the bytes and headers a registry answered, and gets back
frozen structures or a `ManifestError` saying what is wrong with them (the client adds
the registry, repository and reference). Everything here reads hostile input: the
bytes come from whoever can push to a registry, or sit between it and us.

Media types: OCI image manifest and index, Docker schema 2 manifest and manifest list
(the four a client asks for); Docker schema 1 is refused with a message saying so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from imageward import records
from imageward.registry import gojson, model, platforms, reference

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
ALL_TYPES = MANIFEST_TYPES | INDEX_TYPES
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})

#: The Accept header of every manifest request: indexes first, so a registry that can
#: serve one does (we choose the platform, not the registry).
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST))

#: Content types that say nothing (old registries, static file servers): the document's
#: own `mediaType`, or its shape, decides.
_GENERIC_CONTENT_TYPES = frozenset({"", "application/json", "application/octet-stream"})

_MAX_SIZE = 2**63 - 1

#: Caps on what one manifest may list: far above any real image (a multi-arch index has
#: tens of entries, an image rarely over a hundred layers; overlayfs stops near 500),
#: low enough that a hostile one cannot make the client hold or fetch much.
MAX_INDEX_ENTRIES = 1024
MAX_LAYERS = 1000

_set = object.__setattr__  # how a frozen Record's __init__ sets its fields


class ManifestError(ValueError):
    """Bytes that are no usable manifest, index or config; the message says why."""


class DigestMismatch(ManifestError):
    """The bytes do not hash to the digest they were fetched by (or claimed to have)."""


# ---------------------------------------------------------------------------- data


class Descriptor(records.Record):
    """An OCI content descriptor: what a manifest or index says of a blob or manifest."""

    __slots__ = ("annotations", "artifact_type", "digest", "media_type", "platform", "size")
    media_type: str
    digest: model.Digest
    size: int
    platform: model.Platform | None
    annotations: tuple[tuple[str, str], ...]
    artifact_type: str | None

    def __init__(
        self,
        media_type: str,
        digest: model.Digest,
        size: int,
        platform: model.Platform | None = None,
        annotations: tuple[tuple[str, str], ...] = (),
        artifact_type: str | None = None,
    ) -> None:
        _set(self, "media_type", media_type)
        _set(self, "digest", digest)
        _set(self, "size", size)
        _set(self, "platform", platform)
        _set(self, "annotations", annotations)
        _set(self, "artifact_type", artifact_type)

    def annotation(self, name: str) -> str | None:
        for key, value in self.annotations:
            if key == name:
                return value
        return None


class ImageManifest(records.Record):
    """An image manifest (OCI or Docker schema 2): its config and layers."""

    __slots__ = ("annotations", "artifact_type", "config", "layers", "media_type", "subject")
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    artifact_type: str | None
    subject: Descriptor | None
    annotations: tuple[tuple[str, str], ...]

    def __init__(
        self,
        media_type: str,
        config: Descriptor,
        layers: tuple[Descriptor, ...],
        artifact_type: str | None = None,
        subject: Descriptor | None = None,
        annotations: tuple[tuple[str, str], ...] = (),
    ) -> None:
        _set(self, "media_type", media_type)
        _set(self, "config", config)
        _set(self, "layers", layers)
        _set(self, "artifact_type", artifact_type)
        _set(self, "subject", subject)
        _set(self, "annotations", annotations)

    @property
    def is_image(self) -> bool:
        """Whether the config is an image config (not a signature, SBOM or chart)."""
        return self.config.media_type in CONFIG_TYPES


class ImageIndex(records.Record):
    """An image index (OCI) or manifest list (Docker): its entries."""

    __slots__ = ("annotations", "artifact_type", "manifests", "media_type", "subject")
    media_type: str
    manifests: tuple[Descriptor, ...]
    artifact_type: str | None
    subject: Descriptor | None
    annotations: tuple[tuple[str, str], ...]

    def __init__(
        self,
        media_type: str,
        manifests: tuple[Descriptor, ...],
        artifact_type: str | None = None,
        subject: Descriptor | None = None,
        annotations: tuple[tuple[str, str], ...] = (),
    ) -> None:
        _set(self, "media_type", media_type)
        _set(self, "manifests", manifests)
        _set(self, "artifact_type", artifact_type)
        _set(self, "subject", subject)
        _set(self, "annotations", annotations)


Content = ImageManifest | ImageIndex


class FetchedManifest(records.Record, hidden=("body",)):
    """A manifest or index as fetched: its verified digest, raw bytes and parsed content."""

    __slots__ = ("body", "content", "digest", "media_type")
    digest: model.Digest
    media_type: str
    body: bytes
    content: Content

    def __init__(
        self,
        digest: model.Digest,
        media_type: str,
        body: bytes,
        content: Content,
    ) -> None:
        _set(self, "digest", digest)
        _set(self, "media_type", media_type)
        _set(self, "body", body)
        _set(self, "content", content)

    @property
    def is_index(self) -> bool:
        return isinstance(self.content, ImageIndex)

    @property
    def size(self) -> int:
        return len(self.body)


# ---------------------------------------------------------------------------- digests


def build_digest(data: bytes, algorithm: str = "sha256") -> model.Digest:
    if algorithm == "sha256":
        return model.Digest("sha256:" + hashlib.sha256(data).hexdigest())
    if algorithm == "sha512":
        return model.Digest("sha512:" + hashlib.sha512(data).hexdigest())
    raise ManifestError(f"unsupported digest algorithm {algorithm!r}")


def build_hasher(digest: model.Digest) -> Any:
    """A hashlib object for the digest's algorithm, to hash a body while it streams."""
    algorithm = digest.partition(":")[0]
    if algorithm not in ("sha256", "sha512"):
        raise ManifestError(f"unsupported digest algorithm {algorithm!r}")
    return hashlib.new(algorithm)


def evaluate_digest(data: bytes, expected: model.Digest) -> bool:
    """Whether `data` hashes to `expected` (with `expected`'s algorithm)."""
    return build_digest(data, expected.partition(":")[0]) == expected


# ---------------------------------------------------------------------------- parsing


def parse_content_type(header: str | None) -> str:
    """`application/vnd.oci…+json; charset=utf-8` -> `application/vnd.oci…+json`."""
    return (header or "").split(";", 1)[0].strip().lower()


def _str(document: Mapping[str, Any], name: str, where: str, *, required: bool) -> str | None:
    value = document.get(name)
    if value is None:
        if required:
            raise ManifestError(f"{where} has no {name}")
        return None
    if not isinstance(value, str):
        raise ManifestError(f"{where}: {name} is not a string")
    return value


def _annotations(document: Mapping[str, Any], where: str) -> tuple[tuple[str, str], ...]:
    value = document.get("annotations")
    if value is None:
        return ()
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ManifestError(f"{where}: annotations are not a string map")
    return tuple(sorted(value.items()))


def _platform(value: Any, where: str) -> model.Platform | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ManifestError(f"{where}: platform is not an object")
    os_name = _str(value, "os", f"{where} platform", required=True)
    architecture = _str(value, "architecture", f"{where} platform", required=True)
    variant = _str(value, "variant", f"{where} platform", required=False)
    assert os_name is not None and architecture is not None
    return model.Platform(os=os_name, architecture=architecture, variant=variant or None)


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, Mapping):
        raise ManifestError(f"{where} is not an object")
    media_type = _str(value, "mediaType", where, required=True)
    digest_text = _str(value, "digest", where, required=True)
    assert media_type is not None and digest_text is not None
    try:
        digest = reference.parse_digest(digest_text)
    except ValueError as e:
        raise ManifestError(f"{where}: {e}") from e
    size = value.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= _MAX_SIZE:
        raise ManifestError(f"{where}: size {str(size)[:40]!r} is not a non-negative integer")
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        platform=_platform(value.get("platform"), where),
        annotations=_annotations(value, where),
        artifact_type=_str(value, "artifactType", where, required=False),
    )


def _descriptors(
    document: Mapping[str, Any], name: str, where: str, *, cap: int
) -> tuple[Descriptor, ...]:
    value = document.get(name)
    if value is None:
        return ()  # OCI: an image without layers is valid (and so is an empty index)
    if not isinstance(value, list):
        raise ManifestError(f"{where}: {name} is not a list")
    if len(value) > cap:
        raise ManifestError(f"{where} lists {len(value)} {name}, over the limit of {cap}")
    return tuple(_descriptor(item, f"{where} {name}[{i}]") for i, item in enumerate(value))


def _resolve_media_type(document: Mapping[str, Any], content_type: str) -> str:
    declared = _str(document, "mediaType", "manifest", required=False)
    schema1 = {DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED}
    if content_type in schema1 or declared in schema1 or document.get("schemaVersion") == 1:
        raise ManifestError(
            "Docker schema 1 manifest: deprecated and not supported; re-push the image "
            "with a current client"
        )
    if document.get("schemaVersion") != 2:
        raise ManifestError(f"schemaVersion is {document.get('schemaVersion')!r}, not 2")
    specific = content_type not in _GENERIC_CONTENT_TYPES
    if specific and content_type not in ALL_TYPES:
        raise ManifestError(f"Content-Type {content_type[:100]!r} is not a manifest media type")
    if declared is not None and specific and declared != content_type:
        # A body read as another type than it declares is how type-confusion attacks work.
        raise ManifestError(f"Content-Type {content_type} but the document declares {declared}")
    media_type = declared or (content_type if specific else None)
    if media_type is None:
        if "manifests" in document:
            media_type = OCI_INDEX
        elif "config" in document:
            media_type = OCI_MANIFEST
        else:
            raise ManifestError("neither a manifest nor an index (no mediaType, config or list)")
    if media_type not in ALL_TYPES:
        raise ManifestError(f"unsupported manifest media type {media_type[:100]!r}")
    if media_type in INDEX_TYPES and ("config" in document or "layers" in document):
        raise ManifestError("an index with config or layers (ambiguous document)")
    if media_type in MANIFEST_TYPES and "manifests" in document:
        raise ManifestError("a manifest with a manifests list (ambiguous document)")
    return media_type


def parse_content(body: bytes, *, content_type: str | None) -> Content:
    """Parse a manifest or index body; the media type comes from the document and header."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: deep nesting
        raise ManifestError(f"not JSON ({e.__class__.__name__}: {str(e)[:100]})") from e
    if not isinstance(document, Mapping):
        raise ManifestError("not a JSON object")
    if problem := gojson.evaluate_field_spelling(document, gojson.MANIFEST, "manifest"):
        raise ManifestError(problem)  # read otherwise by containerd: `Manifests`, `Layers`
    media_type = _resolve_media_type(document, parse_content_type(content_type))
    subject_value = document.get("subject")
    subject = None if subject_value is None else _descriptor(subject_value, "subject")
    artifact_type = _str(document, "artifactType", "manifest", required=False)
    annotations = _annotations(document, "manifest")
    if media_type in INDEX_TYPES:
        return ImageIndex(
            media_type=media_type,
            manifests=_descriptors(document, "manifests", "index", cap=MAX_INDEX_ENTRIES),
            artifact_type=artifact_type,
            subject=subject,
            annotations=annotations,
        )
    if document.get("config") is None:
        raise ManifestError("manifest has no config")
    return ImageManifest(
        media_type=media_type,
        config=_descriptor(document["config"], "config"),
        layers=_descriptors(document, "layers", "manifest", cap=MAX_LAYERS),
        artifact_type=artifact_type,
        subject=subject,
        annotations=annotations,
    )


def parse_manifest(
    body: bytes,
    *,
    content_type: str | None,
    expected_digest: model.Digest | None = None,
    claimed_digest: str | None = None,
) -> FetchedManifest:
    """Parse a fetched manifest and check its digest.

    `expected_digest`: what we asked for (a by-digest fetch); the body must hash to it.
    `claimed_digest`: the registry's `Docker-Content-Digest`; when given it must match
    too, so a body altered on the way is caught even when fetched by tag.
    Raises ManifestError, or DigestMismatch (a subclass) for a wrong digest.
    """
    algorithm = expected_digest.partition(":")[0] if expected_digest else "sha256"
    digest = build_digest(body, algorithm)
    if expected_digest is not None and digest != expected_digest:
        raise DigestMismatch(f"body hashes to {digest}, not the requested {expected_digest}")
    if claimed_digest:
        try:
            claimed = reference.parse_digest(claimed_digest.strip())
        except ValueError as e:
            raise ManifestError(f"Docker-Content-Digest header: {e}") from e
        actual = build_digest(body, claimed.partition(":")[0])
        if actual != claimed:
            raise DigestMismatch(f"body hashes to {actual}, registry says {claimed}")
    content = parse_content(body, content_type=content_type)
    return FetchedManifest(digest=digest, media_type=content.media_type, body=body, content=content)


# ---------------------------------------------------------------------------- platforms


def parse_platform(text: str) -> model.Platform:
    """`os/arch[/variant]` (the CLI's `--platform`)."""
    parts = text.strip().split("/")
    if not 2 <= len(parts) <= 3 or not all(parts):
        raise ValueError(f"platform {text!r} is not os/arch[/variant]")
    return model.Platform(
        os=parts[0], architecture=parts[1], variant=parts[2] if len(parts) == 3 else None
    )


def build_entries(index: ImageIndex) -> tuple[platforms.Entry, ...]:
    """The index's entries as platform matching sees them (position, platform, type)."""
    return tuple(
        platforms.Entry(position, descriptor.platform, descriptor.media_type)
        for position, descriptor in enumerate(index.manifests)
    )


# ---------------------------------------------------------------------------- configs


def parse_config(body: bytes) -> model.ImageConfig:
    """The few fields policies read from an image config blob."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: deep nesting
        raise ManifestError(f"image config is not JSON ({e.__class__.__name__})") from e
    if not isinstance(document, Mapping):
        raise ManifestError("image config is not a JSON object")
    if problem := gojson.evaluate_field_spelling(document, gojson.IMAGE_CONFIG, "image config"):
        raise ManifestError(problem)  # read otherwise by containerd: `user` next to `User`
    container = document.get("config")
    if container is None:
        container = {}
    if not isinstance(container, Mapping):
        raise ManifestError("image config: config is not an object")
    labels_value = container.get("Labels")
    if labels_value is None:
        labels_value = {}
    if not isinstance(labels_value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels_value.items()
    ):
        raise ManifestError("image config: Labels is not a string map")
    user = _str(container, "User", "image config", required=False)
    return model.ImageConfig(
        user=user,
        os=_str(document, "os", "image config", required=False),
        architecture=_str(document, "architecture", "image config", required=False),
        created=_str(document, "created", "image config", required=False),
        labels=tuple(sorted(labels_value.items())),
        variant=_str(document, "variant", "image config", required=False),
    )


#: What a manifest that is not an image (signature, SBOM, chart) reports as its config.
NO_CONFIG = model.ImageConfig(user=None, os=None, architecture=None, created=None)


def build_platform_image(
    fetched: FetchedManifest,
    *,
    platform: model.Platform | None,
    config: model.ImageConfig,
) -> model.PlatformImage:
    """A platform image from its manifest and config; the platform falls back on the config."""
    content = fetched.content
    if not isinstance(content, ImageManifest):
        raise ManifestError("expected an image manifest, got an index")
    if platform is None and config.os and config.architecture:
        platform = model.Platform(
            os=config.os, architecture=config.architecture, variant=config.variant or None
        )
    return model.PlatformImage(
        digest=fetched.digest,
        platform=platform,
        media_type=fetched.media_type,
        layers=tuple(
            model.Layer(digest=layer.digest, size=layer.size, media_type=layer.media_type)
            for layer in content.layers
        ),
        config_digest=content.config.digest,
        config=config,
        size=fetched.size,
    )


def build_facts(
    ref: model.ImageReference,
    top: FetchedManifest,
    images: Sequence[model.PlatformImage],
) -> model.ImageFacts:
    return model.ImageFacts(
        reference=ref,
        digest=top.digest,
        media_type=top.media_type,
        is_index=top.is_index,
        images=tuple(images),
        size=top.size,
    )


def build_referrers(
    index: ImageIndex, *, artifact_type: str | None, filtered: bool = False
) -> tuple[Descriptor, ...]:
    """Referrer descriptors of an index, filtered by artifact type unless the server did."""
    if artifact_type is None or filtered:
        return index.manifests
    return tuple(d for d in index.manifests if d.artifact_type == artifact_type)
