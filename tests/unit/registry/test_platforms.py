"""Which index entry a node runs, as containerd chooses it (registry.platforms).

The expectations are containerd's (platforms.Only + images.Manifest with limit 1):
first match wins among equals, fallbacks in vector order, entries without a platform
last, `unknown/unknown` never, annotations never hide an entry.
"""

from __future__ import annotations

import pytest

from imageward.registry import manifests, model, platforms

P = model.Platform


def entries(*listed: tuple[P | None, str] | P | None) -> tuple[platforms.Entry, ...]:
    found = []
    for position, item in enumerate(listed):
        platform, media_type = item if isinstance(item, tuple) else (item, manifests.OCI_MANIFEST)
        found.append(platforms.Entry(position, platform, media_type))
    return tuple(found)


def chosen(listed: tuple[platforms.Entry, ...], node: P) -> list[int]:
    return [e.position for e in platforms.select_entries(listed, node)]


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        (P("linux", "x86_64"), P("linux", "amd64")),
        (P("linux", "amd64", "v1"), P("linux", "amd64")),
        (P("Linux", "AARCH64", "v8"), P("linux", "arm64")),
        (P("linux", "arm64", "8"), P("linux", "arm64")),
        (P("linux", "arm"), P("linux", "arm", "v7")),
        (P("linux", "armhf"), P("linux", "arm", "v7")),
        (P("linux", "armel"), P("linux", "arm", "v6")),
        (P("linux", "i386"), P("linux", "386")),
        (P("linux", "arm", "6"), P("linux", "arm", "v6")),
    ],
)
def test_normalise_as_containerd(raw: P, normal: P) -> None:
    assert platforms.normalise(raw) == normal


def test_preference_vectors() -> None:
    assert [str(p) for p in platforms.build_preference(P("linux", "amd64", "v3"))] == [
        "linux/amd64/v3",
        "linux/amd64/v2",
        "linux/amd64",
        "linux/386",
    ]
    assert [str(p) for p in platforms.build_preference(P("linux", "arm64"))] == [
        "linux/arm64",
        "linux/arm/v8",
        "linux/arm/v7",
        "linux/arm/v6",
        "linux/arm/v5",
    ]
    assert [str(p) for p in platforms.build_preference(P("linux", "arm", "v6"))] == [
        "linux/arm/v6",
        "linux/arm/v5",
    ]


def test_duplicate_platform_first_listed_wins() -> None:
    # The review's case: the chosen platform listed twice, the unsigned one first.
    listed = entries(P("linux", "amd64"), P("linux", "amd64"), P("linux", "arm64"))
    assert chosen(listed, P("linux", "amd64")) == [0]
    assert chosen(listed, P("linux", "arm64")) == [2]


def test_annotation_never_hides_an_entry_only_unknown_platform_does() -> None:
    # An attacker's entry annotated as an attestation but with a real platform runs.
    listed = entries(P("unknown", "unknown"), P("linux", "amd64"))
    assert chosen(listed, P("linux", "amd64")) == [1]
    assert chosen(entries(P("unknown", "unknown")), P("linux", "amd64")) == []


def test_exact_platform_beats_fallback_whatever_the_order() -> None:
    listed = entries(
        P("linux", "arm", "v7"), P("linux", "386"), P("linux", "arm64"), P("linux", "amd64")
    )
    assert chosen(listed, P("linux", "arm64")) == [2]
    assert chosen(listed, P("linux", "amd64")) == [3]
    # Fallbacks when the exact platform is missing.
    assert chosen(entries(P("linux", "386"), P("linux", "arm", "v6")), P("linux", "amd64")) == [0]
    assert chosen(
        entries(P("linux", "arm", "v6"), P("linux", "arm", "v7")), P("linux", "arm64")
    ) == [1]


def test_entries_without_platform_come_last() -> None:
    listed = entries(None, P("linux", "amd64"))
    assert chosen(listed, P("linux", "amd64")) == [1]
    assert chosen(listed, P("linux", "s390x")) == [0]  # then its config must match


def test_nested_index_entries_are_candidates() -> None:
    listed = entries((P("linux", "amd64"), manifests.OCI_INDEX), P("linux", "arm64"))
    assert chosen(listed, P("linux", "amd64")) == [0]


def test_windows_node_may_take_any_build_of_its_arch() -> None:
    listed = entries(P("windows", "amd64"), P("windows", "amd64"), P("linux", "amd64"))
    assert chosen(listed, P("windows", "amd64")) == [0, 1]
    assert chosen(listed, P("linux", "amd64")) == [2]


def test_node_platforms_for_a_pod() -> None:
    windows = platforms.build_node_platforms(platforms.PlatformChoice(os="windows"))
    assert {p.os for p in windows} == {"windows"}
    assert P("windows", "amd64") in windows
    arm64 = platforms.build_node_platforms(platforms.PlatformChoice("linux", "arm64"))
    assert arm64 == (P("linux", "arm64"), P("linux", "arm64", "v9"))
    anything = platforms.build_node_platforms(platforms.ANY_NODE, [P("linux", "wasm")])
    assert {p.os for p in anything} == {"linux", "windows"}
    assert P("linux", "wasm") in anything and P("linux", "amd64", "v3") in anything
    # amd64's base variant first: PrePull plans for what most nodes are.
    assert platforms.build_node_platforms(platforms.PlatformChoice("linux", "amd64"))[0] == P(
        "linux", "amd64"
    )


def test_config_platform_decides_for_entries_without_one() -> None:
    config = model.ImageConfig(user=None, os="linux", architecture="arm64", created=None)
    assert platforms.evaluate_config_runs_on(config, P("linux", "arm64"))
    assert not platforms.evaluate_config_runs_on(config, P("linux", "amd64"))
    assert not platforms.evaluate_config_runs_on(
        model.ImageConfig(user=None, os=None, architecture=None, created=None), P("linux", "amd64")
    )
