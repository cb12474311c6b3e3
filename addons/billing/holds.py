"""Holds: money set aside for requests in flight, so concurrent requests cannot overspend.

A pot is anything with a spending limit: a wallet (balance plus overdraft), a signed token's
spend cap, or a key's or customer's spend or request limit in its current period. Its confirmed figure comes from the ledger, either read or reported by the writer
right after it committed a charge; open holds are subtracted from it. Everything here runs on
mitmproxy's event loop, so checking every pot of a request and reserving in all of them happens
with no await in between: atomic within the process. A hold lives until the writer has committed
the request's charge (its release comes with the new balance), or until it expires.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol


class InsufficientFunds(Exception):
    def __init__(self, pot: str, available: int):
        super().__init__(pot)
        self.pot = pot
        self.available = available


TOKENS = -1  # a bucket's cost: the request's token reservation (its input estimated, and max_tokens)
REQUEST, MERCHANT, PAYER = 0, 1, 2  # what a limit pot holds of a request: 1, the merchant's worst case, the payer's


class Bucket(NamedTuple):
    """A rate limit's token bucket: `per_minute` flows back in a minute, up to `capacity`; a request takes `cost`
    (1, or TOKENS)."""

    name: str
    per_minute: int
    capacity: int
    cost: int


# A bucket as HoldBook takes from it: (name, ms a unit takes to flow back, its capacity in those ms, capacity, cost)
Rate = tuple[str, float, float, int, int]


def rates_of(buckets: Sequence[Bucket]) -> tuple[Rate, ...]:
    """The buckets' constants, worked out once per owner rather than on every request that takes from them."""
    return tuple((name, 60000 / per_minute, capacity * (60000 / per_minute), capacity, cost)
                 for name, per_minute, capacity, cost in buckets)


class Limited(Protocol):
    """A key's or customer's limits as a hold takes them (addons/billing/limits.py OwnerLimits): made once per
    owner and period, so a request only names its owners."""

    holds: tuple[tuple[str, int], ...]  # (limit pot, REQUEST | MERCHANT | PAYER)
    buckets: tuple[Bucket, ...]  # its rate limits: a cost of 1 (requests) or TOKENS
    rates: tuple[Rate, ...]  # the same buckets as HoldBook takes from them (rates_of)


Sizes = tuple[int, int, int | None, int]  # a request's REQUEST, MERCHANT and PAYER holds, and its RESERVED tokens
RESERVED = 3  # sizes[RESERVED]: what a bucket of cost TOKENS takes
NO_SIZES: Sizes = (1, 0, None, 0)


def held_limits(owners: Sequence[Limited], sizes: Sizes) -> list[tuple[str, int]]:
    """The limit pots `owners` hold of a request, and how much: a size of None holds nothing (a customer's spend
    limit where the customer is not billed). HoldBook.hold writes the same rule out, and the Redis hold script
    applies it (addons/billing/hold_stores.py: a size of None is sent as -1)."""
    return [(pot, sizes[kind]) for owner in owners for pot, kind in owner.holds if sizes[kind] is not None]


class BucketState(NamedTuple):
    """After a request took its share: what is left, and in how many ms the bucket is full again."""

    remaining: int
    reset_ms: int


class WalletStale(Exception):
    """The merchant's wallet was confirmed too long ago to admit against: read it from the ledger again."""


class WalletEmpty(Exception):
    def __init__(self, available: int):
        super().__init__(available)
        self.available = available


class RateLimited(Exception):
    def __init__(self, bucket: str, retry_after_ms: int, remaining: int):
        super().__init__(bucket)
        self.bucket = bucket
        self.retry_after_ms = retry_after_ms
        self.remaining = remaining


@dataclass(slots=True)
class Pot:
    confirmed: int
    version: int
    confirmed_at: float
    limit: int | None = None  # a limit pot: the limit its confirmed figure was counted down from
    held: int = 0  # the sum of the holds in place on it, kept as they change: admission reads it, never sums


# What one request holds: until when (its latest hold's time is up), and on which pots how much. A plain tuple, made
# for every request that holds anything: a class's __init__ would cost a Python call each time.
RequestHolds = tuple[float, list[tuple[Pot, int]]]
EXPIRES, AMOUNTS = 0, 1


class HoldBook:
    def __init__(self, hold_ttl: float, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self._hold_ttl = hold_ttl
        self._clock = clock
        self._wall = wall  # epoch seconds, as pots' expiries are given
        self._pot_expiries: list[tuple[float, str]] = []  # heap of (expires_at, pot)
        self._pots: dict[str, Pot] = {}
        # every hold lasts hold_ttl from when it was taken, so in the order held (a hold renewed moves to the end)
        # requests' holds also run out in order: the first to expire is the first here
        self._requests: dict[str, RequestHolds] = {}
        self._next_expiry = math.inf  # at most the first request's expiry
        self._spent: dict[str, int] = {}  # pot -> spent on it while not confirmed here (confirm_new's generation)
        # bucket -> when it is full again, in ms (a bucket's level is kept as that time: its capacity less the units
        # still to flow back; one float per bucket, taken from by moving it on)
        self._buckets: dict[str, float] = {}

    def is_fresh(self, pot: str, max_age: float) -> bool:
        known = self._pots.get(pot)
        return known is not None and self._clock() - known.confirmed_at < max_age

    def confirm(self, pot: str, amount: int, version: int) -> None:
        """A ledger figure; an older version than the one held is ignored (reads race commits)."""
        known = self._pots.get(pot)
        if known is None:
            self._pots[pot] = Pot(amount, version, self._clock())
        elif version >= known.version:
            known.confirmed, known.version, known.confirmed_at = amount, version, self._clock()

    def settle(self, confirms: Sequence[tuple[str, int, int]] = (), spends: Sequence[tuple[str, int]] = (),
               request_ids: Sequence[str] = ()) -> list[int]:
        """A ledger commit: the wallets' new figures (pot, amount, version), the charges committed on pots whose
        figure has no version (a token's or a limit's spend), then the requests' holds released; the spends land
        first, or the room would show twice. Returns the confirmed pots' available after."""
        for pot, amount, version in confirms:
            self.confirm(pot, amount, version)
        spent, pots = self._spent, self._pots
        for pot, amount in spends:
            if (known := pots.get(pot)) is not None:
                known.confirmed -= amount
            else:  # not confirmed here (yet): confirm_new takes off what lands while its ledger read runs
                spent[pot] = spent.get(pot, 0) + amount
        requests = self._requests
        for request_id in request_ids:  # release, written out: once per committed request with a hold
            if (held := requests.pop(request_id, None)) is not None:
                for known, amount in held[AMOUNTS]:
                    known.held -= amount
        return [self.available(pot) for pot, _, _ in confirms]

    def generation(self, pot: str) -> int:
        """How much has been spent on the pot while it was not confirmed here; read before the ledger, handed to
        confirm_new."""
        return self._spent.get(pot, 0)

    def confirm_new(self, pot: str, amount: int, generation: int, limit: int | None = None,
                    expires_at: float | None = None) -> None:
        """A versionless pot's first figure, read from the ledger after generation(pot) was taken: the spends
        since then may have committed before the read, so they are taken off (never too much room, at worst
        too little by what committed during the read). A pot already confirmed stays as it is. `expires_at`
        (epoch seconds): when the pot is forgotten, a period's limit once its period and holds are over."""
        if pot not in self._pots:
            self._pots[pot] = Pot(amount - (self._spent.pop(pot, 0) - generation), 0, self._clock(), limit=limit)
            if expires_at is not None:
                heapq.heappush(self._pot_expiries, (expires_at, pot))
            self._forget_expired_pots()

    def _forget_expired_pots(self) -> None:
        """Past periods' pots, dropped as new ones come (one per owner and period would otherwise pile up)."""
        now = self._wall()
        while self._pot_expiries and self._pot_expiries[0][0] <= now:
            _, pot = heapq.heappop(self._pot_expiries)
            self._pots.pop(pot, None)
            self._spent.pop(pot, None)

    def relimit(self, pot: str, limit: int) -> None:
        """The operator changed a limit pot's limit: its room moves by the difference, holds and spends kept."""
        known = self._pots[pot]
        if known.limit is not None and known.limit != limit:
            known.confirmed += limit - known.limit
            known.limit = limit

    def true_up(self, bucket: Bucket, delta: int) -> None:
        """The bucket gives `delta` more (less, if negative) than the request took at admission: tokens given
        back land as of the bucket's own time (never more than full, as refilled till now), more taken from it
        as it stands now."""
        at = self._clock() * 1000
        full = self._buckets.get(bucket.name, at)
        if delta > 0 and full < at:
            full = at
        self._buckets[bucket.name] = full + delta * (60000 / bucket.per_minute)  # ms a unit, as rates_of has it

    def fresh_available(self, pot: str, max_age: float) -> int | None:
        """What the pot has available, or None if it was confirmed too long ago (or never)."""
        known = self._pots.get(pot)
        now = self._clock()
        if known is None or now - known.confirmed_at >= max_age:
            return None
        if self._next_expiry <= now:
            self._expire(now)
        return known.confirmed - known.held

    def available(self, pot: str) -> int:
        known = self._pots[pot]
        self._expire(self._clock())
        return known.confirmed - known.held

    def _expire(self, now: float) -> None:
        """Release the requests whose holds' time is up (a request refused or lost after its admission)."""
        expired = []
        self._next_expiry = math.inf
        for request_id, held in self._requests.items():
            if held[EXPIRES] > now:
                self._next_expiry = held[EXPIRES]
                break
            expired.append(request_id)
        for request_id in expired:
            self.release(request_id)

    def _record(self, request_id: str, amounts: list[tuple[Pot, int]], expires: float) -> None:
        """The request holds `amounts` (already added to their pots) until `expires`, besides what it held."""
        held = self._requests.pop(request_id, None)
        # at the end: the latest to expire
        self._requests[request_id] = (expires, amounts if held is None else held[AMOUNTS] + amounts)
        if expires < self._next_expiry:
            self._next_expiry = expires

    def _untake(self, owners: Sequence[Limited], sizes: Sizes, refused: str) -> None:
        """`hold` takes from each bucket as it goes: those before the bucket that `refused` get it back."""
        for owner in owners:
            for name, each, _, _, cost in owner.rates:
                if name == refused:
                    return
                self._buckets[name] -= (sizes[RESERVED] if cost < 0 else cost) * each

    def hold(self, request_id: str, amounts: dict[str, int], owners: Sequence[Limited] = (),
             sizes: Sizes = NO_SIZES, limits: dict[str, int] | None = None,
             wallet: tuple[str, float, bool] | None = None) -> list[BucketState]:
        """Reserve in every pot and take from every bucket, or do neither; InsufficientFunds names the first
        pot short, RateLimited the first bucket. KeyError: a pot never confirmed. `amounts`: pot -> amount;
        `owners`: the limits the request counts against, their pots held and buckets taken by `sizes` (what a
        REQUEST, MERCHANT and PAYER pot holds, None: not held; then the TOKENS a bucket takes). `limits`: the
        limit pots' limits as they stand now (relimit). `wallet`: (the merchant's wallet, how old its figure may
        be, whether it must be positive) checked first: WalletStale, WalletEmpty. (Written out, one clock read:
        this runs for every request with a balance, cap or limit to hold against.)"""
        now = self._clock()
        pots = self._pots
        if self._next_expiry <= now:
            self._expire(now)
        if wallet is not None:
            name, max_age, positive = wallet
            known = pots.get(name)
            if known is None or now - known.confirmed_at >= max_age:
                raise WalletStale(name)
            if positive and (available := known.confirmed - known.held) <= 0:
                raise WalletEmpty(available)
        if limits:
            for name, limit in limits.items():
                known = pots[name]
                if known.limit is not None and known.limit != limit:
                    self.relimit(name, limit)
        held = []  # each pot's hold is in place as soon as it is checked: given back if anything after fails
        states = []
        try:
            for name, amount in amounts.items():
                known = pots[name]
                if amount > (available := known.confirmed - known.held):
                    raise InsufficientFunds(name, max(available, 0))
                known.held += amount
                held.append((known, amount))
            if owners:  # every pot before any bucket, as in Redis
                for owner in owners:
                    for name, kind in owner.holds:  # held_limits, written out: this runs for every limited request
                        if (amount := sizes[kind]) is not None:
                            known = pots[name]
                            if amount > (available := known.confirmed - known.held):
                                raise InsufficientFunds(name, max(available, 0))
                            known.held += amount
                            held.append((known, amount))
                at = now * 1000
                fulls = self._buckets
                reserved = sizes[RESERVED]
                for owner in owners:
                    for name, each, room, capacity, cost in owner.rates:
                        if cost < 0:  # TOKENS
                            cost = reserved
                        if (full := fulls.get(name, at)) < at:  # when it is full again; full (or never taken): now
                            full = at
                        full += cost * each
                        if (lag := full - at) > room:  # more than it holds
                            self._untake(owners, sizes, name)
                            raise RateLimited(name, math.ceil(lag - room),
                                              max(math.floor(capacity + cost - lag / each), 0))
                        fulls[name] = full
                        states.append((int(capacity - lag / each), math.ceil(lag)))
        except Exception:
            for known, amount in held:
                known.held -= amount
            raise
        if held:
            expires = now + self._hold_ttl
            if request_id in self._requests:  # held before (a session's next response): its holds added, renewed
                self._record(request_id, held, expires)
            else:  # _record, written out
                self._requests[request_id] = (expires, held)
                if expires < self._next_expiry:
                    self._next_expiry = expires
        return states  # type: ignore[return-value]  # (remaining, reset_ms): BucketState's fields

    def add(self, request_id: str, pot: str, amount: int) -> None:
        """Reserve without checking: a charge already incurred, waiting for the writer."""
        known = self._pots.get(pot)
        if known is None or amount <= 0:
            return
        known.held += amount
        self._record(request_id, [(known, amount)], self._clock() + self._hold_ttl)

    def release(self, request_id: str) -> None:
        self.settle(request_ids=(request_id,))
