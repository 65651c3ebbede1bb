"""What the registry client remembers, and the lookups it shares while they run.

- facts, platform images and manifests by digest: a digest names immutable content, so
  these never go stale; LRUs bounded by bytes (manifests exactly, facts and images by
  an estimate per layer), so a few huge hostile images cannot crowd memory;
- tag -> digest for a short TTL: tags move, and a pod admitted a little late with the
  previous digest is what kubelet would have pulled a moment earlier anyway;
- "not found" for a few seconds, so a burst of pods with a typo costs one lookup;
- tokens until shortly before their `expires_in`;
- lookups in flight: concurrent identical lookups await one task (Kyverno #5714,
  policy-controller #797: a webhook times out when N pods start N identical lookups).

Keys always start with the canonical registry and repository, so one repository's
content is never served for another name. No I/O here; the client does the fetching.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, Protocol, TypeVar

import cachetools

from imageward import errors, settings
from imageward.registry import auth, manifests, model

T = TypeVar("T")
V = TypeVar("V")

#: Cache names as they appear in `imageward_cache_lookups_total{cache=…}`.
FACTS = "facts"
IMAGES = "images"
MANIFESTS = "manifests"
TAGS = "tags"
NEGATIVE = "negative"
TOKENS = "tokens"
INFLIGHT = "inflight"

DEFAULT_MANIFEST_BYTES = 32 * 1024 * 1024
#: Facts and platform images are bounded by an estimate of their memory, not by count:
#: one hostile 1,000-layer image weighs as much as a few hundred ordinary ones.
DEFAULT_FACTS_BYTES = 32 * 1024 * 1024
DEFAULT_IMAGES_BYTES = 32 * 1024 * 1024
_LAYER_BYTES = 240  # a Layer, its digest and media type strings
_IMAGE_BYTES = 1024  # a PlatformImage with its config fields


def estimate_image_bytes(image: model.PlatformImage) -> int:
    # Config labels are what a hostile config can make large (2 MiB of them fit).
    labels = sum(len(key) + len(value) + 120 for key, value in image.config.labels)
    return _IMAGE_BYTES + _LAYER_BYTES * len(image.layers) + labels


def estimate_facts_bytes(facts: model.ImageFacts) -> int:
    return _IMAGE_BYTES + sum(estimate_image_bytes(image) for image in facts.images)


DEFAULT_TOKEN_ENTRIES = 1024
DEFAULT_NEGATIVE_ENTRIES = 4096


class _BoundedLRU(cachetools.LRUCache[Hashable, V]):
    """An LRU bounded by entries and by (estimated) bytes, whichever is reached first."""

    def __init__(self, entries: int, max_bytes: int, getsizeof: Callable[[V], int]) -> None:
        super().__init__(max_bytes, getsizeof=getsizeof)
        self.max_entries = entries

    def __setitem__(self, key: Hashable, value: V) -> None:
        while key not in self and len(self) >= self.max_entries:
            self.popitem()
        super().__setitem__(key, value)


class _Count(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class _Level(Protocol):
    def set(self, value: float) -> None: ...


class _Uncounted:
    """A metric that records nothing, for a process that exports no metrics."""

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass


_UNCOUNTED = _Uncounted()


def _cache_metrics(name: str, counted: bool) -> tuple[_Count, _Count, _Level]:
    """Cache `name`'s hit and miss counters and entries gauge. Bound once: a labelled
    child costs a dict lookup and a lock per `.labels()`. Uncounted (`imageward check`,
    which exports no metrics), prometheus_client is not even imported."""
    if not counted:
        return _UNCOUNTED, _UNCOUNTED, _UNCOUNTED
    from imageward import metrics

    return (
        metrics.cache_lookups.labels(cache=name, result="hit"),
        metrics.cache_lookups.labels(cache=name, result="miss"),
        metrics.cache_entries.labels(cache=name),
    )


class _Store(Generic[V]):
    """One cachetools cache with its metric name; every lookup counts as hit or miss."""

    def __init__(
        self, name: str, cache: cachetools.Cache[Hashable, V], *, counted: bool = True
    ) -> None:
        self.name = name
        self.cache = cache
        self._hits, self._misses, self._entries = _cache_metrics(name, counted)

    def get(self, key: Hashable) -> V | None:
        value = self.cache.get(key)
        (self._misses if value is None else self._hits).inc()
        return value

    def put(self, key: Hashable, value: V) -> None:
        try:
            self.cache[key] = value
        except ValueError:
            return  # larger than the whole cache (cachetools' getsizeof): not kept
        self._entries.set(len(self.cache))

    def pop(self, key: Hashable) -> None:
        self.cache.pop(key, None)
        self._entries.set(len(self.cache))

    def clear(self) -> None:
        self.cache.clear()
        self._entries.set(0)

    def __len__(self) -> int:
        return len(self.cache)


class Flight(Generic[T]):
    """One shared lookup: its task and what the creator attached (e.g. its progress).

    Mutable; `repr` and `==` over its fields and no hash, as a slotted dataclass (whose
    making would cost `imageward check` a millisecond at import).
    """

    __slots__ = ("state", "task")
    task: asyncio.Task[T]
    state: object

    def __init__(self, task: asyncio.Task[T], state: object = None) -> None:
        self.task = task
        self.state = state

    def __repr__(self) -> str:
        return f"{self.__class__.__qualname__}(task={self.task!r}, state={self.state!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Flight) and other.__class__ is self.__class__:
            return (self.task, self.state) == (other.task, other.state)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # as a dataclass with eq: unhashable


class InFlight:
    """Concurrent identical lookups share one task.

    The task outlives any one waiter (each waits through `asyncio.shield` under its own
    deadline), so a waiter that gives up does not fail the others. The lookup itself
    must be bounded (the client runs it under the creator's deadline); `close()` cancels
    whatever is still running.
    """

    def __init__(self, *, counted: bool = True) -> None:
        self._flights: dict[Hashable, Flight[Any]] = {}
        self._hits, self._misses, self._entries = _cache_metrics(INFLIGHT, counted)

    def __len__(self) -> int:
        return len(self._flights)

    def join(
        self,
        key: Hashable,
        start: Callable[[], Coroutine[Any, Any, T]],
        *,
        state: object = None,
        reusable: Callable[[Flight[Any]], bool] | None = None,
    ) -> tuple[Flight[T], bool]:
        """The flight for `key`, started with `start()` unless one runs; (flight, joined).

        `reusable` can refuse a running flight (one about to fail on its own deadline):
        then a new one replaces it under the key, and the old one ends unobserved.
        """
        flight: Flight[T] | None = self._flights.get(key)
        if flight is not None and not flight.task.done() and (reusable is None or reusable(flight)):
            self._hits.inc()
            return flight, True
        self._misses.inc()
        task = asyncio.get_running_loop().create_task(start())
        flight = Flight(task, state)
        self._flights[key] = flight
        self._entries.set(len(self._flights))
        task.add_done_callback(lambda done: self._finished(key, done))
        return flight, False

    def _finished(self, key: Hashable, task: asyncio.Task[Any]) -> None:
        current = self._flights.get(key)
        if current is not None and current.task is task:
            del self._flights[key]
            self._entries.set(len(self._flights))
        # Retrieve the outcome: when every waiter gave up, nobody else would, and asyncio
        # would log "exception was never retrieved".
        if not task.cancelled():
            task.exception()

    async def close(self) -> None:
        tasks = [flight.task for flight in self._flights.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._flights.clear()
        self._entries.set(0)


class RegistryCache:
    """Every cache of one registry client. `timer` is monotonic seconds (tests pass a fake);
    `counted=False` records no `imageward_cache_*` metrics (a process that exports none)."""

    def __init__(
        self,
        *,
        facts_size: int = 4096,
        tag_ttl: float = 30.0,
        negative_ttl: float = 5.0,
        manifest_bytes: int = DEFAULT_MANIFEST_BYTES,
        facts_bytes: int = DEFAULT_FACTS_BYTES,
        images_bytes: int = DEFAULT_IMAGES_BYTES,
        token_entries: int = DEFAULT_TOKEN_ENTRIES,
        timer: Callable[[], float] = time.monotonic,
        counted: bool = True,
    ) -> None:
        self.timer = timer
        self.facts: _Store[model.ImageFacts] = _Store(
            FACTS, _BoundedLRU(facts_size, facts_bytes, estimate_facts_bytes), counted=counted
        )
        self.images: _Store[model.PlatformImage] = _Store(
            IMAGES, _BoundedLRU(facts_size * 2, images_bytes, estimate_image_bytes), counted=counted
        )
        self.manifests: _Store[manifests.FetchedManifest] = _Store(
            MANIFESTS,
            cachetools.LRUCache(manifest_bytes, getsizeof=lambda fetched: max(1, fetched.size)),
            counted=counted,
        )
        self.tags: _Store[model.Digest] = _Store(
            TAGS, cachetools.TTLCache(facts_size, ttl=tag_ttl, timer=timer), counted=counted
        )
        self.negative: _Store[errors.RegistryError] = _Store(
            NEGATIVE,
            cachetools.TTLCache(DEFAULT_NEGATIVE_ENTRIES, ttl=negative_ttl, timer=timer),
            counted=counted,
        )
        self.tokens: _Store[auth.Token] = _Store(
            TOKENS,
            cachetools.TLRUCache(
                token_entries, ttu=lambda _key, token, _now: token.expires_at, timer=timer
            ),
            counted=counted,
        )
        self.inflight = InFlight(counted=counted)
        self._negative_enabled = negative_ttl > 0
        self._tags_enabled = tag_ttl > 0

    @classmethod
    def from_settings(
        cls,
        config: settings.RegistrySettings,
        *,
        timer: Callable[[], float] = time.monotonic,
        counted: bool = True,
    ) -> RegistryCache:
        return cls(
            facts_size=config.facts_cache_size,
            tag_ttl=config.tag_cache_ttl,
            negative_ttl=config.negative_cache_ttl,
            timer=timer,
            counted=counted,
        )

    def now(self) -> float:
        return self.timer()

    def remember_digest(self, key: Hashable, digest: model.Digest) -> None:
        if self._tags_enabled:
            self.tags.put(key, digest)

    def remember_failure(self, key: Hashable, error: errors.RegistryError) -> None:
        """Only "not found" is remembered: other failures depend on credentials or luck."""
        if self._negative_enabled and isinstance(error, errors.NotFoundError):
            self.negative.put(key, error)

    def recall_failure(self, key: Hashable) -> errors.RegistryError | None:
        error = self.negative.get(key)
        return None if error is None else error.clone()

    def clear(self) -> None:
        for store in (
            self.facts,
            self.images,
            self.manifests,
            self.tags,
            self.negative,
            self.tokens,
        ):
            store.clear()

    async def close(self) -> None:
        await self.inflight.close()
