"""Loading policies: key material resolved, and duplicate signers refused (finding 9)."""

from __future__ import annotations

import asyncio
from typing import Any

from imageward import policystore
from tests.unit.signatures import build


def body(*authorities: dict[str, Any], threshold: int = 2) -> dict[str, Any]:
    return {
        "metadata": {"name": "two-signers", "generation": 3},
        "spec": {
            "rules": {"signatures": {"threshold": threshold, "authorities": list(authorities)}}
        },
    }


def test_same_key_listed_twice_makes_the_policy_unusable() -> None:
    pem = build.public_pem(build.generate("p256"))
    loaded = asyncio.run(
        policystore.load_policy(
            body(
                {"name": "release", "key": {"pem": pem}},
                {"name": "release-again", "key": {"pem": pem}},
            )
        )
    )
    assert not loaded.usable
    assert loaded.reason.startswith(
        "authorities release and release-again have the same key (sha256:"
    )
    assert "one signer would count twice towards the threshold" in loaded.reason
    # What it matched is still covered (fail closed), with that reason.
    assert loaded.generation == 3


def test_same_key_in_another_pem_spelling_is_still_the_same_key() -> None:
    pem = build.public_pem(build.generate("p256"))
    respelled = pem.replace("\n", "\r\n") + "\n\n"
    loaded = asyncio.run(
        policystore.load_policy(
            body({"name": "a", "key": {"pem": pem}}, {"name": "b", "key": {"pem": respelled}})
        )
    )
    assert not loaded.usable and "authorities a and b have the same key" in loaded.reason


def test_distinct_keys_load() -> None:
    first, second = (build.public_pem(build.generate("p256")) for _ in range(2))
    loaded = asyncio.run(
        policystore.load_policy(
            body({"name": "a", "key": {"pem": first}}, {"name": "b", "key": {"pem": second}})
        )
    )
    assert loaded.usable and len(loaded.authorities) == 2


def _policy(rules: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "offline", "generation": 2}, "spec": {"rules": rules}}


def _offline_cases() -> list[dict[str, Any]]:
    pem = build.public_pem(build.generate("p256"))
    not_a_key = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    secret_ref = {"secretRef": {"namespace": "n", "name": "s"}}
    return [
        _policy({"maxLayers": 3}),
        _policy({"signatures": {"authorities": [{"name": "k", "key": {"pem": pem}}]}}),
        _policy({"signatures": {"authorities": [{"name": "k", "key": {"pem": "x"}}]}}),
        _policy({"signatures": {"authorities": [{"name": "k", "key": {"pem": not_a_key}}]}}),
        _policy({"signatures": {"authorities": [{"name": "k", "key": secret_ref}]}}),
        _policy(
            {
                "signatures": {
                    "authorities": [
                        {"name": "k", "keyless": {"issuer": "https://issuer", "subject": "a@b"}}
                    ]
                }
            }
        ),
        _policy(
            {
                "attestations": [
                    {
                        "name": "scanned",
                        "predicateType": "https://example.com/scan/v1",
                        "authorities": [{"name": "k", "key": {"pem": pem}}],
                        "conditions": [{"expression": "true"}],
                    }
                ]
            }
        ),
        _policy({"maxCompresedSize": "1Gi"}),
        {"metadata": {"name": "no-spec"}},
    ]


def test_offline_loading_is_load_policy_without_readers() -> None:
    # `imageward check` loads policies without an event loop; what it gets must be what
    # `load_policy` gives with no Secret or ConfigMap reader, usable or not.
    for document in _offline_cases():
        offline = policystore.load_policy_offline(document)
        awaited = asyncio.run(policystore.load_policy(document))
        assert (offline.usable, offline.reason, offline.match, offline.generation) == (
            awaited.usable,
            awaited.reason,
            awaited.match,
            awaited.generation,
        )
        assert offline.policy == awaited.policy
        assert offline.authorities == awaited.authorities
