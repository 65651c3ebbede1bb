"""Caches with a fake clock, and lookups in flight shared by concurrent callers."""

from __future__ import annotations

import asyncio

import pytest

from imageward import errors, metrics
from imageward.localcluster import images
from imageward.registry import auth, cache, manifests, model

DIGEST = model.Digest("sha256:" + "e" * 64)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lookups(name: str, result: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "imageward_cache_lookups_total", {"cache": name, "result": result}
    )
    return value or 0.0


def test_tags_expire_and_lookups_are_counted() -> None:
    clock = Clock()
    caches = cache.RegistryCache(tag_ttl=30, timer=clock)
    key = ("ghcr.io", "acme/web", "1.0")
    hits, misses = lookups("tags", "hit"), lookups("tags", "miss")

    caches.remember_digest(key, DIGEST)
    assert caches.tags.get(key) == DIGEST
    clock.now += 31
    assert caches.tags.get(key) is None

    assert (lookups("tags", "hit"), lookups("tags", "miss")) == (hits + 1, misses + 1)
    assert metrics.REGISTRY.get_sample_value("imageward_cache_entries", {"cache": "tags"}) == 1


async def test_uncounted_caches_work_and_record_nothing() -> None:
    # `imageward check` exports no metrics: its caches count nothing (and so never need
    # prometheus_client), but cache as usual.
    clock = Clock()
    caches = cache.RegistryCache(tag_ttl=30, timer=clock, counted=False)
    key = ("ghcr.io", "acme/uncounted", "1.0")
    before = {
        (name, result): lookups(name, result)
        for name in ("tags", "inflight")
        for result in ("hit", "miss")
    }
    entries = metrics.REGISTRY.get_sample_value("imageward_cache_entries", {"cache": "tags"})

    caches.remember_digest(key, DIGEST)
    assert caches.tags.get(key) == DIGEST
    assert caches.tags.get(("ghcr.io", "acme/uncounted", "2.0")) is None

    async def work() -> str:
        return "done"

    flight, joined = caches.inflight.join("key", work)
    assert not joined and await flight.task == "done"

    assert {k: lookups(*k) for k in before} == before
    assert (
        metrics.REGISTRY.get_sample_value("imageward_cache_entries", {"cache": "tags"}) == entries
    )
    await caches.close()


def test_only_not_found_is_remembered_and_comes_back_fresh() -> None:
    clock = Clock()
    caches = cache.RegistryCache(negative_ttl=5, timer=clock)
    missing = errors.NotFoundError(
        "no such manifest", registry="r.io", repository="a", reference="x"
    )
    refused = errors.UnauthorizedError("no", registry="r.io")

    caches.remember_failure(("r.io", "a", "x"), missing)
    caches.remember_failure(("r.io", "a", "y"), refused)
    first = caches.recall_failure(("r.io", "a", "x"))
    second = caches.recall_failure(("r.io", "a", "x"))

    assert isinstance(first, errors.NotFoundError) and str(first) == str(missing)
    assert first is not missing and first is not second
    assert caches.recall_failure(("r.io", "a", "y")) is None
    clock.now += 6
    assert caches.recall_failure(("r.io", "a", "x")) is None


def test_disabled_ttls_remember_nothing() -> None:
    caches = cache.RegistryCache(tag_ttl=0, negative_ttl=0)
    caches.remember_digest(("r", "a", "t"), DIGEST)
    caches.remember_failure(("r", "a", "t"), errors.NotFoundError("x", registry="r"))
    assert caches.tags.get(("r", "a", "t")) is None
    assert caches.recall_failure(("r", "a", "t")) is None


def test_tokens_live_until_their_expiry() -> None:
    clock = Clock()
    caches = cache.RegistryCache(timer=clock)
    token = auth.parse_token_response(b'{"token": "t", "expires_in": 100}', now=caches.now())
    caches.tokens.put("k", token)

    clock.now += 89
    assert caches.tokens.get("k") == token
    clock.now += 2
    assert caches.tokens.get("k") is None


def test_facts_are_a_bounded_lru() -> None:
    caches = cache.RegistryCache(facts_size=2)
    facts = [
        model.ImageFacts(
            reference=model.ImageReference("r", "a", tag=str(i)),
            digest=DIGEST,
            media_type=manifests.OCI_MANIFEST,
            is_index=False,
            images=(),
        )
        for i in range(3)
    ]
    for i, item in enumerate(facts):
        caches.facts.put(i, item)
    assert caches.facts.get(0) is None
    assert caches.facts.get(2) is facts[2]
    assert len(caches.facts) == 2


def test_manifests_are_bounded_by_bytes() -> None:
    caches = cache.RegistryCache(manifest_bytes=1000)
    small = manifests.parse_manifest(images.small_image("a").body, content_type=None)
    huge = manifests.FetchedManifest(DIGEST, manifests.OCI_MANIFEST, b" " * 2000, small.content)

    caches.manifests.put("small", small)
    caches.manifests.put("huge", huge)  # larger than the whole cache: not kept, no error

    assert caches.manifests.get("small") is small
    assert caches.manifests.get("huge") is None


async def test_concurrent_identical_lookups_share_one_task() -> None:
    flights = cache.InFlight()
    started = 0
    release = asyncio.Event()

    async def work() -> str:
        nonlocal started
        started += 1
        await release.wait()
        return "done"

    async def lookup() -> str:
        flight, _ = flights.join("key", work)
        return await asyncio.shield(flight.task)

    waiters = [asyncio.ensure_future(lookup()) for _ in range(100)]
    await asyncio.sleep(0)
    assert len(flights) == 1
    release.set()

    assert await asyncio.gather(*waiters) == ["done"] * 100
    assert started == 1
    assert len(flights) == 0


async def test_a_waiter_giving_up_does_not_cancel_the_others() -> None:
    flights = cache.InFlight()
    release = asyncio.Event()

    async def work() -> int:
        await release.wait()
        return 7

    flight, joined = flights.join("key", work)
    impatient = asyncio.ensure_future(asyncio.wait_for(asyncio.shield(flight.task), 0.01))
    with pytest.raises(TimeoutError):
        await impatient
    release.set()

    assert not joined
    assert await flight.task == 7


async def test_refused_flights_are_replaced_and_failures_retrieved() -> None:
    flights = cache.InFlight()

    async def fail() -> None:
        raise errors.NotFoundError("gone", registry="r")

    async def succeed() -> str:
        return "fresh"

    first, _ = flights.join("key", fail, state="old")
    second, joined = flights.join("key", succeed, reusable=lambda flight: flight.state != "old")
    await asyncio.sleep(0)

    assert not joined and second is not first
    assert await second.task == "fresh"
    assert first.task.done() and isinstance(first.task.exception(), errors.NotFoundError)


async def test_close_cancels_what_runs() -> None:
    flights = cache.InFlight()

    async def forever() -> None:
        await asyncio.Event().wait()

    flight, _ = flights.join("key", forever)
    await asyncio.sleep(0)
    await flights.close()

    assert flight.task.cancelled()
    assert len(flights) == 0
