"""What one request cost, in exact nano-dollars.

Operator overrides (pricing/overrides.yaml) win, then genai-prices' bundled snapshot. Its
network updater is never used: prices must not change under a running ledger without a
deploy. A model nobody prices costs zero and says so ("unpriced") instead of failing the
request it belongs to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from fnmatch import fnmatchcase
from functools import cache, lru_cache
from pathlib import Path
from typing import Literal

import genai_prices
import yaml

from pricing.money import to_nanos
from pricing.usage import TokenUsage

OVERRIDES_PATH = Path(__file__).resolve().parent / "overrides.yaml"
_MTOK = Decimal(1_000_000)
_ENTRY_FIELDS = frozenset({"provider", "model", "input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok"})

Source = Literal["genai-prices", "override", "unpriced"]


@dataclass(frozen=True, slots=True)
class Cost:
    total_nanos: int  # what is billed; may exceed input + output by per-request fees
    input_nanos: int
    output_nanos: int
    source: Source


UNPRICED = Cost(0, 0, 0, "unpriced")


@dataclass(frozen=True, slots=True)
class Override:
    provider: str  # Tollgate provider id
    model: str  # exact name or glob, lower-cased
    input_mtok: Decimal
    output_mtok: Decimal
    cache_read_mtok: Decimal | None = None  # None: cache reads bill at the input rate
    cache_write_mtok: Decimal | None = None


class _DecimalLoader(yaml.SafeLoader):
    """Reads YAML floats from their text, so 0.1 is Decimal("0.1") and not 0.1000000000000000055."""


_DecimalLoader.add_constructor(
    "tag:yaml.org,2002:float", lambda loader, node: Decimal(loader.construct_scalar(node).replace("_", ""))
)


def _rate(where: str, value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise ValueError(f"{where} must be a decimal number of USD per million tokens, got {value!r}")
    try:
        rate = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{where} {value!r} is not a decimal number") from None
    if not rate.is_finite() or rate < 0:
        raise ValueError(f"{where} {value!r} must be a finite, non-negative number")
    return rate


def parse_overrides(data: object) -> tuple[Override, ...]:
    """Validate a loaded overrides.yaml document; raise ValueError naming the entry and field."""
    if not isinstance(data, Mapping) or set(data) != {"models"} or not isinstance(data["models"], (list, type(None))):
        raise ValueError("price overrides must be a mapping with just a 'models' list")
    overrides = []
    for i, entry in enumerate(data["models"] or ()):
        where = f"price override #{i + 1}"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be a mapping")
        if missing := [f for f in ("provider", "model", "input_mtok", "output_mtok") if f not in entry]:
            raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
        if unknown := sorted(map(str, set(entry) - _ENTRY_FIELDS)):
            raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
        for name in ("provider", "model"):
            if not isinstance(entry[name], str) or not entry[name].strip():
                raise ValueError(f"{where}: {name} must be a non-empty string")
        where = f"{where} ({entry['provider']}/{entry['model']})"
        optional = {k: _rate(f"{where}: {k}", entry[k]) for k in ("cache_read_mtok", "cache_write_mtok") if k in entry}
        overrides.append(
            Override(
                provider=entry["provider"],
                model=entry["model"].strip().lower(),
                input_mtok=_rate(f"{where}: input_mtok", entry["input_mtok"]),
                output_mtok=_rate(f"{where}: output_mtok", entry["output_mtok"]),
                **optional,
            )
        )
    return tuple(overrides)


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


@lru_cache(maxsize=4096)  # bounded: model names come from callers
def _route(provider_id: str, pricing_id: str | None, model: str, overrides: tuple[Override, ...]) -> Override | bool:
    """Who prices this (provider, model): an Override, True for genai-prices, False for nobody."""
    lowered = model.lower()
    for override in overrides:
        if override.provider == provider_id and fnmatchcase(lowered, override.model):
            return override
    if pricing_id is None:
        return False
    try:
        genai_prices.calc_price(genai_prices.Usage(), model, provider_id=pricing_id)
    except LookupError:
        return False
    return True


def _clamped(usage: TokenUsage) -> tuple[int, int, int, int, int]:
    """Counts that keep TokenUsage's invariants even if a provider reported nonsense."""
    total_in = max(usage.input_tokens, 0)
    cache_read = min(max(usage.cache_read_tokens, 0), total_in)
    cache_write = min(max(usage.cache_write_tokens, 0), total_in - cache_read)
    total_out = max(usage.output_tokens, 0)
    return total_in, cache_read, cache_write, total_out, min(max(usage.reasoning_tokens, 0), total_out)


def _cost(input_usd: Decimal, output_usd: Decimal, total_usd: Decimal, source: Source) -> Cost:
    return Cost(to_nanos(total_usd), to_nanos(input_usd), to_nanos(output_usd), source)


def _price_override(o: Override, total_in: int, cache_read: int, cache_write: int, total_out: int) -> Cost:
    uncached = total_in - cache_read - cache_write
    input_usd = (
        uncached * o.input_mtok
        + cache_read * (o.input_mtok if o.cache_read_mtok is None else o.cache_read_mtok)
        + cache_write * (o.input_mtok if o.cache_write_mtok is None else o.cache_write_mtok)
    ) / _MTOK
    output_usd = total_out * o.output_mtok / _MTOK
    return _cost(input_usd, output_usd, input_usd + output_usd, "override")


def price(
    usage: TokenUsage,
    *,
    model: str,
    provider_id: str,
    pricing_id: str | None,
    overrides: tuple[Override, ...] | None = None,
    at: datetime | None = None,
) -> Cost:
    """Price one request; `overrides` defaults to the shipped pricing/overrides.yaml.

    `at` is when the request ran (default: now); some prices depend on it, e.g. DeepSeek's
    off-peak hours and dated price changes.
    """
    model = model.removeprefix("models/")  # Gemini's resource name; genai-prices matches few such names
    if not model:
        return UNPRICED
    route = _route(provider_id, pricing_id, model, shipped_overrides() if overrides is None else tuple(overrides))
    if route is False:
        return UNPRICED
    total_in, cache_read, cache_write, total_out, reasoning = _clamped(usage)
    if isinstance(route, Override):
        return _price_override(route, total_in, cache_read, cache_write, total_out)
    # output_tokens already includes reasoning; genai-prices treats output_reasoning_tokens as a
    # subset of it, billed at the output rate unless the model lists a separate reasoning rate.
    calc = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=total_in,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            output_tokens=total_out,
            output_reasoning_tokens=reasoning,
        ),
        model,
        provider_id=pricing_id,
        genai_request_timestamp=at,
    )
    return _cost(calc.input_price, calc.output_price, calc.total_price, "genai-prices")
