"""`ctr events` lines read back as timed events (the start-time bench's clock)."""

from __future__ import annotations

import datetime

import pytest

from imageward.localcluster import containerd


def test_a_task_start_line_gives_its_container_and_nanosecond_time() -> None:
    line = (
        "2026-12-02 12:40:01.123456789 +0000 UTC k8s.io /tasks/start "
        '{"container_id":"abc123","pid":4242}\n'
    )
    event = containerd.parse_event_line(line)
    assert event is not None
    assert (event.namespace, event.topic) == ("k8s.io", "/tasks/start")
    assert event.body == {"container_id": "abc123", "pid": 4242}
    whole = datetime.datetime(2026, 12, 2, 12, 40, 1, tzinfo=datetime.UTC).timestamp()
    assert event.time == pytest.approx(whole + 0.123456789, abs=1e-6)


def test_go_trims_trailing_zeros_and_other_zones_are_honoured() -> None:
    trimmed = containerd.parse_event_line(
        '2026-12-02 12:40:01.5 +0100 CET default /images/create {"name":"x"}'
    )
    whole = containerd.parse_event_line(
        '2026-12-02 11:40:01 +0000 UTC default /images/create {"name":"x"}'
    )
    assert trimmed is not None and whole is not None
    assert trimmed.time - whole.time == pytest.approx(0.5)


@pytest.mark.parametrize(
    "line",
    [
        "",
        'time="2026-12-02T12:40:01Z" level=warning msg="reconnecting"',
        "2026-12-02 12:40:01 +0000 UTC k8s.io /tasks/start not-json",
        '2026-12-02 12:40:01 +0000 UTC k8s.io /tasks/start ["a", "list"]',
        '2026-12-02 12:40:01 +0000 UTC k8s.io tasks/start {"container_id":"a"}',
    ],
)
def test_anything_but_an_event_is_skipped(line: str) -> None:
    assert containerd.parse_event_line(line) is None
