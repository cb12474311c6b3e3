"""Meters: an account's price lists for its customers (pricing/meters.py validates and applies them)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from addons.ledger import accounts
from addons.ledger.models import MeterRow
from addons.services.errors import BadRequest, Conflict, NotFound
from pricing import meters


@dataclass(frozen=True, slots=True)
class Tier:
    start: int  # in raw units (tokens, characters, minutes, requests)
    rate: str  # USD per unit, a decimal string as stored: exact


@dataclass(frozen=True, slots=True)
class MeterView:
    slug: str
    rate_type: str  # fixed | percentage | hybrid
    unit: str
    percentage: str | None  # markup in percent of the provider cost, a decimal string
    base_cost_payer: str  # customer | merchant
    token_basis: str
    tiers: list[Tier]


def _view(row: MeterRow) -> MeterView:
    return MeterView(row.slug, row.rate_type, row.unit, row.percentage, row.base_cost_payer, row.token_basis,
                     [Tier(start, rate) for start, rate in json.loads(row.tiers)])


def create(account: str, slug: str, *, rate_type: str, unit: str, tiers: Sequence[str] = (),
           percentage: str | None = None, base_cost_payer: str | None = None,
           token_basis: str = "input+output") -> MeterView:
    """A new meter of `account` (created if new); tiers are "START:RATE" strings, as pricing/meters.py reads them."""
    row_account, _ = accounts.ensure_account(account)
    try:
        spec = meters.make_meter_spec(slug, rate_type, unit, list(tiers), percentage, base_cost_payer, token_basis)
    except ValueError as e:
        raise BadRequest("invalid_meter", str(e)) from None
    if accounts.find_meter(row_account.id, spec.slug):
        raise Conflict("meter_exists", f"meter {spec.slug!r} already exists")
    row = MeterRow.create(account=row_account, slug=spec.slug, rate_type=spec.rate_type, unit=spec.unit,
                          percentage=None if spec.percentage is None else str(spec.percentage),
                          base_cost_payer=spec.base_cost_payer, token_basis=spec.token_basis,
                          tiers=meters.tiers_json(spec))
    return _view(row)


def get(account: str, slug: str) -> MeterView:
    row_account, _ = accounts.ensure_account(account)
    row = accounts.find_meter(row_account.id, slug)
    if row is None:
        raise NotFound("meter_not_found", f"no meter {slug!r}")
    return _view(row)


def list_meters(account: str) -> list[MeterView]:
    row_account, _ = accounts.ensure_account(account)
    return [_view(row) for row in MeterRow.select().where(MeterRow.account == row_account).order_by(MeterRow.slug)]
