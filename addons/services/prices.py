"""The price lists: the models Tollgate can price (the catalog's providers in genai-prices, and the overrides),
models seen without a price, and charging their requests once a price is added (addons/billing/reprice.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from addons.billing.reprice import Repriced, reprice
from addons.core.catalog import load_catalog
from addons.core.settings import load_settings
from addons.rewrite.formats import client_formats_for
from addons.services.errors import BadRequest
from addons.services.reports import missing_prices
from pricing.cost import Override, shipped_overrides
from pricing.genai_prices_internals import provider_models

__all__ = ["MissingPrice", "ModelEntry", "PriceLists", "RepriceReport", "Repriced", "missing", "models",
           "price_lists", "reprice_unpriced"]

GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True, slots=True)
class PriceLists:
    """What the gateway prices with, read as it reads them (settings, then config/providers.yaml and
    pricing/overrides.yaml): each catalog provider's genai-prices id, and the overrides, first match wins."""

    pricing_ids: dict[str, str | None]  # catalog provider id -> genai-prices provider id
    overrides: tuple[Override, ...]
    api_families: dict[str, str] = field(default_factory=dict)  # catalog provider id -> its api_family


@dataclass(frozen=True, slots=True)
class ModelEntry:
    id: str  # the model name as priced; an override's glob ("ft:gpt-4o-mini-*") when `pattern`
    owned_by: str  # the catalog provider id
    price_source: str  # catalog (genai-prices) | override
    pattern: bool = False  # the id is a glob every matching model name is priced by
    formats: tuple[str, ...] = ()  # the client formats the rewrite endpoint translates to its provider


@dataclass(frozen=True, slots=True)
class MissingPrice:
    """Fields in the order the query's rows have always come in (and `tollgate prices missing --json` prints)."""

    requests: int
    input_tokens: int
    output_tokens: int
    provider: str
    model: str
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True, slots=True)
class RepriceReport:
    dry_run: bool
    repriced: list[Repriced]
    still_unpriced: int


def missing(*, since: datetime | None = None, until: datetime | None = None) -> list[MissingPrice]:
    """Per provider and model, the most requests first."""
    return [MissingPrice(**row) for row in missing_prices(since=since, until=until)]


def price_lists() -> PriceLists:
    settings = load_settings()
    catalog = load_catalog(overrides=settings.provider_overrides)
    try:
        overrides = settings.price_overrides + shipped_overrides()
    except ValueError as e:
        raise BadRequest("invalid_price_overrides", str(e)) from None
    return PriceLists({p.id: p.pricing_id for p in catalog.providers}, overrides,
                      {p.id: p.api_family for p in catalog.providers})


def models() -> list[ModelEntry]:
    """Every model a catalog provider's requests are priced for, by provider then id: the overrides first (they
    win), then genai-prices' models for the provider's pricing_id. A model listed twice is listed once."""
    lists = price_lists()
    seen: set[tuple[str, str]] = set()
    entries = []
    for provider, pricing_id in lists.pricing_ids.items():
        formats = tuple(client_formats_for(lists.api_families.get(provider, "")))
        overridden = [(o.model, "override") for o in lists.overrides if o.provider == provider]
        catalog = [(model, "catalog") for model in (provider_models(pricing_id) if pricing_id else ())]
        for model, source in [*overridden, *catalog]:
            if (provider, model.lower()) not in seen:
                seen.add((provider, model.lower()))
                entries.append(ModelEntry(model, provider, source, bool(GLOB_CHARACTERS & set(model)),
                                          formats))
    return sorted(entries, key=lambda e: (e.owned_by, e.id))


def reprice_unpriced(*, since: datetime, until: datetime | None = None, dry_run: bool = False) -> RepriceReport:
    """Price the unpriced requests of [since, until) with today's price lists (settings and pricing/overrides.yaml)."""
    lists = price_lists()
    done, left = reprice(since=since, until=until, pricing_ids=lists.pricing_ids, overrides=lists.overrides,
                         billing=load_settings().billing, dry_run=dry_run)
    return RepriceReport(dry_run, done, left)
