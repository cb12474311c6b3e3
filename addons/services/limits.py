"""Limits on keys and customers as operators set and read them: checked on the way in, and shown with what
the current period has used and when it resets (the gateway enforces them: addons/billing/limits.py).

Changes are by column name (accounts.LIMIT_COLUMNS' values; a customer's are CUSTOMER_LIMITS), None clearing
one. A spend or request limit needs its period; clearing a limit clears its period too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from addons.core.limits import CYCLES, Limits, check_cycle, period_of
from addons.core.settings import load_settings
from addons.ledger import accounts
from addons.services.errors import BadRequest

KEY_LIMIT_CHANGES = tuple(accounts.LIMIT_COLUMNS.values())
CUSTOMER_LIMIT_CHANGES = accounts.CUSTOMER_LIMITS
_FIELD_OF = {column: field for field, column in accounts.LIMIT_COLUMNS.items()}


@dataclass(frozen=True, slots=True)
class PeriodUse:
    """One spend or request limit: the limit, its period, what the current period used and when it resets."""

    limit: int  # nanos for spend, a count for requests
    cycle: str  # addons.core.limits.CYCLES
    used: int
    period_start: datetime | None  # naive UTC; None for `total`
    resets_at: datetime | None  # naive UTC; None for `total`

    @property
    def remaining(self) -> int:
        return max(self.limit - self.used, 0)


@dataclass(frozen=True, slots=True)
class LimitsView:
    limits: Limits
    spend: PeriodUse | None
    requests: PeriodUse | None  # keys only


def _positive(name: str, value) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise BadRequest("invalid_limit", f"{name} must be a positive whole number, or null for no limit")


def apply_changes(current: Limits, changes: dict) -> Limits:
    """`current` with the column changes given, checked: BadRequest `invalid_limit` or `limit_period_missing`."""
    values = {_FIELD_OF[column]: value for column, value in changes.items()}
    for name in ("spend_cycle", "request_cycle"):
        if values.get(name) is not None:
            try:
                values[name] = check_cycle(values[name])
            except ValueError:
                raise BadRequest("invalid_limit", f"a limit's period is one of {', '.join(CYCLES)}") from None
    merged = replace(current, **values)
    for name in ("spend_limit_nanos", "request_limit", "rpm", "burst", "tpm"):
        _positive(name, getattr(merged, name))
    if merged.spend_limit_nanos is None:
        merged = replace(merged, spend_cycle=None)
    elif merged.spend_cycle is None:
        raise BadRequest("limit_period_missing", "a spend limit needs its period: day, week, month or total")
    if merged.request_limit is None:
        merged = replace(merged, request_cycle=None)
    elif merged.request_cycle is None:
        raise BadRequest("limit_period_missing", "a request limit needs its period: day, week, month or total")
    if merged.rpm is None:
        merged = replace(merged, burst=None)
    return merged


def columns(limits: Limits, customer: bool = False) -> dict:
    """The ApiKey (or Customer) columns storing `limits`."""
    stored = accounts.limit_columns(limits)
    return {name: stored[name] for name in CUSTOMER_LIMIT_CHANGES} if customer else stored


def _use(limit: int | None, cycle: str | None, zone: ZoneInfo, used_since) -> PeriodUse | None:
    if limit is None or cycle is None:
        return None
    period = period_of(cycle, datetime.now(UTC), zone)
    return PeriodUse(limit, cycle, used_since(period.start), period.start, period.reset)


def key_view(key_id: str, limits: Limits) -> LimitsView:
    """The key's limits with the current periods' use, read from the ledger (committed requests): one query per
    period, spend and requests together when both limits count in the same one. Requests are read before
    spend: a request committed between the two reads can only add to the later one, so whoever sees a request
    counted also sees its spend."""
    if limits.spend_limit_nanos is None and limits.request_limit is None:
        return LimitsView(limits, None, None)
    zone = load_settings().limits.zone
    use = functools.cache(lambda since: accounts.key_period_use(key_id, since))
    requests = _use(limits.request_limit, limits.request_cycle, zone, lambda since: use(since)[1])
    spend = _use(limits.spend_limit_nanos, limits.spend_cycle, zone, lambda since: use(since)[0])
    return LimitsView(limits, spend, requests)


def customer_view(account_id: str, customer_id: str, limits: Limits) -> LimitsView:
    if limits.spend_limit_nanos is None:
        return LimitsView(limits, None, None)
    spend = _use(limits.spend_limit_nanos, limits.spend_cycle, load_settings().limits.zone,
                 lambda since: accounts.customer_period_spend(account_id, customer_id, since))
    return LimitsView(limits, spend, None)

