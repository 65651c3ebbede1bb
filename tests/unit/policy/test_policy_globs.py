from __future__ import annotations

import pytest

from imageward import errors
from imageward.policy import globs
from imageward.registry import reference as registry_reference

DIGEST = "sha256:" + "ab" * 32


def matches(pattern: str, image: str, *, when_unknown: bool = False) -> bool:
    return globs.evaluate_image_pattern(
        globs.parse_image_pattern(pattern),
        registry_reference.parse_reference(image),
        when_unknown=when_unknown,
    )


@pytest.mark.parametrize(
    ("pattern", "image"),
    [
        ("**", "nginx"),
        ("**", "ghcr.io/acme/a/b/c:1@" + DIGEST),
        ("ghcr.io/acme/**", "ghcr.io/acme/x"),
        ("ghcr.io/acme/**", "ghcr.io/acme/a/b"),
        ("ghcr.io/acme/**", "ghcr.io/acme/x:1.4"),
        ("ghcr.io/acme/**", "ghcr.io/acme/x@" + DIGEST),
        ("ghcr.io/acme/*", "ghcr.io/acme/web"),
        ("ghcr.io/acme/web*", "ghcr.io/acme/web"),
        ("ghcr.io/acme/web*", "ghcr.io/acme/web-api"),
        ("ghcr.io/acme/we?", "ghcr.io/acme/web"),
        ("ghcr.io/acme/**/web", "ghcr.io/acme/web"),
        ("ghcr.io/acme/**/web", "ghcr.io/acme/team/sub/web"),
        ("ghcr.io/acme/**/**/web", "ghcr.io/acme/team/web"),
        ("**/nginx", "nginx"),
        ("**/nginx", "quay.io/x/nginx"),
        ("nginx", "nginx:1.25"),
        ("nginx", "docker.io/library/nginx"),
        ("nginx", "index.docker.io/library/nginx"),
        ("nginx", "registry-1.docker.io/library/nginx"),
        ("docker.io/**", "nginx"),
        ("docker.io/library/*", "nginx"),
        ("nginx*", "nginx-unprivileged"),
        ("acme/**", "acme/web"),
        ("acme/*", "docker.io/acme/web"),
        ("*.acme.internal/**", "eu.acme.internal/team/web"),
        ("registry.acme.internal:5000/**", "registry.acme.internal:5000/web"),
        ("localhost:5000/**", "localhost:5000/web"),
        ("GHCR.IO/acme/**", "ghcr.io/acme/x"),
        ("ghcr.io/acme/**", "GHCR.IO/acme/x"),
        ("ghcr.io/acme/**", "ghcr.io:443/acme/x"),
        ("ghcr.io/acme/web:1.4", "ghcr.io/acme/web:1.4"),
        ("ghcr.io/acme/web:1.*", "ghcr.io/acme/web:1.4"),
        ("ghcr.io/acme/**:latest", "ghcr.io/acme/web"),
        ("**:latest", "nginx"),
        (f"ghcr.io/acme/web@{DIGEST}", f"ghcr.io/acme/web:1@{DIGEST}"),
        ("[::1]:5000/**", "[::1]:5000/web"),
    ],
)
def test_matches(pattern: str, image: str) -> None:
    assert matches(pattern, image)


@pytest.mark.parametrize(
    ("pattern", "image"),
    [
        # Bypass attempts: the match is anchored and segment-aware.
        ("ghcr.io/acme/**", "ghcr.io.evil.com/acme/x"),
        ("ghcr.io/acme/**", "evil.com/ghcr.io/acme/x"),
        ("ghcr.io/acme/**", "ghcr.io/acme-evil/x"),
        ("ghcr.io/acme/**", "ghcr.io/acmex"),
        ("ghcr.io/acme/**", "ghcr.io:5000/acme/x"),
        ("ghcr.io/acme/**", "ghcr.io/acme"),
        ("acme/**", "acme-evil/x"),
        ("acme/**", "ghcr.io/acme/x"),
        ("ghcr.io/acme/*", "ghcr.io/acme/a/b"),
        ("ghcr.io/acme/we?", "ghcr.io/acme/we"),
        ("ghcr.io/acme/web", "ghcr.io/acme/web-api"),
        ("ghcr.io/acme/web", "ghcr.io/acme/web/x"),
        ("nginx", "evil.com/library/nginx"),
        ("nginx", "nginx-unprivileged"),
        ("nginx*", "nginxinc/nginx-unprivileged"),
        ("*.acme.internal/**", "acme.internal/web"),
        ("*.acme.internal/**", "evil.acme.internal.evil.com/web"),
        ("docker.io/library/*", "docker.io/acme/web"),
        # Tags and digests.
        ("ghcr.io/acme/web:1.4", "ghcr.io/acme/web:1.40"),
        ("ghcr.io/acme/web:1.4", "ghcr.io/acme/web"),
        ("ghcr.io/acme/web:1.*", "ghcr.io/acme/web@" + DIGEST),
        ("**:latest", "nginx:Latest"),
        (f"ghcr.io/acme/web@{DIGEST}", "ghcr.io/acme/web:1"),
        (f"ghcr.io/acme/web@{DIGEST}", "ghcr.io/acme/web@sha256:" + "cd" * 32),
    ],
)
def test_does_not_match(pattern: str, image: str) -> None:
    assert not matches(pattern, image)


@pytest.mark.parametrize(
    ("pattern", "image"),
    [
        # The runtime pulls the digest and ignores the tag: the tag proves nothing.
        ("ghcr.io/acme/web:1.*", "ghcr.io/acme/web:1.4@" + DIGEST),
        ("ghcr.io/acme/web:1.*", "ghcr.io/acme/web:2.0@" + DIGEST),
        ("ghcr.io/acme/web:1.*", "ghcr.io/acme/web@" + DIGEST),
        # A tag may resolve to the digest; not known before the lookup.
        (f"ghcr.io/acme/web@{DIGEST}", "ghcr.io/acme/web:1"),
    ],
)
def test_undecidable_tag_or_digest(pattern: str, image: str) -> None:
    assert matches(pattern, image, when_unknown=True)
    assert not matches(pattern, image, when_unknown=False)


@pytest.mark.parametrize(
    ("pattern", "image"),
    [
        ("ghcr.io/acme/web:1.*", "ghcr.io/other/web:1.4@" + DIGEST),
        (f"ghcr.io/acme/web@{DIGEST}", "ghcr.io/acme/web@sha256:" + "cd" * 32),
        (f"ghcr.io/acme/web@{DIGEST}", "ghcr.io/other/web:1"),
    ],
)
def test_decidable_mismatch_ignores_when_unknown(pattern: str, image: str) -> None:
    assert not matches(pattern, image, when_unknown=True)


@pytest.mark.parametrize(
    ("pattern", "normalised"),
    [
        ("nginx", "docker.io/library/nginx"),
        ("nginx*", "docker.io/library/nginx*"),
        ("acme/*", "docker.io/acme/*"),
        ("**", "**"),
        ("**/nginx", "**/nginx"),
        ("GHCR.IO/acme/**", "ghcr.io/acme/**"),
        ("index.docker.io/acme/web:1.*", "docker.io/acme/web:1.*"),
        ("ghcr.io:443/acme/**", "ghcr.io/acme/**"),
    ],
)
def test_normalised(pattern: str, normalised: str) -> None:
    assert globs.parse_image_pattern(pattern).normalised == normalised


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("", "empty image pattern"),
        ("ghcr.io/Acme/**", "repository paths are lowercase"),
        ("ghcr.io/acme/../evil", "invalid repository path segment '..'"),
        ("ghcr.io/acme//x", "invalid repository path segment ''"),
        ("ghcr.io/acme/a**", "** must be a whole path segment"),
        ("**.acme.io/x", "** must be a whole path segment"),
        ("ghcr.io/acme/ x", "contains whitespace"),
        ("ghcr.io/acme/x:bad/tag", "invalid repository path segment 'x:bad'"),
        ("ghcr.io/acme/x@sha256:*", "the digest after '@' must be a literal sha256:<64 hex>"),
        ("ghcr.io/acme/x:-x", "not a valid tag (letters, digits, '_', '.', '-')"),
        ("bad_host.io/x", "invalid registry host 'bad_host.io'"),
        ("ghcr.io", "names a registry host, not images; write ghcr.io/** for all"),
        (
            "localhost:5000",
            "names a registry host, not images; write localhost:5000/** for all",
        ),
        ("x" * 513, "longer than 512 characters"),
    ],
)
def test_invalid_patterns(pattern: str, reason: str) -> None:
    with pytest.raises(globs.PatternError) as excinfo:
        globs.parse_image_pattern(pattern)
    assert excinfo.value.reason == reason
    assert isinstance(excinfo.value, errors.ImagewardError)


def test_upper_case_repository_reference_is_invalid() -> None:
    pattern = globs.parse_image_pattern("ghcr.io/acme/**")
    with pytest.raises(errors.InvalidReferenceError, match="must be lowercase"):
        globs.evaluate_image_pattern(
            pattern, registry_reference.parse_reference("ghcr.io/ACME/x"), when_unknown=True
        )


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("ghcr.io", "ghcr.io", True),
        ("ghcr.io", "GHCR.io", True),
        ("ghcr.io", "ghcr.io:443", True),
        ("ghcr.io", "ghcr.io:5000", False),
        ("ghcr.io", "ghcr.io.evil.com", False),
        ("docker.io", "index.docker.io", True),
        ("index.docker.io", "docker.io", True),
        ("registry.acme.internal:5000", "registry.acme.internal:5000", True),
        ("registry.acme.internal:5000", "registry.acme.internal", False),
        ("*.acme.internal", "eu.acme.internal", True),
        ("*.acme.internal", "acme.internal", False),
        ("*.acme.internal", "eu.acme.internal:5000", False),
    ],
)
def test_host_patterns(pattern: str, host: str, expected: bool) -> None:
    assert globs.evaluate_host_pattern(globs.parse_host_pattern(pattern), host) is expected


@pytest.mark.parametrize("pattern", ["ghcr.io/acme", "", "bad_host", "ghcr.io@x"])
def test_invalid_host_patterns(pattern: str) -> None:
    with pytest.raises(globs.PatternError):
        globs.parse_host_pattern(pattern)


@pytest.mark.parametrize(
    ("pattern", "tag", "expected"),
    [
        ("latest", "latest", True),
        ("latest", "Latest", False),
        ("latest", None, False),
        ("*-dev", "1.2-dev", True),
        ("*-dev", "1.2-dev1", False),
        ("v1.?", "v1.2", True),
        ("v1.?", "v1.23", False),
    ],
)
def test_tag_patterns(pattern: str, tag: str | None, expected: bool) -> None:
    assert globs.evaluate_tag_pattern(globs.parse_tag_pattern(pattern), tag) is expected


@pytest.mark.parametrize("pattern", ["", "a/b", "a:b", "-x", "x" * 129])
def test_invalid_tag_patterns(pattern: str) -> None:
    with pytest.raises(globs.PatternError):
        globs.parse_tag_pattern(pattern)
