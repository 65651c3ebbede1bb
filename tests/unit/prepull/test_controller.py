"""The controller's pure decisions: when a progress tick must reconcile again."""

from __future__ import annotations

import datetime

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
