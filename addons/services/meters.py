"""Meters: an account's price lists for its customers (pricing/meters.py validates and applies them).

A deleted meter is soft-deleted: unknown to every service, and tokens or requests naming it are refused (the
account cache finds live meters only); its slug stays reserved, and the requests it priced keep naming it.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from addons.ledger import accounts
from addons.ledger.models import Account, MeterRow
from addons.services.errors import BadRequest, Conflict, NotFound
from addons.services.listing import Listing
from pricing import meters

_UNSET = object()
_SLUG_LENGTH = 64


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


@dataclass(frozen=True, slots=True)
class MeterDetail:
    """A meter as the API shows it: its id, name and time beside its prices."""

    meter_id: str
    name: str  # its slug when it was never named
    created_at: datetime
    view: MeterView


def _view(row: MeterRow) -> MeterView:
    return MeterView(row.slug, row.rate_type, row.unit, row.percentage, row.base_cost_payer, row.token_basis,
                     [Tier(start, rate) for start, rate in json.loads(row.tiers)])


def _detail(row: MeterRow) -> MeterDetail:
    return MeterDetail(row.id, row.name or row.slug, row.created_at, _view(row))


def _spec(slug: str, rate_type: str, unit: str, tiers: Sequence[str], percentage: str | None,
          base_cost_payer: str | None, token_basis: str) -> meters.MeterSpec:
    try:
        return meters.make_meter_spec(slug, rate_type, unit, list(tiers), percentage, base_cost_payer, token_basis)
    except ValueError as e:
        raise BadRequest("invalid_meter", str(e)) from None


def _account(account: str) -> Account:
    return accounts.ensure_account(account)[0]


def _live(account: str):
    return MeterRow.select().where(MeterRow.account == _account(account), MeterRow.deleted_at.is_null())


def _find(account: str, meter: str) -> MeterRow:
    """A live meter by its id (mtr_...) or its slug."""
    row = _live(account).where((MeterRow.id == meter) | (MeterRow.slug == meter)).order_by(
        (MeterRow.id == meter).desc()).first()
    if row is None:
        raise NotFound("meter_not_found", f"no meter {meter!r}")
    return row


def slug_from(account: str, name: str) -> str:
    """A slug made from a meter's name ("GPT-4o chat" -> gpt-4o-chat), with -2, -3, ... when the account has it
    already, deleted meters included."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    base = re.sub(r"[^a-z0-9_-]+", "-", ascii_name.lower()).strip("-")[:_SLUG_LENGTH].strip("-") or "meter"
    taken = {slug for (slug,) in MeterRow.select(MeterRow.slug).where(
        MeterRow.account == _account(account), MeterRow.slug.startswith(base[:_SLUG_LENGTH - 4])).tuples()}
    slug, n = base, 1
    while slug in taken:
        n += 1
        suffix = f"-{n}"
        slug = base[:_SLUG_LENGTH - len(suffix)] + suffix
    return slug


def create(account: str, slug: str | None, *, rate_type: str, unit: str, tiers: Sequence[str] = (),
           percentage: str | None = None, base_cost_payer: str | None = None,
           token_basis: str = "input+output", name: str | None = None) -> MeterView:
    """A new meter of `account` (created if new); tiers are "START:RATE" strings, as pricing/meters.py reads them.
    Without a slug, one is made from `name`."""
    if slug is None:
        if not name:
            raise BadRequest("invalid_meter", "a meter needs a slug or a name to make one from")
        slug = slug_from(account, name)
    spec = _spec(slug, rate_type, unit, tiers, percentage, base_cost_payer, token_basis)
    try:
        row = accounts.create_meter(
            _account(account), spec.slug, rate_type=spec.rate_type, unit=spec.unit,
            percentage=None if spec.percentage is None else str(spec.percentage), base_cost_payer=spec.base_cost_payer,
            token_basis=spec.token_basis, tiers=meters.tiers_json(spec), name=name)
    except accounts.AlreadyExists as e:
        raise Conflict("meter_deleted" if e.deleted else "meter_exists", str(e)) from None
    return _view(row)


def get(account: str, slug: str) -> MeterView:
    return _view(_find(account, slug))


def detail(account: str, meter: str) -> MeterDetail:
    """By the meter's id or its slug."""
    return _detail(_find(account, meter))


def update(account: str, meter: str, *, name=_UNSET, tiers=_UNSET, percentage=_UNSET) -> MeterDetail:
    """Rename a meter or change its rates (tiers as "START:RATE" strings; a percentage meter's markup), checked as
    a new meter would be. Its slug, rate type and unit stay: tokens and running totals name them."""
    row = _find(account, meter)
    columns = {}
    if name is not _UNSET:
        columns["name"] = name
    if tiers is not _UNSET or percentage is not _UNSET:
        stored = [f"{start}:{rate}" for start, rate in json.loads(row.tiers)]
        spec = _spec(row.slug, row.rate_type, row.unit, stored if tiers is _UNSET else tiers,
                     row.percentage if percentage is _UNSET else percentage, row.base_cost_payer, row.token_basis)
        columns["tiers"] = meters.tiers_json(spec)
        columns["percentage"] = None if spec.percentage is None else str(spec.percentage)
    if columns:
        MeterRow.update(**columns).where(MeterRow.id == row.id).execute()
    return _detail(MeterRow.get_by_id(row.id))


def delete(account: str, meter: str) -> str:
    """Soft delete (see the module's docstring); the meter's id."""
    row = _find(account, meter)
    accounts.delete_meter(row)
    return row.id


def list_meters(account: str) -> list[MeterView]:
    return [_view(row) for row in _live(account).order_by(MeterRow.slug)]


def listing(account: str) -> Listing:
    """The account's live meters for the API's pages, newest first."""
    return Listing(_live(account), MeterRow.created_at, MeterRow.id, _detail)
