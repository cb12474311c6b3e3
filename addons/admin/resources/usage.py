"""Usage, as Lava's `RestUsage`: day by day (UTC) over [start, end), every day of the period listed, equal to
`tollgate usage --by day` for the same period and account.

`total_cost` is what the providers cost (the requests whose cost is known: unpriced ones are counted in
`unpriced_requests`), `total_charge` what the requests' payers were charged: the customers' fees for requests
billed to a customer, the merchant's debit for the others (the sum of each request's `charge.amount`).
Tollgate's own totals (fees, the merchant's debits, margin, unpriced requests) ride along.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from addons.admin import web
from addons.admin.endpoints import Call, Endpoint
from addons.admin.resources.requests import metadata_filters
from addons.admin.web import Invalid
from addons.services import usage
from addons.services.usage import UsageTotals

DEFAULT_DAYS = 30


def _totals(totals: UsageTotals) -> dict:
    return {
        "total_requests": totals.requests,
        "total_usage_tokens": totals.input_tokens + totals.output_tokens,
        "total_cost": web.usd(totals.provider_cost_nanos),
        "total_charge": web.usd(totals.payer_charge_nanos),
        # Tollgate's own
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "fees": web.usd(totals.fee_nanos),
        "charged": web.usd(totals.charged_nanos),
        "margin": web.usd(totals.margin_nanos),
        "unpriced_requests": totals.unpriced_requests,
        "unmetered_requests": totals.unmetered_requests,
    }


def _period(call: Call) -> tuple[datetime, datetime]:
    """[start, end): `end` defaults to now, `start` to the midnight 29 days before end's day (30 days)."""
    end = web.timestamp(call.query.get("end"), "end") or datetime.now(UTC).replace(tzinfo=None)
    start = web.timestamp(call.query.get("start"), "start")
    if start is None:
        start = datetime.combine(end.date() - timedelta(days=DEFAULT_DAYS - 1), time())
    if end <= start:
        raise Invalid("end", "must be after start")
    if ((end - timedelta(microseconds=1)).date() - start.date()).days >= usage.MAX_DAYS:
        raise Invalid("start", f"the period spans at most {usage.MAX_DAYS} days")
    return start, end


def retrieve_usage(call: Call) -> dict:
    start, end = _period(call)
    report = usage.daily(call.account, since=start, until=end, customer=call.query.get("customer_id") or None,
                         meter=call.query.get("meter_id") or None, metadata=metadata_filters(call))
    return {
        "items": [{"date": day.date.isoformat(), "start": web.iso(day.start), "end": web.iso(day.end),
                   **_totals(day.usage)} for day in report.days],
        "totals": _totals(report.totals),
        "start": web.iso(start),
        "end": web.iso(end),
    }


ENDPOINTS = [
    Endpoint("GET", "/usage", retrieve_usage, "Usage day by day over [start, end) (UTC)",
             query={"start": "string", "end": "string", "customer_id": "string", "meter_id": "string",
                    "metadata_filters": "string", "account": "string"}),
]
