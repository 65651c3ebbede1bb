from __future__ import annotations

import pytest

from imageward.policy import quantities


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("500Mi", 500 * 2**20),
        ("1Gi", 2**30),
        ("1G", 10**9),
        ("1500", 1500),
        ("1.5Gi", 3 * 2**29),
        ("100k", 100_000),
        (".5Ki", 512),
        ("1.", 1),
        ("0", 0),
        ("1e3", 1000),
        ("1E6", 10**6),
        ("2Ti", 2 * 2**40),
        ("1Ei", 2**60),
        ("+5", 5),
        ("1500m", None),  # 1.5 bytes
        (1500, 1500),
        (1e9, 10**9),
        (0, 0),
    ],
)
def test_parse(value: str | int | float, expected: int | None) -> None:
    if expected is None:
        with pytest.raises(quantities.QuantityError):
            quantities.parse_bytes(value)
    else:
        assert quantities.parse_bytes(value) == expected


def test_quantity_keeps_text() -> None:
    quantity = quantities.parse_quantity("500Mi")
    assert (quantity.text, quantity.bytes, str(quantity)) == ("500Mi", 524288000, "500Mi")
    assert quantities.parse_quantity(1024).text == "1024"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (
            "500MB",
            "is not a Kubernetes quantity (expected e.g. 500Mi, 1Gi, 1500M) "
            "(Kubernetes writes 500Mi or 500M, not 500MB or 500mb)",
        ),
        ("1 Gi", "is not a Kubernetes quantity (expected e.g. 500Mi, 1Gi, 1500M)"),
        (
            "1K",
            "is not a Kubernetes quantity (expected e.g. 500Mi, 1Gi, 1500M) "
            "(Kubernetes writes 500Mi or 500M, not 500MB or 500mb)",
        ),
        ("Gi", "is not a Kubernetes quantity (expected e.g. 500Mi, 1Gi, 1500M)"),
        ("", "is not a Kubernetes quantity (expected e.g. 500Mi, 1Gi, 1500M)"),
        ("500m", "is not a whole number of bytes (did you mean M, the mega suffix, not m?)"),
        ("0.5", "is not a whole number of bytes (did you mean M, the mega suffix, not m?)"),
        ("-1Gi", "must not be negative"),
        (-1, "must not be negative"),
        (1.5, "is not a whole number of bytes"),
        (True, "is not a quantity (expected e.g. 500Mi, 1Gi, 1500)"),
        (None, "is not a quantity (expected e.g. 500Mi, 1Gi, 1500)"),
        ("1e99", "has an exponent out of range"),
        ("9Ei", "is too large"),
        (2**63, "is too large"),
        ("1" * 65, "is too long for a quantity"),
    ],
)
def test_invalid(value: object, reason: str) -> None:
    with pytest.raises(quantities.QuantityError) as excinfo:
        quantities.parse_quantity(value)
    assert excinfo.value.reason == reason


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (1023, "1023B"),
        (1024, "1.0KiB"),
        (1536, "1.5KiB"),
        (851_863_142, "812.4MiB"),
        (500 * 2**20, "500.0MiB"),
        (2**30 - 1, "1.0GiB"),  # promoted rather than "1024.0MiB"
        (3 * 2**29, "1.5GiB"),
        (5 * 2**40, "5.0TiB"),
        (2**63 - 1, "8.0EiB"),
    ],
)
def test_format_bytes(size: int, text: str) -> None:
    assert quantities.format_bytes(size) == text
