"""What one request cost, in exact nano-dollars.

Operator overrides (pricing/overrides.yaml) win, then genai-prices' bundled snapshot. Its
network updater is never used: prices must not change under a running ledger without a
deploy. A model nobody prices costs zero and says so ("unpriced") instead of failing the
request it belongs to; the gateway's pricing.unpriced setting decides whether such a request is served.
A cost's source is what the ledger records as the request's price_source: "catalog" (genai-prices),
"override" (pricing/overrides.yaml or the settings' prices) or "unpriced".

Media (images, audio, speech, rerank) is priced by the same two sources: genai-prices' own units
(characters of speech, audio hours, image and audio tokens, rerank searches) where its snapshot
prices the model, else an override's per-unit rates (per_image by quality and size, per_megapixel,
per_minute, per_second, per_mchar, per_search_unit), from pricing.usage.MediaUsage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Context, Decimal, Inexact, InvalidOperation, getcontext, localcontext
from fnmatch import fnmatchcase
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Literal

import genai_prices
import yaml

from pricing import genai_prices_internals
from pricing.genai_prices_internals import ModelInfo, ModelPrice, Provider
from pricing.money import Refusals, non_negative_decimal, to_nanos
from pricing.usage import MediaUsage, TokenUsage

genai_prices_internals.check_version()  # refuses an unchecked genai-prices, whose internals the fast path reads

OVERRIDES_PATH = Path(__file__).resolve().parent / "overrides.yaml"
_MTOK = Decimal(1_000_000)
# Per-unit rates of media, USD per: image, megapixel, minute of audio, second of compute, million characters, search unit
UNIT_RATES = ("per_image", "per_megapixel", "per_minute", "per_second", "per_mchar", "per_search_unit")
# Token rates of audio (Realtime, audio chat and transcription models), USD per million: the audio share of the
# input, cached input and output tokens is priced at them instead of the text rates
AUDIO_RATES = ("input_audio_mtok", "cache_audio_read_mtok", "output_audio_mtok")
_ENTRY_FIELDS = frozenset({"provider", "model", "input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok",
                           *UNIT_RATES, *AUDIO_RATES})

Source = Literal["catalog", "override", "unpriced"]


@dataclass(frozen=True, slots=True)
class Cost:
    total_nanos: int  # what is billed; may exceed input + output by per-request fees
    input_nanos: int
    output_nanos: int
    source: Source


UNPRICED = Cost(0, 0, 0, "unpriced")
Counts = tuple[int, int, int, int, int]  # _clamped(): input, cache read, cache write, output, reasoning


@dataclass(frozen=True, slots=True)
class Override:
    provider: str  # Tollgate provider id
    model: str  # exact name or glob, lower-cased
    input_mtok: Decimal
    output_mtok: Decimal
    cache_read_mtok: Decimal | None = None  # None: cache reads bill at the input rate
    cache_write_mtok: Decimal | None = None
    # USD per image by "<quality>/<size>" glob, first match wins ("*" any); a variant no glob matches is
    # priced at the highest rate listed, so an unlisted size never goes free
    per_image: tuple[tuple[str, Decimal], ...] = ()
    per_megapixel: Decimal | None = None
    per_minute: Decimal | None = None  # of audio transcribed
    per_second: Decimal | None = None  # of the provider's compute (Replicate)
    per_mchar: Decimal | None = None  # per million characters of text spoken
    per_search_unit: Decimal | None = None
    input_audio_mtok: Decimal | None = None  # None: audio tokens bill at the text rates
    cache_audio_read_mtok: Decimal | None = None  # None: cached audio bills as other cached input
    output_audio_mtok: Decimal | None = None

    def image_rate(self, variant: str) -> Decimal:
        for pattern, rate in self.per_image:
            if fnmatchcase(variant.lower(), pattern):
                return rate
        return max((rate for _, rate in self.per_image), default=Decimal(0))


class _DecimalLoader(yaml.SafeLoader):
    """Reads YAML floats from their text, so 0.1 is Decimal("0.1") and not 0.1000000000000000055."""


_DecimalLoader.add_constructor(
    "tag:yaml.org,2002:float", lambda loader, node: Decimal(loader.construct_scalar(node).replace("_", ""))
)


_RATE = Refusals(wrong_type="{name} must be a decimal number of USD per million tokens, got {value}",
                 not_a_number="{name} {value} is not a decimal number",
                 out_of_range="{name} {value} must be a finite, non-negative number")


def _rate(where: str, value: object) -> Decimal:
    return non_negative_decimal(value, where, plain=False, refusals=_RATE)


def parse_overrides(data: object) -> tuple[Override, ...]:
    """Validate a loaded overrides.yaml document; raise ValueError naming the entry and field."""
    if not isinstance(data, Mapping) or set(data) != {"models"} or not isinstance(data["models"], (list, type(None))):
        raise ValueError("price overrides must be a mapping with just a 'models' list")
    overrides = []
    for i, entry in enumerate(data["models"] or ()):
        where = f"price override #{i + 1}"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be a mapping")
        per_unit = any(k in entry for k in UNIT_RATES)  # a media price: its token rates default to zero
        required = ("provider", "model") if per_unit else ("provider", "model", "input_mtok", "output_mtok")
        if missing := [f for f in required if f not in entry]:
            raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
        if unknown := sorted(map(str, set(entry) - _ENTRY_FIELDS)):
            raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
        for name in ("provider", "model"):
            if not isinstance(entry[name], str) or not entry[name].strip():
                raise ValueError(f"{where}: {name} must be a non-empty string")
        where = f"{where} ({entry['provider']}/{entry['model']})"
        optional = {k: _rate(f"{where}: {k}", entry[k])
                    for k in ("cache_read_mtok", "cache_write_mtok", *UNIT_RATES[1:], *AUDIO_RATES) if k in entry}
        if "per_image" in entry:
            optional["per_image"] = _image_rates(f"{where}: per_image", entry["per_image"])
        overrides.append(
            Override(
                provider=entry["provider"],
                model=entry["model"].strip().lower(),
                input_mtok=_rate(f"{where}: input_mtok", entry.get("input_mtok", 0)),
                output_mtok=_rate(f"{where}: output_mtok", entry.get("output_mtok", 0)),
                **optional,
            )
        )
    return tuple(overrides)


def _image_rates(where: str, value: object) -> tuple[tuple[str, Decimal], ...]:
    """A rate for every image, or a mapping of "<quality>/<size>" globs to rates."""
    if not isinstance(value, Mapping):
        return (("*", _rate(where, value)),)
    if not value:
        raise ValueError(f"{where} must name at least one \"<quality>/<size>\" rate")
    rates = []
    for variant, rate in value.items():
        if not isinstance(variant, str) or not variant.strip():
            raise ValueError(f"{where}: {variant!r} is not a \"<quality>/<size>\" glob")
        rates.append((variant.strip().lower(), _rate(f"{where}.{variant}", rate)))
    return tuple(rates)


def load_overrides(path: Path = OVERRIDES_PATH) -> tuple[Override, ...]:
    try:
        data = yaml.load(path.read_text(), Loader=_DecimalLoader)  # noqa: S506 - a SafeLoader subclass
    except (OSError, yaml.YAMLError, InvalidOperation) as e:
        raise ValueError(f"cannot read price overrides {path}: {e}") from None
    try:
        return parse_overrides(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


@cache
def shipped_overrides() -> tuple[Override, ...]:
    """pricing/overrides.yaml, read once; call it at start-up to fail fast on a bad file."""
    return load_overrides()


_MAX_ROUTES = 4096  # (provider, model) answers kept per overrides table: model names come from callers
_routes: dict[int, tuple[tuple[Override, ...], dict]] = {}  # id(overrides) -> (overrides, answers)


def _route(
    provider_id: str, pricing_id: str | None, model: str, overrides: tuple[Override, ...]
) -> Override | tuple[Provider, ModelInfo] | bool:
    """Who prices this (provider, model), remembered per overrides table, found by identity (as _plan finds
    its snapshot prices): a cache keyed by the table itself would hash every field of every override on each
    request, more than routing costs."""
    entry = _routes.get(id(overrides))
    if entry is None:
        if len(_routes) >= 16:  # tables replaced by config reloads
            _routes.clear()
        entry = _routes[id(overrides)] = (overrides, {})  # the entry holds the table: its id stays unique
    answers = entry[1]
    key = (provider_id, pricing_id, model)
    answer = answers.get(key)
    if answer is None:
        if len(answers) >= _MAX_ROUTES:
            answers.clear()
        answer = answers[key] = _find_route(provider_id, pricing_id, model, overrides)
    return answer


def _find_route(
    provider_id: str, pricing_id: str | None, model: str, overrides: tuple[Override, ...]
) -> Override | tuple[Provider, ModelInfo] | bool:
    """Who prices this (provider, model): an Override, genai-prices' (provider, model), False for nobody."""
    lowered = model.lower()
    for override in overrides:
        if override.provider == provider_id and fnmatchcase(lowered, override.model):
            return override
    if pricing_id is None:
        return False
    try:
        return genai_prices_internals.find_provider_model(model, pricing_id)
    except LookupError:
        return False


def _clamped(usage: TokenUsage) -> Counts:
    """Counts that keep TokenUsage's invariants even if a provider reported nonsense."""
    counts = (usage.input_tokens, usage.cache_read_tokens, usage.cache_write_tokens, usage.output_tokens,
              usage.reasoning_tokens)  # fmt: skip
    if 0 <= counts[1] and 0 <= counts[2] and counts[1] + counts[2] <= counts[0] and 0 <= counts[4] <= counts[3]:
        return counts  # already consistent, the usual case: nothing to clamp
    total_in = max(usage.input_tokens, 0)
    cache_read = min(max(usage.cache_read_tokens, 0), total_in)
    cache_write = min(max(usage.cache_write_tokens, 0), total_in - cache_read)
    total_out = max(usage.output_tokens, 0)
    return total_in, cache_read, cache_write, total_out, min(max(usage.reasoning_tokens, 0), total_out)


def _cost(input_usd: Decimal, output_usd: Decimal, total_usd: Decimal, source: Source) -> Cost:
    return Cost(to_nanos(total_usd), to_nanos(input_usd), to_nanos(output_usd), source)


def _price_override(o: Override, total_in: int, cache_read: int, cache_write: int, total_out: int,
                    media: MediaUsage | None = None) -> Cost:
    uncached = total_in - cache_read - cache_write
    input_usd = (
        uncached * o.input_mtok
        + cache_read * (o.input_mtok if o.cache_read_mtok is None else o.cache_read_mtok)
        + cache_write * (o.input_mtok if o.cache_write_mtok is None else o.cache_write_mtok)
    ) / _MTOK
    output_usd = total_out * o.output_mtok / _MTOK
    if media is not None and (o.input_audio_mtok is not None or o.cache_audio_read_mtok is not None
                              or o.output_audio_mtok is not None):
        audio_in, audio_out = _audio_usd(o, media)
        input_usd, output_usd = input_usd + audio_in, output_usd + audio_out
    if media is not None:
        media_in, media_out = _media_usd(o, media)
        input_usd, output_usd = input_usd + media_in, output_usd + media_out
    return _cost(input_usd, output_usd, input_usd + output_usd, "override")


def _audio_usd(o: Override, m: MediaUsage) -> tuple[Decimal, Decimal]:
    """What the audio share of the tokens costs beyond the text rates it was priced at (negative if cheaper):
    audio tokens are counted among the input, cached and output tokens."""
    cache_read_rate = o.input_mtok if o.cache_read_mtok is None else o.cache_read_mtok
    uncached_audio = m.input_audio_tokens - m.cache_audio_read_tokens
    input_usd = Decimal(0)
    if o.input_audio_mtok is not None:
        input_usd += uncached_audio * (o.input_audio_mtok - o.input_mtok) / _MTOK
    if o.cache_audio_read_mtok is not None:
        input_usd += m.cache_audio_read_tokens * (o.cache_audio_read_mtok - cache_read_rate) / _MTOK
    elif o.input_audio_mtok is not None and o.cache_read_mtok is None:  # cached audio at the input audio rate
        input_usd += m.cache_audio_read_tokens * (o.input_audio_mtok - o.input_mtok) / _MTOK
    output_usd = Decimal(0)
    if o.output_audio_mtok is not None:
        output_usd = m.output_audio_tokens * (o.output_audio_mtok - o.output_mtok) / _MTOK
    return input_usd, output_usd


def _media_usd(o: Override, m: MediaUsage) -> tuple[Decimal, Decimal]:
    """(input, output) USD of an override's per-unit rates: what is sent in (text spoken, audio
    transcribed, searches) is input; what is made (images, compute) is output. Exact: no step rounds."""
    with localcontext(_EXACT):
        zero = Decimal(0)
        input_usd = (m.characters * (o.per_mchar or zero) / _MTOK
                     + m.search_units * (o.per_search_unit or zero))
        if m.audio_seconds is not None and o.per_minute:
            input_usd += _per_minute(m.audio_seconds * o.per_minute)
        output_usd = m.images * o.image_rate(m.image_variant) + m.megapixels * (o.per_megapixel or zero)
        if m.compute_seconds is not None and o.per_second:
            output_usd += m.compute_seconds * o.per_second
    return input_usd, output_usd


def _per_minute(usd_seconds: Decimal) -> Decimal:
    """A per-minute rate times seconds, over 60 (which need not terminate): rounded half-up to a
    thousandth of a nano-dollar, far below the nano-dollar to_nanos rounds the total to."""
    with localcontext(Context(prec=200, rounding=ROUND_HALF_UP)):
        return (usd_seconds / 60).quantize(Decimal(1).scaleb(-12))


def _genai_usage(counts: Counts) -> genai_prices.Usage:
    total_in, cache_read, cache_write, total_out, reasoning = counts
    # output_tokens already includes reasoning; genai-prices treats output_reasoning_tokens as a
    # subset of it, billed at the output rate unless the model lists a separate reasoning rate.
    return genai_prices.Usage(
        input_tokens=total_in,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        output_tokens=total_out,
        output_reasoning_tokens=reasoning,
    )


def _genai_prices_cost(counts: Counts, model: str, pricing_id: str | None, at: datetime | None,
                       media: MediaUsage | None = None) -> Cost:
    """The reference price: genai-prices' generic unit decomposition, ~100 µs a call."""
    usage = _genai_usage(counts)
    for name, value in (media.genai_prices_usage() if media is not None else {}).items():
        # a modality's tokens are part of the direction's total: never more than it, whatever was reported
        total = counts[0] if name.startswith("input_") and name.endswith("_tokens") else (
            counts[3] if name.startswith("output_") else counts[1] if name.startswith("cache_") else None)
        setattr(usage, name, value if total is None else min(value, total))
    calc = genai_prices.calc_price(usage, model, provider_id=pricing_id, genai_request_timestamp=at)
    return _cost(calc.input_price, calc.output_price, calc.total_price, "catalog")


# --- Fast path -------------------------------------------------------------------------------
# For a ModelPrice of plain Decimal rates, genai-prices' cost is an affine function of the five
# counts (its unit decomposition only subtracts counts), so it is measured once at basis usages
# and then priced with integer arithmetic. Anything else (tiered rates, unknown or non-decimal
# units, a failed self-check) takes the reference path.

_GENAI_PRECISION = 28  # Decimal's default precision, the context genai-prices computes in
_BASIS = 1_000_000  # tokens per basis usage; any size at which genai-prices is exact (_exact_up_to)
# Where genai-prices is measured: zero usage for the constant (per-request fees), then one usage
# per count, each the earlier usage it extends (by index) plus _BASIS of that count.
_FIT: tuple[tuple[Counts, int], ...] = (
    ((0, 0, 0, 0, 0), 0),
    ((_BASIS, 0, 0, 0, 0), 0),  # input tokens, over zero usage
    ((_BASIS, _BASIS, 0, 0, 0), 1),  # cache reads, over plain input
    ((_BASIS, 0, _BASIS, 0, 0), 1),  # cache writes, over plain input
    ((0, 0, 0, _BASIS, 0), 0),  # output tokens, over zero usage
    ((0, 0, 0, _BASIS, _BASIS), 4),  # reasoning, over plain output
)
# Mixed usages the fitted coefficients must reproduce. Every count is positive: genai-prices rejects
# a usage only for which counts are positive, so accepting this one it accepts every usage.
_CHECKS: tuple[Counts, ...] = ((7_654_321, 1_234_567, 2_345_678, 987_654, 123_457),)
_LARGEST_FIT_COUNT = max(max(counts) for counts in (*(usage for usage, _ in _FIT), *_CHECKS))
_EXACT = Context(prec=200, traps=[Inexact])  # fitting arithmetic: exact, or an error, never rounded
_GENAI_CONTEXT = Context(prec=_GENAI_PRECISION)
_MAX_PLANS = 8192  # keyed by snapshot objects, so bounded by the snapshot anyway


@dataclass(frozen=True, slots=True)
class _Plan:
    """Nano-dollars times `denominator`: a constant, then one coefficient per count."""

    input: tuple[int, ...]
    output: tuple[int, ...]
    total: tuple[int, ...]
    denominator: int
    max_count: int  # beyond it genai-prices' 28-digit Decimals could round; leave it the reference

    def cost(self, counts: Counts) -> Cost | None:
        if counts[0] > self.max_count or counts[3] > self.max_count or getcontext().prec < _GENAI_PRECISION:
            return None
        return Cost(
            self._nanos(self.total, counts),
            self._nanos(self.input, counts),
            self._nanos(self.output, counts),
            "catalog",
        )

    def _nanos(self, coefficients: tuple[int, ...], counts: Counts) -> int:
        c0, c1, c2, c3, c4, c5 = coefficients
        x1, x2, x3, x4, x5 = counts
        scaled = c0 + c1 * x1 + c2 * x2 + c3 * x3 + c4 * x4 + c5 * x5
        return scaled if self.denominator == 1 else _round_half_up(scaled, self.denominator)


def _round_half_up(numerator: int, denominator: int) -> int:
    """to_nanos' rounding (half away from zero) on an exact fraction."""
    quotient, remainder = divmod(abs(numerator), denominator)
    quotient += 2 * remainder >= denominator
    return quotient if numerator >= 0 else -quotient


def _exact_up_to(model_price: ModelPrice) -> int:
    """Largest count for which genai-prices' Decimal arithmetic is exact; 0 if it may not be linear.

    Each term is rate * count / per and is a multiple of 10**lowest; no term or partial sum
    exceeds count * sum(rate / per). Below 10**28 multiples of 10**lowest, nothing rounds.
    """
    lowest, rate_sum = 0, Fraction(0)
    for key, rate in genai_prices_internals.rates(model_price):
        per = genai_prices_internals.PER.get(key)
        if per is None or str(per).rstrip("0") != "1":
            return 0  # a unit genai-prices ignores, or one whose division could be inexact
        if not isinstance(rate, Decimal) or not rate.is_finite() or rate < 0:
            return 0  # tiered rates, or nonsense genai-prices rejects
        if rate:
            lowest = min(lowest, rate.as_tuple().exponent - (len(str(per)) - 1))
            rate_sum += Fraction(rate) / per
    if not rate_sum:
        return 10**_GENAI_PRECISION  # free: every term is an exact zero
    return math.floor(Fraction(10**_GENAI_PRECISION - 1) * Fraction(10) ** lowest / rate_sum)


def _measure(provider: Provider, model_info: ModelInfo, model_price: ModelPrice, at: datetime, counts: Counts):
    """genai-prices' (input, output, total) USD for counts, insisting it prices them with model_price."""
    calc = model_info.calc_price(_genai_usage(counts), provider, genai_request_timestamp=at)
    if calc.model_price is not model_price:
        raise LookupError("genai-prices resolved a different price")
    return calc.input_price, calc.output_price, calc.total_price


def _fit(provider: Provider, model_info: ModelInfo, model_price: ModelPrice, at: datetime) -> _Plan | None:
    """Measure the affine cost function, then check it on mixed usages; None: not linear here."""
    max_count = _exact_up_to(model_price)
    if max_count < _LARGEST_FIT_COUNT:
        return None
    try:
        with localcontext(_GENAI_CONTEXT):  # not the caller's: it may have a lower precision
            points = [_measure(provider, model_info, model_price, at, usage) for usage, _ in _FIT]
            with localcontext(_EXACT):
                # One row per amount (input, output, total): the constant, then USD per unit of each count.
                rows = [
                    (
                        points[0][a],
                        *((points[i][a] - points[over][a]) / _BASIS for i, (_, over) in enumerate(_FIT) if i),
                    )
                    for a in range(3)
                ]
                plan = _plan_from(rows, max_count)
            for counts in _CHECKS:
                usd = _measure(provider, model_info, model_price, at, counts)
                with localcontext(_EXACT):
                    predicted = tuple(row[0] + sum(k * x for k, x in zip(row[1:], counts, strict=True)) for row in rows)
                if predicted != usd or plan.cost(counts) != _cost(*usd, "catalog"):
                    return None
    except Exception:  # whatever went wrong, the reference path reproduces it
        return None
    return plan


def _plan_from(rows: list[tuple[Decimal, ...]], max_count: int) -> _Plan:
    """USD coefficients as nano-dollar integers over one power-of-ten denominator."""
    nanos = [[k.scaleb(9) for k in row] for row in rows]
    places = max(0, *(-k.as_tuple().exponent for row in nanos for k in row))
    input_, output, total = (tuple(int(k.scaleb(places)) for k in row) for row in nanos)
    return _Plan(input_, output, total, 10**places, max_count)


_plans: dict[tuple[int, int, int], tuple[Provider, ModelInfo, ModelPrice, _Plan | None]] = {}


def _plan(provider: Provider, model_info: ModelInfo, model_price: ModelPrice, at: datetime) -> _Plan | None:
    """_fit, once per snapshot price; the entry holds its key objects so their ids stay unique."""
    key = (id(provider), id(model_info), id(model_price))
    entry = _plans.get(key)
    if entry is None:
        if len(_plans) >= _MAX_PLANS:
            _plans.clear()
        entry = _plans[key] = (provider, model_info, model_price, _fit(provider, model_info, model_price, at))
    return entry[3]


def _who_prices(
    model: str, provider_id: str, pricing_id: str | None, overrides: tuple[Override, ...] | None
) -> tuple[str, Override | tuple[Provider, ModelInfo] | bool]:
    """The model name as priced, and _route's answer for it (False: nobody, an empty name included)."""
    model = model.removeprefix("models/")  # Gemini's resource name; genai-prices matches few such names
    if not model:
        return model, False
    return model, _route(provider_id, pricing_id, model, shipped_overrides() if overrides is None else tuple(overrides))


def price(
    usage: TokenUsage,
    *,
    model: str,
    provider_id: str,
    pricing_id: str | None,
    overrides: tuple[Override, ...] | None = None,
    at: datetime | None = None,
    media: MediaUsage | None = None,
) -> Cost:
    """Price one request; `overrides` defaults to the shipped pricing/overrides.yaml.

    `at` is when the request ran (default: now); some prices depend on it, e.g. DeepSeek's
    off-peak hours and dated price changes. `media`: what an image, audio, speech or rerank
    request used besides tokens (genai-prices' reference path prices it; the fast path knows tokens only).
    """
    model, route = _who_prices(model, provider_id, pricing_id, overrides)
    if route is False:
        return UNPRICED
    counts = _clamped(usage)
    if isinstance(route, Override):
        return _price_override(route, *counts[:4], media)
    at = at or datetime.now(UTC)
    if media is not None and media.genai_prices_usage():
        return _genai_prices_cost(counts, model, pricing_id, at, media)
    provider, model_info = route
    plan = _plan(provider, model_info, model_info.get_prices(at), at)
    cost = None if plan is None else plan.cost(counts)
    return _genai_prices_cost(counts, model, pricing_id, at) if cost is None else cost


def price_source(
    *, model: str, provider_id: str, pricing_id: str | None, overrides: tuple[Override, ...] | None = None
) -> Source:
    """Who would price this model, without pricing anything: what the gateway checks before forwarding."""
    _, route = _who_prices(model, provider_id, pricing_id, overrides)
    if route is False:
        return "unpriced"
    return "override" if isinstance(route, Override) else "catalog"
