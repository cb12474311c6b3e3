"""Usage roll-ups: requests, tokens, provider cost, charges, fees and margin, per provider, model, key, customer,
meter or day."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from addons.services.errors import BadRequest
from addons.services.reports import USAGE_GROUPS, usage_by

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
          until: datetime | None = None) -> UsageReport:
    """Rows per group, the costliest first, over [since, until) in naive UTC."""
    if by not in USAGE_GROUPS:
        raise BadRequest("invalid_group", f"usage is grouped by one of {', '.join(GROUPS)}, not {by!r}")
    rows, totals = usage_by(by, customer=customer, since=since, until=until)
    return UsageReport(by, [UsageRow(**row) for row in rows], UsageTotals(**totals))
