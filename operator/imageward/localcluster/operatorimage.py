"""The operator image, built here from the project's Dockerfile, for tests and `make image`.

`ensure_built()` runs `hack/build-image.sh` (buildah, Debian bases; no Docker engine, no
Docker Hub), which keeps the image as an OCI layout in the tool cache keyed by the hash of
its inputs: about 0.2 s when nothing changed, about a minute after a source edit, minutes
from cold. `push()` copies it into any harness registry with the harness's own client
(Basic and Bearer auth answered), digest unchanged, so a test can sign it or pin it:

    image = operatorimage.ensure_built()
    pushed = operatorimage.push(image, registry)          # registries.Registry
    helm ... --set image.repository={pushed.name} --set image.digest={pushed.digest}
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import pathlib
import subprocess
import zlib
from typing import Any

from imageward import errors
from imageward.localcluster import images, registries

BUILD_SCRIPT = pathlib.Path("hack") / "build-image.sh"
#: The tag hack/build-image.sh gives the image inside its OCI layout.
LAYOUT_TAG = "imageward"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
#: How long a cold build may take (bases, pip, buildah) before the caller gives up.
DEFAULT_BUILD_TIMEOUT = 3600.0


class OperatorImageError(errors.ImagewardError):
    """The image could not be built or read; carries the build's output tail."""


def repository_root() -> pathlib.Path:
    """The checkout this package runs from (an editable install), which holds the build."""
    root = pathlib.Path(__file__).resolve().parents[3]
    if not (root / BUILD_SCRIPT).is_file():
        raise OperatorImageError(
            f"{root / BUILD_SCRIPT} not found: building the operator image needs the "
            "imageward checkout (pip install -e .), not an installed wheel"
        )
    return root


@dataclasses.dataclass(frozen=True, slots=True)
class BuiltImage:
    """One image in an OCI layout: its manifest and config, blobs read on demand."""

    layout: pathlib.Path
    digest: str
    manifest_body: bytes = dataclasses.field(repr=False)
    config_body: bytes = dataclasses.field(repr=False)

    @property
    def manifest(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.manifest_body)
        return result

    @property
    def media_type(self) -> str:
        return str(self.manifest.get("mediaType") or images.OCI_MANIFEST)

    @property
    def config(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.config_body)
        return result

    @property
    def container_config(self) -> dict[str, Any]:
        result: dict[str, Any] = self.config.get("config") or {}
        return result

    @property
    def key(self) -> str:
        """The build's cache key (the layout directory is `imageward-<key>`)."""
        return self.layout.name.removeprefix("imageward-")

    @property
    def layer_sizes(self) -> list[int]:
        return [int(layer["size"]) for layer in self.manifest["layers"]]

    @property
    def compressed_size(self) -> int:
        """Sum of the layer sizes: what a pull downloads, what size policies measure."""
        return sum(self.layer_sizes)

    @property
    def history(self) -> list[str]:
        """`created_by` of each layer (empty-layer steps left out), in layer order."""
        return [
            str(entry.get("created_by", ""))
            for entry in self.config.get("history", [])
            if not entry.get("empty_layer")
        ]

    @property
    def user(self) -> str:
        return str(self.container_config.get("User", ""))

    @property
    def entrypoint(self) -> list[str]:
        return list(self.container_config.get("Entrypoint") or [])

    @property
    def cmd(self) -> list[str]:
        return list(self.container_config.get("Cmd") or [])

    def blob(self, digest: str) -> bytes:
        """A blob of the layout, its sha256 checked."""
        algorithm, _, hexdigest = digest.partition(":")
        data = (self.layout / "blobs" / algorithm / hexdigest).read_bytes()
        if algorithm != "sha256" or hashlib.sha256(data).hexdigest() != hexdigest:
            raise OperatorImageError(f"blob {digest} in {self.layout} does not match its digest")
        return data

    def to_manifest(self) -> images.Manifest:
        """The image as the harness's `Manifest` (blobs in memory), ready to push."""
        document = self.manifest
        config = images.Blob(
            self.config_body,
            document["config"]["mediaType"],
            document["config"]["digest"],
            len(self.config_body),
        )
        diff_ids = self.config["rootfs"]["diff_ids"]
        blobs: list[images.Blob] = []
        layers: list[images.Layer] = []
        for descriptor, diff_id in zip(document["layers"], diff_ids, strict=True):
            data = self.blob(descriptor["digest"])
            blobs.append(
                images.Blob(data, descriptor["mediaType"], descriptor["digest"], len(data))
            )
            layers.append(
                images.Layer(data, descriptor["digest"], len(data), diff_id, _gunzipped_size(data))
            )
        return images.Manifest(
            self.manifest_body,
            self.media_type,
            self.digest,
            blobs=(config, *blobs),
            platform=images.Platform(self.config["os"], self.config["architecture"]),
            layers=tuple(layers),
            config=config,
        )


def _gunzipped_size(data: bytes) -> int:
    inflater = zlib.decompressobj(wbits=31)  # gzip framing
    size = 0
    for start in range(0, len(data), 1 << 20):
        size += len(inflater.decompress(data[start : start + (1 << 20)]))
    return size + len(inflater.flush())


def load(layout: pathlib.Path, *, tag: str = LAYOUT_TAG) -> BuiltImage:
    """The image tagged `tag` in the OCI layout `layout`."""
    index = json.loads((layout / "index.json").read_text())
    entries = [
        entry
        for entry in index.get("manifests", [])
        if (entry.get("annotations") or {}).get(REF_NAME_ANNOTATION) == tag
    ]
    if len(entries) != 1:
        raise OperatorImageError(f"{layout}: expected one manifest tagged {tag!r}, found {entries}")
    digest = entries[0]["digest"]
    reader = BuiltImage(layout, digest, b"", b"")
    manifest_body = reader.blob(digest)
    config_digest = json.loads(manifest_body)["config"]["digest"]
    return BuiltImage(layout, digest, manifest_body, reader.blob(config_digest))


def ensure_built(
    *, root: pathlib.Path | None = None, timeout: float = DEFAULT_BUILD_TIMEOUT
) -> BuiltImage:
    """Build the image unless the cache has it for these exact inputs; return it.

    Runs `hack/build-image.sh` every time (it only hashes files when cached), so an edit
    made since the last call is always built in.
    """
    root = root or repository_root()
    try:
        result = subprocess.run(
            ["bash", str(root / BUILD_SCRIPT)],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise OperatorImageError(f"{BUILD_SCRIPT} did not finish within {timeout:.0f}s") from e
    if result.returncode != 0:
        raise OperatorImageError(
            f"{BUILD_SCRIPT} failed ({result.returncode}):\n{result.stderr[-4000:]}"
        )
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise OperatorImageError(f"{BUILD_SCRIPT} printed no layout:\n{result.stderr[-4000:]}")
    return load(pathlib.Path(lines[-1]))


def push(
    image: BuiltImage,
    registry: registries.Registry | images.RegistryClient,
    *,
    repository: str = "imageward",
    tag: str | None = None,
) -> images.Pushed:
    """Push `image` (blobs the registry has are skipped) at `tag`, default its cache key."""
    client = registry.client() if isinstance(registry, registries.Registry) else registry
    return client.push(repository, _manifest_of(image), tag=tag or image.key)


@functools.lru_cache(maxsize=4)
def _manifest_of(image: BuiltImage) -> images.Manifest:
    # Reading and hashing ~80 MB of blobs costs about a second: once per image per process.
    return image.to_manifest()
