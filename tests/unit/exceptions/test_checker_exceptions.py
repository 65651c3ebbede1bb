"""The checker applies a namespace's exceptions before combining (no registry needed:
the policies here have only rules decided by the reference)."""

from __future__ import annotations

import asyncio
from typing import Any

from imageward import checker, metrics, policystore
from imageward.exceptions import model
from tests.unit.exceptions.test_exceptions import body


class NoRegistry:
    async def fetch_facts(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("no registry lookup expected")

    fetch_signatures = resolve = fetch_facts


def _policy(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "imageward.io/v1alpha1",
        "kind": "ImagePolicy",
        "metadata": {"name": name, "generation": 1},
        "spec": {"rules": {"forbiddenTags": ["latest"]}, **spec},
    }


def _check(policy: dict[str, Any], context: checker.Context) -> checker.Outcome:
    async def run() -> checker.Outcome:
        loaded = await policystore.load_policy(policy)
        return await checker.check_images(
            ["registry.acme/legacy/web:latest"],
            [loaded],
            context,
            source=NoRegistry(),  # type: ignore[arg-type]
            deadline=5,
        )

    return asyncio.run(run())


def test_exception_admits_and_is_recorded() -> None:
    exception = model.parse_exception(body(policies=[{"name": "no-latest"}]))
    outcome = _check(
        _policy("no-latest"),
        checker.Context(
            namespace_labels={}, pod_labels={}, namespace="shop", exceptions=(exception,)
        ),
    )
    assert outcome.decision.allowed
    (use,) = outcome.images[0].exceptions
    assert use.state == "applied" and use.rules == ("forbiddenTags",)


def test_without_the_namespace_nothing_is_waived() -> None:
    exception = model.parse_exception(body(policies=[{"name": "no-latest"}]))
    outcome = _check(
        _policy("no-latest"),
        checker.Context(namespace_labels={}, pod_labels={}, namespace="other", exceptions=()),
    )
    assert not outcome.decision.allowed
    outcome = _check(
        _policy("no-latest", allowExceptions=False),
        checker.Context(
            namespace_labels={}, pod_labels={}, namespace="shop", exceptions=(exception,)
        ),
    )
    assert not outcome.decision.allowed
    assert outcome.images[0].exceptions[0].state == "forbidden"


def test_scans_do_not_count_in_admission_metrics() -> None:
    labels = {"policy": "counted", "rule": "forbiddenTags", "result": "fail"}

    def sample() -> float:
        return metrics.REGISTRY.get_sample_value("imageward_policy_evaluations_total", labels) or 0

    before = sample()
    _check(_policy("counted"), checker.Context(count_metrics=False))
    assert sample() == before
    _check(_policy("counted"), checker.Context())
    assert sample() == before + 1
