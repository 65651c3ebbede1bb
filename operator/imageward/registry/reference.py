"""Image references: parse and normalise them the way containerd and kubelet do.

Grammar from distribution/reference (`regexp.go`, `normalize.go`):
`[host[:port]/]path[:tag][@digest]`.
Normalisation: a first path component is a host only when it contains `.` or `:` or is
`localhost` (Docker's rule), Docker Hub gets `docker.io` and, for one-component paths,
`library/`; hosts are lower-cased, `:443` is dropped and Docker Hub's aliases fold into
`docker.io`, so every spelling of one image yields one `ImageReference`.
"""

from __future__ import annotations

import functools
import re

from imageward import errors
from imageward.registry import model

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (PEP 781)

if TYPE_CHECKING:
    import ipaddress  # at run time imported where an IP literal is read: names need none

DOCKER_HUB = model.DEFAULT_REGISTRY

#: Where Docker Hub's registry API actually answers (`docker.io` itself redirects to a website).
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"

# Hosts that reach Docker Hub: `index.docker.io/library/nginx` must be the same image as
# `nginx`, or it would escape a `docker.io/**` policy and miss docker.io credentials.
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

_DOMAIN_COMPONENT = r"(?:[a-z0-9]|[a-z0-9][a-z0-9-]*[a-z0-9])"
_IPV6 = r"\[[a-f0-9:]+\]"
HOST_RE = re.compile(rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})(?::[0-9]+)?")
PATH_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# sha256 and sha512 are the algorithms registries accept (OCI image-spec, descriptor.md).
DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")

MAX_NAME_LENGTH = 255


_PORT_RE = re.compile(r"[0-9]+")
_INET_ATON_PART = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")


def _parse_inet_aton(name: str) -> ipaddress.IPv4Address | None:
    """An IPv4 address in any spelling glibc's resolver accepts (`127.1`, `0x7f.0.0.1`,
    `0177.0.0.1`, `2130706433`), so that no spelling escapes a host-scoped glob."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 4 or not all(_INET_ATON_PART.fullmatch(p) for p in parts):
        return None
    import ipaddress

    values = [
        int(p, 16) if p[:2].lower() == "0x" else int(p, 8 if p.startswith("0") else 10)
        for p in parts
    ]
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        return None
    number = last
    for index, value in enumerate(head):
        number |= value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


@functools.lru_cache(maxsize=4096)
def build_canonical_host(host: str) -> str:
    """The registry host as matching and caching compare it: one spelling per endpoint.

    A resolver would reach `GHCR.io`, `ghcr.io:443`, `ghcr.io:0443` and `ghcr.io` at the
    same place, so they are one host: lower case (DNS), the port as an integer without
    leading zeros and `:443` (the HTTPS default) dropped, IP literals in canonical form
    (`[0:0::1]` is `[::1]`, `127.1` is `127.0.0.1`), Docker Hub's aliases `docker.io`.
    Glob patterns go through here too: what is not a plain host is left as written.
    Memoised: policy matching asks it for every image of every review.
    """
    host = host.lower()
    if host.startswith("["):
        address, bracket, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
        if bracket and (rest == "" or port):
            import ipaddress

            try:
                name = f"[{ipaddress.IPv6Address(address).compressed}]"
            except ValueError:
                name = f"[{address}]"
        else:
            return host
    else:
        name, colon, port_text = host.rpartition(":")
        if not colon:
            name, port = host, None
        else:
            port = port_text
        parsed = _parse_inet_aton(name)
        if parsed is not None:
            name = str(parsed)
    if port is not None and _PORT_RE.fullmatch(port):
        number = int(port)
        port = None if number == 443 else str(number)
    host = f"{name}:{port}" if port is not None else name
    if host in _DOCKER_HUB_ALIASES:
        return DOCKER_HUB
    return host


def build_endpoint_host(registry: str) -> str:
    """The host that serves the registry API for a canonical registry name."""
    return DOCKER_HUB_ENDPOINT if registry == DOCKER_HUB else registry


def is_domain(component: str) -> bool:
    """Whether the first path component names a registry host (Docker's rule)."""
    return (
        "." in component
        or ":" in component
        or component == "localhost"
        or component.lower() != component
    )


def split_tag(name_and_tag: str) -> tuple[str, str | None]:
    """Split `name[:tag]`; the tag is after the last colon that follows the last slash."""
    colon = name_and_tag.rfind(":")
    if colon > name_and_tag.rfind("/"):
        return name_and_tag[:colon], name_and_tag[colon + 1 :]
    return name_and_tag, None


def split_domain(name: str) -> tuple[str, str]:
    """Split a name into (host, repository) with Docker Hub's defaults applied.

    The host is returned as written (not yet lower-cased or canonicalised).
    """
    slash = name.find("/")
    if slash != -1 and is_domain(name[:slash]):
        host, path = name[:slash], name[slash + 1 :]
    else:
        host, path = DOCKER_HUB, name
    if build_canonical_host(host) == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return host, path


def validate_path(reference: str, path: str) -> None:
    if path != path.lower():
        raise errors.InvalidReferenceError(reference, "repository path must be lowercase")
    for component in path.split("/"):
        if not PATH_COMPONENT_RE.fullmatch(component):
            raise errors.InvalidReferenceError(
                reference, f"invalid repository path component {component!r}"
            )


@functools.lru_cache(maxsize=4096)
def parse_reference(text: str) -> model.ImageReference:
    """Parse and normalise `[host[:port]/]path[:tag][@digest]`.

    Memoised: admission parses the same few hundred image names on every review, and
    the result is an immutable value.

    Raises errors.InvalidReferenceError. The tag defaults to `latest` only when neither
    tag nor digest is given, as kubelet does.
    """
    if not text:
        raise errors.InvalidReferenceError(text, "empty reference")
    if text != text.strip() or any(c.isspace() for c in text):
        raise errors.InvalidReferenceError(text, "contains whitespace")
    name_and_tag, at, digest_text = text.partition("@")
    digest: model.Digest | None = None
    if at:
        if not DIGEST_RE.fullmatch(digest_text):
            raise errors.InvalidReferenceError(
                text, "invalid digest (expected sha256:<64 hex> or sha512:<128 hex>)"
            )
        digest = model.Digest(digest_text)
    name, tag = split_tag(name_and_tag)
    if tag is not None and not TAG_RE.fullmatch(tag):
        raise errors.InvalidReferenceError(text, f"invalid tag {tag!r}")
    if not name:
        raise errors.InvalidReferenceError(text, "empty repository name")
    host, path = split_domain(name)
    # Checked as written, before canonicalising: `c:443:443` would become a valid `c:443`,
    # and a Kelvin sign would lower-case into an ASCII `k` (containerd refuses both).
    if not host.isascii() or not HOST_RE.fullmatch(host.lower()):
        raise errors.InvalidReferenceError(text, f"invalid registry host {host!r}")
    host = build_canonical_host(host)
    port = host.rpartition("]")[2].rpartition(":")[2] if ":" in host.rpartition("]")[2] else ""
    if port and not 0 < int(port) < 65536:
        raise errors.InvalidReferenceError(text, f"invalid registry port {port}")
    validate_path(text, path)
    if len(host) + 1 + len(path) > MAX_NAME_LENGTH:
        raise errors.InvalidReferenceError(
            text, f"repository name longer than {MAX_NAME_LENGTH} characters"
        )
    if tag is None and digest is None:
        tag = "latest"
    return model.ImageReference(
        registry=host, repository=path, tag=tag, digest=digest, original=text
    )


def has_explicit_tag(text: str) -> bool:
    """Whether the reference as written names a tag (else `latest` was implied)."""
    name_and_tag = text.partition("@")[0]
    return split_tag(name_and_tag)[1] is not None


def parse_digest(text: str) -> model.Digest:
    """A digest as registries write it; raises ValueError for anything else."""
    if not DIGEST_RE.fullmatch(text):
        raise ValueError(f"invalid digest {text[:80]!r}")
    return model.Digest(text)


def build_referrers_tag(digest: model.Digest) -> str:
    """The OCI 1.1 referrers fallback tag of a digest: `sha256-<hex>`.

    Cut to 128 characters, the longest tag there is (distribution-spec, so sha512 fits).
    """
    algorithm, _, hex_digest = digest.partition(":")
    return f"{algorithm}-{hex_digest}"[:128]


def build_signature_tag(digest: model.Digest) -> str:
    """The tag of cosign's legacy signature manifest: `sha256-<hex>.sig`."""
    return build_referrers_tag(digest) + ".sig"
