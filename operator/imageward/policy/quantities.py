"""Kubernetes quantities as byte counts, and byte counts as human-readable text.

Grammar from apimachinery `resource.Quantity`: a decimal number with a binary suffix
(Ki Mi Gi Ti Pi Ei), a decimal suffix (n u m k M G T P E) or an exponent (e3, E6).
Sizes must come out as whole, non-negative bytes: `500m` (half a byte, almost always a
typo for `500M`) is refused instead of being rounded the way Kubernetes rounds memory.
"""

from __future__ import annotations

import re

from imageward import errors, records

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (PEP 781)

if TYPE_CHECKING:
    import decimal  # at run time imported by the functions: a policy without sizes needs none

# Compiled when first used (re caches it): a policy without sizes never needs it.
_QUANTITY = (
    r"(?P<sign>[+-]?)(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?"
)
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_MAX_TEXT = 64
# Kubernetes quantities are int64 underneath; anything larger is a mistake.
MAX_BYTES = 2**63 - 1
_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


_set = object.__setattr__  # how a frozen Record's __init__ sets its fields


class QuantityError(errors.ImagewardError):
    """Text that is not a byte quantity; parse_policy turns it into a PolicyError."""

    def __init__(self, value: object, reason: str) -> None:
        self.value = value
        self.reason = reason
        super().__init__(f"{value!r} {reason}")


class Quantity(records.Record):
    """A byte quantity and the text it was written as (messages quote the policy)."""

    __slots__ = ("bytes", "text")
    text: str
    bytes: int

    def __init__(
        self,
        text: str,
        bytes: int,
    ) -> None:
        _set(self, "text", text)
        _set(self, "bytes", bytes)

    def __str__(self) -> str:
        return self.text


def _multiplier(text: str, suffix: str) -> decimal.Decimal:
    import decimal

    if suffix in _BINARY:
        return decimal.Decimal(2) ** _BINARY[suffix]
    if suffix in _DECIMAL:
        return decimal.Decimal(10) ** _DECIMAL[suffix]
    exponent = int(suffix[1:])
    # Bound the exponent before Decimal arithmetic so `1e999999999` costs nothing.
    if not -30 <= exponent <= 30:
        raise QuantityError(text, "has an exponent out of range")
    return decimal.Decimal(10) ** exponent


def parse_bytes(value: object) -> int:
    """Parse an int or a quantity string to whole bytes; raises QuantityError."""
    return parse_quantity(value).bytes


def parse_quantity(value: object) -> Quantity:
    """Parse an int or a quantity string (`500Mi`, `1.5Gi`, `1G`, `100k`, `1500`)."""
    if isinstance(value, bool):
        raise QuantityError(value, "is not a quantity (expected e.g. 500Mi, 1Gi, 1500)")
    if isinstance(value, float):
        if not value.is_integer():
            raise QuantityError(value, "is not a whole number of bytes")
        value = int(value)
    if isinstance(value, int):
        if value < 0:
            raise QuantityError(value, "must not be negative")
        if value > MAX_BYTES:
            raise QuantityError(value, "is too large")
        return Quantity(text=str(value), bytes=value)
    if not isinstance(value, str):
        raise QuantityError(value, "is not a quantity (expected e.g. 500Mi, 1Gi, 1500)")
    if len(value) > _MAX_TEXT:
        raise QuantityError(value, "is too long for a quantity")
    match = re.fullmatch(_QUANTITY, value)
    if match is None:
        hint = ""
        if re.fullmatch(r"[0-9.]+\s*(?:[KMGTPE]i?B|[kKmMgGtT][bB]?|[KMGTPE]I)", value):
            hint = " (Kubernetes writes 500Mi or 500M, not 500MB or 500mb)"
        raise QuantityError(
            value, f"is not a Kubernetes quantity (expected e.g. 500Mi, 1Gi, 1500M){hint}"
        )
    if match["sign"] == "-":
        raise QuantityError(value, "must not be negative")
    suffix = match["suffix"] or ""
    import decimal

    with decimal.localcontext() as context:
        context.prec = 80
        amount = decimal.Decimal(match["number"]) * _multiplier(value, suffix)
    if amount != amount.to_integral_value():
        raise QuantityError(
            value, "is not a whole number of bytes (did you mean M, the mega suffix, not m?)"
        )
    if amount > MAX_BYTES:
        raise QuantityError(value, "is too large")
    return Quantity(text=value, bytes=int(amount))


def format_bytes(size: int) -> str:
    """Human-readable binary size with one decimal: `812.4MiB`, `1.5GiB`, `512B`."""
    if size < 1024:
        return f"{size}B"
    value = size / 1024
    unit = 0
    # Promote when rounding would print 1024.0 of this unit.
    while round(value, 1) >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{value:.1f}{_UNITS[unit]}"
