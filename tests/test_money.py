from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pricing.money import Refusals, format_usd, non_negative_decimal, parse_usd, to_nanos, to_usd


@pytest.mark.parametrize(
    "usd, nanos",
    [
        (Decimal("0.0000000005"), 1),  # exactly half a nano-dollar rounds up
        (Decimal("0.0000000004999"), 0),
        (Decimal("0.0000000015"), 2),
        (Decimal("0.0000000025"), 3),  # half-up, not banker's rounding
        (Decimal("-0.0000000005"), -1),  # half away from zero
        (Decimal("0.00000000049999999999999999"), 0),
        (Decimal("1.5"), 1_500_000_000),
        (Decimal("0"), 0),
    ],
)
def test_to_nanos_rounds_half_up(usd, nanos):
    assert to_nanos(usd) == nanos


@pytest.mark.parametrize(
    "nanos, text",
    [
        (10 * 10**9, "10.00"),
        (1500, "0.0000015"),
        (0, "0.00"),
        (1, "0.000000001"),
        (500_000_000, "0.50"),
        (123_456_789_012, "123.456789012"),
        (-1500, "-0.0000015"),
        (-(10**9), "-1.00"),
    ],
)
def test_format_usd(nanos, text):
    assert format_usd(nanos) == text


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_format_usd_writes_the_exact_decimal_amount(nanos):
    """Integer formatting gives the Decimal amount exactly: at least two places, no trailing zeros beyond."""
    text = format_usd(nanos)
    whole, _, frac = text.partition(".")
    assert Decimal(text) == Decimal(nanos).scaleb(-9)
    assert len(frac) >= 2 and (len(frac) == 2 or not frac.endswith("0")) and whole.lstrip("-").isdigit()


@pytest.mark.parametrize("nanos", [0, 1, 1500, 10**9, 123_456_789_012, -7])
def test_to_usd_round_trips(nanos):
    assert to_nanos(to_usd(nanos)) == nanos


@pytest.mark.parametrize(
    "text, nanos",
    [
        ("10", 10 * 10**9),
        ("0.5", 500_000_000),
        ("0.50", 500_000_000),
        (" 7 ", 7 * 10**9),
        ("0.000000001", 1),  # 9 places: the smallest amount
        ("1e2", 100 * 10**9),  # Decimal syntax, exact
        ("1E-9", 1),
        ("9223372036.854775807", 2**63 - 1),
    ],
)
def test_parse_usd_accepts(text, nanos):
    assert parse_usd(text) == nanos


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "not a decimal amount"),
        ("abc", "not a decimal amount"),
        ("1,5", "not a decimal amount"),
        ("-1", "must be a positive number"),
        ("0", "must be a positive number"),
        ("0.000", "must be a positive number"),
        ("NaN", "must be a positive number"),
        ("Infinity", "must be a positive number"),
        ("-Infinity", "must be a positive number"),
        ("0.0000000001", "more than 9 decimal places"),
        ("1e-10", "more than 9 decimal places"),
        ("9223372036.854775808", "too large"),  # one nano-dollar over a BIGINT
        ("1e999990", "too large"),  # took 30 s (signed token caps are parsed with it)
        ("1e999999", "too large"),  # decimal.Overflow, not a ValueError
    ],
)
def test_parse_usd_refuses(text, message):
    with pytest.raises(ValueError, match=message):
        parse_usd(text)


@pytest.mark.parametrize(
    "value, options, number",
    [
        ("1.50", {}, Decimal("1.50")),
        (" 7 ", {}, Decimal(7)),
        ("0", {"whole": True}, Decimal(0)),
        (3, {}, Decimal(3)),
        (Decimal("0.25"), {}, Decimal("0.25")),
        ("1e2", {"plain": False}, Decimal(100)),  # any Decimal syntax when not plain
        (Decimal("1E+3"), {"whole": True}, Decimal(1000)),
    ],
)
def test_non_negative_decimal_accepts(value, options, number):
    assert non_negative_decimal(value, "rate", **options) == number


@pytest.mark.parametrize(
    "value, options, message",
    [
        ("-1", {}, "rate must be a non-negative decimal number, got '-1'"),
        ("1e6", {}, "got '1e6'"),  # plain: digits and a fraction only
        ("1_000", {}, "got '1_000'"),
        ("nan", {}, "got 'nan'"),
        (".5", {}, "got '.5'"),
        ("0.5", {"whole": True}, "rate must be a non-negative whole number, got '0.5'"),
        (Decimal("0.5"), {"whole": True}, "whole number, got 0.5"),
        (Decimal(-1), {}, "got -1$"),
        (Decimal("NaN"), {}, "got NaN"),
        (1.5, {}, "got 1.5"),  # a float is never exact enough to be read
        (True, {}, "got True"),
        (None, {}, "got None"),
        ("abc", {"plain": False}, "got 'abc'"),
        ("-Infinity", {"plain": False}, "got '-Infinity'"),
    ],
)
def test_non_negative_decimal_refuses(value, options, message):
    with pytest.raises(ValueError, match=message):
        non_negative_decimal(value, "rate", **options)


@pytest.mark.parametrize(
    "value, message",
    [(0.5, "wrong type: rate 0.5"), ("x", "not a number: rate 'x'"), ("-2", "out of range: rate '-2'")],
)
def test_non_negative_decimal_words_each_refusal_as_its_caller_does(value, message):
    refusals = Refusals("wrong type: {name} {value}", "not a number: {name} {value}", "out of range: {name} {value}")
    with pytest.raises(ValueError, match=f"^{message}$"):
        non_negative_decimal(value, "rate", plain=False, refusals=refusals)
