from __future__ import annotations

import pytest

from imageward import errors
from imageward.registry import reference

DIGEST = "sha256:" + "0f" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("nginx", "docker.io", "library/nginx", "latest", None),
        ("nginx:1.25", "docker.io", "library/nginx", "1.25", None),
        ("acme/web", "docker.io", "acme/web", "latest", None),
        ("index.docker.io/nginx", "docker.io", "library/nginx", "latest", None),
        ("GHCR.IO/acme/web:V1", "ghcr.io", "acme/web", "V1", None),
        ("ghcr.io:443/acme/web", "ghcr.io", "acme/web", "latest", None),
        ("localhost/web", "localhost", "web", "latest", None),
        ("localhost:5000/a/b/c:1", "localhost:5000", "a/b/c", "1", None),
        (f"web@{DIGEST}", "docker.io", "library/web", None, DIGEST),
        (f"ghcr.io/acme/web:1.4@{DIGEST}", "ghcr.io", "acme/web", "1.4", DIGEST),
        ("[::1]:5000/web", "[::1]:5000", "web", "latest", None),
        ("ghcr.io/a__b/c.d-e---f", "ghcr.io", "a__b/c.d-e---f", "latest", None),
    ],
)
def test_parse_reference(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    parsed = reference.parse_reference(text)
    assert (parsed.registry, parsed.repository, parsed.tag, parsed.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert parsed.original == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty reference"),
        (" nginx", "contains whitespace"),
        ("ghcr.io/ACME/web", "repository path must be lowercase"),
        ("ghcr.io/acme/../evil", "invalid repository path component '..'"),
        ("ghcr.io/acme/./x", "invalid repository path component '.'"),
        ("ghcr.io//x", "invalid repository path component ''"),
        ("ghcr.io/-x", "invalid repository path component '-x'"),
        ("ghcr.io/x:", "invalid tag ''"),
        ("ghcr.io/x:.a", "invalid tag '.a'"),
        ("ghcr.io/x@sha256:abc", "invalid digest (expected sha256:<64 hex> or sha512:<128 hex>)"),
        (
            "ghcr.io/x@" + DIGEST.upper(),
            "invalid digest (expected sha256:<64 hex> or sha512:<128 hex>)",
        ),
        ("bad_host.io/x", "invalid registry host 'bad_host.io'"),
        ("ghcr.io./x", "invalid registry host 'ghcr.io.'"),
        ("ghcr.io/" + "a" * 250, "repository name longer than 255 characters"),
    ],
)
def test_invalid_references(text: str, reason: str) -> None:
    with pytest.raises(errors.InvalidReferenceError) as excinfo:
        reference.parse_reference(text)
    assert excinfo.value.reason == reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [("nginx", False), ("nginx:1", True), ("localhost:5000/x", False), (f"x@{DIGEST}", False)],
)
def test_has_explicit_tag(text: str, expected: bool) -> None:
    assert reference.has_explicit_tag(text) is expected
