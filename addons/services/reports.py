"""Read-side queries of the ledger, as plain rows: request listings, usage roll-ups, customer views.

The resource modules (requests, usage, customers, prices) turn them into typed results.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from peewee import JOIN, SQL, Case, Expression, NodeList, Value, fn

from addons.billing.charges import cycle_start
from addons.ledger.bulk import on_postgres
from addons.ledger.models import ApiKey, Customer, Event, Hold, MeterRow, MeterUsage, RequestRow, Wallet, utcnow
from pricing.meters import micro_to_units

USAGE_GROUPS = {
    "provider": RequestRow.provider,
    "model": RequestRow.model,
    "key": RequestRow.key,
    "customer": RequestRow.customer_id,
    "meter": RequestRow.meter_slug,
    "day": fn.DATE(RequestRow.created_at).coerce(False),  # a date, not the column's datetime at midnight
}
MONEY_SUMS = ("provider_cost_nanos", "charged_nanos", "fee_nanos")
# Requests whose provider cost is not known, counted apart: a cost total is complete only without them.
UNKNOWN_COST = ("unpriced", "unmetered")


# Requests billed to a customer, the ones a margin is made on; a row older than bill_customer counts when it
# names a customer.
BILLED = (RequestRow.bill_customer == True) | (RequestRow.bill_customer.is_null() & RequestRow.customer_id.is_null(False))  # noqa: E712


# Metadata filters: (key, value) pairs a request's metadata JSON must all hold, as string values.
MetadataPairs = Sequence[tuple[str, str]]


def _metadata_has(key: str, value: str):
    """The request's metadata holds `key` with the string `value`, in SQL on either backend."""
    if on_postgres():
        return Expression(RequestRow.metadata.cast("jsonb"), "@>", Value(json.dumps({key: value})).cast("jsonb"))
    return NodeList((SQL("EXISTS (SELECT 1 FROM json_each("), RequestRow.metadata,
                     SQL(") AS m WHERE m.key ="), Value(key), SQL("AND m.type = 'text' AND m.value ="), Value(value),
                     SQL(")")))


def _filtered(query, customer: str | None, since: datetime | None, until: datetime | None, *,
              account_id: str | None = None, meter_slug: str | None = None, metadata: MetadataPairs = ()):
    if account_id:
        query = query.where(RequestRow.account == account_id)
    if customer:
        query = query.where(RequestRow.customer_id == customer)
    if meter_slug:
        query = query.where(RequestRow.meter_slug == meter_slug)
    for key, value in metadata:
        query = query.where(_metadata_has(key, value))
    if since:
        query = query.where(RequestRow.created_at >= since)
    if until:
        query = query.where(RequestRow.created_at < until)
    return query


def _like_or_equal(column, value: str):
    """A trailing * matches a prefix (as token --allow-model does); anything else matches exactly."""
    if value.endswith("*"):
        return column.startswith(value[:-1])
    return column == value


def recent_requests(limit: int, customer: str | None = None, *, key: str | None = None, model: str | None = None,
                    provider: str | None = None, status: int | None = None, status_class: int | None = None,
                    since: datetime | None = None, until: datetime | None = None) -> list[dict]:
    """The newest rows first; `key` is a key's id or name, `status_class` the hundreds digit (4 for 4xx)."""
    query = RequestRow.select().order_by(RequestRow.created_at.desc(), RequestRow.id).limit(limit)
    if key:
        named = ApiKey.select(ApiKey.id).where(ApiKey.name == key)
        query = query.where((RequestRow.key == key) | RequestRow.key.in_(named))
    if model:
        query = query.where(_like_or_equal(RequestRow.model, model))
    if provider:
        query = query.where(RequestRow.provider == provider)
    if status is not None:
        query = query.where(RequestRow.status == status)
    if status_class is not None:
        query = query.where(RequestRow.status.between(status_class * 100, status_class * 100 + 99))
    return list(_filtered(query, customer, since, until).dicts())


def requests_of(account_id: str, *, customer: str | None = None, meter_slug: str | None = None,
                metadata: MetadataPairs = ()):
    """An account's requests matching every filter given, as a query for the caller to order and page."""
    return _filtered(RequestRow.select(), customer, None, None, account_id=account_id, meter_slug=meter_slug,
                     metadata=metadata)


def meters_of(account_id: str) -> dict[str, MeterRow]:
    """An account's meters by slug (a request row names its meter by slug)."""
    return {row.slug: row for row in MeterRow.select().where(MeterRow.account == account_id)}


def events_query(account_id: str | None, customer: str | None = None):
    """Billing events, of one account's wallets (its own and its customers') or, with None, of every wallet; of one
    customer's wallet (its customer_id)."""
    query = Event.select(Event, Wallet.customer_id.alias("customer_id")).join(Wallet, JOIN.LEFT_OUTER).objects()
    if account_id is not None:
        query = query.where(Wallet.account == account_id)
    return query if customer is None else query.where(Wallet.customer_id == customer)


def key_names() -> dict[str, str]:
    """Key id -> the key's name, for showing a request or a usage row by name."""
    return dict(ApiKey.select(ApiKey.id, ApiKey.name).tuples())


def usage_by(group: str, customer: str | None = None, since: datetime | None = None,
             until: datetime | None = None, *, account_id: str | None = None, meter_slug: str | None = None,
             metadata: MetadataPairs = ()) -> tuple[list[dict], dict]:
    """Rows per group and the totals; margin is the fees of requests billed to a customer less what the merchant
    paid for those requests (their provider cost; nothing when the customer brought its own provider key).
    Without `account_id`, every account's requests."""
    column = USAGE_GROUPS[group]
    scope = dict(account_id=account_id, meter_slug=meter_slug, metadata=metadata)
    sums = [fn.COUNT(RequestRow.id).alias("requests"),
            fn.SUM(RequestRow.input_tokens).alias("input_tokens"),
            fn.SUM(RequestRow.output_tokens).alias("output_tokens"),
            *(fn.SUM(getattr(RequestRow, name)).alias(name) for name in MONEY_SUMS),
            *(fn.SUM(Case(None, [(RequestRow.price_source == source, 1)], 0)).alias(f"{source}_requests")
              for source in UNKNOWN_COST),
            fn.SUM(Case(None, [(BILLED, RequestRow.charged_nanos)], 0)).alias("billed_charged_nanos")]
    query = _filtered(RequestRow.select(column.alias("group"), *sums), customer, since, until, **scope)
    rows = [_numbers(row) for row in query.group_by(column).order_by(fn.SUM(RequestRow.provider_cost_nanos).desc(), column).dicts()]
    totals = _numbers(_filtered(RequestRow.select(*sums), customer, since, until, **scope).dicts().get())
    totals.pop("group", None)
    if group == "key":
        names = key_names()
        for row in rows:
            row["key_name"] = names.get(row["group"])
    return rows, totals


def _numbers(row: dict) -> dict:
    group = row.pop("group", None)
    out = {"group": None if group is None else str(group), **{k: int(v or 0) for k, v in row.items()}}
    out["margin_nanos"] = out["fee_nanos"] - out.pop("billed_charged_nanos")
    return out


def missing_prices(since: datetime | None = None, until: datetime | None = None) -> list[dict]:
    """Models seen without a price (rows with price_source unpriced), per provider and model."""
    query = (RequestRow.select(RequestRow.provider, RequestRow.model, fn.COUNT(RequestRow.id).alias("requests"),
                               fn.SUM(RequestRow.input_tokens).alias("input_tokens"),
                               fn.SUM(RequestRow.output_tokens).alias("output_tokens"),
                               fn.MIN(RequestRow.created_at).alias("first_seen"),
                               fn.MAX(RequestRow.created_at).alias("last_seen"))
             .where(RequestRow.price_source == "unpriced", RequestRow.model.is_null(False)))
    query = _filtered(query, None, since, until).group_by(RequestRow.provider, RequestRow.model)
    rows = []
    for row in query.order_by(fn.COUNT(RequestRow.id).desc(), RequestRow.provider, RequestRow.model).dicts():
        for name in ("input_tokens", "output_tokens"):
            row[name] = int(row[name] or 0)
        for name in ("first_seen", "last_seen"):  # SQLite's MIN/MAX of a datetime column come back as text
            if isinstance(row[name], str):
                row[name] = datetime.fromisoformat(row[name])
        rows.append(row)
    return rows


def customer_views(customers: list[Customer]) -> list[dict]:
    """Balance, open holds and this cycle's usage per meter of each customer (all of one account): four queries
    for the whole list, however long (balances, holds, meter usage, fees), not four per customer."""
    if not customers:
        return []
    now = utcnow()
    start = cycle_start(now)
    wallets = [customer.wallet_id for customer in customers]
    balances = dict(Wallet.select(Wallet.id, Wallet.balance_nanos).where(Wallet.id.in_(wallets)).tuples())
    holds = {wallet: (count, int(amount)) for wallet, count, amount in
             Hold.select(Hold.wallet, fn.COUNT(Hold.request_id), fn.COALESCE(fn.SUM(Hold.amount_nanos), 0))
             .where(Hold.wallet.in_(wallets), Hold.expires_at > now).group_by(Hold.wallet).tuples()}
    usage: dict[str, dict] = {}
    for wallet, slug, units in (MeterUsage.select(MeterUsage.wallet, MeterRow.slug, MeterUsage.units_micro)
                                .join(MeterRow).where(MeterUsage.wallet.in_(wallets), MeterUsage.cycle_start == start)
                                .tuples()):
        usage.setdefault(wallet, {})[slug] = micro_to_units(units)
    fees = {customer_id: (int(fee), count) for customer_id, fee, count in
            RequestRow.select(RequestRow.customer_id, fn.COALESCE(fn.SUM(RequestRow.fee_nanos), 0),
                              fn.COUNT(RequestRow.id))
            .where(RequestRow.customer_id.in_([c.customer_id for c in customers]),
                   RequestRow.account == customers[0].account_id, RequestRow.created_at >= start)
            .group_by(RequestRow.customer_id).tuples()}
    views = []
    for customer in customers:
        count, amount = holds.get(customer.wallet_id, (0, 0))
        fee, requests = fees.get(customer.customer_id, (0, 0))
        views.append({
            "customer_id": customer.customer_id,
            "wallet": customer.wallet_id,
            "balance_nanos": balances[customer.wallet_id],
            "holds": {"count": count, "amount_nanos": amount},
            "cycle_start": start,
            "cycle_usage": usage.get(customer.wallet_id, {}),
            "cycle_fees_nanos": fee,
            "cycle_requests": requests,
            "autopay_threshold_nanos": customer.autopay_threshold_nanos,
            "autopay_amount_nanos": customer.autopay_amount_nanos,
            "overdraft_limit_nanos": customer.overdraft_limit_nanos,
        })
    return views
