"""The scan settings read from the environment; a bad value names its variable."""

from __future__ import annotations

import pytest

from imageward import errors, settings


def test_defaults() -> None:
    scan = settings.from_env(environ={}).scan
    assert (scan.enabled, scan.interval, scan.concurrency) == (True, 3600.0, 8)
    assert scan.registry_requests_per_minute == 600 and scan.report_max_results == 500


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("1h", 3600.0), ("15m30s", 930.0)])
def test_interval_in_seconds_or_go_duration(text: str, seconds: float) -> None:
    config = settings.from_env(environ={"IMAGEWARD_SCAN_INTERVAL": text})
    assert config.scan.interval == seconds


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IMAGEWARD_SCAN_INTERVAL", "0.5"),
        ("IMAGEWARD_SCAN_INTERVAL", "1d"),
        ("IMAGEWARD_SCAN_CONCURRENCY", "0"),
        ("IMAGEWARD_SCAN_REGISTRY_REQUESTS_PER_MINUTE", "lots"),
        ("IMAGEWARD_POLICY_REPORTS", "maybe"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(errors.ConfigurationError) as caught:
        settings.from_env(environ={name: value})
    assert name in str(caught.value)
