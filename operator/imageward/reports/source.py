"""What a background scan asks of registries: each lookup once per scan, within budget.

`ScanSource` stands between the checker and the operator's one `RegistryImageSource`
(whose caches admission shares): a tag's digest, an image's facts and a digest's
signatures are fetched once per scan, whatever the number of pods using them (facts by
digest too: two tags of one image share them); identical lookups in flight share one.
Lookups that do reach the registry go through a concurrency cap and a `Budget` of
registry requests per minute; `MeteredTransport` counts the requests each lookup really
sent (a lookup's first request waits for budget; once started, a lookup is never held
up, so no deadline inside it is spent waiting).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar

from imageward import checker
from imageward.registry import auth as registry_auth
from imageward.registry import client as registry_client
from imageward.registry import model as registry_model
from imageward.registry import platforms as registry_platforms
from imageward.registry import transport as registry_transport
from imageward.signatures import verify as signatures_verify

T = TypeVar("T")

#: What one scan keeps of signature sets (each up to a few MiB): beyond it, lookups go
#: to the shared source again (whose own caches are bounded too).
MAX_SET_BYTES = 64 * 1024 * 1024
#: Lookups one scan remembers (digests, facts, signature sets), past which it asks the
#: shared source again: facts are a few KiB, so this bounds a scan's memo to tens of MiB.
MAX_ENTRIES = 16384


@dataclasses.dataclass(slots=True)
class Meter:
    """Registry requests sent on behalf of one lookup."""

    requests: int = 0


_METER: contextvars.ContextVar[Meter | None] = contextvars.ContextVar(
    "imageward_scan_meter", default=None
)


class MeteredTransport(registry_transport.Transport):
    """The registry client's transport, counting the requests sent while a scan's Meter
    is current (admission's requests pass through untouched)."""

    def __init__(self, inner: registry_transport.Transport) -> None:
        # Not super().__init__(): every request goes to `inner`, which owns the session.
        self.inner = inner

    async def request(self, method: str, url: str, **kwargs: Any) -> registry_transport.Response:
        meter = _METER.get()
        if meter is not None:
            meter.requests += 1
        return await self.inner.request(method, url, **kwargs)

    async def close(self) -> None:
        await self.inner.close()


def install_meter(client: registry_client.RegistryClient) -> None:
    """Count scan requests on this client (once; idempotent)."""
    if not isinstance(client.transport, MeteredTransport):
        client.transport = MeteredTransport(client.transport)


class Budget:
    """A token bucket of registry requests per minute that a lookup may overdraw.

    A lookup waits until the bucket is not empty, takes one token, and is charged the
    rest of what it really sent when it ends: over any minute a scan sends at most the
    budget plus one burst (a tenth of a minute's budget) plus what its lookups already in
    flight overdraw.
    """

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute / 10.0)
        self.level = self.capacity
        self.clock = clock
        self._updated = clock()
        self.waited = 0.0
        """Seconds lookups spent waiting for budget (summed over lookups)."""

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self._updated) * self.rate)
        self._updated = now

    def delay(self) -> float:
        """Seconds until a lookup may start (0: now)."""
        self._refill()
        return 0.0 if self.level > 0 else (1.0 - self.level) / self.rate

    async def acquire(self) -> None:
        while (wait := self.delay()) > 0:
            self.waited += wait
            await asyncio.sleep(wait)
        self.level -= 1

    def charge(self, requests: int) -> None:
        """What a lookup sent beyond the token `acquire` took."""
        self._refill()
        self.level -= max(0, requests - 1)


@dataclasses.dataclass(slots=True)
class Stats:
    lookups: int = 0
    """Lookups that went to the shared source (memo misses)."""
    shared: int = 0
    """Lookups answered by this scan's memo or joined to one in flight."""
    requests: int = 0
    """Registry requests those lookups sent."""


class ScanSource:
    """The checker's ImageSource for one scan (or one batch of scans)."""

    def __init__(
        self,
        inner: checker.ImageSource,
        budget: Budget,
        *,
        concurrency: int,
    ) -> None:
        self.inner = inner
        self.budget = budget
        self.stats = Stats()
        self._slots = asyncio.Semaphore(concurrency)
        self._memo: dict[Hashable, asyncio.Future[Any]] = {}
        self._set_bytes = 0

    async def _lookup(self, fn: Callable[[], Awaitable[T]]) -> T:
        async with self._slots:
            await self.budget.acquire()
            meter = Meter()
            token = _METER.set(meter)
            try:
                self.stats.lookups += 1
                return await fn()
            finally:
                _METER.reset(token)
                self.budget.charge(meter.requests)
                self.stats.requests += meter.requests

    def _known(self, key: Hashable, value: object) -> None:
        if key not in self._memo and len(self._memo) < MAX_ENTRIES:
            done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            done.set_result(value)
            self._memo[key] = done

    async def _shared(
        self, key: Hashable, fn: Callable[[], Awaitable[T]], *, keep: Callable[[T], bool]
    ) -> T:
        found = self._memo.get(key)
        if found is not None:
            self.stats.shared += 1
            # Shielded: a caller giving up (its own deadline) must not cancel the others'.
            result: T = await asyncio.shield(found)
            return result
        task = asyncio.ensure_future(self._lookup(fn))
        if len(self._memo) < MAX_ENTRIES:
            self._memo[key] = task
        try:
            value = await asyncio.shield(task)
        except BaseException:
            # A failure is this scan's answer too (an outage is not asked again); only a
            # lookup cancelled with the scan is forgotten.
            if task.cancelled():
                self._memo.pop(key, None)
            raise
        if not keep(value):
            self._memo.pop(key, None)
        return value

    async def resolve(
        self,
        reference: registry_model.ImageReference,
        *,
        credentials: Sequence[registry_auth.DockerConfig],
    ) -> registry_model.Digest:
        if reference.digest is not None:
            return reference.digest
        key = (
            "digest",
            reference.registry,
            reference.repository,
            reference.tag,
            tuple(credentials),
        )
        return await self._shared(
            key,
            lambda: self.inner.resolve(reference, credentials=credentials),
            keep=lambda _: True,
        )

    async def fetch_facts(
        self,
        reference: registry_model.ImageReference,
        *,
        platform: registry_platforms.PlatformChoice | registry_model.Platform | None,
        credentials: Sequence[registry_auth.DockerConfig],
    ) -> registry_model.ImageFacts:
        creds = tuple(credentials)
        where = (reference.registry, reference.repository)
        tag_key = ("digest", *where, reference.tag, creds)
        if reference.digest is None:
            # The tag's digest may be known already (from another lookup of this scan).
            resolved = self._memo.get(tag_key)
            if (
                resolved is not None
                and resolved.done()
                and not resolved.cancelled()
                and resolved.exception() is None
            ):
                reference = reference.with_digest(resolved.result())
        name = reference.digest or f"tag:{reference.tag}"
        key = ("facts", *where, name, platform, creds)
        tagged = reference.digest is None

        async def fetch() -> registry_model.ImageFacts:
            facts = await self.inner.fetch_facts(
                reference, platform=platform, credentials=credentials
            )
            # Known by digest from now on: another tag of this image (or the digest
            # itself) costs nothing more in this scan; and the tag's digest is known.
            self._known(("facts", *where, facts.digest, platform, creds), facts)
            if tagged:
                self._known(tag_key, facts.digest)
            return facts

        return await self._shared(key, fetch, keep=lambda _: True)

    async def fetch_signatures(
        self,
        reference: registry_model.ImageReference,
        digest: registry_model.Digest,
        *,
        credentials: Sequence[registry_auth.DockerConfig],
        attestations: bool = False,
    ) -> signatures_verify.SignatureSet:
        key = (
            "signatures",
            reference.registry,
            reference.repository,
            digest,
            tuple(credentials),
            attestations,
        )

        def keep(found: signatures_verify.SignatureSet) -> bool:
            self._set_bytes += found.size
            return self._set_bytes <= MAX_SET_BYTES

        async def fetch() -> signatures_verify.SignatureSet:
            if attestations:
                return await self.inner.fetch_signatures(
                    reference, digest, credentials=credentials, attestations=True
                )
            return await self.inner.fetch_signatures(reference, digest, credentials=credentials)

        return await self._shared(key, fetch, keep=keep)


def describe(stats: Stats, budget: Budget) -> Mapping[str, float]:
    return {
        "lookups": stats.lookups,
        "shared": stats.shared,
        "requests": stats.requests,
        "budget_wait": round(budget.waited, 3),
    }
