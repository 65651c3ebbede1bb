"""The Grafana dashboard: valid for the sidecar, one datasource variable used everywhere,
and only metric names imageward really exports."""

from __future__ import annotations

from typing import Any

from tests.unit.chart import chart

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def _all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for panel in panels:
        found.append(panel)
        found += _all_panels(panel.get("panels", []))
    return found


def test_dashboard_identity_and_schema() -> None:
    dashboard = chart.dashboard()
    assert dashboard["uid"] == "imageward"
    assert dashboard["title"] == "imageward"
    assert dashboard["schemaVersion"] >= 36
    assert "id" not in dashboard or dashboard["id"] is None  # provisioned, never pinned


def test_datasource_variable() -> None:
    variables = {v["name"]: v for v in chart.dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"


def test_panel_ids_are_unique() -> None:
    ids = [panel["id"] for panel in _all_panels(chart.dashboard()["panels"])]
    assert len(ids) == len(set(ids))
    assert all(isinstance(i, int) and i > 0 for i in ids)


def test_every_panel_and_target_uses_the_datasource_variable() -> None:
    panels = [p for p in _all_panels(chart.dashboard()["panels"]) if p["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in chart.dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, panel["title"]
        taken |= cells


def test_dashboard_shows_what_the_sre_needs() -> None:
    exprs = chart.dashboard_expressions()
    text = "\n".join(exprs)
    titles = {p["title"] for p in chart.dashboard()["panels"]}
    assert {
        "Admissions by decision",
        "Refusals by policy and rule",
        "Admission latency p50 / p99",
        "Registry request latency p99",
        "Registry errors",
        "Cache hit ratio",
        "Signature verifications",
        "Pre-pull nodes",
        "Pre-pull planned and saved bytes",
        "Running workloads out of policy",
        "Scan duration",
    } <= titles
    assert 'imageward_policy_evaluations_total{result="fail"}' in text
    for quantile in ("0.5", "0.99"):
        assert (
            f"histogram_quantile({quantile}, sum by (le) "
            "(rate(imageward_admission_duration_seconds_bucket[1m])))"
        ) in text
    assert 'code=~"5..|429|error|timeout"' in text
    for name in (
        "imageward_admission_requests_total",
        "imageward_registry_request_duration_seconds_bucket",
        "imageward_cache_lookups_total",
        "imageward_signature_verifications_total",
        "imageward_prepull_nodes",
        "imageward_prepull_planned_bytes",
        "imageward_prepull_saved_bytes",
        "imageward_running_violations",
        "imageward_scan_duration_seconds_bucket",
        "imageward_policy_exceptions_applied_total",
    ):
        assert name in text


def test_dashboard_and_alerts_use_only_exported_metric_names() -> None:
    exported = chart.exported_series_names()
    expressions = chart.dashboard_expressions() + [r["expr"] for r in chart.alert_rules()]
    for expression in expressions:
        unknown = chart.series_names_in(expression) - exported
        assert not unknown, f"{expression!r} uses {unknown}, not in imageward.metrics"
