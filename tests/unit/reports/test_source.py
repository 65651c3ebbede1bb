"""A scan's registry lookups: each once per scan, within budget and the concurrency cap."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from imageward import errors
from imageward.registry import model, reference
from imageward.reports import source
from imageward.signatures import verify

DIGEST = model.Digest("sha256:" + "1" * 64)


class FakeSource:
    """Counts lookups; each "sends" `requests` requests through the scan meter."""

    def __init__(self, *, requests: int = 2, fail: bool = False) -> None:
        self.calls: list[tuple[str, str]] = []
        self.requests = requests
        self.fail = fail
        self.in_flight = 0
        self.most = 0

    async def _work(self, what: str, ref: model.ImageReference) -> None:
        self.calls.append((what, str(ref)))
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        meter = source._METER.get()
        assert meter is not None
        meter.requests += self.requests
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        if self.fail:
            raise errors.UnreachableError("down", registry=ref.registry)

    async def fetch_facts(self, ref: model.ImageReference, **_: Any) -> model.ImageFacts:
        await self._work("facts", ref)
        return model.ImageFacts(
            reference=ref, digest=DIGEST, media_type="m", is_index=False, images=()
        )

    async def resolve(self, ref: model.ImageReference, **_: Any) -> model.Digest:
        await self._work("resolve", ref)
        return DIGEST

    async def fetch_signatures(
        self, ref: model.ImageReference, digest: model.Digest, **_: Any
    ) -> verify.SignatureSet:
        await self._work("signatures", ref)
        return verify.SignatureSet()


def test_each_lookup_once_per_scan_and_by_digest() -> None:
    async def run() -> tuple[FakeSource, source.ScanSource]:
        inner = FakeSource()
        scan = source.ScanSource(inner, source.Budget(6000), concurrency=4)  # type: ignore[arg-type]
        web = reference.parse_reference("r.io/web:1")
        same = reference.parse_reference("r.io/web:latest")
        await asyncio.gather(
            *(scan.fetch_facts(web, platform=None, credentials=()) for _ in range(50))
        )
        # The tag's digest is now known: no resolve for it; facts by digest are known.
        assert await scan.resolve(web, credentials=()) == DIGEST
        await scan.fetch_facts(web.with_digest(DIGEST), platform=None, credentials=())
        await scan.fetch_facts(same, platform=None, credentials=())  # another tag: asked
        await asyncio.gather(
            *(scan.fetch_signatures(web, DIGEST, credentials=()) for _ in range(20))
        )
        return inner, scan

    inner, scan = asyncio.run(run())
    assert inner.calls == [
        ("facts", "r.io/web:1"),
        ("facts", "r.io/web:latest"),
        ("signatures", "r.io/web:1"),
    ]
    assert scan.stats.lookups == 3 and scan.stats.requests == 6


def test_an_outage_is_answered_once_per_scan() -> None:
    async def run() -> FakeSource:
        inner = FakeSource(fail=True)
        scan = source.ScanSource(inner, source.Budget(6000), concurrency=4)  # type: ignore[arg-type]
        ref = reference.parse_reference("r.io/down:1")
        for _ in range(3):
            with pytest.raises(errors.UnreachableError):
                await scan.resolve(ref, credentials=())
        return inner

    assert len(asyncio.run(run()).calls) == 1


def test_concurrency_cap() -> None:
    async def run() -> FakeSource:
        inner = FakeSource()
        scan = source.ScanSource(inner, source.Budget(60000), concurrency=3)  # type: ignore[arg-type]
        refs = [reference.parse_reference(f"r.io/app{i}:1") for i in range(20)]
        await asyncio.gather(*(scan.resolve(r, credentials=()) for r in refs))
        return inner

    assert asyncio.run(run()).most == 3


def test_budget_holds_lookups_to_the_rate() -> None:
    now = [0.0]
    budget = source.Budget(60, clock=lambda: now[0])  # 1 request per second, bursts of 6
    starts = 0
    while budget.delay() == 0:
        budget.level -= 1
        budget.charge(1)
        starts += 1
    assert starts == 6  # the burst
    budget.charge(6)  # a lookup that sent 6 requests (one token taken) overdraws
    assert budget.delay() == pytest.approx(6.0)
    now[0] = 6.0
    assert budget.delay() == 0
