"""Exact money: every amount in Tollgate is an int of nano-dollars (1e-9 USD).

Integers survive SQLite, PostgreSQL, JSON and arithmetic without drift; a nano-dollar is
fine enough that a single token of the cheapest model still has a non-zero price.
Rounding rule: half-up to the nearest nano-dollar, applied once per computed amount.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

NANOS_PER_USD = 10**9
_NANO = Decimal(1).scaleb(-9)
MAX_USD = Decimal(2**63 - 1).scaleb(-9)  # what a BIGINT column of nano-dollars holds


def to_nanos(usd: Decimal) -> int:
    """Round a Decimal dollar amount half-up to whole nano-dollars."""
    return int((usd * NANOS_PER_USD).to_integral_value(rounding=ROUND_HALF_UP))


def to_usd(nanos: int) -> Decimal:
    return (Decimal(nanos) / NANOS_PER_USD).quantize(_NANO)


def format_usd(nanos: int) -> str:
    """Decimal string with at least two places and no float on the way: 10.00, 0.0000015."""
    text = format(to_usd(nanos), "f").rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


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
