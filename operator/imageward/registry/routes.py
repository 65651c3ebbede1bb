"""Distribution API routes and the small parts of HTTP answers the client reads. No I/O.

Endpoints: the registry itself, after its mirrors (containerd's `hosts.toml` order);
plain HTTP only for hosts listed as insecure. Mirror requests carry `?ns=<registry>`,
as containerd sends them, so one mirror can serve several upstreams.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from imageward import records
from imageward.registry import model, reference

_set = object.__setattr__  # how a frozen Record's __init__ sets its fields


class Endpoint(records.Record):
    """Where to send API requests for one registry: `<scheme>://<host><prefix>/v2/…`."""

    __slots__ = ("host", "mirror_of", "prefix", "scheme")
    host: str
    scheme: str
    prefix: str
    mirror_of: str | None
    """The canonical registry this endpoint mirrors (None: the registry itself)."""

    def __init__(
        self,
        host: str,
        scheme: str = "https",
        prefix: str = "",
        mirror_of: str | None = None,
    ) -> None:
        _set(self, "host", host)
        _set(self, "scheme", scheme)
        _set(self, "prefix", prefix)
        _set(self, "mirror_of", mirror_of)

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}{self.prefix}"

    @property
    def plain_http(self) -> bool:
        return self.scheme == "http"


def _is_insecure(host: str, insecure: Iterable[str]) -> bool:
    canonical = reference.build_canonical_host(host)
    return any(reference.build_canonical_host(item) == canonical for item in insecure)


def parse_mirror(text: str, *, registry: str, insecure: Sequence[str]) -> Endpoint:
    """A mirror as configured: `host[:port]`, or a URL `http(s)://host[:port][/prefix]`."""
    if "://" in text:
        parts = urllib.parse.urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"mirror {text!r} is not an http(s) URL")
        prefix = parts.path.rstrip("/")
        if prefix.endswith("/v2"):
            prefix = prefix[: -len("/v2")]
        return Endpoint(parts.netloc.lower(), parts.scheme, prefix, mirror_of=registry)
    scheme = "http" if _is_insecure(text, insecure) else "https"
    return Endpoint(text.lower().rstrip("/"), scheme, mirror_of=registry)


def build_endpoints(
    registry: str,
    *,
    insecure: Sequence[str] = (),
    mirrors: Sequence[tuple[str, str]] = (),
) -> tuple[Endpoint, ...]:
    """The endpoints to try for a canonical registry: its mirrors in order, then itself."""
    found: list[Endpoint] = []
    for source, mirror in mirrors:
        if reference.build_canonical_host(source) == registry:
            found.append(parse_mirror(mirror, registry=registry, insecure=insecure))
    host = reference.build_endpoint_host(registry)
    scheme = "http" if _is_insecure(registry, insecure) else "https"
    found.append(Endpoint(host, scheme))
    return tuple(found)


def _query(endpoint: Endpoint, extra: Sequence[tuple[str, str]] = ()) -> str:
    items = list(extra)
    if endpoint.mirror_of is not None:
        items.append(("ns", endpoint.mirror_of))
    return "?" + urllib.parse.urlencode(items) if items else ""


def build_manifest_url(endpoint: Endpoint, repository: str, ref: str) -> str:
    return f"{endpoint.base_url}/v2/{repository}/manifests/{ref}{_query(endpoint)}"


def build_blob_url(endpoint: Endpoint, repository: str, digest: model.Digest) -> str:
    return f"{endpoint.base_url}/v2/{repository}/blobs/{digest}{_query(endpoint)}"


def build_referrers_url(
    endpoint: Endpoint, repository: str, digest: model.Digest, *, artifact_type: str | None
) -> str:
    extra = [("artifactType", artifact_type)] if artifact_type else []
    return f"{endpoint.base_url}/v2/{repository}/referrers/{digest}{_query(endpoint, extra)}"


_DEFAULT_PORTS = {"http": 80, "https": 443}


def build_origin(url: str) -> tuple[str, str]:
    """(scheme, host:port) of a URL: credentials are only ever sent back to the same one.

    The host is lower-cased and the port made explicit (`https://ghcr.io` and
    `https://GHCR.io:443` are one origin); user information never counts as the host.
    """
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # a port that is no number: an origin of its own, never equal
        return scheme, parts.netloc.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    return scheme, f"{host}:{port or _DEFAULT_PORTS.get(scheme, 0)}"


def evaluate_followable(current: str, target: str) -> bool:
    """Whether a redirect or a `Link` from `current` to `target` may be followed at all:
    HTTP(S) only, and never from HTTPS down to plain HTTP."""
    target_scheme = urllib.parse.urlsplit(target).scheme.lower()
    if target_scheme not in ("http", "https"):
        return False
    return not (
        target_scheme == "http" and urllib.parse.urlsplit(current).scheme.lower() == "https"
    )


def build_redirect_url(current: str, location: str) -> str:
    return urllib.parse.urljoin(current, location)


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date.

    `now` is the wall-clock time (seconds since the epoch) the date is relative to.
    """
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit(), and float("²") raises
        return float(value)
    # Imported for the rare HTTP date: the email package costs every CLI lookup a few ms.
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):  # Overflow: a 10-digit year
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)


def parse_error_body(body: bytes, *, limit: int = 300) -> str:
    """What a registry said in an error answer: `CODE: message` entries, else the text."""
    try:
        document: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deep nesting
        document = None
    if isinstance(document, Mapping) and isinstance(document.get("errors"), list):
        parts = []
        for item in document["errors"][:5]:
            if isinstance(item, Mapping):
                code, message = item.get("code"), item.get("message")
                text = ": ".join(str(x) for x in (code, message) if x)
                if text:
                    parts.append(text)
        if parts:
            return "; ".join(parts)[:limit]
    text = body[:limit].decode("utf-8", "replace").strip()
    return re.sub(r"\s+", " ", text)


_LINK_RE = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?', re.IGNORECASE)


def parse_next_link(header: str | None) -> str | None:
    """The `rel="next"` target of a `Link` header (paginated referrers)."""
    if not header:
        return None
    match = _LINK_RE.search(header)
    return match.group(1) if match else None
