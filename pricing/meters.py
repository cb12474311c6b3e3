"""Meters: the prices a merchant charges its customers, on top of (or instead of) provider cost.

A meter is a slug, a rate type, a unit and tiers:

- ``fixed``: tiered rates per unit are the whole price; the merchant pays the provider
  (``base_cost_payer`` defaults to ``merchant``).
- ``percentage``: a markup in percent of the provider cost ("20" is 20%), no tiers; the
  customer pays provider cost plus markup (``base_cost_payer`` defaults to ``customer``).
- ``hybrid``: both a percentage and tiers; ``base_cost_payer`` defaults to ``customer``.

So ``fee = (provider cost if base_cost_payer == "customer") + markup + tiered``.

Units: ``tokens_1m`` and ``characters_1m`` rates are USD per million units, ``minutes`` USD
per minute (of audio transcribed), ``requests`` USD per request, ``images`` USD per image
generated, ``search_units`` USD per rerank search unit (Lava's tier types are the first four;
the last two are Tollgate's). A tier ``START:RATE`` (START a whole number of raw
units: tokens, characters, minutes, requests, images, search units) prices the usage that falls at or beyond START
and before the next tier's START, counted over the customer's running total for the meter in
the billing cycle. So a request straddling a boundary is billed partly at each rate.

Rounding rule: the whole fee is computed as an exact Decimal (a high-precision context that
traps Inexact, so no intermediate step can round) and rounded half-up once, to whole
nano-dollars, by pricing.money.to_nanos. The only other rounding is of audio minutes, which
are quantized half-up to micro-minutes by units_of: the grain of the stored running total,
so the units billed and the units added to the total are the same number.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import (
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    localcontext,
)

from pricing.money import non_negative_decimal, to_nanos
from pricing.usage import Measured

RATE_TYPES = ("fixed", "percentage", "hybrid")
BASE_COST_PAYERS = ("customer", "merchant")
TOKEN_BASES = ("input+output", "output")

_MILLION = Decimal(1_000_000)
_DEFAULT_PAYER = {"fixed": "merchant", "percentage": "customer", "hybrid": "customer"}
_SLUG = re.compile(r"[a-z0-9_-]{1,64}")
_MICRO = Decimal(1).scaleb(-6)
# Every intermediate result must be exact: a step that would round raises decimal.Inexact.
_EXACT = Context(prec=200, rounding=ROUND_HALF_UP, traps=[Inexact, InvalidOperation, DivisionByZero, Overflow])


@dataclass(frozen=True, slots=True)
class UnitRule:
    """A meter unit: how many raw units a request used, and how many raw units one rate prices."""

    count: Callable[[MeterSpec, Measured], Decimal]
    per: Decimal  # rates are USD per this many units


def _tokens(spec: MeterSpec, measured: Measured) -> Decimal:
    used = measured.tokens
    return Decimal(used.output_tokens if spec.token_basis == "output" else used.input_tokens + used.output_tokens)


def _characters(spec: MeterSpec, measured: Measured) -> Decimal:
    return Decimal(measured.characters)


def _minutes(spec: MeterSpec, measured: Measured) -> Decimal:
    """Unknown audio duration meters nothing rather than failing the request."""
    seconds = measured.audio_seconds
    if seconds is None:
        return Decimal(0)
    with localcontext(Context(prec=200, rounding=ROUND_HALF_UP)):  # seconds / 60 need not terminate
        return (seconds / 60).quantize(_MICRO)


def _requests(spec: MeterSpec, measured: Measured) -> Decimal:
    return Decimal(1)


def _images(spec: MeterSpec, measured: Measured) -> Decimal:
    return Decimal(measured.images)


def _search_units(spec: MeterSpec, measured: Measured) -> Decimal:
    return Decimal(measured.search_units)


# Adding a unit: one rule here, and the quantity on pricing.usage.Measured that the usage readers fill.
UNIT_RULES: dict[str, UnitRule] = {
    "tokens_1m": UnitRule(_tokens, _MILLION),
    "characters_1m": UnitRule(_characters, _MILLION),
    "minutes": UnitRule(_minutes, Decimal(1)),
    "requests": UnitRule(_requests, Decimal(1)),
    "images": UnitRule(_images, Decimal(1)),
    "search_units": UnitRule(_search_units, Decimal(1)),
}
UNITS = tuple(UNIT_RULES)


@dataclass(frozen=True, slots=True)
class Tier:
    start: Decimal  # raw units (a whole number) where this rate begins
    rate: Decimal  # USD per million units for *_1m units, else USD per unit


@dataclass(frozen=True, slots=True)
class MeterSpec:
    slug: str
    rate_type: str  # fixed | percentage | hybrid
    unit: str  # tokens_1m | characters_1m | minutes | requests | images | search_units
    tiers: tuple[Tier, ...]  # empty for percentage meters
    percentage: Decimal | None  # markup in percent of provider cost; None for fixed meters
    base_cost_payer: str  # customer | merchant
    token_basis: str  # input+output | output


def parse_tier(text: str) -> Tier:
    """Parse "START:RATE"; "1000000:3.00" prices units beyond the first million at 3.00 (per million for *_1m)."""
    if not isinstance(text, str) or text.count(":") != 1:
        raise ValueError(f"tier must be START:RATE, e.g. 1000000:3.00, got {text!r}")
    start, rate = text.split(":")
    return Tier(non_negative_decimal(start, "tier start", whole=True), non_negative_decimal(rate, "tier rate"))


def _check_tiers(tiers: tuple[Tier, ...]) -> None:
    for tier in tiers:
        if not isinstance(tier, Tier):
            raise ValueError(f"tier must be a Tier or a START:RATE string, got {tier!r}")
        non_negative_decimal(tier.start, "tier start", whole=True)
        non_negative_decimal(tier.rate, "tier rate")
    if tiers and tiers[0].start != 0:
        raise ValueError(f"the first tier must start at 0, not {tiers[0].start}")
    for before, after in zip(tiers, tiers[1:]):
        if after.start <= before.start:
            raise ValueError(f"tier starts must be strictly increasing: {after.start} after {before.start}")


def make_meter_spec(
    slug: str,
    rate_type: str,
    unit: str,
    tiers: Sequence[str] | Sequence[Tier],
    percentage: str | Decimal | None = None,
    base_cost_payer: str | None = None,
    token_basis: str = "input+output",
) -> MeterSpec:
    """Validate a meter as typed by an operator (or read back from storage) and fill in defaults."""
    if not isinstance(slug, str) or not _SLUG.fullmatch(slug):
        raise ValueError(f"slug must be 1-64 characters of a-z, 0-9, _ and -, got {slug!r}")
    if rate_type not in RATE_TYPES:
        raise ValueError(f"unknown rate type {rate_type!r}; expected one of {', '.join(RATE_TYPES)}")
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}; expected one of {', '.join(UNITS)}")
    if token_basis not in TOKEN_BASES:
        raise ValueError(f"unknown token basis {token_basis!r}; expected one of {', '.join(TOKEN_BASES)}")
    if token_basis != "input+output" and unit != "tokens_1m":
        raise ValueError(f"token basis {token_basis!r} applies only to tokens_1m meters, not {unit}")
    if base_cost_payer is None:
        base_cost_payer = _DEFAULT_PAYER[rate_type]
    if base_cost_payer not in BASE_COST_PAYERS:
        raise ValueError(f"unknown base cost payer {base_cost_payer!r}; expected one of {', '.join(BASE_COST_PAYERS)}")
    if isinstance(tiers, str):  # a lone "0:1.00" would otherwise iterate as characters
        raise ValueError(f"tiers must be a list of START:RATE strings, got {tiers!r}")
    parsed = tuple(parse_tier(t) if isinstance(t, str) else t for t in tiers)
    _check_tiers(parsed)
    if rate_type == "percentage" and parsed:
        raise ValueError("percentage meters take no tiers")
    if rate_type != "percentage" and not parsed:
        raise ValueError(f"{rate_type} meters need at least one tier")
    if rate_type == "fixed":
        if percentage is not None:
            raise ValueError("fixed meters take no percentage")
        pct = None
    elif percentage is None:
        raise ValueError(f"{rate_type} meters need a percentage")
    else:
        pct = non_negative_decimal(percentage, "percentage")
    return MeterSpec(slug, rate_type, unit, parsed, pct, base_cost_payer, token_basis)


def tiers_json(spec: MeterSpec) -> str:
    """Tiers as stored in MeterRow.tiers: [[start_units, "rate"], ...]; rates stay strings, so exact."""
    return json.dumps([[int(t.start), str(t.rate)] for t in spec.tiers])


def spec_from_row(row) -> MeterSpec:
    """Rebuild (and re-validate) a meter from a MeterRow, so a hand-edited row fails loudly."""
    try:
        stored = json.loads(row.tiers or "[]")
    except json.JSONDecodeError as e:
        raise ValueError(f"meter {row.slug!r}: tiers are not JSON: {e}") from None
    if not isinstance(stored, list) or not all(isinstance(t, list) and len(t) == 2 for t in stored):
        raise ValueError(f"meter {row.slug!r}: tiers must be a JSON list of [start_units, rate] pairs")
    texts = []
    for start, rate in stored:
        if isinstance(start, bool) or not isinstance(start, (int, str)) or not isinstance(rate, str):
            raise ValueError(f"meter {row.slug!r}: bad tier {[start, rate]!r}; want [whole number, \"rate\"]")
        texts.append(f"{start}:{rate}")
    return make_meter_spec(
        row.slug, row.rate_type, row.unit, texts, row.percentage, row.base_cost_payer, row.token_basis or "input+output"
    )


def units_of(spec: MeterSpec, measured: Measured) -> Decimal:
    """Raw units one request consumed, by the meter's unit rule."""
    return UNIT_RULES[spec.unit].count(spec, measured)


def units_to_micro(units: Decimal) -> int:
    """Units as stored in MeterUsage.units_micro; exact unless finer than a micro-unit (then half-up)."""
    with localcontext(_EXACT):
        return int(units.scaleb(6).to_integral_value(rounding=ROUND_HALF_UP))


def micro_to_units(micro: int) -> Decimal:
    return Decimal(micro).scaleb(-6)


def tiered_amount(tiers: Sequence[Tier], running_before: Decimal, units: Decimal, per: Decimal) -> Decimal:
    """Exact USD for usage spanning [running_before, running_before + units), each part at its tier's rate."""
    if units < 0 or running_before < 0:
        raise ValueError(f"units and running total must be non-negative: {units=}, {running_before=}")
    with localcontext(_EXACT):
        end = running_before + units
        total = Decimal(0)
        for i, tier in enumerate(tiers):
            lo = max(tier.start, running_before)
            hi = min(tiers[i + 1].start, end) if i + 1 < len(tiers) else end
            if hi > lo:
                total += (hi - lo) * tier.rate
        return total / per


def fee(spec: MeterSpec, *, units: Decimal, running_before: Decimal, provider_cost_nanos: int) -> int:
    """What the customer is charged, in nano-dollars: exact sum, rounded half-up once."""
    if provider_cost_nanos < 0:
        raise ValueError(f"provider cost must be non-negative, got {provider_cost_nanos}")
    with localcontext(_EXACT):
        base = Decimal(provider_cost_nanos).scaleb(-9)
        total = tiered_amount(spec.tiers, running_before, units, UNIT_RULES[spec.unit].per)
        if spec.percentage is not None:
            total += base * spec.percentage / 100
        if spec.base_cost_payer == "customer":
            total += base
        return to_nanos(total)  # inside _EXACT, so to_nanos' own multiply cannot round first


def max_rate(spec: MeterSpec) -> Decimal:
    """Highest tier rate, for worst-case holds; 0 for percentage meters (their charge is a share of cost)."""
    return max((t.rate for t in spec.tiers), default=Decimal(0))
