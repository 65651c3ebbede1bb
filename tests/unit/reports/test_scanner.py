"""The scanner's pure helpers and its leases (no cluster: its loop is replaced)."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest

from imageward import metrics, policystore, settings
from imageward.policy import evaluate
from imageward.policy import model as policy_model
from imageward.reports import build, scanner
from imageward.signatures import keys
from imageward.signatures import verify as signatures_verify
from tests.unit.reports.test_targets import deployment
from tests.unit.signatures import build as signature_build


def loaded(name: str, images: list[str], generation: int = 1, **extra: Any) -> Any:
    body = {
        "apiVersion": "imageward.io/v1alpha1",
        "kind": "ImagePolicy",
        "metadata": {"name": name, "generation": generation},
        "spec": {"match": {"images": images}, "rules": {"forbidRootUser": True}},
    }
    return asyncio.run(policystore.load_policy(body))


def test_a_policy_change_checks_only_the_images_it_matches() -> None:
    view = deployment("web", "r/web:2").view
    two = type(view)(
        **{
            **{f: getattr(view, f) for f in view.__dataclass_fields__},
            "images": ("r/web:2", "q/sidecar:1"),
        }
    )
    assert scanner._matched(loaded("p", ["r/**"]), two, ()) == ["r/web:2"]
    assert scanner._matched(loaded("p", ["x/**"]), two, ()) == []


def test_merge_replaces_only_the_policies_checked() -> None:
    def result(policy: str) -> evaluate.PolicyResult:
        return evaluate.PolicyResult(
            policy, policy_model.Mode.ENFORCE, policy_model.FailurePolicy.FAIL
        )

    previous = {
        "a:1": build.ImageResult("sha256:1", {"p": result("p"), "q": result("q")}),
        "b:1": build.ImageResult(None, {"p": result("p")}),
    }
    found = {"a:1": build.ImageResult("sha256:1", {"p": result("p")})}
    merged = scanner._merge(previous, found, [loaded("p", ["**"])], ["a:1", "b:1"])
    assert set(merged["a:1"].results) == {"p", "q"}
    assert set(merged["b:1"].results) == set()  # p no longer matches b:1
    assert merged["a:1"].digest == "sha256:1"


def test_fingerprint_follows_generation_and_key_material() -> None:
    first = loaded("p", ["**"])
    assert scanner.build_fingerprint(first) == scanner.build_fingerprint(loaded("p", ["**"]))
    assert scanner.build_fingerprint(first) != scanner.build_fingerprint(
        loaded("p", ["**"], generation=2)
    )
    key = signature_build.generate("p256")
    other = signature_build.generate("p256")

    def with_key(pem: str) -> Any:
        authority = signatures_verify.KeyAuthority(
            name="k", key=keys.parse_public_key(pem, authority="k")
        )
        return policystore.LoadedPolicy(
            name="p",
            generation=1,
            match=first.match,
            policy=first.policy,
            authorities=(authority,),
        )

    rotated = (
        with_key(signature_build.public_pem(key)),
        with_key(signature_build.public_pem(other)),
    )
    assert scanner.build_fingerprint(rotated[0]) != scanner.build_fingerprint(rotated[1])
    again = with_key(signature_build.public_pem(key))
    assert scanner.build_fingerprint(rotated[0]) == scanner.build_fingerprint(again)


def _scanner() -> scanner.Scanner:
    from imageward.registry import transport

    client = types.SimpleNamespace(transport=transport.Transport())
    state = types.SimpleNamespace(
        settings=settings.Settings(), source=types.SimpleNamespace(client=client)
    )
    return scanner.Scanner(state)  # type: ignore[arg-type]


def test_leases_start_drain_and_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[str] = []

    async def fake_run(self: scanner.Scanner) -> None:
        runs.append("start")
        try:
            while not (self._draining and not self._leases):
                self._wake.clear()
                await self._wake.wait()
            runs.append("drained")
        finally:
            if not self._closing:
                await self._shutdown()

    monkeypatch.setattr(scanner.Scanner, "_run", fake_run)

    async def scenario() -> None:
        scan = _scanner()
        await scan.acquire("a")
        await scan.acquire("b")
        await asyncio.sleep(0)
        assert scan.leading and runs == ["start"]
        metrics.running_violations.labels(policy="a", rule="signatures").set(3)
        scan._gauges = {("a", "signatures")}
        # The replica pauses: every daemon stops, not for a deletion; the scan stops at
        # once and exports no gauge any more.
        await scan.release("a", deleted=False)
        assert scan._task is not None and not scan._task.done()
        await scan.release("b", deleted=False)
        assert scan._task is None and not scan.leading
        text = metrics.exposition().decode()
        assert 'imageward_running_violations{policy="a",rule="signatures"}' not in text
        # Resumed, then the last policy deleted: one last pass, then it stops by itself.
        await scan.acquire("a")
        task = scan._task
        await asyncio.sleep(0)
        await scan.release("a", deleted=True)
        assert task is not None
        await asyncio.wait_for(task, 5)
        assert runs == ["start", "start", "drained"]
        assert "a" in scan._deleted

    asyncio.run(scenario())
