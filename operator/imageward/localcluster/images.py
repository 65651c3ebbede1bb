"""Build OCI and Docker images in memory and push them through the registry HTTP API.

No Docker engine exists on the test machines, so test images are made here: layers are
deterministic tar.gz blobs (sorted entries, fixed mtimes and owners, gzip mtime 0), so the
same inputs give the same digests on every run of one machine (the bytes depend on the
zlib build). Pushing is a small synchronous client (`RegistryClient`) that speaks the
distribution API and answers Basic and Bearer-token challenges. It is test tooling, kept
separate from the operator's own registry client on purpose, so each checks the other.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import http.client
import io
import json
import random
import ssl
import tarfile
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

# -- media types ----------------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
IN_TOTO = "application/vnd.in-toto+json"
EMPTY_JSON = "application/vnd.oci.empty.v1+json"

#: What a client accepts when it asks for a manifest of any kind.
MANIFEST_MEDIA_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)

Format = Literal["oci", "docker"]

#: Fixed timestamps keep digests stable from one run to the next.
FIXED_MTIME = 0
DEFAULT_CREATED = "2024-01-01T00:00:00Z"
DEFAULT_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
NONROOT_USER = "65532:65532"  # the distroless convention

MiB = 1024 * 1024


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


# -- content --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def to_json(self) -> dict[str, str]:
        result = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            result["variant"] = self.variant
        return result

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


LINUX_AMD64 = Platform("linux", "amd64")
LINUX_ARM64 = Platform("linux", "arm64", "v8")
UNKNOWN_PLATFORM = Platform("unknown", "unknown")


@dataclasses.dataclass(frozen=True, slots=True)
class Blob:
    """Bytes with the descriptor fields that point at them."""

    data: bytes = dataclasses.field(repr=False)
    media_type: str
    digest: str
    size: int
    annotations: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(
        cls, data: bytes, media_type: str, *, annotations: Mapping[str, str] | None = None
    ) -> Blob:
        return cls(
            data,
            media_type,
            sha256_digest(data),
            len(data),
            tuple(sorted((annotations or {}).items())),
        )

    def descriptor(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            result["annotations"] = dict(self.annotations)
        return result


@dataclasses.dataclass(frozen=True, slots=True)
class Layer:
    """A gzip-compressed tar layer: `digest`/`size` of the blob, `diff_id` of the tar."""

    data: bytes = dataclasses.field(repr=False)
    digest: str
    size: int
    diff_id: str
    uncompressed_size: int

    @classmethod
    def from_tar(cls, tar: bytes, *, compresslevel: int = 6) -> Layer:
        buffer = io.BytesIO()
        # filename="" and mtime=0: nothing from the build environment lands in the header.
        with gzip.GzipFile(
            filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=compresslevel
        ) as gz:
            gz.write(tar)
        data = buffer.getvalue()
        return cls(data, sha256_digest(data), len(data), sha256_digest(tar), len(tar))

    def blob(self, media_type: str) -> Blob:
        return Blob(self.data, media_type, self.digest, self.size)


FileContent = bytes | tuple[bytes, int]


def _normalise_path(path: str) -> str:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"bad path in layer: {path!r}")
    return "/".join(parts)


def build_tar(files: Mapping[str, FileContent], *, mtime: int = FIXED_MTIME) -> bytes:
    """An uncompressed tar of `files` ({path: bytes | (bytes, mode)}), byte-for-byte stable.

    Parent directories are added (mode 0755); entries are sorted; owners are root and
    timestamps fixed, as reproducible-build tools do.
    """
    entries: dict[str, tuple[bytes, int]] = {}
    for path, content in files.items():
        data, mode = content if isinstance(content, tuple) else (content, 0o644)
        entries[_normalise_path(path)] = (data, mode)
    directories = {
        "/".join(path.split("/")[:i]) for path in entries for i in range(1, path.count("/") + 1)
    }
    clash = directories & entries.keys()
    if clash:
        raise ValueError(f"paths used both as file and directory: {sorted(clash)}")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(directories | entries.keys()):
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if name in directories:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                data, mode = entries[name]
                info.mode = mode
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def layer_from_files(
    files: Mapping[str, FileContent], *, mtime: int = FIXED_MTIME, compresslevel: int = 6
) -> Layer:
    return Layer.from_tar(build_tar(files, mtime=mtime), compresslevel=compresslevel)


def random_layer(size: int, seed: int | str) -> Layer:
    """A layer of about `size` compressed bytes of seeded pseudo-random (incompressible) data.

    Deflate level 0 (stored blocks): random bytes would not shrink anyway, and level 6
    costs ~0.6 s per 30 MiB for nothing.
    """
    data = random.Random(f"imageward-layer:{seed!r}").randbytes(max(0, size))
    name = hashlib.sha256(repr(seed).encode()).hexdigest()[:16]
    return layer_from_files({f"random/{name}.bin": data}, compresslevel=0)


# -- manifests ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Manifest:
    """Anything pushed as a manifest: an image, an index or a crafted artifact.

    `blobs` are pushed before the body (config first), `children` (an index's
    manifests) are pushed by digest before it.
    """

    body: bytes = dataclasses.field(repr=False)
    media_type: str
    digest: str
    blobs: tuple[Blob, ...] = ()
    children: tuple[Manifest, ...] = ()
    platform: Platform | None = None
    layers: tuple[Layer, ...] = ()
    config: Blob | None = None
    #: annotations this manifest carries as an entry of an index
    index_annotations: tuple[tuple[str, str], ...] = ()
    #: OCI 1.1 `artifactType`, repeated in index entries (referrers indexes list it)
    artifact_type: str | None = None

    @classmethod
    def of(cls, document: Mapping[str, Any], media_type: str, **fields: Any) -> Manifest:
        body = canonical_json(document)
        return cls(body, media_type, sha256_digest(body), **fields)

    @property
    def size(self) -> int:
        return len(self.body)

    @property
    def is_index(self) -> bool:
        return self.media_type in (OCI_INDEX, DOCKER_MANIFEST_LIST)

    @property
    def compressed_size(self) -> int:
        """Sum of the layer sizes (what size policies measure); 0 for an index."""
        return sum(layer.size for layer in self.layers)

    @property
    def largest_layer_size(self) -> int:
        return max((layer.size for layer in self.layers), default=0)

    @property
    def document(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.body)
        return result

    def descriptor(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.artifact_type:
            result["artifactType"] = self.artifact_type
        if self.platform is not None:
            result["platform"] = self.platform.to_json()
        if self.index_annotations:
            result["annotations"] = dict(self.index_annotations)
        return result


def build_image(
    layers: Sequence[Layer],
    *,
    platform: Platform = LINUX_AMD64,
    user: str = "",
    labels: Mapping[str, str] | None = None,
    env: Sequence[str] = DEFAULT_ENV,
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] | None = None,
    working_dir: str = "",
    created: str = DEFAULT_CREATED,
    format: Format = "oci",
    annotations: Mapping[str, str] | None = None,
) -> Manifest:
    """An image manifest with its config; OCI or Docker v2 schema 2 by `format`."""
    container_config: dict[str, Any] = {
        "User": user,
        "Env": list(env),
        "Labels": dict(labels or {}),
        "WorkingDir": working_dir,
    }
    if entrypoint is not None:
        container_config["Entrypoint"] = list(entrypoint)
    if cmd is not None:
        container_config["Cmd"] = list(cmd)
    config_document: dict[str, Any] = {
        **platform.to_json(),
        "created": created,
        "config": container_config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created": created, "created_by": f"imageward localcluster layer {i}"}
            for i in range(len(layers))
        ],
    }
    if format == "oci":
        manifest_type, config_type, layer_type = OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP
    else:
        manifest_type, config_type, layer_type = DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER_GZIP
    config = Blob.of(canonical_json(config_document), config_type)
    layer_blobs = tuple(layer.blob(layer_type) for layer in layers)
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config.descriptor(),
        "layers": [blob.descriptor() for blob in layer_blobs],
    }
    if annotations:
        if format != "oci":
            raise ValueError("Docker schema 2 manifests have no annotations")
        document["annotations"] = dict(annotations)
    return Manifest.of(
        document,
        manifest_type,
        blobs=(config, *layer_blobs),
        platform=platform,
        layers=tuple(layers),
        config=config,
    )


def build_artifact(
    layers: Sequence[Blob],
    *,
    config: Blob | None = None,
    artifact_type: str | None = None,
    subject: Manifest | None = None,
    annotations: Mapping[str, str] | None = None,
    media_type: str = OCI_MANIFEST,
) -> Manifest:
    """An OCI manifest of arbitrary blobs (signatures, attestations, bundles).

    Without `config` the OCI empty descriptor (`{}`) is used, as OCI 1.1 artifacts do.
    """
    config = config or Blob.of(b"{}", EMPTY_JSON)
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.descriptor(),
        "layers": [blob.descriptor() for blob in layers],
    }
    if artifact_type:
        document["artifactType"] = artifact_type
    if subject is not None:
        document["subject"] = {
            "mediaType": subject.media_type,
            "digest": subject.digest,
            "size": subject.size,
        }
    if annotations:
        document["annotations"] = dict(annotations)
    return Manifest.of(
        document,
        media_type,
        blobs=(config, *layers),
        config=config,
        # The referrers API and its tag fallback list artifacts with their annotations.
        index_annotations=tuple(sorted((annotations or {}).items())),
        artifact_type=artifact_type,
    )


def build_attestation(subject: Manifest) -> Manifest:
    """A BuildKit-style attestation manifest for `subject` (index entry `unknown/unknown`)."""
    statement = canonical_json(
        {
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://spdx.dev/Document",
            "subject": [{"name": "_", "digest": {"sha256": subject.digest.split(":", 1)[1]}}],
            "predicate": {"spdxVersion": "SPDX-2.3", "name": "imageward-test-sbom"},
        }
    )
    layer = Blob.of(
        statement, IN_TOTO, annotations={"in-toto.io/predicate-type": "https://spdx.dev/Document"}
    )
    config_document = {
        **UNKNOWN_PLATFORM.to_json(),
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
    }
    config = Blob.of(canonical_json(config_document), OCI_CONFIG)
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
    }
    return Manifest.of(
        document,
        OCI_MANIFEST,
        blobs=(config, layer),
        platform=UNKNOWN_PLATFORM,
        config=config,
        index_annotations=(
            ("vnd.docker.reference.digest", subject.digest),
            ("vnd.docker.reference.type", "attestation-manifest"),
        ),
    )


def build_index(
    manifests: Sequence[Manifest],
    *,
    attestations: bool = False,
    format: Format = "oci",
    annotations: Mapping[str, str] | None = None,
) -> Manifest:
    """An image index (OCI) or manifest list (Docker) over `manifests`.

    With `attestations`, an `unknown/unknown` attestation entry follows each image, as
    `docker buildx build --provenance/--sbom` lays them out.
    """
    children: list[Manifest] = []
    for manifest in manifests:
        children.append(manifest)
        if attestations:
            children.append(build_attestation(manifest))
    media_type = OCI_INDEX if format == "oci" else DOCKER_MANIFEST_LIST
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [child.descriptor() for child in children],
    }
    if annotations:
        document["annotations"] = dict(annotations)
    return Manifest.of(document, media_type, children=tuple(children))


# -- ready-made test images -----------------------------------------------------------


def small_image(
    name: str = "small",
    *,
    user: str = "",
    platform: Platform = LINUX_AMD64,
    format: Format = "oci",
    labels: Mapping[str, str] | None = None,
) -> Manifest:
    """A two-layer image of a few hundred bytes; `name` makes its content unique."""
    base = layer_from_files(
        {
            "etc/os-release": b'ID=imageward-test\nPRETTY_NAME="imageward test image"\n',
            "etc/passwd": b"root:x:0:0:root:/root:/sbin/nologin\n"
            b"nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
            "etc/group": b"root:x:0:\nnonroot:x:65532:\n",
        }
    )
    top = layer_from_files(
        {
            f"srv/{name}/name": name.encode(),
            f"srv/{name}/platform": str(platform).encode(),
            f"srv/{name}/run.sh": (b"#!/bin/sh\nexit 0\n", 0o755),
        }
    )
    return build_image(
        [base, top],
        platform=platform,
        user=user,
        labels={"org.opencontainers.image.title": name, **(labels or {})},
        cmd=[f"/srv/{name}/run.sh"],
        format=format,
    )


def root_image(name: str = "root") -> Manifest:
    """An image whose config says User "root" explicitly."""
    return small_image(name, user="root")


def nonroot_image(name: str = "nonroot") -> Manifest:
    return small_image(name, user=NONROOT_USER)


def large_image(
    name: str = "large", *, size: int = 30 * MiB, platform: Platform = LINUX_AMD64
) -> Manifest:
    """A small base layer plus one incompressible layer of about `size` bytes."""
    return build_image(
        [small_image(name).layers[0], random_layer(size, seed=f"{name}-big")],
        platform=platform,
        user=NONROOT_USER,
        labels={"org.opencontainers.image.title": name},
    )


def many_layer_image(name: str = "many-layers", *, count: int = 60) -> Manifest:
    layers = [
        layer_from_files({f"layers/{i:03d}/{name}": f"{name} layer {i}\n".encode()})
        for i in range(count)
    ]
    return build_image(layers, user=NONROOT_USER, labels={"org.opencontainers.image.title": name})


def multiarch_index(
    name: str = "multiarch",
    *,
    platforms: Sequence[Platform] = (LINUX_AMD64, LINUX_ARM64),
    attestations: bool = True,
    user: str = NONROOT_USER,
) -> Manifest:
    """An OCI index with one small image per platform (+ attestation entries)."""
    images = [small_image(name, user=user, platform=platform) for platform in platforms]
    return build_index(images, attestations=attestations)


def scratch_image(
    executable: bytes,
    *,
    path: str = "/imageward-helper",
    platform: Platform = LINUX_AMD64,
    user: str = NONROOT_USER,
) -> Manifest:
    """A single-layer image holding only `executable` (a static binary the caller gives)."""
    layer = layer_from_files({path: (executable, 0o755)})
    return build_image(
        [layer],
        platform=platform,
        user=user,
        env=(),
        entrypoint=["/" + _normalise_path(path)],
        labels={"org.opencontainers.image.title": "scratch"},
    )


def shared_base_images(
    count: int = 3,
    *,
    base_layers: int = 3,
    base_layer_size: int = 1 * MiB,
    top_layer_size: int = 256 * 1024,
    name: str = "shared",
) -> list[Manifest]:
    """`count` images with the same first `base_layers` layers and their own top layer."""
    base = [random_layer(base_layer_size, seed=f"{name}-base-{i}") for i in range(base_layers)]
    return [
        build_image(
            [*base, random_layer(top_layer_size, seed=f"{name}-top-{i}")],
            user=NONROOT_USER,
            labels={"org.opencontainers.image.title": f"{name}-{i}"},
        )
        for i in range(count)
    ]


# -- the registry client --------------------------------------------------------------


class RegistryHTTPError(Exception):
    """A registry (or token endpoint) answered with an unexpected status."""

    def __init__(self, method: str, url: str, status: int, body: bytes) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.body = body
        text = body[:500].decode("utf-8", "replace")
        super().__init__(f"{method} {url}: HTTP {status}: {text}")


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class FetchedManifest:
    body: bytes = dataclasses.field(repr=False)
    media_type: str
    digest: str

    @property
    def document(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.body)
        return result


@dataclasses.dataclass(frozen=True, slots=True)
class Pushed:
    """Where a manifest was pushed; `ref` and `pinned` are ready for a pod spec."""

    host: str
    repository: str
    tag: str | None
    manifest: Manifest

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def name(self) -> str:
        return f"{self.host}/{self.repository}"

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.tag}" if self.tag else self.pinned

    @property
    def pinned(self) -> str:
        return f"{self.name}@{self.digest}"


@dataclasses.dataclass(slots=True)
class _Token:
    value: str
    expires: float


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="…",service="…"` -> ("bearer", {"realm": …, "service": …})."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    i = 0
    while i < len(rest):
        while i < len(rest) and rest[i] in " ,":
            i += 1
        key_end = rest.find("=", i)
        if key_end < 0:
            break
        key = rest[i:key_end].strip().lower()
        i = key_end + 1
        if i < len(rest) and rest[i] == '"':
            # Quoted value; a scope with several entries contains spaces and commas.
            end = i + 1
            value = []
            while end < len(rest) and rest[end] != '"':
                if rest[end] == "\\" and end + 1 < len(rest):
                    end += 1
                value.append(rest[end])
                end += 1
            params[key] = "".join(value)
            i = end + 1
        else:
            end = rest.find(",", i)
            end = len(rest) if end < 0 else end
            params[key] = rest[i:end].strip()
            i = end + 1
    return scheme.lower(), params


class RegistryClient:
    """A synchronous distribution-API client for tests: push, read back, tag, delete.

    One connection per request (no pooling: nothing to leak, nothing to go stale). On a
    401 it answers the challenge once: Basic with the configured credentials, or Bearer
    by fetching a token from the realm (with the credentials when given, else anonymous)
    and caching it per scope until it expires.
    """

    def __init__(
        self,
        host: str,
        *,
        username: str | None = None,
        password: str | None = None,
        scheme: Literal["http", "https"] = "http",
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.host = host
        self.scheme = scheme
        self.username = username
        self.password = password
        self.ssl_context = ssl_context
        self.timeout = timeout
        self._basic = False  # the registry asked for Basic once: send it up front from then on
        self._tokens: dict[str, _Token] = {}

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    # -- transport ------------------------------------------------------------------

    def _send(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None
    ) -> Response:
        parts = urllib.parse.urlsplit(url)
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(
                parts.netloc, timeout=self.timeout, context=self.ssl_context
            )
        else:
            connection = http.client.HTTPConnection(parts.netloc, timeout=self.timeout)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        try:
            connection.request(method, target, body=body, headers=dict(headers))
            with connection.getresponse() as response:
                data = response.read()
                return Response(response.status, response.headers, data)
        finally:
            connection.close()

    def _basic_header(self) -> str:
        pair = f"{self.username or ''}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def _authorization(self, scope: str) -> str | None:
        token = self._tokens.get(scope)
        if token is not None and token.expires > time.monotonic():
            return f"Bearer {token.value}"
        if self._basic and self.username is not None:
            return self._basic_header()
        return None

    def fetch_token(self, realm: str, service: str | None, scope: str | None) -> tuple[str, int]:
        """GET a token from `realm`; returns (token, expires_in). Raises on non-200."""
        query = []
        if service:
            query.append(("service", service))
        if scope:
            query.extend(("scope", s) for s in scope.split(" ") if s)
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        headers = {}
        if self.username is not None:
            headers["Authorization"] = self._basic_header()
        response = self._send("GET", url, headers=headers, body=None)
        if response.status != 200:
            raise RegistryHTTPError("GET", url, response.status, response.body)
        document = json.loads(response.body)
        token = document.get("token") or document.get("access_token")
        if not isinstance(token, str) or not token:
            raise RegistryHTTPError("GET", url, response.status, b"no token in response")
        return token, int(document.get("expires_in") or 60)

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        scope: str | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        expect: Iterable[int] | None = None,
    ) -> Response:
        """One request with auth handling; raises RegistryHTTPError unless status in `expect`."""
        url = urllib.parse.urljoin(self.url + "/", path_or_url)
        scope_key = scope or ""
        all_headers = {"User-Agent": "imageward-localcluster", **(headers or {})}
        if body is not None:
            all_headers.setdefault("Content-Length", str(len(body)))
        authorization = self._authorization(scope_key)
        if authorization:
            all_headers["Authorization"] = authorization
        response = self._send(method, url, headers=all_headers, body=body)
        if response.status == 401:
            challenge = response.headers.get("WWW-Authenticate", "")
            scheme, params = parse_challenge(challenge)
            retry = False
            if scheme == "basic" and self.username is not None:
                self._basic = True
                all_headers["Authorization"] = self._basic_header()
                retry = True
            elif scheme == "bearer" and "realm" in params:
                token, expires_in = self.fetch_token(
                    params["realm"], params.get("service"), params.get("scope") or scope
                )
                # Refresh a little early so a token never expires between check and use.
                self._tokens[scope_key] = _Token(token, time.monotonic() + expires_in - 5)
                all_headers["Authorization"] = f"Bearer {token}"
                retry = True
            if retry:
                response = self._send(method, url, headers=all_headers, body=body)
        if expect is not None and response.status not in set(expect):
            raise RegistryHTTPError(method, url, response.status, response.body)
        return response

    # -- API ------------------------------------------------------------------------

    @staticmethod
    def _scope(repository: str, *actions: str) -> str:
        return f"repository:{repository}:{','.join(actions)}"

    def ping(self) -> int:
        """GET /v2/ with auth; returns the final status (200 when credentials work)."""
        return self.request("GET", "/v2/", scope="").status

    def blob_exists(self, repository: str, digest: str) -> bool:
        response = self.request(
            "HEAD",
            f"/v2/{repository}/blobs/{digest}",
            scope=self._scope(repository, "pull"),
            expect=(200, 404),
        )
        return response.status == 200

    def push_blob(self, repository: str, data: bytes, *, digest: str | None = None) -> str:
        """Upload `data` unless the registry has it (POST + monolithic PUT); returns digest."""
        digest = digest or sha256_digest(data)
        scope = self._scope(repository, "pull", "push")
        if self.blob_exists(repository, digest):
            return digest
        started = self.request(
            "POST", f"/v2/{repository}/blobs/uploads/", scope=scope, body=b"", expect=(202,)
        )
        location = started.headers.get("Location")
        if not location:
            raise RegistryHTTPError("POST", self.url, 202, b"upload started without Location")
        separator = "&" if "?" in location else "?"
        upload = location + separator + urllib.parse.urlencode({"digest": digest})
        self.request(
            "PUT",
            upload,
            scope=scope,
            headers={"Content-Type": "application/octet-stream"},
            body=data,
            expect=(201,),
        )
        return digest

    def get_blob(self, repository: str, digest: str, *, verify: bool = True) -> bytes:
        response = self.request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            scope=self._scope(repository, "pull"),
            expect=(200, 301, 302, 307, 308),
        )
        for _ in range(3):  # storage drivers may redirect to a signed URL; follow without auth
            if response.status == 200:
                break
            location = urllib.parse.urljoin(self.url + "/", response.headers.get("Location", ""))
            response = self._send("GET", location, headers={}, body=None)
        if response.status != 200:
            raise RegistryHTTPError("GET", digest, response.status, response.body)
        if verify and sha256_digest(response.body) != digest:
            raise ValueError(
                f"blob {repository}@{digest} has digest {sha256_digest(response.body)}"
            )
        return response.body

    def push_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        """PUT a manifest as-is at a tag or digest; returns its digest."""
        response = self.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            scope=self._scope(repository, "pull", "push"),
            headers={"Content-Type": media_type},
            body=body,
            expect=(201,),
        )
        return response.headers.get("Docker-Content-Digest") or sha256_digest(body)

    def get_manifest(
        self,
        repository: str,
        reference: str,
        *,
        accept: Sequence[str] = MANIFEST_MEDIA_TYPES,
    ) -> FetchedManifest:
        response = self.request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            scope=self._scope(repository, "pull"),
            headers={"Accept": ", ".join(accept)},
            expect=(200,),
        )
        digest = sha256_digest(response.body)
        if reference.startswith("sha256:") and digest != reference:
            raise ValueError(f"manifest {repository}@{reference} has digest {digest}")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return FetchedManifest(response.body, media_type, digest)

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """HEAD a manifest: its digest, or None when the registry does not have it."""
        response = self.request(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            scope=self._scope(repository, "pull"),
            headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)},
            expect=(200, 404),
        )
        if response.status == 404:
            return None
        return response.headers.get("Docker-Content-Digest")

    def tag(self, repository: str, source: str, tag: str) -> str:
        """Point `tag` at the manifest `source` (tag or digest) names; returns its digest."""
        fetched = self.get_manifest(repository, source)
        return self.push_manifest(repository, tag, fetched.body, fetched.media_type)

    def delete_manifest(self, repository: str, digest: str) -> None:
        """Delete by digest (distribution refuses deletes by tag; needs delete enabled)."""
        self.request(
            "DELETE",
            f"/v2/{repository}/manifests/{digest}",
            scope=self._scope(repository, "delete"),
            expect=(202,),
        )

    def delete_blob(self, repository: str, digest: str) -> None:
        self.request(
            "DELETE",
            f"/v2/{repository}/blobs/{digest}",
            scope=self._scope(repository, "delete"),
            expect=(202,),
        )

    def list_tags(self, repository: str) -> list[str]:
        response = self.request(
            "GET",
            f"/v2/{repository}/tags/list",
            scope=self._scope(repository, "pull"),
            expect=(200,),
        )
        tags: list[str] = json.loads(response.body).get("tags") or []
        return tags

    def catalog(self) -> list[str]:
        response = self.request("GET", "/v2/_catalog", scope="registry:catalog:*", expect=(200,))
        repositories: list[str] = json.loads(response.body).get("repositories") or []
        return repositories

    def push(self, repository: str, manifest: Manifest, *, tag: str | None = None) -> Pushed:
        """Push blobs, child manifests (by digest) and `manifest` at `tag` (or its digest)."""
        for child in manifest.children:
            self.push(repository, child)
        for blob in manifest.blobs:
            self.push_blob(repository, blob.data, digest=blob.digest)
        digest = self.push_manifest(
            repository, tag or manifest.digest, manifest.body, manifest.media_type
        )
        if digest != manifest.digest:
            raise ValueError(f"registry computed {digest} for manifest {manifest.digest}")
        return Pushed(self.host, repository, tag, manifest)


def push_test_images(
    client: RegistryClient,
    *,
    prefix: str = "test",
    tag: str = "1.0",
    executable: bytes | None = None,
    large_size: int = 30 * MiB,
) -> dict[str, Pushed]:
    """Push the standard test set under `<prefix>/<name>:<tag>`; returns them by name.

    Names: small, root, nonroot, docker-v2, large, many-layers, multiarch, shared-0..2,
    and scratch when `executable` is given.
    """
    images: dict[str, Manifest] = {
        "small": small_image("small"),
        "root": root_image(),
        "nonroot": nonroot_image(),
        "docker-v2": small_image("docker-v2", format="docker"),
        "large": large_image(size=large_size),
        "many-layers": many_layer_image(),
        "multiarch": multiarch_index(),
    }
    for i, image in enumerate(shared_base_images()):
        images[f"shared-{i}"] = image
    if executable is not None:
        images["scratch"] = scratch_image(executable)
    return {name: client.push(f"{prefix}/{name}", image, tag=tag) for name, image in images.items()}
