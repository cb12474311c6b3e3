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

from addons.billing.holds import MERCHANT, PAYER, REQUEST, TOKENS, Bucket, BucketState, Rate, rates_of
from addons.billing.plan import BillingPlan
from addons.core.errors import PaymentRequired, TooManyRequests
from addons.core.limits import TO_LAVA, Limits, Period, PeriodClock, epoch, go_duration
from addons.ledger.accounts import CustomerRecord, customer_period_spend, key_period_use
from pricing.money import format_usd

KEY_SPEND, KEY_REQUESTS, CUSTOMER_SPEND = "key_spend", "key_requests", "customer_spend"
_HELD = {KEY_REQUESTS: REQUEST, KEY_SPEND: MERCHANT, CUSTOMER_SPEND: PAYER}  # what a pot holds of a request
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


@dataclass(slots=True)
class OwnerLimits:
    """A key's or customer's limits as requests take them: its pots in their current periods and its buckets,
    made once per owner, limits and period (not per request), and whether this process confirmed the pots."""

    limits: Limits
    valid_from: float  # epoch seconds: the latest start of its pots' periods
    valid_until: float  # the earliest reset
    pots: tuple[LimitPot, ...]
    limit_of: dict[str, int]  # pot name -> its limit, as the hold call takes them
    holds: tuple[tuple[str, int], ...]  # its pots as a hold takes them: (name, REQUEST | MERCHANT | PAYER)
    buckets: tuple[Bucket, ...]  # requests per minute (cost 1), then tokens per minute (cost TOKENS)
    rates: tuple[Rate, ...]  # the buckets as the in-process book takes from them
    token_buckets: tuple[Bucket, ...]  # those of cost TOKENS: trued up to the request's usage
    heads: tuple[RateHead, ...]  # the buckets' x-ratelimit-* fields, less the figures of the moment
    spends: bool  # a spend limit among its pots
    confirmed: bool = False

    def serves(self, limits: Limits, now: float) -> bool:
        """Whether these are still the owner's limits (the cache's record of them, or an equal one) and periods."""
        if self.valid_from <= now < self.valid_until and (self.limits is limits or self.limits == limits):
            self.limits = limits  # an equal record the cache made anew: found by identity from now on
            return True
        return False


class RequestLimits:
    """The limit pots and rate buckets of requests, and the errors when one is reached. One per cashier: an
    owner's `confirmed` is that cashier's."""

    def __init__(self, zone: ZoneInfo, clock: Callable[[], float] = time.time):
        self.periods = PeriodClock(zone)
        self.clock = clock
        self._keys: dict[str, OwnerLimits] = {}  # key id -> its current limits
        self._customers: dict[str, OwnerLimits] = {}  # customer's wallet id -> its current limits

    def owners(self, plan: BillingPlan) -> tuple[OwnerLimits, ...]:
        """The limits `plan`'s request counts against: the key's, then the customer's."""
        now = self.clock()
        key, customer = plan.key, plan.customer
        found: tuple[OwnerLimits, ...] = ()
        if key.limits.any and key.key_id is not None:
            known = self._keys.get(key.key_id)
            if known is None or not (known.limits is key.limits and known.valid_from <= now < known.valid_until
                                     or known.serves(key.limits, now)):
                known = self._keys[key.key_id] = self._owner(
                    f"key:{key.key_id}", key.limits, self._key_pots(key.key_id, key.limits, now), self._keys)
            found = (known,)
        if customer is not None and customer.limits.any:
            known = self._customers.get(customer.wallet_id)
            if known is None or not known.serves(customer.limits, now):
                known = self._customers[customer.wallet_id] = self._owner(
                    f"cus:{customer.wallet_id}", customer.limits,
                    self._customer_pots(key.account_id, customer, now), self._customers)
            found += (known,)
        return found

    def forget(self) -> None:
        """Every owner is made (and its pots confirmed) afresh, as in a new process."""
        self._keys.clear()
        self._customers.clear()

    @staticmethod
    def _owner(name: str, limits: Limits, pots: list[LimitPot], table: dict) -> OwnerLimits:
        buckets = []
        if limits.rpm is not None:
            buckets.append(Bucket(f"rpm:{name}", limits.rpm, limits.burst or limits.rpm, 1))
        if limits.tpm is not None:
            buckets.append(Bucket(f"tpm:{name}", limits.tpm, limits.tpm, TOKENS))
        starts = [epoch(pot.period.start) for pot in pots if pot.period.start is not None]
        ends = [epoch(pot.period.reset) for pot in pots if pot.period.reset is not None]
        if len(table) > CACHED_OWNERS:
            table.clear()
        return OwnerLimits(limits, max(starts, default=-math.inf), min(ends, default=math.inf), tuple(pots),
                           {pot.name: pot.limit for pot in pots}, tuple((pot.name, _HELD[pot.what]) for pot in pots),
                           tuple(buckets), rates_of(buckets),
                           tuple(bucket for bucket in buckets if bucket.cost == TOKENS),
                           tuple(_rate_head(bucket) for bucket in buckets),
                           any(pot.what != KEY_REQUESTS for pot in pots))

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
        if customer.limits.spend_limit_nanos is None:
            return []
        period = self.periods.period(cycle, now)
        return [_period_limit(f"cus:{customer.wallet_id}", CUSTOMER_SPEND, customer.limits.spend_limit_nanos, cycle,
                              period, lambda: customer_period_spend(account_id, customer.customer_id, period.start))]

    @staticmethod
    def too_large(bucket: Bucket, reserved: int) -> TooManyRequests:
        """A request whose token reservation no minute could ever let through."""
        return TooManyRequests(
            "rate_limited", f"this request may use up to {reserved} tokens (its input and max_tokens), "
                            f"more than the {bucket.per_minute} tokens per minute allowed; lower max_tokens",
            details={"limit": bucket.per_minute, "requested": reserved})

    def reached(self, pot: LimitPot, available: int) -> PaymentRequired | TooManyRequests:
        """402 spend_limit_reached or 429 request_limit_reached: the limit, what was used (requests in flight
        included), and when the period resets."""
        used = max(pot.limit - available, 0)
        reset = pot.period.reset.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z") if pot.period.reset else None
        whose = "customer" if pot.what == CUSTOMER_SPEND else "key"
        when = f"it resets at {reset}" if reset else "it never resets (period total)"
        per = "in total" if pot.cycle == "total" else f"per {pot.cycle}"  # "50 per day", "50 in total"
        details = {"limit_period": TO_LAVA[pot.cycle], "resets_at": reset}
        if pot.what == KEY_REQUESTS:
            return TooManyRequests(
                "request_limit_reached", f"this key's request limit of {pot.limit} {per} is reached; {when}",
                details={"limit": pot.limit, "used": used, **details},
                headers=_retry_after(pot.period, self.clock()))
        return PaymentRequired(
            "spend_limit_reached",
            f"this {whose}'s spend limit of {format_usd(pot.limit)} USD {per} is reached "
            f"({format_usd(used)} USD used, requests in flight included); {when}",
            details={"limit": format_usd(pot.limit), "used": format_usd(used), **details})


def _used(read, index: int, key_id: str, period: Period):
    return lambda: read(key_id, period.start)[index]


def _retry_after(period: Period, now: float) -> dict[str, str] | None:
    if period.reset is None:
        return None
    return {"retry-after": str(max(int(epoch(period.reset) - now) + 1, 1))}


RATE_HEADER_PREFIX = b"x-ratelimit-"
RateHead = tuple[tuple[bytes, bytes], bytes, bytes]  # (the limit's field, the remaining's name, the reset's name)


def _rate_head(bucket: Bucket) -> RateHead:
    kind = b"requests" if bucket.name.startswith("rpm:") else b"tokens"
    return ((b"x-ratelimit-limit-" + kind, b"%d" % bucket.per_minute), b"x-ratelimit-remaining-" + kind,
            b"x-ratelimit-reset-" + kind)


def merged_heads(heads: tuple[RateHead | None, ...], more: tuple[RateHead, ...]) -> tuple[RateHead | None, ...]:
    """`more` after `heads`, where a kind `heads` has already is None: the first bucket of a kind answers."""
    limits = {head[0][0] for head in heads if head is not None}
    return heads + tuple(None if head[0][0] in limits else head for head in more)


_MS = tuple(b"%dms" % ms for ms in range(1000))  # a reset under a second, as go_duration writes it: formatted once


def rate_headers(heads: tuple[RateHead | None, ...], states: list[BucketState]) -> list[tuple[bytes, bytes]]:
    """OpenAI's x-ratelimit-* headers (as raw header fields): each head's, with its bucket's state."""
    fields: list[tuple[bytes, bytes]] = []
    for head, (remaining, reset_ms) in zip(heads, states):  # a state per head: its bucket's (every limited request)
        if head is not None:
            fields += (head[0], (head[1], b"%d" % remaining),
                       (head[2], _MS[reset_ms] if reset_ms < 1000 else go_duration(reset_ms).encode()))
    return fields


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
