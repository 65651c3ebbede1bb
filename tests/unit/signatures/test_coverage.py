"""A signature counts for the digest the runtime pulls (review finding 1)."""

from __future__ import annotations

from imageward.registry import model as registry_model
from imageward.signatures import coverage, verify

INDEX = registry_model.Digest("sha256:" + "1" * 64)
AMD64 = registry_model.Digest("sha256:" + "2" * 64)
ARM64 = registry_model.Digest("sha256:" + "3" * 64)


def result(digest: str, **verified: str | None) -> verify.VerificationResult:
    """Authority -> signer that verified it (None: not verified, no signature)."""
    outcomes = tuple(
        verify.AuthorityOutcome(
            name,
            "key",
            signer is not None,
            "" if signer is not None else verify.NO_SIGNATURE,
            "legacy",
            frozenset({signer}) if signer is not None else frozenset(),
        )
        for name, signer in verified.items()
    )
    return verify.VerificationResult(registry_model.Digest(digest), 1, outcomes, (), len(outcomes))


def pulled(label: str, digest: str, **verified: str | None) -> coverage.Pulled:
    return coverage.Pulled(label, registry_model.Digest(digest), result(digest, **verified))


def test_signed_index_covers_its_entries() -> None:
    found = coverage.evaluate_coverage(
        ["release"],
        result(INDEX, release="k1"),
        [pulled("linux/amd64", AMD64, release=None), pulled("linux/arm64", ARM64, release=None)],
    )
    assert found == coverage.Coverage(verified=1, failures=())


def test_one_signed_entry_never_vouches_for_its_sibling() -> None:
    found = coverage.evaluate_coverage(
        ["release"],
        result(INDEX, release=None),
        [pulled("linux/amd64", AMD64, release="k1"), pulled("linux/arm64", ARM64, release=None)],
    )
    assert found.verified == 0
    assert found.failures == (
        (
            "release",
            "signs linux/amd64 but not the index or linux/arm64 (linux/arm64: no signature found)",
        ),
    )


def test_every_entry_signed_covers_an_unsigned_index() -> None:
    found = coverage.evaluate_coverage(
        ["release"],
        result(INDEX, release=None),
        [pulled("linux/amd64", AMD64, release="k1"), pulled("linux/arm64", ARM64, release="k1")],
    )
    assert found == coverage.Coverage(verified=1, failures=())


def test_threshold_counts_the_weakest_entry() -> None:
    # Two signers on amd64, one on arm64: a node pulling arm64 runs what one vouched for.
    found = coverage.evaluate_coverage(
        ["a", "b"],
        result(INDEX, a=None, b=None),
        [
            pulled("linux/amd64", AMD64, a="k1", b="k2"),
            pulled("linux/arm64", ARM64, a="k1", b=None),
        ],
    )
    assert found.verified == 1
    assert [name for name, _ in found.failures] == ["b"]


def test_index_signature_and_entry_signature_add_up() -> None:
    found = coverage.evaluate_coverage(
        ["a", "b"],
        result(INDEX, a="k1", b=None),
        [
            pulled("linux/amd64", AMD64, a=None, b="k2"),
            pulled("linux/arm64", ARM64, a=None, b="k2"),
        ],
    )
    assert found == coverage.Coverage(verified=2, failures=())


def test_single_manifest_is_its_own_digest() -> None:
    assert coverage.evaluate_coverage(["a"], result(AMD64, a="k1")).verified == 1
    missing = coverage.evaluate_coverage(["a"], result(AMD64, a=None))
    assert missing == coverage.Coverage(verified=0, failures=(("a", verify.NO_SIGNATURE),))


def test_unsigned_index_names_the_entries_nodes_would_pull() -> None:
    found = coverage.evaluate_coverage(
        ["release"],
        result(INDEX, release=None),
        [pulled("windows/amd64 (sha256:3333…)", ARM64, release=None)],
    )
    assert found.failures == (
        ("release", "no signature found on the index or on windows/amd64 (sha256:3333…)"),
    )
