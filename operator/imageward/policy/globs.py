"""Anchored glob patterns over normalised image references.

Syntax (compiled once, by `parse_image_pattern`):

- `*` matches any run of characters within one path segment (never `/`);
- `?` matches exactly one character other than `/`;
- `**` must be a whole segment and spans segments: a leading `**/` matches zero or more
  leading segments (the registry host included), a middle `/**/` zero or more segments,
  a trailing `/**` one or more segments (`ghcr.io/acme/**` matches `ghcr.io/acme/x` and
  `ghcr.io/acme/a/b`, not `ghcr.io/acme` itself, which is no repository of acme);
  `**` alone matches every image;
- everything else is literal; matching is anchored at both ends, so
  `ghcr.io/acme/**` never matches `ghcr.io.evil.com/acme/x` or `ghcr.io/acme-evil/x`
  (the unanchored matching behind Portieris's admission bypass).

Patterns are normalised the way references are, treating wildcards as ordinary letters
for Docker Hub's defaults: `nginx` is `docker.io/library/nginx`, `nginx*` is
`docker.io/library/nginx*`, `acme/*` is `docker.io/acme/*`. The registry host is
lower-cased and canonicalised (`index.docker.io` and `docker.io:443` are `docker.io`).
Only a leading `**` leaves the host open. Repository paths must be lowercase, as in
references: `ghcr.io/Acme/*` is refused rather than silently never matching.

A pattern without tag or digest matches every tag and digest of the repositories it
names; `name:tag-glob` also requires the tag (the wildcards apply within the tag);
`name@sha256:...` requires that digest. When the reference cannot tell (a tag pattern
against a digest-pinned reference, whose tag the runtime ignores, or a digest pattern
against a tag-only reference) the caller decides with `when_unknown`: include when
unsure, exclude only when sure.
"""

from __future__ import annotations

import re

from imageward import errors, records
from imageward.registry import model as registry_model
from imageward.registry import reference as registry_reference

MAX_PATTERN_LENGTH = 512


_set = object.__setattr__  # how a frozen Record's __init__ sets its fields


class PatternError(errors.ImagewardError):
    """A glob that cannot be compiled; parse_policy turns it into a PolicyError."""

    def __init__(self, pattern: str, reason: str) -> None:
        self.pattern = pattern
        self.reason = reason
        super().__init__(f"invalid pattern {pattern!r}: {reason}")


class ImagePattern(records.Record):
    """A `match.images` glob, compiled: the name part anchored, tag and digest apart."""

    __slots__ = ("digest", "name", "normalised", "tag", "text")
    text: str
    """The pattern as written in the policy."""

    normalised: str
    """The pattern with Docker Hub defaults applied, e.g. `docker.io/library/nginx*`."""

    name: re.Pattern[str]
    """Anchored regex over `<host>/<repository>`."""

    tag: re.Pattern[str] | None
    digest: registry_model.Digest | None

    def __init__(
        self,
        text: str,
        normalised: str,
        name: re.Pattern[str],
        tag: re.Pattern[str] | None = None,
        digest: registry_model.Digest | None = None,
    ) -> None:
        _set(self, "text", text)
        _set(self, "normalised", normalised)
        _set(self, "name", name)
        _set(self, "tag", tag)
        _set(self, "digest", digest)


class TagPattern(records.Record):
    """A `forbiddenTags` glob, compiled."""

    __slots__ = ("regex", "text")
    text: str
    regex: re.Pattern[str]

    def __init__(
        self,
        text: str,
        regex: re.Pattern[str],
    ) -> None:
        _set(self, "text", text)
        _set(self, "regex", regex)


class HostPattern(records.Record):
    """An `allowedRegistries` entry: a registry host glob, normalised as hosts are."""

    __slots__ = ("normalised", "regex", "text")
    text: str
    normalised: str
    regex: re.Pattern[str]

    def __init__(
        self,
        text: str,
        normalised: str,
        regex: re.Pattern[str],
    ) -> None:
        _set(self, "text", text)
        _set(self, "normalised", normalised)
        _set(self, "regex", regex)


def _build_segment_regex(segment: str) -> str:
    return "".join(
        "[^/]*" if char == "*" else "[^/]" if char == "?" else re.escape(char) for char in segment
    )


def _substitute_wildcards(text: str, letter: str = "x") -> str:
    # Validation trick: a glob is structurally valid when the same text with every
    # wildcard replaced by a plain letter is a valid reference part.
    return text.replace("**", letter).replace("*", letter).replace("?", letter)


def _check_text(text: str, what: str) -> None:
    if not text:
        raise PatternError(text, f"empty {what}")
    if len(text) > MAX_PATTERN_LENGTH:
        raise PatternError(text, f"longer than {MAX_PATTERN_LENGTH} characters")
    if any(char.isspace() for char in text):
        raise PatternError(text, "contains whitespace")


def _validate_host_glob(pattern: str, host: str) -> None:
    if "**" in host:
        raise PatternError(pattern, "** must be a whole path segment")
    name, colon, port = host.partition(":") if not host.startswith("[") else (host, "", "")
    candidate = _substitute_wildcards(name) + (colon + _substitute_wildcards(port, "0"))
    if not registry_reference.HOST_RE.fullmatch(candidate):
        raise PatternError(pattern, f"invalid registry host {host!r}")


def _validate_path_glob(pattern: str, segments: list[str]) -> None:
    for segment in segments:
        if segment == "**":
            continue
        if "**" in segment:
            raise PatternError(pattern, "** must be a whole path segment")
        if segment != segment.lower():
            raise PatternError(pattern, "repository paths are lowercase")
        if not registry_reference.PATH_COMPONENT_RE.fullmatch(_substitute_wildcards(segment)):
            raise PatternError(pattern, f"invalid repository path segment {segment!r}")


def _build_name_regex(segments: list[str]) -> str:
    # Collapse runs of `**`: `a/**/**/b` means `a/**/b`, and two adjacent spanning
    # groups would need a separator between them that is not there.
    collapsed: list[str] = []
    for segment in segments:
        if segment == "**" and collapsed and collapsed[-1] == "**":
            continue
        collapsed.append(segment)
    if collapsed == ["**"]:
        return ".+"
    last = len(collapsed) - 1
    regex = ""
    slash_before_next = False
    for index, segment in enumerate(collapsed):
        if segment == "**":
            if index == 0:
                regex += "(?:[^/]+/)*"
                slash_before_next = False
                continue
            regex += "(?:/[^/]+)+" if index == last else "(?:/[^/]+)*"
            slash_before_next = True
            continue
        if slash_before_next:
            regex += "/"
        regex += _build_segment_regex(segment)
        slash_before_next = True
    return regex


def parse_tag_pattern(text: str) -> TagPattern:
    """Compile a tag glob (`latest`, `*-dev`, `v1.?`); tags are case-sensitive."""
    _check_text(text, "tag pattern")
    if "/" in text or ":" in text or "@" in text:
        raise PatternError(text, "a tag pattern cannot contain '/', ':' or '@'")
    if not registry_reference.TAG_RE.fullmatch(_substitute_wildcards(text)):
        raise PatternError(text, "not a valid tag (letters, digits, '_', '.', '-')")
    return TagPattern(text=text, regex=re.compile(_build_segment_regex(text)))


def parse_host_pattern(text: str) -> HostPattern:
    """Compile a registry host glob (`ghcr.io`, `registry.acme.internal:5000`, `*.acme.io`)."""
    _check_text(text, "registry")
    if "/" in text or "@" in text:
        raise PatternError(text, "a registry is a host[:port], without path")
    normalised = registry_reference.build_canonical_host(text)
    _validate_host_glob(text, normalised)
    return HostPattern(
        text=text, normalised=normalised, regex=re.compile(_build_segment_regex(normalised))
    )


def parse_image_pattern(text: str) -> ImagePattern:
    """Compile an image glob; raises PatternError with the reason."""
    _check_text(text, "image pattern")
    name_and_tag, at, digest_text = text.partition("@")
    digest: registry_model.Digest | None = None
    if at:
        if not registry_reference.DIGEST_RE.fullmatch(digest_text):
            raise PatternError(text, "the digest after '@' must be a literal sha256:<64 hex>")
        digest = registry_model.Digest(digest_text)
    name, tag_text = registry_reference.split_tag(name_and_tag)
    tag: TagPattern | None = None
    if tag_text is not None:
        try:
            tag = parse_tag_pattern(tag_text)
        except PatternError as error:
            raise PatternError(text, error.reason) from error
    if not name:
        raise PatternError(text, "empty repository name")
    segments = name.split("/")
    if len(segments) == 1 and ("." in name or name == "localhost"):
        # Docker would read `ghcr.io` as the Hub image library/ghcr.io: surely a mistake.
        raise PatternError(
            text, f"names a registry host, not images; write {name_and_tag}/** for all"
        )
    if segments[0] == "**":
        host_segments: list[str] = []
        path_segments = segments
    else:
        host, path = registry_reference.split_domain(name)
        host = registry_reference.build_canonical_host(host)
        _validate_host_glob(text, host)
        host_segments = [host]
        path_segments = path.split("/")
    _validate_path_glob(text, path_segments)
    all_segments = host_segments + path_segments
    normalised = "/".join(all_segments)
    if tag is not None:
        normalised += f":{tag.text}"
    if digest is not None:
        normalised += f"@{digest}"
    return ImagePattern(
        text=text,
        normalised=normalised,
        name=re.compile(_build_name_regex(all_segments)),
        tag=tag.regex if tag is not None else None,
        digest=digest,
    )


def evaluate_tag_pattern(pattern: TagPattern, tag: str | None) -> bool:
    return tag is not None and pattern.regex.fullmatch(tag) is not None


def evaluate_host_pattern(pattern: HostPattern, host: str) -> bool:
    return pattern.regex.fullmatch(registry_reference.build_canonical_host(host)) is not None


def evaluate_image_pattern(
    pattern: ImagePattern,
    reference: registry_model.ImageReference,
    *,
    when_unknown: bool,
) -> bool:
    """Whether a parsed reference matches; the host is canonicalised before comparing.

    A tag pattern cannot be decided for a reference that carries a digest: the runtime
    pulls the digest and ignores the tag, so `web:1.0@sha256:<anything>` would otherwise
    slip out through an `excludeImages: [web:1.*]`. Nor can a digest pattern for a
    tag-only reference, before the tag is resolved. `when_unknown` is the answer in those
    cases: True to include (match.images: check when unsure), False to exclude only when
    sure (excludeImages).
    """
    name = f"{registry_reference.build_canonical_host(reference.registry)}/{reference.repository}"
    if pattern.name.fullmatch(name) is None:
        return False
    if pattern.tag is not None:
        if reference.digest is not None or reference.tag is None:
            return when_unknown
        if pattern.tag.fullmatch(reference.tag) is None:
            return False
    if pattern.digest is not None:
        if reference.digest is None:
            return when_unknown
        return pattern.digest == reference.digest
    return True
