"""Every place pricing/ reaches past genai-prices' public API, checked against the genai-prices it runs on.

Why: pricing/cost.py's exact fast path. genai-prices' `calc_price` resolves units, validates and
computes in Decimal on every call, about 120 µs per request; for a price of plain per-unit rates the
cost is an affine function of the token counts, so pricing/cost.py measures it once per snapshot
price and then prices with integer arithmetic, about 2.5 µs (measured on `price()` for gpt-4o against
`_genai_prices_cost`, the reference path, same answer in nano-dollars). Deciding that a price is plain
needs two things genai-prices does not publish: the unit each price field is per (`unit_data`), and
the rate fields of a ModelPrice (it sets them as instance attributes; `__dict__` is the only list).
Finding the (provider, model) pair a snapshot prices uses the snapshot itself (`get_snapshot`, not in
`data_snapshot.__all__`). Anything read here that no longer looks as expected sends cost.py to the
reference path (genai-prices' own calc_price), never to a wrong price; the version check keeps an
unchecked genai-prices from running at all.

Public API used elsewhere, as documented: `genai_prices.calc_price`, `Usage`, and `genai_prices.types`
(`ModelInfo.get_prices`, `ModelInfo.calc_price`, `PriceCalculation.model_price`).
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import metadata

from genai_prices.data_snapshot import get_snapshot
from genai_prices.data_units import unit_data
from genai_prices.types import ModelInfo, ModelPrice, Provider

SUPPORTED = ((0, 2),)  # major.minor; read on 0.2.3, run and tested on 0.2.5


class UnsupportedGenaiPrices(RuntimeError):
    """The installed genai-prices is not one these reads were checked against."""


def check_version(text: str | None = None) -> None:
    """Raise UnsupportedGenaiPrices unless genai-prices `text` (default: the installed one) is in SUPPORTED."""
    text = metadata.version("genai-prices") if text is None else text
    major_minor = tuple(int(part) for part in text.split(".")[:2] if part.isdigit())
    if major_minor not in SUPPORTED:
        supported = ", ".join("%d.%d" % v for v in SUPPORTED)
        raise UnsupportedGenaiPrices(
            f"genai-prices {text} is not supported (pricing/ reads its internals, checked on {supported} only): "
            f"install genai-prices {supported}, or check pricing/genai_prices_internals.py against {text} "
            "and add it to SUPPORTED."
        )


# What each ModelPrice field's rate is per (1,000,000 for the *_mtok fields), by field name.
PER: dict[str, int] = {unit.get("price_key", usage_key): unit["per"] for usage_key, unit in unit_data.items()}


def rates(model_price: ModelPrice) -> Iterator[tuple[str, object]]:
    """The price fields a ModelPrice sets, by name (a Decimal, a TieredPrices, ...), without its private ones."""
    for key, rate in model_price.__dict__.items():
        if not key.startswith("_") and rate is not None:
            yield key, rate


def load_snapshot() -> None:
    """Read the bundled price data now: genai-prices reads it on first use, which would be the first request
    priced: in a gateway that request took about 110 ms longer (the read alone is about 20 ms), and the 4 MB
    the data takes showed as growth under load."""
    get_snapshot()


def find_provider_model(model: str, provider_id: str) -> tuple[Provider, ModelInfo]:
    """The bundled snapshot's (provider, model) for a model name and genai-prices provider id; LookupError if none."""
    return get_snapshot().find_provider_model(model, None, provider_id, None)


def provider_models(provider_id: str) -> tuple[str, ...]:
    """The model ids the bundled snapshot prices for a genai-prices provider id; () for an unknown id."""
    provider = next((p for p in get_snapshot().providers if p.id == provider_id), None)
    return tuple(model.id for model in provider.models) if provider else ()


__all__ = ("PER", "SUPPORTED", "ModelInfo", "ModelPrice", "Provider", "UnsupportedGenaiPrices", "check_version",
           "find_provider_model", "load_snapshot", "provider_models", "rates")
