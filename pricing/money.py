"""Exact money: every amount in Tollgate is an int of nano-dollars (1e-9 USD).

Integers survive SQLite, PostgreSQL, JSON and arithmetic without drift; a nano-dollar is
fine enough that a single token of the cheapest model still has a non-zero price.
Rounding rule: half-up to the nearest nano-dollar, applied once per computed amount.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import NamedTuple

NANOS_PER_USD = 10**9
_NANO = Decimal(1).scaleb(-9)
MAX_USD = Decimal(2**63 - 1).scaleb(-9)  # what a BIGINT column of nano-dollars holds
_PLAIN = re.compile(r"\d+(?:\.\d+)?")  # no sign, exponent, underscore, nan or inf
_WHOLE = re.compile(r"\d+")


def to_nanos(usd: Decimal) -> int:
    """Round a Decimal dollar amount half-up to whole nano-dollars."""
    return int((usd * NANOS_PER_USD).to_integral_value(rounding=ROUND_HALF_UP))


def to_usd(nanos: int) -> Decimal:
    return (Decimal(nanos) / NANOS_PER_USD).quantize(_NANO)


def format_usd(nanos: int) -> str:
    """Decimal string with at least two places, in integers alone: 10.00, 0.0000015, -0.25 (every answer and
    every metered flow's note: no Decimal made per call)."""
    whole, frac = divmod(-nanos if nanos < 0 else nanos, NANOS_PER_USD)
    return f"{'-' if nanos < 0 else ''}{whole}.{('%09d' % frac).rstrip('0').ljust(2, '0')}"


def parse_usd(text: str) -> int:
    """Parse a user-typed positive amount ("10", "0.50"); at most 9 decimal places."""
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise ValueError(f"not a decimal amount: {text!r}") from None
    if not value.is_finite() or value <= 0:
        raise ValueError(f"amount must be a positive number: {text!r}")
    if value > MAX_USD:  # also keeps "1e999990" from costing seconds, or overflowing the context
        raise ValueError(f"amount is too large: {text!r}")
    if value.as_tuple().exponent < -9:
        raise ValueError(f"amount has more than 9 decimal places: {text!r}")
    return int(value * NANOS_PER_USD)


class Refusals(NamedTuple):
    """How non_negative_decimal words its three refusals; {name}, {kind} and {value} are filled in."""

    wrong_type: str = "{name} must be {kind}, got {value}"
    not_a_number: str = "{name} must be {kind}, got {value}"
    out_of_range: str = "{name} must be {kind}, got {value}"


MUST_BE = Refusals()  # "tier rate must be a non-negative decimal number, got '-1'"


def non_negative_decimal(value: object, name: str, *, plain: bool = True, whole: bool = False,
                         refusals: Refusals = MUST_BE) -> Decimal:
    """The one check of a non-negative amount, rate or percentage, exact: a str, an int or a Decimal, never a
    float or a bool. plain: text must be digits with an optional fraction, so "1e6", "-1", "nan" or "1_000"
    never slip in as prices; otherwise any decimal.Decimal syntax is read. whole: a whole number.
    ValueError, worded by `refusals` in the caller's own terms."""
    kind = "a non-negative whole number" if whole else "a non-negative decimal number"
    shown = repr(value) if isinstance(value, str) else str(value)
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise ValueError(refusals.wrong_type.format(name=name, kind=kind, value=shown))
    if isinstance(value, str) and plain and not (_WHOLE if whole else _PLAIN).fullmatch(value.strip()):
        raise ValueError(refusals.not_a_number.format(name=name, kind=kind, value=shown))
    try:
        number = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise ValueError(refusals.not_a_number.format(name=name, kind=kind, value=shown)) from None
    if not number.is_finite() or number < 0 or (whole and number != number.to_integral_value()):
        raise ValueError(refusals.out_of_range.format(name=name, kind=kind, value=shown))
    return number
