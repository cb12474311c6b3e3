"""Charging, after the fact, requests that were served unpriced (`tollgate prices reprice`).

Once the operator has added a price (pricing/overrides.yaml or the settings' `prices:`), each
request row with price_source `unpriced` in the window is priced again from its recorded token
counts and media quantities (images, characters, audio, ...), at the prices in force when it ran. A
media row recorded before its media quantities were kept whole (media_usage NULL) stays unpriced:
its tokens alone would price it short. Where a price is now found, in one transaction per
request:

- the row's provider_cost_nanos and price_source are updated (the row is a report, not money);
- the money is added as new ledger entries with reason `reprice`, never by rewriting one: the
  merchant's wallet is debited what it would have been charged (the provider cost, or the part of
  the BYOK fee that is a share of it), and a billed customer's balance the part of its fee that
  depends on the provider cost (percentage markup, base cost paid by the customer, BYOK
  percentage), within its balance and overdraft like any charge; the rest is recorded as
  uncollected. A customer's fee is rounded half-up once, on that part alone.

An entry is unique per (wallet, reason, request), and the row leaves `unpriced` in the same
transaction, so a second run adds nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from addons.billing.charges import is_billable
from addons.billing.plan import byok_fee
from addons.core.settings import BillingSettings
from addons.ledger.bulk import execute, for_update
from addons.ledger.models import Customer, LedgerEntry, MeterRow, RequestRow, Wallet, database, utcnow
from pricing import meters
from pricing.cost import Override, price
from pricing.usage import MediaUsage, TokenUsage

REASON = "reprice"


@dataclass(frozen=True, slots=True)
class Repriced:
    request_id: str
    provider: str
    model: str | None
    price_source: str  # the new one: catalog | override
    provider_cost_nanos: int
    merchant_nanos: int  # debited from the merchant's wallet now
    customer_nanos: int  # debited from the customer's balance now
    customer_uncollected_nanos: int  # the part of the customer's fee its balance could not cover


def _cost(row: RequestRow, pricing_ids: Mapping[str, str | None], overrides: tuple[Override, ...]):
    usage = TokenUsage(row.input_tokens, row.cache_read_tokens, row.cache_write_tokens, row.output_tokens,
                       row.reasoning_tokens)
    media = MediaUsage.from_json(row.media_usage) if row.media_usage else None
    return price(usage, model=row.model or "", provider_id=row.provider, pricing_id=pricing_ids.get(row.provider),
                 overrides=overrides, at=row.created_at.replace(tzinfo=UTC), media=media)


def _media_lost(row: RequestRow) -> bool:
    """A media row recorded before its full media quantities were kept: its tokens alone would price it short."""
    return row.media_usage is None and bool(row.images or row.search_units or row.input_characters
                                            or row.input_duration_ms)


def _charges(row: RequestRow, cost: int, billing: BillingSettings) -> tuple[int, int]:
    """(merchant, customer) amounts the provider cost adds to what the request was charged at cost 0."""
    if not is_billable(row.status, row.usage_source):
        return 0, 0
    # The BYOK fee's per-request part was charged already: only its share of the cost is new.
    byok_share = (byok_fee(cost, billing.byok_fee_percent, billing.byok_fee_per_request_nanos)
                  - byok_fee(0, billing.byok_fee_percent, billing.byok_fee_per_request_nanos))
    merchant = customer = 0
    if not row.byok:
        merchant = cost
    elif row.bill_customer:
        customer = byok_share
    else:
        merchant = byok_share
    if row.bill_customer and row.meter_slug:
        meter = MeterRow.get_or_none(MeterRow.account == row.account_id, MeterRow.slug == row.meter_slug)
        if meter is not None:
            spec = meters.spec_from_row(meter)
            customer += meters.fee(spec, units=Decimal(0), running_before=Decimal(0), provider_cost_nanos=cost)
    return merchant, customer


def _debit(wallet_id: str, amount: int, request_id: str, now: datetime) -> None:
    LedgerEntry.insert(wallet=wallet_id, amount_nanos=-amount, reason=REASON, request_id=request_id,
                       created_at=now, note="provider cost priced after the fact").execute()
    execute('UPDATE "wallet" SET "balance_nanos" = "balance_nanos" - %s, "version" = "version" + 1 WHERE "id" = %s',
            amount, wallet_id)


def _apply(request_id: str, pricing_ids, overrides, billing: BillingSettings, dry_run: bool) -> Repriced | None:
    # Locked first (SQLite: the transaction is IMMEDIATE), so two runs cannot both charge the row.
    execute('SELECT "id" FROM "request" WHERE "id" = %s' + for_update(), request_id)
    row = RequestRow.select().where(RequestRow.id == request_id, RequestRow.price_source == "unpriced").first()
    if row is None or _media_lost(row):  # another run took it meanwhile; or it cannot be priced exactly
        return None
    cost = _cost(row, pricing_ids, overrides)
    if cost.source == "unpriced":
        return None
    merchant, customer_fee = _charges(row, cost.total_nanos, billing)
    merchant_wallet = Wallet.get(Wallet.account == row.account_id, Wallet.customer_id == "").id
    customer = (Customer.get_or_none(Customer.account == row.account_id, Customer.customer_id == row.customer_id)
                if customer_fee else None)
    collected = 0
    if customer is not None:
        balance = next(iter(execute('SELECT "balance_nanos" FROM "wallet" WHERE "id" = %s' + for_update(),
                                    customer.wallet_id)))[0]
        collected = min(customer_fee, max(0, balance + customer.overdraft_limit_nanos))
    result = Repriced(row.id, row.provider, row.model, cost.source, cost.total_nanos, merchant, collected,
                      customer_fee - collected)
    if dry_run:
        return result
    now = utcnow()
    if merchant:
        _debit(merchant_wallet, merchant, row.id, now)
    if collected:
        _debit(customer.wallet_id, collected, row.id, now)
    spend = collected if row.bill_customer else merchant
    (RequestRow.update(provider_cost_nanos=cost.total_nanos, price_source=cost.source,
                       charged_nanos=RequestRow.charged_nanos + merchant,
                       fee_nanos=RequestRow.fee_nanos + collected,
                       fee_uncollected_nanos=RequestRow.fee_uncollected_nanos + (customer_fee - collected),
                       token_spend_nanos=RequestRow.token_spend_nanos + (spend if row.token_id else 0))
     .where(RequestRow.id == row.id).execute())
    return result


def reprice(*, since: datetime, until: datetime | None, pricing_ids: Mapping[str, str | None],
            overrides: tuple[Override, ...], billing: BillingSettings, dry_run: bool = False
            ) -> tuple[list[Repriced], int]:
    """Price the unpriced rows created in [since, until); returns those that now have a price, and how
    many stay unpriced."""
    query = RequestRow.select(RequestRow.id).where(RequestRow.price_source == "unpriced", RequestRow.created_at >= since)
    if until is not None:
        query = query.where(RequestRow.created_at < until)
    done, left = [], 0
    for (request_id,) in query.order_by(RequestRow.created_at, RequestRow.id).tuples():
        with database.atomic() as transaction:
            result = _apply(request_id, pricing_ids, overrides, billing, dry_run)
            if dry_run:
                transaction.rollback()
        if result is None:
            left += 1
        else:
            done.append(result)
    return done, left

