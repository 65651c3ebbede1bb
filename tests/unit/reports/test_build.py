"""PolicyReports, status.violations and gauges from check results (pure)."""

from __future__ import annotations

import datetime
from typing import Any

from imageward.exceptions import model as exceptions_model
from imageward.policy import evaluate
from imageward.policy import model as policy_model
from imageward.reports import build, targets
from tests.unit.reports.test_targets import deployment, pod

NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
WEB, TOOL = "r/web:2", "r/tool:1"


def info(name: str, mode: policy_model.Mode = policy_model.Mode.ENFORCE, **kw: Any) -> Any:
    return build.PolicyInfo(
        name, mode, kw.get("rules", ("signatures", "maxLayers")), kw.get("allow", True), True
    )


def result(policy: str, mode: policy_model.Mode, *rules: str, image: str = WEB) -> Any:
    return evaluate.PolicyResult(
        policy=policy,
        mode=mode,
        failure_policy=policy_model.FailurePolicy.FAIL,
        violations=tuple(
            evaluate.Violation(policy, rule, image, None, f"ImagePolicy {policy}: {image} {rule}")
            for rule in rules
        ),
    )


def world() -> tuple[dict[Any, targets.Target], targets.View, targets.View]:
    web = deployment("web", WEB)
    tool = pod("debug", TOOL)
    found = targets.build_targets([tool], [], [web])
    return found, web.view, tool.view


def render(checks: Any, policies: Any, exceptions: Any = None, **kw: Any) -> build.Rendered:
    found = kw.pop("found", None) or world()[0]
    return build.build_reports(
        found,
        checks,
        {},
        policies,
        exceptions or {},
        now=kw.pop("now", NOW),
        first_seen=kw.pop("first_seen", {}),
        max_results=kw.pop("max_results", 100),
    )


def test_results_by_mode_and_rule() -> None:
    _, web, tool = world()
    enforce, warn, audit = (
        policy_model.Mode.ENFORCE,
        policy_model.Mode.WARN,
        policy_model.Mode.AUDIT,
    )
    checks = {
        (web, ()): {
            WEB: build.ImageResult(
                "sha256:" + "a" * 64,
                {
                    "signed": result("signed", enforce, "signatures"),
                    "sizes": result("sizes", warn, "maxLayers"),
                },
            )
        },
        (tool, ()): {
            TOOL: build.ImageResult(
                None,
                {
                    "audit": result("audit", audit, "signatures", image=TOOL),
                    "signed": result("signed", enforce, "lookup", image=TOOL),
                },
            )
        },
    }
    policies = {
        "signed": info("signed", rules=("signatures",)),
        "sizes": info("sizes", warn, rules=("maxLayers",)),
        "audit": info("audit", audit, rules=("signatures",)),
    }
    rendered = render(checks, policies)
    report = rendered.reports["shop"]
    assert report["apiVersion"] == "wgpolicyk8s.io/v1alpha2" and report["kind"] == "PolicyReport"
    assert report["metadata"] == {
        "name": "imageward",
        "namespace": "shop",
        "labels": {"app.kubernetes.io/managed-by": "imageward"},
    }
    got = {
        (r["resources"][0]["kind"], r["policy"], r["rule"], r["result"]) for r in report["results"]
    }
    assert got == {
        ("Deployment", "signed", "signatures", "fail"),
        ("Deployment", "sizes", "maxLayers", "warn"),
        ("Pod", "audit", "signatures", "fail"),  # Audit reports fail: reports are its place
        ("Pod", "signed", "lookup", "error"),
        # No "signatures pass" for the pod: its facts could not be fetched.
    }
    assert report["summary"] == {"pass": 0, "fail": 2, "warn": 1, "error": 1, "skip": 0}
    first = report["results"][0]
    assert first["source"] == "imageward" and first["result"] == "fail"
    assert first["timestamp"] == {"seconds": int(NOW.timestamp()), "nanos": 0}
    assert first["resources"] == [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "web",
            "namespace": "shop",
            "uid": "uid-web",
        }
    ]
    assert first["message"] == f"ImagePolicy signed: {WEB} signatures"
    assert first["properties"]["digests"] == "sha256:" + "a" * 64
    assert rendered.violations == {"signed": 1, "sizes": 1, "audit": 1}
    assert rendered.running == {
        ("signed", "signatures"): 1,
        ("sizes", "maxLayers"): 1,
        ("audit", "signatures"): 1,
    }
    assert rendered.worst == {
        ("shop", "Deployment", "web"): "fail",
        ("shop", "Pod", "debug"): "fail",
    }
    cluster = rendered.cluster
    assert cluster["kind"] == "ClusterPolicyReport" and "namespace" not in cluster["metadata"]
    messages = {r["message"] for r in cluster["results"]}
    assert "1 running workload fail signatures of ImagePolicy signed, in namespace shop" in messages
    assert cluster["summary"] == report["summary"]


def test_an_exception_turns_fail_into_skip_until_it_expires() -> None:
    _, web, _ = world()
    enforce = policy_model.Mode.ENFORCE
    checks = {
        (web, ()): {
            WEB: build.ImageResult(None, {"signed": result("signed", enforce, "signatures")})
        }
    }
    exception = exceptions_model.parse_exception(
        {
            "metadata": {"name": "legacy", "namespace": "shop"},
            "spec": {
                "policies": [{"name": "signed"}],
                "images": ["r/web:*"],
                "reason": "SEC-1",
                "expires": "2026-12-01T13:00:00Z",
            },
        }
    )
    policies = {"signed": info("signed", rules=("signatures",))}
    rendered = render(checks, policies, {"shop": [exception]})
    (skip,) = rendered.reports["shop"]["results"]
    assert skip["result"] == "skip" and skip["properties"]["exception"] == "legacy"
    assert (
        "waived by ImagePolicyException shop/legacy until 2026-12-01T13:00:00Z (SEC-1)"
        in (skip["message"])
    )
    assert rendered.violations == {"signed": 0}
    assert rendered.next_change == exception.expires
    later = render(checks, policies, {"shop": [exception]}, now=exception.expires)
    assert [r["result"] for r in later.reports["shop"]["results"]] == ["fail"]
    # Forbidden by the policy: fail, not skip.
    strict = {"signed": info("signed", rules=("signatures",), allow=False)}
    forbidden = render(checks, strict, {"shop": [exception]})
    assert [r["result"] for r in forbidden.reports["shop"]["results"]] == ["fail"]
    # Another namespace's exception: nothing waived.
    other = render(checks, policies, {"other": [exception]})
    assert [r["result"] for r in other.reports["shop"]["results"]] == ["fail"]


def test_bounded_reports_count_everything_and_list_fail_first() -> None:
    enforce = policy_model.Mode.ENFORCE
    pods = [pod(f"p{i:03d}", f"r/app{i}:1") for i in range(30)]
    found = targets.build_targets(pods, [], [])
    checks = {
        (p.view, ()): {
            p.view.images[0]: build.ImageResult(
                None,
                {
                    "signed": result(
                        "signed",
                        enforce,
                        *(["signatures"] if i % 3 == 0 else []),
                        image=p.view.images[0],
                    )
                },
            )
        }
        for i, p in enumerate(pods)
    }
    rendered = render(
        checks, {"signed": info("signed", rules=("signatures",))}, found=found, max_results=12
    )
    report = rendered.reports["shop"]
    assert report["summary"]["fail"] == 10 and report["summary"]["pass"] == 20
    assert len(report["results"]) == 12
    assert [r["result"] for r in report["results"]][:10] == ["fail"] * 10
    assert report["metadata"]["annotations"] == {"imageward.io/results-omitted": "18"}


def test_timestamps_survive_so_unchanged_reports_are_identical() -> None:
    _, web, _ = world()
    enforce = policy_model.Mode.ENFORCE
    checks = {
        (web, ()): {
            WEB: build.ImageResult(None, {"signed": result("signed", enforce, "signatures")})
        }
    }
    policies = {"signed": info("signed", rules=("signatures",))}
    first = render(checks, policies)
    later = NOW + datetime.timedelta(hours=1)
    again = render(checks, policies, now=later, first_seen=first.first_seen)
    assert again.reports == first.reports and again.cluster == first.cluster
    # After a restart, from what the API server holds.
    seen = build.parse_first_seen(first.reports["shop"])
    seen.update(build.parse_first_seen(first.cluster))
    restarted = render(checks, policies, now=later, first_seen=seen)
    assert restarted.reports == first.reports and restarted.cluster == first.cluster


def test_exception_status() -> None:
    exception = exceptions_model.parse_exception(
        {
            "metadata": {"name": "legacy", "namespace": "shop", "generation": 2},
            "spec": {
                "policies": [{"name": "signed", "rules": ["signatures"]}, {"name": "strict"}],
                "podSelector": {"matchLabels": {"app": "web"}},
                "reason": "SEC-1",
                "expires": "2026-12-01T13:00:00Z",
            },
        }
    )
    policies = {"signed": info("signed"), "strict": info("strict", allow=False)}
    status = build.build_exception_status(exception, policies, NOW)
    assert status == {
        "state": "Active",
        "message": "waives ImagePolicy signed (signatures); ImagePolicy strict: sets "
        "allowExceptions: false, ignored in namespace shop until 2026-12-01T13:00:00Z",
        "observedGeneration": 2,
    }
    expired = build.build_exception_status(exception, policies, exception.expires)
    assert expired["state"] == "Expired"
    invalid = exceptions_model.project_exception(
        {"metadata": {"name": "bad", "namespace": "shop"}, "spec": {"policies": []}}
    )
    assert invalid is not None
    assert build.build_exception_status(invalid, policies, NOW)["state"] == "Invalid"
