"""Decisions of the last moment, given again to reviews that ask the same question.

A rollout sends the webhook the same pod template many times within a second (a
ReplicaSet creating its pods, each create reviewed by both endpoints). Checking each
from the caches still costs most of a warm review's CPU: per image, matching every
policy, a timeout, the cache look-ups, the rules and the metrics. The memo keeps the
`checker.Outcome` of a check for `ttl` seconds, keyed by everything the check read:

- from the pod: its distinct images, namespace, labels, the platform it is pinned to,
  its ServiceAccount and imagePullSecrets;
- from the cluster: the namespace's labels (by value), the registry credentials, the
  policy snapshot and the namespace's exceptions (by identity: each is the same object
  until it changes, and a changed one is a new object, so a policy edit, a key rotation,
  a new exception or a rotated pull secret is never answered from the memo).

What it never keeps, because the same question may get another answer a moment later:
an outcome with a lookup failure (an outage is retried on the next review, as it would
be without the memo); outcomes a policy whose verdicts move with the clock took part in
(attestation age, Notation certificate validity); outcomes that used an exception (each
use is an Event of its own); and anything when the registry
caches it sits on are switched off (a tag, signature or "not found" TTL of 0). A tag
moved in the registry is therefore seen at most `ttl` later than the tag cache alone
would see it.

A question asked again while its first check is still running waits for that check
instead of running its own (when an entry expires under a rollout, every review in
flight misses at once: without this, each re-checks what the first is checking, and
the burst of CPU is every in-flight review's latency). It is given the first check's
outcome only if that outcome is one the memo keeps; otherwise it checks for itself.

A hit replays the evaluation and verification counters the check counted, so the
metrics a dashboard shows do not depend on whether a review was answered from here.
Hits and misses count as `imageward_cache_lookups_total{cache="decisions"}` (a review
given an in-flight check's outcome is a hit).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any

from imageward import checker, constants
from imageward.admission import workloads
from imageward.signatures import verify as signatures_verify

#: The metric name of this cache (`imageward_cache_lookups_total{cache=…}`).
NAME = "decisions"
#: Distinct questions kept: a few hundred pod templates roll out at once at most; each
#: entry holds one outcome (a few KiB at most, its messages capped where they are made).
MAX_ENTRIES = 2048
#: Characters of pod and namespace text a key may hold: a rollout's pod template has a
#: few hundred; a question bigger than this is checked, never kept (the memo's memory
#: is then at most MAX_ENTRIES * MAX_KEY_CHARS, whatever reviews it is sent).
MAX_KEY_CHARS = 16 * 1024


class _Entry:
    __slots__ = ("credentials", "exceptions", "expires", "outcome", "snapshot", "tally")

    def __init__(
        self,
        expires: float,
        outcome: checker.Outcome,
        tally: tuple[Any, ...],
        snapshot: tuple[Any, ...],
        credentials: tuple[Any, ...],
        exceptions: tuple[Any, ...],
    ) -> None:
        self.expires = expires
        self.outcome = outcome
        self.tally = tally
        self.snapshot = snapshot
        self.credentials = credentials
        self.exceptions = exceptions


class _Flight:
    """A check of one question under way; `future` gets its kept entry (or None)."""

    __slots__ = ("credentials", "exceptions", "future", "snapshot")

    def __init__(
        self,
        future: asyncio.Future[_Entry | None],
        snapshot: tuple[Any, ...],
        credentials: tuple[Any, ...],
        exceptions: tuple[Any, ...],
    ) -> None:
        self.future = future
        self.snapshot = snapshot
        self.credentials = credentials
        self.exceptions = exceptions


#: A check: given a list to append the counters it counts to, the outcome.
Check = Callable[[list[Any]], Awaitable[checker.Outcome]]


def build_key(view: workloads.PodView, namespace_labels: dict[str, str]) -> Hashable | None:
    """What a check reads from the pod and its namespace, by value; None when that is
    too big to keep (see MAX_KEY_CHARS)."""
    size = (
        sum(map(len, view.images))
        + sum(len(k) + len(v) for k, v in view.labels)
        + sum(len(k) + len(v) for k, v in namespace_labels.items())
        + sum(map(len, view.image_pull_secrets))
        + len(view.service_account)
        + len(view.namespace or "")
        + len(view.node_os or "")
        + len(view.node_arch or "")
    )
    if size > MAX_KEY_CHARS:
        return None
    return (
        view.images,
        view.namespace,
        view.labels,
        view.node_os,
        view.node_arch,
        view.service_account,
        view.image_pull_secrets,
        tuple(sorted(namespace_labels.items())),
    )


def _same(a: Sequence[Any], b: Sequence[Any]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def _moving_with_the_clock(snapshot: Sequence[Any]) -> frozenset[str]:
    """The policies whose verdicts can change with time alone (attestation age, Notation
    certificate validity): an outcome they took part in is never kept."""
    return frozenset(
        loaded.name
        for loaded in snapshot
        if loaded.attestations
        or any(isinstance(a, signatures_verify.NotationAuthority) for a in loaded.authorities)
    )


def _undecided(outcome: checker.Outcome) -> bool:
    """Whether a lookup failed for some image (then the next review must try again)."""
    return any(
        violation.rule == constants.RULE_LOOKUP
        for image in outcome.images
        for result in image.results
        for violation in result.violations
    )


class DecisionMemo:
    """The memo of one process. Not thread-safe: used from the webhook's event loop."""

    def __init__(self, ttl: float, *, counted: bool = True) -> None:
        """`ttl`: seconds an outcome is given again; 0 (or less) keeps nothing."""
        self.ttl = ttl
        self._entries: dict[Hashable, _Entry] = {}
        self._flights: dict[Hashable, _Flight] = {}
        self._clocked: tuple[tuple[Any, ...], frozenset[str]] | None = None
        if counted:
            from imageward import metrics

            self._hits: Any = metrics.cache_lookups.labels(cache=NAME, result="hit")
            self._misses: Any = metrics.cache_lookups.labels(cache=NAME, result="miss")
            self._size: Any = metrics.cache_entries.labels(cache=NAME)
        else:
            self._hits = self._misses = self._size = None

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def __len__(self) -> int:
        return len(self._entries)

    def _timeless(self, outcome: checker.Outcome, snapshot: tuple[Any, ...]) -> bool:
        clocked = self._clocked
        if clocked is None or clocked[0] is not snapshot:
            clocked = self._clocked = (snapshot, _moving_with_the_clock(snapshot))
        names = clocked[1]
        return not names or not any(
            result.policy in names for image in outcome.images for result in image.results
        )

    async def decide(
        self,
        key: Hashable,
        check: Check,
        *,
        snapshot: tuple[Any, ...],
        credentials: Sequence[Any],
        exceptions: tuple[Any, ...],
        started: float,
    ) -> checker.Outcome:
        """The outcome for this question: kept, the one a check under way gives, or
        `check`'s (kept for the next review if it may be)."""
        kept = self.recall(key, snapshot=snapshot, credentials=credentials, exceptions=exceptions)
        if kept is not None:
            return kept
        flight = self._flights.get(key)
        if flight is not None:
            if (
                flight.snapshot is snapshot
                and flight.exceptions is exceptions
                and _same(flight.credentials, credentials)
            ):
                # Shielded: a follower cancelled (its client gone) must not cancel what
                # the check under way gives the others.
                entry = await asyncio.shield(flight.future)
                if entry is not None:
                    self._count(self._hits)
                    return self._replay(entry)
            self._count(self._misses)
            return await self._check(key, check, snapshot, credentials, exceptions, started)
        self._count(self._misses)
        flight = _Flight(
            asyncio.get_running_loop().create_future(),
            snapshot,
            tuple(credentials),
            exceptions,
        )
        self._flights[key] = flight
        entry = None
        try:
            tally: list[Any] = []
            outcome = await check(tally)
            entry = self.keep(
                key,
                outcome,
                tally=tally,
                snapshot=snapshot,
                credentials=credentials,
                exceptions=exceptions,
                started=started,
            )
            return outcome
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]
            flight.future.set_result(entry)

    async def _check(
        self,
        key: Hashable,
        check: Check,
        snapshot: tuple[Any, ...],
        credentials: Sequence[Any],
        exceptions: tuple[Any, ...],
        started: float,
    ) -> checker.Outcome:
        tally: list[Any] = []
        outcome = await check(tally)
        self.keep(
            key,
            outcome,
            tally=tally,
            snapshot=snapshot,
            credentials=credentials,
            exceptions=exceptions,
            started=started,
        )
        return outcome

    @staticmethod
    def _count(child: Any) -> None:
        if child is not None:
            child.inc()

    @staticmethod
    def _replay(entry: _Entry) -> checker.Outcome:
        for child, times in entry.tally:
            child.inc(times)
        return entry.outcome

    def recall(
        self,
        key: Hashable,
        *,
        snapshot: tuple[Any, ...],
        credentials: Sequence[Any],
        exceptions: tuple[Any, ...],
    ) -> checker.Outcome | None:
        """The outcome kept for this question, if it is still the same question; its
        counters counted again. A miss is not counted here (`decide` counts it once it
        knows whether a check under way answers it)."""
        entry = self._entries.get(key)
        if (
            entry is None
            or entry.expires <= time.monotonic()
            or entry.snapshot is not snapshot
            or entry.exceptions is not exceptions
            or not _same(entry.credentials, credentials)
        ):
            if entry is not None:
                del self._entries[key]
            return None
        self._count(self._hits)
        return self._replay(entry)

    def keep(
        self,
        key: Hashable,
        outcome: checker.Outcome,
        *,
        tally: Sequence[Any],
        snapshot: tuple[Any, ...],
        credentials: Sequence[Any],
        exceptions: tuple[Any, ...],
        started: float,
    ) -> _Entry | None:
        """Keep `outcome` until `ttl` after `started` (when the check began reading the
        caches), unless it is one the memo must not give again; the entry kept."""
        if not self.enabled or _undecided(outcome) or not self._timeless(outcome, snapshot):
            return None
        if any(image.exceptions for image in outcome.images):
            return None  # each use of an exception is an Event and a count of its own
        now = time.monotonic()
        # Entries go in roughly in expiry order: drop the expired ones at the front, so
        # what the memo holds is what the last `ttl` seconds kept, not the last 2048.
        entries = self._entries
        while entries:
            oldest = next(iter(entries))
            if entries[oldest].expires > now:
                break
            del entries[oldest]
        if len(self._entries) >= MAX_ENTRIES:
            self._evict(now)
        counted: dict[Any, int] = {}
        for child in tally:  # the same few counters, once per image
            counted[child] = counted.get(child, 0) + 1
        entry = self._entries[key] = _Entry(
            started + self.ttl,
            outcome,
            tuple(counted.items()),
            snapshot,
            tuple(credentials),
            exceptions,
        )
        if self._size is not None:
            self._size.set(len(self._entries))
        return entry

    def _evict(self, now: float) -> None:
        """Drop what expired; if that is not enough, the oldest half (insertion order)."""
        for key in [k for k, e in self._entries.items() if e.expires <= now]:
            del self._entries[key]
        if len(self._entries) >= MAX_ENTRIES:
            for key in list(self._entries)[: MAX_ENTRIES // 2]:
                del self._entries[key]
