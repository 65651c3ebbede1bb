"""The decision memo: a review asking the question a moment ago's asked gets its answer,
and nothing that could change the answer is ever served from it (no cluster, no
registry: the policies here decide from the reference, or fail their lookup)."""

from __future__ import annotations

import asyncio
import time
import types
from typing import Any

import pytest

from imageward import checker, errors, metrics, policystore, records, runtime, settings
from imageward.admission import decisions, workloads
from imageward.exceptions import model as exceptions_model
from tests.unit.exceptions.test_exceptions import body as exception_body


class Registry:
    """No registry: lookups fail as an outage would, and are counted."""

    def __init__(self) -> None:
        self.lookups = 0

    async def fetch_facts(self, *args: Any, **kwargs: Any) -> Any:
        self.lookups += 1
        raise errors.RateLimitedError("too many requests", registry="registry.acme", status=429)

    fetch_signatures = resolve = fetch_facts


def _policy(name: str, **rules: Any) -> dict[str, Any]:
    return {
        "apiVersion": "imageward.io/v1alpha1",
        "kind": "ImagePolicy",
        "metadata": {"name": name, "generation": 1},
        "spec": {"rules": rules or {"forbiddenTags": ["latest"]}},
    }


def _view(image: str = "registry.acme/shop/web:latest", **labels: str) -> workloads.PodView:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "labels": labels},
        "spec": {"containers": [{"name": "web", "image": image}]},
    }
    return workloads.parse_pod_view(pod, kind="Pod")


def _state(config: settings.Settings | None = None) -> tuple[runtime.Runtime, Registry]:
    registry = Registry()
    state = runtime.Runtime(config or settings.Settings(), None, registry)  # type: ignore[arg-type]
    return state, registry


async def _load(state: runtime.Runtime, policy: dict[str, Any]) -> None:
    state.store.put(await policystore.load_policy(policy))


def _evaluations(policy: str, rule: str, result: str) -> float:
    labels = {"policy": policy, "rule": rule, "result": result}
    return metrics.REGISTRY.get_sample_value("imageward_policy_evaluations_total", labels) or 0


def _decision_lookups(result: str) -> float:
    labels = {"cache": decisions.NAME, "result": result}
    return metrics.REGISTRY.get_sample_value("imageward_cache_lookups_total", labels) or 0


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times the checker ran (a memo hit does not run it)."""
    calls = [0]
    real = checker.check_images

    async def counted(*args: Any, **kwargs: Any) -> checker.Outcome:
        calls[0] += 1
        return await real(*args, **kwargs)

    monkeypatch.setattr(checker, "check_images", counted)
    return calls


def test_the_same_question_is_answered_once_and_counted_every_time(checks: list[int]) -> None:
    async def run() -> None:
        state, _ = _state()
        await _load(state, _policy("memo-counted"))
        before = _evaluations("memo-counted", "forbiddenTags", "fail")
        hits = _decision_lookups("hit")
        first = await state.check_view(_view())
        second = await state.check_view(_view())
        assert not first.decision.allowed
        assert second is first
        assert checks == [1]
        # The dashboard sees two evaluations, as it would without the memo.
        assert _evaluations("memo-counted", "forbiddenTags", "fail") == before + 2
        assert _decision_lookups("hit") == hits + 1

    asyncio.run(run())


def test_another_question_is_checked(checks: list[int]) -> None:
    async def run() -> None:
        state, _ = _state()
        await _load(state, _policy("memo-questions"))
        await state.check_view(_view())
        await state.check_view(_view(app="web"))  # other pod labels (selectors read them)
        await state.check_view(_view("registry.acme/shop/web:1.0"))
        assert checks == [3]

    asyncio.run(run())


def test_a_policy_change_is_never_answered_from_the_memo(checks: list[int]) -> None:
    async def run() -> None:
        state, _ = _state()
        await _load(state, _policy("memo-edited"))
        assert not (await state.check_view(_view())).decision.allowed
        edited = _policy("memo-edited", forbiddenTags=["nightly"])
        edited["metadata"]["generation"] = 2
        await _load(state, edited)
        assert (await state.check_view(_view())).decision.allowed
        assert checks == [2]

    asyncio.run(run())


def test_changed_credentials_are_a_new_question(checks: list[int]) -> None:
    async def run() -> None:
        state, _ = _state()
        await _load(state, _policy("memo-credentials"))
        await state.check_view(_view())
        state.operator_credentials = (object(),)  # type: ignore[assignment]
        await state.check_view(_view())
        assert checks == [2]

    asyncio.run(run())


def test_a_failed_lookup_is_tried_again_on_the_next_review(checks: list[int]) -> None:
    async def run() -> None:
        state, registry = _state()
        await _load(state, _policy("memo-outage", maxLayers=10))
        for _ in range(2):
            outcome = await state.check_view(_view())
            assert not outcome.decision.allowed
        assert checks == [2]
        assert registry.lookups >= 2

    asyncio.run(run())


@pytest.mark.parametrize("field", ["tag_cache_ttl", "signature_cache_ttl", "negative_cache_ttl"])
def test_registry_caches_switched_off_switch_the_memo_off(field: str) -> None:
    config = settings.Settings()
    config = records.replace(config, registry=records.replace(config.registry, **{field: 0}))
    state, _ = _state(config)
    assert not state.decisions.enabled


def test_the_memo_never_outlasts_the_shortest_registry_ttl() -> None:
    config = settings.Settings()
    config = records.replace(
        config,
        admission=records.replace(config.admission, decision_cache_ttl=5.0),
        registry=records.replace(config.registry, negative_cache_ttl=2.0),
    )
    assert _state(config)[0].decisions.ttl == 2.0


def _outcome(policy: str, *, exceptions: tuple[Any, ...] = ()) -> checker.Outcome:
    async def run() -> checker.Outcome:
        loaded = await policystore.load_policy(_policy(policy))
        return await checker.check_images(
            ["registry.acme/legacy/web:latest"],
            [loaded],
            checker.Context(namespace="shop", exceptions=exceptions, count_metrics=False),
            source=Registry(),  # type: ignore[arg-type]
            deadline=5,
        )

    return asyncio.run(run())


def _keep(memo: decisions.DecisionMemo, outcome: checker.Outcome, snapshot: Any, **kw: Any) -> Any:
    started = kw.pop("started", time.monotonic())
    memo.keep(
        "q", outcome, tally=[], snapshot=snapshot, credentials=(), exceptions=(), started=started
    )
    return memo.recall("q", snapshot=snapshot, credentials=(), exceptions=())


def test_an_entry_expires_after_its_ttl() -> None:
    outcome = _outcome("memo-ttl")
    snapshot = (types.SimpleNamespace(name="memo-ttl", attestations=(), authorities=()),)
    memo = decisions.DecisionMemo(1.0, counted=False)
    assert _keep(memo, outcome, snapshot) is outcome
    assert _keep(memo, outcome, snapshot, started=time.monotonic() - 1.5) is None
    assert _keep(decisions.DecisionMemo(0.0, counted=False), outcome, snapshot) is None


def test_verdicts_that_move_with_the_clock_are_not_kept() -> None:
    outcome = _outcome("memo-clock")
    memo = decisions.DecisionMemo(1.0, counted=False)
    attested = (types.SimpleNamespace(name="memo-clock", attestations=("scan",), authorities=()),)
    assert _keep(memo, outcome, attested) is None
    # Another policy's attestations do not stop this outcome being kept.
    other = (
        types.SimpleNamespace(name="memo-clock", attestations=(), authorities=()),
        types.SimpleNamespace(name="elsewhere", attestations=("scan",), authorities=()),
    )
    assert _keep(memo, outcome, other) is outcome


def test_an_outcome_that_used_an_exception_is_not_kept() -> None:
    exception = exceptions_model.parse_exception(
        exception_body(policies=[{"name": "memo-excepted"}])
    )
    outcome = _outcome("memo-excepted", exceptions=(exception,))
    assert outcome.images[0].exceptions
    snapshot = (types.SimpleNamespace(name="memo-excepted", attestations=(), authorities=()),)
    assert _keep(decisions.DecisionMemo(1.0, counted=False), outcome, snapshot) is None


def test_the_memo_is_bounded() -> None:
    outcome = _outcome("memo-bounded")
    snapshot = (types.SimpleNamespace(name="memo-bounded", attestations=(), authorities=()),)
    memo = decisions.DecisionMemo(60.0, counted=False)
    now = time.monotonic()
    for i in range(decisions.MAX_ENTRIES * 2):
        memo.keep(
            i, outcome, tally=[], snapshot=snapshot, credentials=(), exceptions=(), started=now
        )
    assert len(memo) <= decisions.MAX_ENTRIES
    assert memo.recall(
        decisions.MAX_ENTRIES * 2 - 1, snapshot=snapshot, credentials=(), exceptions=()
    )


def test_expired_entries_are_dropped_before_the_memo_is_full() -> None:
    # What the memo holds is what the last TTL kept, not the last MAX_ENTRIES questions.
    outcome = _outcome("memo-expired")
    snapshot = (types.SimpleNamespace(name="memo-expired", attestations=(), authorities=()),)
    memo = decisions.DecisionMemo(1.0, counted=False)
    long_ago = time.monotonic() - 10
    for i in range(50):
        memo.keep(
            i, outcome, tally=[], snapshot=snapshot, credentials=(), exceptions=(), started=long_ago
        )
    memo.keep(
        "now",
        outcome,
        tally=[],
        snapshot=snapshot,
        credentials=(),
        exceptions=(),
        started=time.monotonic(),
    )
    assert len(memo) == 1


def test_a_question_too_big_to_keep_is_checked_every_time(checks: list[int]) -> None:
    # Labels are the pod creator's: thousands of them must not become memo memory.
    labels = {f"l{i:05d}": "v" * 60 for i in range(400)}
    view = _view(**labels)
    assert decisions.build_key(view, {}) is None
    assert decisions.build_key(_view(app="web"), {"team": "shop"}) is not None

    async def run() -> None:
        state, _ = _state()
        await _load(state, _policy("memo-too-big"))
        await state.check_view(view)
        await state.check_view(view)
        assert checks == [2]
        assert len(state.decisions) == 0

    asyncio.run(run())


@pytest.fixture
def slow_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times the checker ran, each run taking a moment (as a check that reads
    the registry does), so that reviews asking the same question overlap."""
    calls = [0]
    real = checker.check_images

    async def slow(*args: Any, **kwargs: Any) -> checker.Outcome:
        calls[0] += 1
        await asyncio.sleep(0.05)
        return await real(*args, **kwargs)

    monkeypatch.setattr(checker, "check_images", slow)
    return calls


def test_reviews_asking_a_question_being_checked_wait_for_that_check(
    slow_checks: list[int],
) -> None:
    # A rollout's reviews arriving while the memo's entry has just expired: one check,
    # not one per review in flight.
    async def run() -> None:
        state, _ = _state()
        await _load(state, _policy("memo-in-flight"))
        before = _evaluations("memo-in-flight", "forbiddenTags", "fail")
        hits = _decision_lookups("hit")
        outcomes = await asyncio.gather(*(state.check_view(_view()) for _ in range(16)))
        assert slow_checks == [1]
        assert all(o is outcomes[0] for o in outcomes)
        assert not outcomes[0].decision.allowed
        # Every review is counted on the dashboard as if it had been checked.
        assert _evaluations("memo-in-flight", "forbiddenTags", "fail") == before + 16
        assert _decision_lookups("hit") == hits + 15

    asyncio.run(run())


def test_an_outcome_the_memo_would_not_keep_is_not_shared(slow_checks: list[int]) -> None:
    # A failed lookup is an outage: every review tries the registry for itself.
    async def run() -> None:
        state, _ = _state()
        await _load(state, _policy("memo-in-flight-outage", maxLayers=10))
        outcomes = await asyncio.gather(*(state.check_view(_view()) for _ in range(4)))
        assert all(not o.decision.allowed for o in outcomes)
        assert slow_checks == [4]

    asyncio.run(run())


def test_a_policy_changed_during_a_check_is_not_answered_by_it(slow_checks: list[int]) -> None:
    async def run() -> None:
        state, _ = _state()
        await _load(state, _policy("memo-in-flight-edited"))
        first = asyncio.create_task(state.check_view(_view()))
        await asyncio.sleep(0.01)  # the first check is under way with generation 1
        edited = _policy("memo-in-flight-edited", forbiddenTags=["nightly"])
        edited["metadata"]["generation"] = 2
        await _load(state, edited)
        second = await state.check_view(_view())
        assert not (await first).decision.allowed
        assert second.decision.allowed
        assert slow_checks == [2]

    asyncio.run(run())


def test_a_review_whose_check_is_cancelled_leaves_the_others_answered(
    slow_checks: list[int],
) -> None:
    async def run() -> None:
        state, _ = _state()
        await _load(state, _policy("memo-in-flight-cancelled"))
        leader = asyncio.create_task(state.check_view(_view()))
        await asyncio.sleep(0.01)
        follower = asyncio.create_task(state.check_view(_view()))
        other = asyncio.create_task(state.check_view(_view()))
        await asyncio.sleep(0.01)
        leader.cancel()  # its client went away: the waiting reviews check for themselves
        follower_outcome, other_outcome = await asyncio.gather(follower, other)
        assert not follower_outcome.decision.allowed and not other_outcome.decision.allowed
        with pytest.raises(asyncio.CancelledError):
            await leader
        # A follower cancelled while waiting does not cancel the check it waits for.
        leader = asyncio.create_task(state.check_view(_view("registry.acme/shop/web:nightly")))
        await asyncio.sleep(0.01)
        follower = asyncio.create_task(state.check_view(_view("registry.acme/shop/web:nightly")))
        await asyncio.sleep(0.01)
        follower.cancel()
        assert (await leader).decision.allowed

    asyncio.run(run())
