"""The alert rules: Prometheus' own promtool checks them and, on synthetic series, shows
each alert fires when it should (after its `for`) and stays quiet otherwise."""

from __future__ import annotations

import pathlib
import subprocess
from typing import Any

import yaml

from imageward.localcluster import tools
from tests.unit.chart import chart


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(tools.find("promtool")), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def test_rules_file_is_a_plain_prometheus_rule_file() -> None:
    output = promtool("check", "rules", str(chart.ALERTS)).stdout
    assert "SUCCESS: 6 rules found" in output


def test_every_alert_is_documented_and_routed() -> None:
    rules = chart.alert_rules()
    assert {rule["alert"] for rule in rules} == {
        "ImagewardWebhookErrors",
        "ImagewardRefusalSpike",
        "ImagewardAdmissionLatencyNearTimeout",
        "ImagewardPrePullDegraded",
        "ImagewardRegistryErrors",
        "ImagewardEnforcedPolicyViolatedByRunningWorkloads",
    }
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["for"], rule["alert"]


def test_dashboard_expressions_parse(tmp_path: pathlib.Path) -> None:
    # promtool parses every expression of a rule file; recording rules carry them.
    rules = [
        {"record": f"dashboard:expression_{i}", "expr": expr}
        for i, expr in enumerate(chart.dashboard_expressions())
    ]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in promtool("check", "rules", str(path)).stdout


ADMISSIONS = "imageward_admission_requests_total"
LATENCY = "imageward_admission_duration_seconds_bucket"
NODES = "imageward_prepull_nodes"
REGISTRY = "imageward_registry_requests_total"
RUNNING = "imageward_running_violations"
MODE = "imageward_policy_mode"


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    selector = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{selector}}}", "values": values}


def _expect(
    alert: str, eval_time: str, *firing: dict[str, str], severity: str = "warning"
) -> dict[str, Any]:
    return {
        "eval_time": eval_time,
        "alertname": alert,
        "exp_alerts": [{"exp_labels": {**labels, "severity": severity}} for labels in firing],
    }


SCENARIOS: list[dict[str, Any]] = [
    {
        # Half of the pod reviews fail; deployments are fine.
        "input_series": [
            _series(ADMISSIONS, "0+60x30", resource="pods", operation="CREATE", decision="error"),
            _series(ADMISSIONS, "0+60x30", resource="pods", operation="CREATE", decision="allow"),
            _series(ADMISSIONS, "0+60x30", resource="deployments", decision="allow"),
            _series(ADMISSIONS, "0x30", resource="deployments", decision="error"),
        ],
        "alert_rule_test": [
            _expect("ImagewardWebhookErrors", "4m"),  # still pending (for: 5m)
            _expect("ImagewardWebhookErrors", "15m", {"resource": "pods"}, severity="critical"),
        ],
    },
    {
        # Pods: one refusal a minute for 70 minutes, then one a second. Jobs: refusals
        # start at minute 85 with no history at all.
        "input_series": [
            _series(ADMISSIONS, "0+1x70 130+60x30", resource="pods", decision="deny"),
            _series(ADMISSIONS, "_x85 0+60x15", resource="jobs", decision="deny"),
        ],
        "alert_rule_test": [
            _expect("ImagewardRefusalSpike", "60m"),  # the steady trickle is no spike
            _expect("ImagewardRefusalSpike", "90m", {"resource": "pods"}),
            _expect("ImagewardRefusalSpike", "95m", {"resource": "jobs"}, {"resource": "pods"}),
        ],
    },
    {
        # Pod reviews take 5-10 s (p99 about 9.95 s); deployments answer in under 0.1 s.
        "input_series": [
            _series(LATENCY, "0x30", resource="pods", le="0.1"),
            _series(LATENCY, "0x30", resource="pods", le="5"),
            _series(LATENCY, "0+10x30", resource="pods", le="10"),
            _series(LATENCY, "0+10x30", resource="pods", le="+Inf"),
            _series(LATENCY, "0+10x30", resource="deployments", le="0.1"),
            _series(LATENCY, "0+10x30", resource="deployments", le="5"),
            _series(LATENCY, "0+10x30", resource="deployments", le="10"),
            _series(LATENCY, "0+10x30", resource="deployments", le="+Inf"),
        ],
        "alert_rule_test": [
            _expect("ImagewardAdmissionLatencyNearTimeout", "8m"),
            _expect("ImagewardAdmissionLatencyNearTimeout", "20m", {"resource": "pods"}),
        ],
    },
    {
        "input_series": [
            _series(NODES, "0 0 1x20", namespace="shop", prepull="web", state="failed"),
            _series(NODES, "3x22", namespace="shop", prepull="web", state="ready"),
            _series(NODES, "0x22", namespace="shop", prepull="api", state="failed"),
        ],
        "alert_rule_test": [
            _expect("ImagewardPrePullDegraded", "10m"),
            _expect("ImagewardPrePullDegraded", "15m", {"namespace": "shop", "prepull": "web"}),
        ],
    },
    {
        "input_series": [
            _series(REGISTRY, "0+30x40", registry="ghcr.io", kind="manifest", code="503"),
            _series(REGISTRY, "0+30x40", registry="ghcr.io", kind="manifest", code="200"),
            _series(REGISTRY, "0+60x40", registry="docker.io", kind="blob", code="200"),
        ],
        "alert_rule_test": [
            _expect("ImagewardRegistryErrors", "10m"),
            _expect("ImagewardRegistryErrors", "20m", {"registry": "ghcr.io"}),
        ],
    },
    {
        # Two running workloads break an Enforce policy from minute 5; an Audit policy's
        # violations are what Audit is for: no alert.
        "input_series": [
            _series(RUNNING, "0x5 2x30", policy="signed", rule="signatures"),
            _series(MODE, "1x35", policy="signed", mode="Enforce"),
            _series(RUNNING, "3x35", policy="sizes", rule="maxLayers"),
            _series(MODE, "1x35", policy="sizes", mode="Audit"),
        ],
        "alert_rule_test": [
            _expect("ImagewardEnforcedPolicyViolatedByRunningWorkloads", "10m"),
            _expect(
                "ImagewardEnforcedPolicyViolatedByRunningWorkloads",
                "20m",
                {"policy": "signed", "rule": "signatures"},
            ),
        ],
    },
]


def test_alerts_fire_on_synthetic_series(tmp_path: pathlib.Path) -> None:
    # promtool compares annotations exactly; they are checked by `promtool check rules`
    # above, so this copy of the rules leaves them out and keeps everything else.
    groups = yaml.safe_load(chart.ALERTS.read_text())["groups"]
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    tested = {test["alertname"] for s in SCENARIOS for test in s["alert_rule_test"]}
    assert tested == {rule["alert"] for rule in chart.alert_rules()}
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", **scenario} for scenario in SCENARIOS],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    promtool("test", "rules", str(tmp_path / "tests.yaml"))
