"""Models seen without a price, and charging their requests once a price is added (addons/billing/reprice.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from addons.billing.reprice import Repriced, reprice
from addons.core.catalog import load_catalog
from addons.core.settings import load_settings
from addons.services.errors import BadRequest
from addons.services.reports import missing_prices
from pricing.cost import shipped_overrides

__all__ = ["MissingPrice", "RepriceReport", "Repriced", "missing", "reprice_unpriced"]


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


def reprice_unpriced(*, since: datetime, until: datetime | None = None, dry_run: bool = False) -> RepriceReport:
    """Price the unpriced requests of [since, until) with today's price lists (settings and pricing/overrides.yaml)."""
    settings = load_settings()
    catalog = load_catalog(overrides=settings.provider_overrides)
    try:
        overrides = settings.price_overrides + shipped_overrides()
    except ValueError as e:
        raise BadRequest("invalid_price_overrides", str(e)) from None
    done, left = reprice(since=since, until=until, pricing_ids={p.id: p.pricing_id for p in catalog.providers},
                         overrides=overrides, billing=settings.billing, dry_run=dry_run)
    return RepriceReport(dry_run, done, left)
