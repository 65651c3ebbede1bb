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


# -- one spelling per registry host (review finding 7) ----------------------------------


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("ghcr.io:0443", "ghcr.io"),
        ("GHCR.io:443", "ghcr.io"),
        ("ghcr.io:00443", "ghcr.io"),
        ("registry.acme:05000", "registry.acme:5000"),
        ("127.1:5000", "127.0.0.1:5000"),  # glibc's inet_aton spellings of one address
        ("0x7f.0.0.1:5000", "127.0.0.1:5000"),
        ("0177.0.0.1:5000", "127.0.0.1:5000"),
        ("2130706433:5000", "127.0.0.1:5000"),
        ("[0:0:0:0:0:0:0:1]:5000", "[::1]:5000"),
        ("[::FFFF:127.0.0.1]", "[::ffff:7f00:1]"),
        ("index.docker.io:443", "docker.io"),
        ("256.1.1.1", "256.1.1.1"),  # no address: a name, left as written
        ("*.acme.io:0443", "*.acme.io"),  # globs go through here too
    ],
)
def test_canonical_host(written: str, canonical: str) -> None:
    assert reference.build_canonical_host(written) == canonical


@pytest.mark.parametrize(
    ("alias", "same"),
    [
        ("ghcr.io:0443/acme/web:1", "ghcr.io/acme/web:1"),
        ("127.1:5000/shop/web:1", "127.0.0.1:5000/shop/web:1"),
        ("[0::1]:5000/shop/web:1", "[::1]:5000/shop/web:1"),
    ],
)
def test_host_aliases_parse_to_one_reference(alias: str, same: str) -> None:
    parsed, expected = reference.parse_reference(alias), reference.parse_reference(same)
    assert (parsed.registry, parsed.repository, parsed.tag) == (
        expected.registry,
        expected.repository,
        expected.tag,
    )


@pytest.mark.parametrize("text", ["ghcr.io:0/acme/web", "ghcr.io:65536/acme/web"])
def test_ports_out_of_range_are_invalid(text: str) -> None:
    with pytest.raises(errors.InvalidReferenceError, match="invalid registry port"):
        reference.parse_reference(text)
