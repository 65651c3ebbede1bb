"""The controller's pure decisions: when to reconcile again, what status to write."""

from __future__ import annotations

import datetime

import pytest

from imageward.prepull import controller, model, status

SPEC = model.parse_prepull({"metadata": {"name": "p"}, "spec": {"images": ["x"]}})
REFUSED = status.Problem(status.REASON_DAEMONSET_REFUSED, "denied by ImagePolicy p")


def ago(seconds: float) -> str:
    moment = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_refused_prepull_is_tried_again_soon_and_keeps_its_reason_meanwhile() -> None:
    refused = controller.Findings(3, problems=(REFUSED,), applied=False)
    due = controller.evaluate_refresh_due
    # Between two attempts the findings (DaemonSetRefused and the policy's message) stand.
    assert not due(SPEC, refused, ago(5), 3)
    assert due(SPEC, refused, ago(31), 3)
    # Something applied waits for the refresh interval (1h by default).
    assert not due(SPEC, controller.Findings(3), ago(31), 3)
    assert due(SPEC, controller.Findings(3), ago(3601), 3)


def test_no_findings_or_another_generation_reconciles_at_once() -> None:
    due = controller.evaluate_refresh_due
    assert due(SPEC, None, ago(1), 3)
    assert due(SPEC, controller.Findings(2), ago(1), 3)


def test_an_invalid_spec_is_not_retried_until_it_changes() -> None:
    invalid = controller.Findings(
        3, problems=(status.Problem(status.REASON_INVALID_SPEC, "bad"),), applied=False
    )
    assert not controller.evaluate_refresh_due(SPEC, invalid, ago(120), 3)


def test_the_refresh_delay_counts_down_from_the_last_resolve() -> None:
    now = datetime.datetime.now(datetime.UTC)
    delay = controller.evaluate_refresh_delay
    applied = controller.Findings(3)
    assert delay(SPEC, applied, ago(600), 3, now=now) == pytest.approx(3000, abs=2)
    refused = controller.Findings(3, problems=(REFUSED,), applied=False)
    assert delay(SPEC, refused, ago(10), 3, now=now) == pytest.approx(20, abs=2)
    assert delay(SPEC, applied, None, 3, now=now) == 0
    assert delay(SPEC, applied, "not a time", 3, now=now) == 0
    assert delay(SPEC, None, ago(1), 3, now=now) == 0
    invalid = controller.Findings(
        3, problems=(status.Problem(status.REASON_INVALID_SPEC, "bad"),), applied=False
    )
    assert delay(SPEC, invalid, ago(1), 3, now=now) is None


def test_status_is_patched_only_where_it_differs() -> None:
    current = {"nodes": {"desired": 3, "ready": 2}, "readyText": "2/3", "plan": {"layers": 1}}
    wanted = {"nodes": {"desired": 3, "ready": 3}, "readyText": "3/3", "plan": {"layers": 1}}
    assert controller.evaluate_status_patch(current, wanted) == {
        "nodes": {"desired": 3, "ready": 3},
        "readyText": "3/3",
    }
    assert controller.evaluate_status_patch(wanted, wanted) == {}


def test_a_write_counts_until_the_watch_shows_it() -> None:
    assert controller.evaluate_caught_up("12", "12")
    assert controller.evaluate_caught_up("13", "12")
    assert not controller.evaluate_caught_up("11", "12")
    assert not controller.evaluate_caught_up("opaque-a", "opaque-b")
    tracker = controller.Tracker("shop", "web", "u1")
    written = {"readyText": "3/3"}
    tracker.written = ("12", written)
    stale = {"metadata": {"resourceVersion": "11"}, "status": {"readyText": "2/3"}}
    assert tracker.current_status(stale) == written
    fresh = {"metadata": {"resourceVersion": "12"}, "status": {"readyText": "3/3", "x": 1}}
    assert tracker.current_status(fresh) == {"readyText": "3/3", "x": 1}
    assert tracker.written is None
