"""The request log: one row per request the gateway served or refused after authentication, and per request a
merchant reported (addons/services/reported.py); each as a row (`RequestRecord`) or, for the API, with what it
was charged and why (`RequestDetail`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal

from addons.ledger.models import MeterRow, RequestRow, facts_of
from addons.services import wallets
from addons.services.errors import NotFound
from addons.services.listing import Listing
from addons.services.prices import PriceLists, price_lists
from addons.services.reports import UNKNOWN_COST, MetadataPairs, key_names, meters_of, recent_requests, requests_of
from pricing import meters
from pricing.cost import price
from pricing.money import to_nanos
from pricing.usage import Measured, TokenUsage

__all__ = ["FIELDS", "Listing", "RequestDetail", "RequestRecord", "TierUse", "flags", "get", "key_names", "listing",
           "recent"]  # key_names: a request's key by name


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRecord(facts_of(RequestRow, frozen=True)):
    """A row of the `request` table: a field per column, in the table's order, derived from RequestRow
    (money in integer nanos; `metadata` the caller's JSON object as text)."""


FIELDS = tuple(f.name for f in fields(RequestRecord))


def recent(limit: int = 20, *, customer: str | None = None, key: str | None = None, model: str | None = None,
           provider: str | None = None, status: int | None = None, status_class: int | None = None,
           since: datetime | None = None, until: datetime | None = None) -> list[RequestRecord]:
    """The newest `limit` requests matching every filter given, over [since, until) in naive UTC.

    `key` is a key's id or name; `model` ending in * matches a prefix; `status` is an HTTP status and
    `status_class` its hundreds digit (4 for every 4xx).
    """
    rows = recent_requests(limit, customer, key=key, model=model, provider=provider, status=status,
                           status_class=status_class, since=since, until=until)
    return [RequestRecord(**{name: row[name] for name in FIELDS}) for row in rows]


def flags(record: RequestRecord) -> list[str]:
    """What a reader should know about a request's numbers: streamed, usage estimated, cost not known."""
    return [name for name, on in (("streamed", record.streamed), ("estimated", record.usage_source == "estimated"),
                                  ("unpriced", record.price_source in ("unpriced", "unmetered"))) if on]


# -- one request, with its charge ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TierUse:
    """The part of a request's usage one tier of its meter priced."""

    start: int  # the tier's first unit
    rate: str  # USD per million units (tokens_1m, characters_1m), else per unit: a decimal string
    unit: str  # tokens_1m | characters_1m | minutes | requests
    units: Decimal  # tokens, characters, minutes or requests priced at this rate
    cost_nanos: int


@dataclass(frozen=True, slots=True)
class RequestDetail:
    record: RequestRecord
    meter_id: str | None  # None: no meter, or one deleted since
    rate_type: str | None  # the meter's: fixed | percentage | hybrid
    # What the request's payer was charged: the customer's fee when it was billed to a customer, else the
    # merchant's debit (provider cost, or the bring-your-own-key fee); reports.usage_by's charged + margin.
    charge_nanos: int
    # The provider cost split by direction, recomputed with today's price lists at the request's time and
    # given only when that reproduces the recorded cost (output takes any per-request part); None: not known.
    input_cost_nanos: int | None
    output_cost_nanos: int | None
    # How the meter's tiers priced the usage: given where that does not depend on the customer's running total
    # at commit, which the ledger does not keep (a meter of one tier); empty otherwise, and without a meter.
    breakdown: tuple[TierUse, ...]

    @property
    def status(self) -> str:
        """Lava's request status: completed, or error when the provider refused it or it failed."""
        record = self.record
        return "error" if record.status is None or record.status >= 400 or record.error else "completed"

    @property
    def cost_known(self) -> bool:
        return self.record.price_source not in UNKNOWN_COST

    @property
    def metadata(self) -> dict:
        return json.loads(self.record.metadata) if self.record.metadata else {}


def billed_to_customer(record: RequestRecord) -> bool:
    """As reports.BILLED: billed to a customer, or (a row older than bill_customer) naming one."""
    return bool(record.bill_customer) or (record.bill_customer is None and record.customer_id is not None)


class _Details:
    """Builds RequestDetails for one account, reading its meters and the price lists once."""

    def __init__(self, account_id: str):
        self.meters: dict[str, MeterRow] = meters_of(account_id)
        self._prices: PriceLists | None = None

    def __call__(self, row: RequestRow) -> RequestDetail:
        record = RequestRecord(**{name: getattr(row, name if name not in ("account", "key") else f"{name}_id")
                                  for name in FIELDS})
        meter = self.meters.get(record.meter_slug) if record.meter_slug else None
        charge = record.fee_nanos if billed_to_customer(record) else record.charged_nanos
        split = self._split(record)
        return RequestDetail(record, meter.id if meter else None, meter.rate_type if meter else None, charge,
                             split and split[0], split and split[1], _breakdown(record, meter))

    def _split(self, record: RequestRecord) -> tuple[int, int] | None:
        if record.price_source in UNKNOWN_COST:
            return None
        if record.provider_cost_nanos == 0 and record.price_source in ("free", "reported"):
            return 0, 0
        if self._prices is None:
            self._prices = price_lists()
        usage = TokenUsage(record.input_tokens, record.cache_read_tokens, record.cache_write_tokens,
                           record.output_tokens, record.reasoning_tokens)
        try:
            cost = price(usage, model=record.model or "", provider_id=record.provider,
                         pricing_id=self._prices.pricing_ids.get(record.provider), overrides=self._prices.overrides,
                         at=record.created_at.replace(tzinfo=UTC))
        except (ValueError, ArithmeticError):
            return None
        if cost.total_nanos != record.provider_cost_nanos or cost.input_nanos > cost.total_nanos:
            return None
        return cost.input_nanos, cost.total_nanos - cost.input_nanos


def _measured(record: RequestRecord) -> Measured:
    seconds = Decimal(record.input_duration_ms + record.output_duration_ms).scaleb(-3)
    return Measured(TokenUsage(input_tokens=record.input_tokens, output_tokens=record.output_tokens),
                    characters=record.input_characters + record.output_characters,
                    audio_seconds=seconds if seconds else None, images=record.images, search_units=record.search_units)


def _breakdown(record: RequestRecord, meter: MeterRow | None) -> tuple[TierUse, ...]:
    if meter is None or not billed_to_customer(record):
        return ()
    try:
        spec = meters.spec_from_row(meter)
    except ValueError:
        return ()
    if len(spec.tiers) != 1:
        return ()
    [tier] = spec.tiers
    units = meters.units_of(spec, _measured(record))
    cost = meters.tiered_amount(spec.tiers, Decimal(0), units, meters.UNIT_RULES[spec.unit].per)
    return (TierUse(int(tier.start), str(tier.rate), spec.unit, units, to_nanos(cost)),)


def meter_slug(account_id: str, meter: str | None) -> str | None:
    """A meter named by id or slug, as request rows name it (by slug). An id of no meter of the account is taken
    as a slug: rows keep the slug of a meter deleted since."""
    if not meter:
        return None
    found = MeterRow.get_or_none(MeterRow.account == account_id, MeterRow.id == meter)
    return found.slug if found else meter


def listing(account: str, *, customer: str | None = None, meter: str | None = None,
            metadata: MetadataPairs = ()) -> Listing:
    """`account`'s requests of `customer` (its customer_id), priced by `meter` (an id or a slug), whose metadata
    holds every (key, value) pair of `metadata`."""
    account_id = wallets.account_id(account)
    query = requests_of(account_id, customer=customer, meter_slug=meter_slug(account_id, meter), metadata=metadata)
    return Listing(query, RequestRow.created_at, RequestRow.id, _Details(account_id))


def get(account: str, request_id: str) -> RequestDetail:
    """One of `account`'s requests; NotFound for an id of no request or of another account's."""
    account_id = wallets.account_id(account)
    row = RequestRow.get_or_none(RequestRow.id == request_id, RequestRow.account == account_id)
    if row is None:
        raise NotFound("request_not_found", f"no request {request_id!r}")
    return _Details(account_id)(row)
