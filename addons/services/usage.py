"""Usage roll-ups: requests, tokens, provider cost, charges, fees and margin, per provider, model, key, customer,
meter or day; and day by day over a period, days without requests included (the API's /v1/usage)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import date, datetime, time, timedelta

from addons.services import wallets
from addons.services.errors import BadRequest
from addons.services.reports import USAGE_GROUPS, MetadataPairs, usage_by
from addons.services.requests import meter_slug

GROUPS = tuple(sorted(USAGE_GROUPS))


@dataclass(frozen=True, slots=True)
class UsageTotals:
    requests: int
    input_tokens: int
    output_tokens: int
    provider_cost_nanos: int  # of the priced requests only: unpriced and unmetered ones are counted apart
    charged_nanos: int
    fee_nanos: int
    unpriced_requests: int
    unmetered_requests: int
    margin_nanos: int  # fees less what the merchant paid for the requests billed to a customer (README, CLI)

    @property
    def payer_charge_nanos(self) -> int:
        """What the requests' payers were charged: the fees of those billed to a customer, and the merchant's debits
        for the others; the sum of each request's charge (services.requests.RequestDetail.charge_nanos)."""
        return self.charged_nanos + self.margin_nanos


@dataclass(frozen=True, slots=True)
class UsageRow:
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
    key_name: str | None = None  # grouped by key: the key's name


@dataclass(frozen=True, slots=True)
class UsageReport:
    by: str
    rows: list[UsageRow]
    totals: UsageTotals


def usage(by: str = "provider", *, customer: str | None = None, since: datetime | None = None,
          until: datetime | None = None, account: str | None = None, meter: str | None = None,
          metadata: MetadataPairs = ()) -> UsageReport:
    """Rows per group, the costliest first, over [since, until) in naive UTC; of one account's requests, or every
    account's; of one meter (an id or a slug, with an account); of requests whose metadata holds every pair."""
    if by not in USAGE_GROUPS:
        raise BadRequest("invalid_group", f"usage is grouped by one of {', '.join(GROUPS)}, not {by!r}")
    account_id = None if account is None else wallets.account_id(account)
    slug = meter_slug(account_id, meter) if account_id else meter
    rows, totals = usage_by(by, customer=customer, since=since, until=until, account_id=account_id,
                            meter_slug=slug, metadata=metadata)
    return UsageReport(by, [UsageRow(**row) for row in rows], UsageTotals(**totals))


MAX_DAYS = 366
_ZERO = UsageTotals(**{f.name: 0 for f in fields(UsageTotals)})


@dataclass(frozen=True, slots=True)
class UsageDay:
    date: date
    start: datetime  # the day's part of the period: [start, end), naive UTC
    end: datetime
    usage: UsageTotals


@dataclass(frozen=True, slots=True)
class DailyUsage:
    days: list[UsageDay]  # every day of the period, those without requests included
    totals: UsageTotals


def daily(account: str, *, since: datetime, until: datetime, customer: str | None = None, meter: str | None = None,
          metadata: MetadataPairs = ()) -> DailyUsage:
    """`account`'s usage day by day (UTC) over [since, until): usage(by="day") with a row for every day."""
    if until <= since:
        raise BadRequest("invalid_period", "the period's end must be after its start")
    first, last = since.date(), (until - timedelta(microseconds=1)).date()
    if (last - first).days >= MAX_DAYS:
        raise BadRequest("invalid_period", f"a period of at most {MAX_DAYS} days")
    report = usage("day", customer=customer, since=since, until=until, account=account, meter=meter,
                   metadata=metadata)
    by_day = {row.group: row for row in report.rows}
    days = []
    for n in range((last - first).days + 1):
        day = first + timedelta(days=n)
        midnight = datetime.combine(day, time())
        row = by_day.get(day.isoformat())
        totals = _ZERO if row is None else UsageTotals(**{f.name: getattr(row, f.name) for f in fields(UsageTotals)})
        days.append(UsageDay(day, max(since, midnight), min(until, midnight + timedelta(days=1)), totals))
    return DailyUsage(days, report.totals)
