"""Usage a merchant reports that did not go through the proxy (Lava's post-request mode, POST /v1/requests).

A reported request is priced by the customer's meter and charged exactly like a proxied one: it becomes the
same `UsageRecord` and is committed by the ledger writer's `write_batch` with billing's `apply_charges`, so the
customer's fee, the meter's running total for the cycle, the overdraft room and the ledger entries are those a
proxied request with that usage would get. The provider was paid outside Tollgate: the provider cost is 0
(price_source `reported`) and the merchant's wallet is not debited.

Idempotent on the request id: a repeat of a recorded request (the same customer, meter, usage and metadata)
answers the recorded request and charges nothing; repeats racing on several connections or processes charge
once, since the request's row and its entries are unique (the loser's transaction rolls back and it reads the
winner's row). An id already used otherwise, or by another account, is a Conflict.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from decimal import Decimal

import peewee
import psycopg2

from addons.billing.charges import apply_charges
from addons.ledger import accounts
from addons.ledger.models import RequestRow, utcnow
from addons.ledger.writer import UsageRecord, write_batch
from addons.services import requests, wallets
from addons.services.errors import BadRequest, Conflict, NotFound
from pricing import meters
from pricing.usage import Measured, TokenUsage

PROVIDER = "reported"  # a reported request's provider, and its price_source
ENDPOINT = "/v1/requests"
_INTEGRITY_ERRORS = (peewee.IntegrityError, sqlite3.IntegrityError, psycopg2.IntegrityError)


@dataclass(frozen=True, slots=True)
class ReportedUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    input_characters: int = 0
    output_characters: int = 0
    input_duration_ms: int = 0  # audio or video seconds, in milliseconds
    output_duration_ms: int = 0

    def measured(self) -> Measured:
        """What a meter counts (pricing.meters.UNIT_RULES): tokens, characters in and out, seconds in and out."""
        seconds = Decimal(self.input_duration_ms + self.output_duration_ms).scaleb(-3)
        return Measured(TokenUsage(input_tokens=self.input_tokens, output_tokens=self.output_tokens),
                        characters=self.input_characters + self.output_characters,
                        audio_seconds=seconds if seconds else None)


@dataclass(frozen=True, slots=True)
class Reported:
    request: requests.RequestDetail
    created: bool  # False: the request was recorded before, and nothing was charged now
    # customer wallets this report charged, for the auto top-up's check (AutoTopUp.notify_charged)
    charged_wallets: tuple[str, ...] = field(default=())


def report(account: str, request_id: str, *, customer_id: str, meter_slug: str, usage: ReportedUsage,
           metadata: dict[str, str] | None = None, key_id: str | None = None) -> Reported:
    """Record and charge a request `account`'s merchant reports for its customer `customer_id`, priced by the meter
    `meter_slug`. `key_id`: the account's key that reported it, shown as the request's key."""
    found = wallets.account_record(account)
    account_id = found.account_id
    facts = (customer_id, meter_slug, usage, metadata)
    if (repeat := _recorded(account, account_id, request_id, *facts)) is not None:
        return repeat
    customer = accounts.find_customer(account_id, customer_id)
    if customer is None:
        raise NotFound("customer_not_found", f"no customer {customer_id!r}")
    meter = accounts.find_meter(account_id, meter_slug)
    if meter is None:
        raise NotFound("meter_not_found", f"no meter {meter_slug!r}")
    try:
        spec = meters.spec_from_row(meter)
    except ValueError as e:
        raise BadRequest("invalid_meter", str(e)) from None
    if spec.rate_type == "percentage":
        raise BadRequest("meter_prices_provider_cost",
                         f"meter {meter_slug!r} charges a percentage of the provider cost, which a reported request "
                         "does not have: report it against a meter with tiers")
    record = UsageRecord(
        id=request_id, created_at=utcnow(), account=account_id, wallet_id=found.wallet_id, key=key_id,
        customer_id=customer_id, meter_slug=meter_slug, provider=PROVIDER, model=None, endpoint=ENDPOINT,
        status=200, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
        input_characters=usage.input_characters, output_characters=usage.output_characters,
        input_duration_ms=usage.input_duration_ms, output_duration_ms=usage.output_duration_ms,
        provider_cost_nanos=0, charged_nanos=0, usage_source="reported", price_source=PROVIDER,
        bill_customer=True, metadata=metadata or None, customer_wallet_id=customer.wallet_id, meter_id=meter.id,
        units_micro=meters.units_to_micro(meters.units_of(spec, usage.measured())))
    try:
        committed = write_batch([record], apply_charges)
    except _INTEGRITY_ERRORS:  # a racing repeat committed it first: this transaction rolled back
        committed = None
    if committed is None or request_id not in committed.customer_fees:  # recorded meanwhile, not by this call
        repeat = _recorded(account, account_id, request_id, *facts)
        if repeat is None:
            raise Conflict("request_in_progress", f"request {request_id!r} is being recorded; retry")
        return repeat
    return Reported(requests.get(account, request_id), True, tuple(sorted(committed.charged_customer_wallets)))


def _recorded(account: str, account_id: str, request_id: str, customer_id: str, meter_slug: str,
              usage: ReportedUsage, metadata: dict | None) -> Reported | None:
    """The recorded request `request_id` if this report repeats it; None if there is none; Conflict if the id is
    taken by another request."""
    row = RequestRow.get_or_none(RequestRow.id == request_id)
    if row is None:
        return None
    if row.account_id != account_id:
        raise Conflict("request_id_taken", f"request id {request_id!r} is taken: choose another")
    same = (row.provider == PROVIDER and row.customer_id == customer_id and row.meter_slug == meter_slug
            and all(getattr(row, name) == getattr(usage, name) for name in ReportedUsage.__dataclass_fields__)
            and (json.loads(row.metadata) if row.metadata else None) == (metadata or None))
    if not same:
        raise Conflict("request_id_reused",
                       f"request {request_id!r} was recorded with other facts; a repeat must send the same ones")
    return Reported(requests.get(account, request_id), False)
