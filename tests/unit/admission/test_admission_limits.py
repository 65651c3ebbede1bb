"""Caps on what a client of the webhook port, or a pod creator, can make it hold or do:
metric label values, pull-secret reads per review, request bodies decided at once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from imageward import metrics, runtime, settings
from imageward.admission import endpoints, webhooks, workloads


def _requests(resource: str) -> float:
    labels = {"resource": resource, "operation": "DELETE", "decision": "allowed"}
    value = metrics.REGISTRY.get_sample_value("imageward_admission_requests_total", labels)
    return value or 0.0


def test_a_resource_the_webhook_is_not_sent_is_counted_as_other() -> None:
    # The resource comes from the request body: anyone reaching the port could otherwise
    # make a new time series per request, each printed on every scrape.
    before = _requests("other")
    for i in range(20):
        metrics.observe_admission(f"made-up-{i}", "DELETE", "allowed", 0.001)
    assert _requests("other") == before + 20
    assert _requests("made-up-0") == 0


def test_every_resource_the_webhooks_are_sent_keeps_its_own_label() -> None:
    sent = {
        resource.split("/")[0]
        for rule in webhooks._WORKLOAD_RULES
        for resource in rule["resources"]
    }
    for resource in sorted(sent):
        before = _requests(resource)
        metrics.observe_admission(resource, "DELETE", "allowed", 0.001)
        assert _requests(resource) == before + 1, resource


class _Kube:
    """The two reads credentials_for makes, counted."""

    def __init__(self, account_secrets: int) -> None:
        self.account_secrets = account_secrets
        self.secret_reads: list[str] = []

    async def read_service_account(self, namespace: str, name: str) -> dict[str, Any]:
        names = [{"name": f"account-{i}"} for i in range(self.account_secrets)]
        return {"metadata": {"name": name}, "imagePullSecrets": names}

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.secret_reads.append(name)
        return None


def test_a_review_reads_at_most_max_pull_secrets_secrets(caplog: pytest.LogCaptureFixture) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "containers": [{"name": "web", "image": "registry.acme/shop/web:1.0"}],
            "imagePullSecrets": [{"name": f"own-{i}"} for i in range(10)],
        },
    }
    view = workloads.parse_pod_view(pod, kind="Pod")
    kube = _Kube(account_secrets=5000)
    state = runtime.Runtime(settings.Settings(), kube, None)  # type: ignore[arg-type]

    asyncio.run(state.credentials_for(view))

    # The pod's own come first, then the ServiceAccount's, up to the cap.
    assert len(kube.secret_reads) == runtime.MAX_PULL_SECRETS
    assert kube.secret_reads[:10] == [f"own-{i}" for i in range(10)]
    assert "more than 32 imagePullSecrets" in caplog.text
    assert "'shop'" in caplog.text


def test_request_bodies_decided_at_once_are_bounded() -> None:
    async def run() -> None:
        budget = endpoints._Budget(100)
        first = await budget.acquire(60)
        second = asyncio.create_task(budget.acquire(60))
        await asyncio.sleep(0.01)
        assert not second.done()  # 120 bytes would be over the budget: it waits
        budget.release(first)
        assert await asyncio.wait_for(second, 1) == 60
        # One body bigger than the whole budget is still decided, alone.
        budget.release(60)
        assert await budget.acquire(500) == 100
        budget.release(100)
        assert budget.used == 0

    asyncio.run(run())
