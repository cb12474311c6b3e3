"""A request's limits as the holds it must take: spend and request limits are pots, rate limits are buckets.

A key's (or customer's) spend limit in the current period is a pot confirmed once from the ledger (the
limit less what the period's requests were charged) and kept up to date from then on by the commits:
the request's worst case is held against it like a balance, so concurrent requests, on every worker
and instance sharing Redis, can never spend past it. A request limit is the same pot counting
requests, each holding 1. Requests and tokens per minute are token buckets, taken from in the same
atomic call as the holds (addons/billing/hold_stores.py). A pot's name carries its
cycle and period, so a new period starts a new pot, confirmed afresh; a changed limit moves the pot's room
by the difference, in the same atomic call (holds in flight and spends so far stay counted).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from zoneinfo import ZoneInfo

from addons.billing.holds import Bucket, BucketState
from addons.billing.plan import BillingPlan
from addons.core.errors import PaymentRequired, TooManyRequests
from addons.core.limits import TO_LAVA, Limits, Period, PeriodClock, epoch, go_duration
from addons.ledger.accounts import CustomerRecord, customer_period_spend, key_period_use
from pricing.money import format_usd

KEY_SPEND, KEY_REQUESTS, CUSTOMER_SPEND = "key_spend", "key_requests", "customer_spend"
CACHED_OWNERS = 10_000  # keys and customers whose current pots are kept


@dataclass(frozen=True, slots=True)
class LimitPot:
    """One limit a request holds against: what it limits, in which period, and how its use is read."""

    name: str
    what: str  # KEY_SPEND | KEY_REQUESTS | CUSTOMER_SPEND
    limit: int
    cycle: str
    period: Period
    used: Callable[[], int]  # what the period has used so far, by the ledger (run on the cache's thread pool)


def _period_limit(owner: str, what: str, limit: int, cycle: str, period: Period, used) -> LimitPot:
    return LimitPot(f"lim:{owner}:{what}:{cycle}:{period.id}", what, limit, cycle, period, used)


class RequestLimits:
    """The limit pots and rate buckets of requests, and the errors when one is reached."""

    def __init__(self, zone: ZoneInfo, clock: Callable[[], float] = time.time):
        self.periods = PeriodClock(zone)
        self.clock = clock
        # (owner, its limits) -> (valid from, valid until, its pots): built once per period, not per request
        self._pots: dict[tuple, tuple[float, float, list[LimitPot]]] = {}
        self._buckets: dict[tuple[str, Limits], tuple[Bucket | None, Bucket | None]] = {}  # (owner, limits) ->

    def pots(self, plan: BillingPlan) -> list[LimitPot]:
        """The spend and request limits `plan`'s request counts against, in their current periods."""
        now = self.clock()
        key, customer = plan.key, plan.customer
        found: list[LimitPot] = []
        if key.key_id is not None and (key.limits.spend_limit_nanos is not None or key.limits.request_limit is not None):
            found += self._cached((key.key_id, key.limits), now, lambda: self._key_pots(key.key_id, key.limits, now))
        if customer is not None and plan.bill_customer and customer.limits.spend_limit_nanos is not None:
            found += self._cached((customer.wallet_id, customer.limits), now,
                                  lambda: self._customer_pots(plan.key.account_id, customer, now))
        return found

    def _cached(self, owner: tuple, now: float, make: Callable[[], list[LimitPot]]) -> list[LimitPot]:
        known = self._pots.get(owner)
        if known is not None and known[0] <= now < known[1]:
            return known[2]
        pots = make()
        starts = [epoch(pot.period.start) for pot in pots if pot.period.start is not None]
        ends = [epoch(pot.period.reset) for pot in pots if pot.period.reset is not None]
        if len(self._pots) > CACHED_OWNERS:
            self._pots.clear()
        self._pots[owner] = (max(starts, default=-math.inf), min(ends, default=math.inf), pots)
        return pots

    def _key_pots(self, key_id: str, limits: Limits, now: float) -> list[LimitPot]:
        pots = []
        if limits.spend_limit_nanos is not None:
            period = self.periods.period(limits.spend_cycle, now)
            pots.append(_period_limit(f"key:{key_id}", KEY_SPEND, limits.spend_limit_nanos, limits.spend_cycle,
                                      period, _used(key_period_use, 0, key_id, period)))
        if limits.request_limit is not None:
            period = self.periods.period(limits.request_cycle, now)
            pots.append(_period_limit(f"key:{key_id}", KEY_REQUESTS, limits.request_limit, limits.request_cycle,
                                      period, _used(key_period_use, 1, key_id, period)))
        return pots

    def _customer_pots(self, account_id: str, customer: CustomerRecord, now: float) -> list[LimitPot]:
        cycle = customer.limits.spend_cycle
        period = self.periods.period(cycle, now)
        return [_period_limit(f"cus:{customer.wallet_id}", CUSTOMER_SPEND, customer.limits.spend_limit_nanos, cycle,
                              period, lambda: customer_period_spend(account_id, customer.customer_id, period.start))]

    def buckets(self, plan: BillingPlan, tokens: Callable[[], int]) -> list[Bucket]:
        """Requests and tokens per minute of the key and the customer; `tokens`: the request's reservation."""
        found = []
        for owner in _rate_limited(plan):
            rpm, tpm = self._buckets.get(owner) or self._remember_buckets(owner)
            if rpm is not None:
                found.append(rpm)
            if tpm is not None:
                found.append(tpm._replace(cost=tokens()))
        return found

    def _remember_buckets(self, owner: tuple[str, Limits]) -> tuple[Bucket | None, Bucket | None]:
        """An owner's buckets (the tokens one without its cost), made once per owner and limits."""
        name, limits = owner
        rpm = None if limits.rpm is None else Bucket(f"rpm:{name}", limits.rpm, limits.burst or limits.rpm, 1)
        tpm = None if limits.tpm is None else Bucket(f"tpm:{name}", limits.tpm, limits.tpm, 0)
        if len(self._buckets) > CACHED_OWNERS:
            self._buckets.clear()
        self._buckets[owner] = rpm, tpm
        return rpm, tpm

    @staticmethod
    def too_large(buckets: list[Bucket]) -> TooManyRequests | None:
        """A request whose token reservation no minute could ever let through."""
        for bucket in buckets:
            if bucket.name.startswith("tpm:") and bucket.cost > bucket.capacity:
                return TooManyRequests(
                    "rate_limited", f"this request may use up to {bucket.cost} tokens (its input and max_tokens), "
                                    f"more than the {bucket.per_minute} tokens per minute allowed; lower max_tokens",
                    details={"limit": bucket.per_minute, "requested": bucket.cost})
        return None

    def reached(self, pot: LimitPot, available: int) -> PaymentRequired | TooManyRequests:
        """402 spend_limit_reached or 429 request_limit_reached: the limit, what was used (requests in flight
        included), and when the period resets."""
        used = max(pot.limit - available, 0)
        reset = pot.period.reset.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z") if pot.period.reset else None
        whose = "customer" if pot.what == CUSTOMER_SPEND else "key"
        when = f"it resets at {reset}" if reset else "it never resets (period total)"
        details = {"limit_period": TO_LAVA[pot.cycle], "resets_at": reset}
        if pot.what == KEY_REQUESTS:
            return TooManyRequests(
                "request_limit_reached", f"this key's request limit of {pot.limit} per {pot.cycle} is reached; {when}",
                details={"limit": pot.limit, "used": used, **details},
                headers=_retry_after(pot.period, self.clock()))
        return PaymentRequired(
            "spend_limit_reached",
            f"this {whose}'s spend limit of {format_usd(pot.limit)} USD per {pot.cycle} is reached "
            f"({format_usd(used)} USD used, requests in flight included); {when}",
            details={"limit": format_usd(pot.limit), "used": format_usd(used), **details})


def _used(read, index: int, key_id: str, period: Period):
    return lambda: read(key_id, period.start)[index]


def _rate_limited(plan: BillingPlan) -> list[tuple[str, Limits]]:
    owners = []
    key, customer = plan.key, plan.customer
    if key.key_id is not None and (key.limits.rpm is not None or key.limits.tpm is not None):
        owners.append((f"key:{key.key_id}", key.limits))
    if customer is not None and (customer.limits.rpm is not None or customer.limits.tpm is not None):
        owners.append((f"cus:{customer.wallet_id}", customer.limits))
    return owners


def _retry_after(period: Period, now: float) -> dict[str, str] | None:
    if period.reset is None:
        return None
    return {"retry-after": str(max(int(epoch(period.reset) - now) + 1, 1))}


_HEADER_NAMES = {kind: tuple(f"x-ratelimit-{what}-{kind}".encode() for what in ("limit", "remaining", "reset"))
                 for kind in ("requests", "tokens")}
RATE_HEADER_PREFIX = b"x-ratelimit-"


def rate_headers(buckets: list[Bucket], states: list[BucketState]) -> tuple[tuple[bytes, bytes], ...]:
    """OpenAI's x-ratelimit-* headers (as raw header fields) from the first requests bucket and the first tokens
    bucket."""
    fields: list[tuple[bytes, bytes]] = []
    seen = set()
    for bucket, (remaining, reset_ms) in zip(buckets, states, strict=False):
        kind = "requests" if bucket.name[0] == "r" else "tokens"  # rpm:... or tpm:...
        if kind not in seen:
            seen.add(kind)
            limit, left, reset = _HEADER_NAMES[kind]
            fields += ((limit, b"%d" % bucket.per_minute), (left, b"%d" % remaining),
                       (reset, go_duration(reset_ms).encode()))
    return tuple(fields)


def rate_limited(bucket: Bucket, retry_after_ms: int, remaining: int) -> TooManyRequests:
    """429 rate_limited with retry-after and the bucket's x-ratelimit-* headers."""
    kind = "requests" if bucket.name.startswith("rpm:") else "tokens"
    whose = "customer" if bucket.name.split(":")[1] == "cus" else "key"
    seconds = max(-(-retry_after_ms // 1000), 1)
    headers = {"retry-after": str(seconds), f"x-ratelimit-limit-{kind}": str(bucket.per_minute),
               f"x-ratelimit-remaining-{kind}": str(remaining),
               f"x-ratelimit-reset-{kind}": go_duration(retry_after_ms)}
    return TooManyRequests(
        "rate_limited", f"this {whose}'s limit of {bucket.per_minute} {kind} per minute is reached; "
                        f"retry in {seconds} s",
        details={"limit": bucket.per_minute, "limit_type": kind}, headers=headers)
