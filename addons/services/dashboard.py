"""What the admin dashboard shows, read in one go: the last 30 days' spend per day and provider or model, their
totals as `tollgate usage` adds them, customers with their balance marks, the recent requests and the keys, of
one account or (an admin's view) of every account.

The totals are the sums of the chart's own rows, so the chart and the numbers beside it cannot disagree;
tests/test_dashboard.py holds them equal to `services.usage.usage` for the same period.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta

from peewee import Case, fn

from addons.ledger.models import Account, ApiKey, RequestRow, utcnow
from addons.services import customers, keys, requests
from addons.services.errors import BadRequest, NotFound
from addons.services.reports import BILLED, MONEY_SUMS, UNKNOWN_COST, USAGE_GROUPS
from addons.services.usage import UsageTotals

DAYS = 30
SPEND_GROUPS = ("provider", "model")
MAX_REQUESTS = 200
# Refusals before a ledger row (401, 402, 403, 429 at admission) are not here: /metrics counts them.
ERROR_STATUS = 400


@dataclass(frozen=True, slots=True)
class DaySpend:
    """One day's requests of one provider or model."""

    day: date
    group: str | None
    requests: int
    input_tokens: int
    output_tokens: int
    provider_cost_nanos: int
    charged_nanos: int
    fee_nanos: int
    unpriced_requests: int
    unmetered_requests: int
    margin_nanos: int
    errors: int  # rows with an HTTP status of 400 or more


@dataclass(frozen=True, slots=True)
class Spend:
    by: str
    since: datetime  # midnight UTC of the first day shown
    days: list[date]  # every day of the period, the ones without requests too
    rows: list[DaySpend]
    totals: UsageTotals
    errors: int


@dataclass(frozen=True, slots=True)
class CustomerMark:
    account: str
    customer: customers.CustomerView
    mark: str | None  # "depleted" (balance <= 0), "low" (below its auto top-up threshold) or None


@dataclass(frozen=True, slots=True)
class RequestFilters:
    provider: str | None = None
    model: str | None = None  # a trailing * matches a prefix
    status: int | None = None
    status_class: int | None = None  # the hundreds digit: 4 for every 4xx
    customer: str | None = None
    key: str | None = None  # a key's id or name


def period_start(now: datetime | None = None, days: int = DAYS) -> datetime:
    """Midnight (naive UTC) of the first of the last `days` days, today included: `tollgate usage --since` it."""
    return datetime.combine((now or utcnow()).date() - timedelta(days=days - 1), datetime.min.time())


def account_names() -> list[str]:
    return list(Account.select(Account.name).order_by(Account.name).scalars())


def _account_id(account: str) -> str:
    account_id = Account.select(Account.id).where(Account.name == account).scalar()
    if account_id is None:
        raise NotFound("account_not_found", f"no account named {account!r}")
    return account_id


def _scoped(query, account: str | None):
    return query if account is None else query.where(RequestRow.account == _account_id(account))


def _sums() -> list:
    """The sums of `tollgate usage` (reports.usage_by), plus the error count."""
    return [fn.COUNT(RequestRow.id).alias("requests"),
            fn.SUM(RequestRow.input_tokens).alias("input_tokens"),
            fn.SUM(RequestRow.output_tokens).alias("output_tokens"),
            *(fn.SUM(getattr(RequestRow, name)).alias(name) for name in MONEY_SUMS),
            *(fn.SUM(Case(None, [(RequestRow.price_source == source, 1)], 0)).alias(f"{source}_requests")
              for source in UNKNOWN_COST),
            fn.SUM(Case(None, [(BILLED, RequestRow.charged_nanos)], 0)).alias("billed_charged_nanos"),
            fn.SUM(Case(None, [(RequestRow.status >= ERROR_STATUS, 1)], 0)).alias("errors")]


def _day(value) -> date:
    """DATE() is a date on PostgreSQL and text on SQLite."""
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _day_spend(row: dict) -> DaySpend:
    numbers = {name: int(value or 0) for name, value in row.items() if name not in ("day", "group")}
    margin = numbers["fee_nanos"] - numbers.pop("billed_charged_nanos")
    group = row["group"]
    return DaySpend(_day(row["day"]), None if group is None else str(group), margin_nanos=margin, **numbers)


def spend(by: str = "provider", *, account: str | None = None, now: datetime | None = None) -> Spend:
    """Per day and `by` (provider or model) over the last DAYS days of `account`, or of every account (None)."""
    if by not in SPEND_GROUPS:
        raise BadRequest("invalid_group", f"spend is stacked by one of {', '.join(SPEND_GROUPS)}, not {by!r}")
    since = period_start(now)
    day, column = USAGE_GROUPS["day"], USAGE_GROUPS[by]
    query = (RequestRow.select(day.alias("day"), column.alias("group"), *_sums())
             .where(RequestRow.created_at >= since).group_by(day, column).order_by(day, column))
    rows = [_day_spend(row) for row in _scoped(query, account).dicts()]
    totals = UsageTotals(**{f.name: sum(getattr(row, f.name) for row in rows) for f in fields(UsageTotals)})
    days = [since.date() + timedelta(days=n) for n in range(DAYS)]
    return Spend(by, since, days, rows, totals, sum(row.errors for row in rows))


def customer_marks(account: str | None = None) -> list[CustomerMark]:
    """Customers with their balance marks, the depleted and the low first, then by account and id."""
    names = account_names() if account is None else [account]
    marked = [CustomerMark(name, view, _mark(view)) for name in names for view in customers.list_customers(name)]
    order = {"depleted": 0, "low": 1, None: 2}
    return sorted(marked, key=lambda m: (order[m.mark], m.account, m.customer.customer_id))


def _mark(view: customers.CustomerView) -> str | None:
    """The balance events' own rules (billing/autopay.py): depleted at or below zero, low below the threshold."""
    if view.balance_nanos <= 0:
        return "depleted"
    if view.autopay_threshold_nanos is not None and view.balance_nanos < view.autopay_threshold_nanos:
        return "low"
    return None


def recent_requests(filters: RequestFilters = RequestFilters(), *, account: str | None = None,
                    limit: int = 50) -> list[requests.RequestRecord]:
    """The newest requests of `account` (every account: None) matching every filter given."""
    query = RequestRow.select().order_by(RequestRow.created_at.desc(), RequestRow.id).limit(min(limit, MAX_REQUESTS))
    if filters.provider:
        query = query.where(RequestRow.provider == filters.provider)
    if filters.model:
        model = filters.model
        query = query.where(RequestRow.model.startswith(model[:-1]) if model.endswith("*") else RequestRow.model == model)
    if filters.status is not None:
        query = query.where(RequestRow.status == filters.status)
    if filters.status_class is not None:
        query = query.where(RequestRow.status.between(filters.status_class * 100, filters.status_class * 100 + 99))
    if filters.customer:
        query = query.where(RequestRow.customer_id == filters.customer)
    if filters.key:
        named = ApiKey.select(ApiKey.id).where(ApiKey.name == filters.key)
        query = query.where((RequestRow.key == filters.key) | RequestRow.key.in_(named))
    return [requests.RequestRecord(**{name: row[name] for name in requests.FIELDS})
            for row in _scoped(query, account).dicts()]


def account_keys(account: str | None = None) -> list[keys.KeyInfo]:
    """Secret and spend keys, newest first."""
    return sorted((k for k in keys.list_keys() if account is None or k.account == account),
                  key=lambda k: k.created_at, reverse=True)
