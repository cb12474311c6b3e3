"""Where holds live: in this process (one instance), or in Redis (several instances or machines).

Both expose the same coroutine interface to the cashier. In Redis every operation is one Lua
script, so checking every pot of a request and reserving in all of them is atomic across all
instances, and settling is idempotent per request id (a settled request leaves a tombstone, so a
late `add` for it is ignored). PostgreSQL stays the source of truth: a pot missing from Redis (a
flush, a restart) is simply not fresh, and the cashier confirms it again from the ledger.
Keys are built inside the scripts from a prefix, which suits a single Redis node, not Cluster.

FailoverHolds puts the in-process book behind Redis for when Redis is away: the instance goes on
admitting against its own holds (and balances confirmed from the ledger) and returns to Redis when
it answers. Redis only ever holds reservations, never money, so an outage can loosen the limit
across instances for its duration but corrupts nothing: the ledger decides every charge.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence

from mitmproxy.utils.asyncio_utils import create_task
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from addons.billing.holds import (
    NO_SIZES,
    Bucket,
    BucketState,
    HoldBook,
    InsufficientFunds,
    Limited,
    RateLimited,
    Sizes,
    WalletEmpty,
    WalletStale,
)
from addons.billing.redis_wire import Packed, RedisWire, Script, packed

log = logging.getLogger(__name__)
REDIS_AWAY = (RedisConnectionError, RedisTimeoutError)


class LocalHolds:
    """The in-process HoldBook behind the async interface; nothing in it awaits, so it stays atomic."""

    def __init__(self, hold_ttl: float):
        self.book = HoldBook(hold_ttl)

    async def is_fresh(self, pot: str, max_age: float) -> bool:
        return self.book.is_fresh(pot, max_age)

    async def confirm(self, pot: str, amount: int, version: int) -> None:
        self.book.confirm(pot, amount, version)

    async def generation(self, pot: str) -> int:
        return self.book.generation(pot)

    async def confirm_new(self, pot: str, amount: int, generation: int, expires_at: float | None = None,
                          limit: int | None = None) -> None:
        self.book.confirm_new(pot, amount, generation, limit, expires_at)

    async def available(self, pot: str) -> int:
        return self.book.available(pot)

    async def fresh_available(self, pot: str, max_age: float) -> int | None:
        return self.book.fresh_available(pot, max_age)

    async def hold(self, request_id: str, amounts: dict[str, int], owners: Sequence[Limited] = (),
                   sizes: Sizes = NO_SIZES, limits: dict[str, int] | None = None,
                   wallet: tuple[str, float, bool] | None = None) -> list[BucketState]:
        return self.book.hold(request_id, amounts, owners, sizes, limits, wallet)

    async def true_up(self, *changes: tuple[Bucket, int]) -> None:
        for bucket, delta in changes:
            self.book.true_up(bucket, delta)

    async def add(self, *charges: tuple[str, str, int]) -> None:
        for request_id, pot, amount in charges:
            self.book.add(request_id, pot, amount)

    async def release(self, *request_ids: str, spends: Sequence[tuple[str, int]] = ()) -> None:
        """Committed requests: their versionless pots' spends (token caps, limits) first, then their holds go."""
        self.book.settle((), spends, request_ids)

    async def settle(self, confirms: Sequence[tuple[str, int, int]], spends: Sequence[tuple[str, int]] = (),
                     request_ids: Sequence[str] = ()) -> list[int]:
        """A ledger commit (RedisHolds.settle): the confirmed pots' available after."""
        return self.book.settle(confirms, spends, request_ids)

    async def close(self) -> None:
        pass


_POTS = """
local function k(kind, id) return ARGV[1] .. ':' .. kind .. ':' .. id end
local function drop(pot, id)
  local amount = redis.call('HGET', k('hold', pot), id)
  if amount then
    redis.call('HDEL', k('hold', pot), id)
    redis.call('HINCRBY', k('pot', pot), 'h', -tonumber(amount))
  end
  redis.call('ZREM', k('exp', pot), id)
end
local function expire(pot, now)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', k('exp', pot), '-inf', now)) do drop(pot, id) end
end
local function put(pot, rid, delta, now, ttl)  -- the request's hold in the pot grows by delta (then: kept)
  redis.call('HINCRBY', k('hold', pot), rid, delta)
  redis.call('HINCRBY', k('pot', pot), 'h', delta)
  redis.call('ZADD', k('exp', pot), now + ttl, rid)
end
local function kept(rid, ttl, pots)  -- the request's set of pots, which outlives its holds
  redis.call('SADD', k('req', rid), unpack(pots))
  redis.call('PEXPIRE', k('req', rid), ttl + 60000)
end
local function refill(name, now, rate, cap)  -- a rate limit's bucket level at now; never seen: full
  local b = redis.call('HMGET', k('rate', name), 'l', 't')
  if not b[1] then return cap end
  return math.min(cap, tonumber(b[1]) + math.max(now - tonumber(b[2]), 0) * rate)
end
local function store(name, now, rate, cap, level)
  redis.call('HSET', k('rate', name), 'l', tostring(level), 't', now)
  redis.call('PEXPIRE', k('rate', name), math.ceil(cap / rate) + 60000)
end
local function available(pot, now)
  expire(pot, now)
  local figures = redis.call('HMGET', k('pot', pot), 'c', 'h')
  if not figures[1] then return false end
  return tonumber(figures[1]) - tonumber(figures[2] or '0')
end
local function fresh(pot, now, max_age)  -- as available, or false when confirmed max_age ms ago or more (-1: any)
  expire(pot, now)
  local at, confirmed, held = unpack(redis.call('HMGET', k('pot', pot), 't', 'c', 'h'))
  if (not at) or (not confirmed) or (max_age >= 0 and now - tonumber(at) >= max_age) then return false end
  return tonumber(confirmed) - tonumber(held or '0')
end
"""

# ARGV: prefix, now_ms, ttl_ms, request_id; the request's sizes: what a REQUEST, a MERCHANT and a PAYER pot hold
# of it (-1: not held) and the tokens a TOKENS bucket takes; the merchant's wallet ('' for none), its max age in ms
# (-1: any) and 1 if it must be positive; n, then n triples of (pot, amount, limit or -1), where an amount 'k'..kind
# is the size of that kind (a limit pot: the same text every request, packed once per owner); m, then m quads of
# (bucket, per_minute, capacity, cost, -1 for the TOKENS size). Every pot held and every bucket taken from, or none.
# Answers {1, then each bucket's remaining and reset_ms}, {0, pot index, available}, {-1, pot index} (unconfirmed),
# {2, bucket index, retry_after_ms, remaining}, {-3} (the wallet's figure is too old) or {-4, available} (the wallet
# is empty). A limit pot whose limit changed moves by the difference first. A request held again (Cashier.top_up)
# holds that much more, as in HoldBook.
_HOLD = Script(_POTS + """
local now, ttl, rid = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local size = {tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])}
local n = tonumber(ARGV[12])
local m = tonumber(ARGV[13 + 3 * n])
if ARGV[9] ~= '' then
  local wallet = fresh(ARGV[9], now, tonumber(ARGV[10]))
  if not wallet then return {-3} end
  if ARGV[11] == '1' and wallet <= 0 then return {-4, wallet} end
end
if redis.call('EXISTS', k('done', rid)) == 1 then return {1} end
local amounts = {}
for i = 0, n - 1 do
  local amount = ARGV[14 + 3 * i]
  if string.byte(amount, 1) == 107 then amounts[i] = size[tonumber(string.sub(amount, 2)) + 1]  -- 'k': a size
  else amounts[i] = tonumber(amount) end
end
for i = 0, n - 1 do
  local pot, amount, limit = ARGV[13 + 3 * i], amounts[i], tonumber(ARGV[15 + 3 * i])
  if amount >= 0 then
    expire(pot, now)
    local was, confirmed, held = unpack(redis.call('HMGET', k('pot', pot), 'l', 'c', 'h'))
    if limit >= 0 and was and tonumber(was) ~= limit then
      redis.call('HINCRBY', k('pot', pot), 'c', limit - tonumber(was))
      redis.call('HSET', k('pot', pot), 'l', ARGV[15 + 3 * i])
      confirmed = redis.call('HGET', k('pot', pot), 'c')
    end
    if not confirmed then return {-1, i, 0} end
    local available = tonumber(confirmed) - tonumber(held or '0')
    if amount > available then return {0, i, available} end
  end
end
local base, levels = 14 + 3 * n, {}
for j = 0, m - 1 do
  local at = base + 4 * j
  local rate, cap, cost = tonumber(ARGV[at + 1]) / 60000, tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  if cost < 0 then cost = size[4] end
  local level = refill(ARGV[at], now, rate, cap)
  if cost > level then return {2, j, math.ceil((cost - level) / rate), math.max(math.floor(level), 0)} end
  levels[j + 1] = level - cost
end
local held = {}
for i = 0, n - 1 do
  if amounts[i] >= 0 then  -- a request held again (a top-up) holds more: its holds add up
    put(ARGV[13 + 3 * i], rid, amounts[i], now, ttl)
    held[#held + 1] = ARGV[13 + 3 * i]
  end
end
if #held > 0 then kept(rid, ttl, held) end
local out = {1}
for j = 0, m - 1 do
  local at = base + 4 * j
  local rate, cap = tonumber(ARGV[at + 1]) / 60000, tonumber(ARGV[at + 2])
  store(ARGV[at], now, rate, cap, levels[j + 1])
  out[#out + 1] = math.max(math.floor(levels[j + 1]), 0)
  out[#out + 1] = math.ceil((cap - levels[j + 1]) / rate)
end
return out
""")

# ARGV: prefix, now_ms, then (bucket, per_minute, capacity, delta) quads: each bucket gives delta more back
_TRUE_UP = Script(_POTS + """
local now = tonumber(ARGV[2])
for i = 3, #ARGV, 4 do
  local rate, cap = tonumber(ARGV[i + 1]) / 60000, tonumber(ARGV[i + 2])
  store(ARGV[i], now, rate, cap, math.min(cap, refill(ARGV[i], now, rate, cap) - tonumber(ARGV[i + 3])))
end
return 1
""")

# ARGV: prefix, now_ms, pot, amount, generation, expire_at_ms (0: never), limit (-1: none). Only a pot not
# confirmed yet is set: the spends counted since `generation` was read are taken off
# (addons.billing.holds.HoldBook.confirm_new). Written with %.0f: Lua would write a large number as 1e+14.
_CONFIRM_NEW = Script("""
local key = ARGV[1] .. ':pot:' .. ARGV[3]
if redis.call('HEXISTS', key, 'c') == 1 then return 0 end
local spent = tonumber(redis.call('HGET', key, 'n') or '0') - tonumber(ARGV[5])
redis.call('HSET', key, 'c', string.format('%.0f', tonumber(ARGV[4]) - spent), 'v', 0, 't', ARGV[2])
if tonumber(ARGV[7]) >= 0 then redis.call('HSET', key, 'l', ARGV[7]) end
if tonumber(ARGV[6]) > 0 then redis.call('PEXPIREAT', key, ARGV[6]) end
return 1
""")

# ARGV: prefix, now_ms, ttl_ms, then (request_id, pot, amount) triples; a settled request is skipped
_ADD = Script(_POTS + """
local now, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 4, #ARGV, 3 do
  local rid, pot = ARGV[i], ARGV[i + 1]
  if redis.call('EXISTS', k('done', rid)) == 0 then
    expire(pot, now)
    put(pot, rid, tonumber(ARGV[i + 2]), now, ttl)
    kept(rid, ttl, {pot})
  end
end
return 1
""")

# ARGV: prefix, now_ms, ttl_ms, c, then c (pot, amount, version) triples: ledger figures, an older version than the
# one held ignored; n, then n (pot, amount) pairs of committed spends on versionless pots (n counts them whether or not
# the pot is confirmed: HoldBook.confirm_new); then the request ids to release. Answers each confirmed pot's
# available after: a ledger commit settles in one round trip, and its wallets' figures come back with it.
_SETTLE = Script(_POTS + """
local now, ttl, c = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 5, 4 + 3 * c, 3 do
  local key = k('pot', ARGV[i])
  local known, confirmed = unpack(redis.call('HMGET', key, 'v', 'c'))
  if (not confirmed) or (not known) or tonumber(ARGV[i + 2]) >= tonumber(known) then
    redis.call('HSET', key, 'c', ARGV[i + 1], 'v', ARGV[i + 2], 't', ARGV[2])
  end
end
local s = 5 + 3 * c
local n = tonumber(ARGV[s])
for i = s + 1, s + 2 * n, 2 do
  local key = k('pot', ARGV[i])
  redis.call('HINCRBY', key, 'n', ARGV[i + 1])
  if redis.call('HEXISTS', key, 'c') == 1 then redis.call('HINCRBY', key, 'c', -tonumber(ARGV[i + 1])) end
end
for i = s + 1 + 2 * n, #ARGV do
  local rid = ARGV[i]
  redis.call('SET', k('done', rid), '1', 'PX', ttl + 60000)
  for _, pot in ipairs(redis.call('SMEMBERS', k('req', rid))) do drop(pot, rid) end
  redis.call('DEL', k('req', rid))
end
local out = {}
for i = 5, 4 + 3 * c, 3 do out[#out + 1] = available(ARGV[i], now) end
return out
""")

# ARGV: prefix, now_ms, pot  -> confirmed - held, or false when the pot is unknown
_AVAILABLE = Script(_POTS + """
return available(ARGV[3], tonumber(ARGV[2]))
""")

# ARGV: prefix, now_ms, pot, max_age_ms  -> as _AVAILABLE, or false when the pot was confirmed too long ago
_FRESH_AVAILABLE = Script(_POTS + """
return fresh(ARGV[3], tonumber(ARGV[2]), tonumber(ARGV[4]))
""")

RELEASE_BATCH = 500  # request ids per release script call, so one call never holds Redis for long
PACKED_OWNERS = 10_000  # owners whose hold arguments are kept packed


class RedisHolds:
    def __init__(self, url: str, hold_ttl: float, prefix: str = "tollgate"):
        self.wire = RedisWire(url, timeout=1.0)
        self._packed: dict[int, tuple[Limited, tuple[int, Packed, int, Packed]]] = {}  # id(owner) -> its segments
        self.prefix = prefix
        self.ttl_ms = int(hold_ttl * 1000)
        self.clock = time.time

    def _now(self) -> int:
        return int(self.clock() * 1000)

    async def is_fresh(self, pot: str, max_age: float) -> bool:
        at = await self.wire.call("HGET", f"{self.prefix}:pot:{pot}", "t")
        return at is not None and (max_age == float("inf") or self._now() - int(at) < max_age * 1000)

    async def confirm(self, pot: str, amount: int, version: int) -> None:
        await self.settle(((pot, amount, version),))

    async def generation(self, pot: str) -> int:
        return int(await self.wire.call("HGET", f"{self.prefix}:pot:{pot}", "n") or 0)

    async def confirm_new(self, pot: str, amount: int, generation: int, expires_at: float | None = None,
                          limit: int | None = None) -> None:
        """expires_at (epoch seconds): when Redis may forget the pot (a limit's period has ended)."""
        expire_ms = 0 if expires_at is None else math.ceil(expires_at * 1000)
        await self.wire.script(_CONFIRM_NEW, self.prefix, self._now(), pot, amount, generation, expire_ms,
                               -1 if limit is None else limit)

    async def unconfirm(self, *pots: str) -> None:
        """Forget the pots' figures (holds stay): the next admission confirms them from the ledger again."""
        await asyncio.gather(*(self.wire.call("HDEL", f"{self.prefix}:pot:{pot}", "c", "t") for pot in pots))

    async def available(self, pot: str) -> int:
        value = await self.wire.script(_AVAILABLE, self.prefix, self._now(), pot)
        if value is None:
            raise KeyError(pot)
        return int(value)

    async def fresh_available(self, pot: str, max_age: float) -> int | None:
        """`available`, in the same round trip as the freshness check; None when not fresh."""
        value = await self.wire.script(_FRESH_AVAILABLE, self.prefix, self._now(), pot, int(max_age * 1000))
        return None if value is None else int(value)

    async def hold(self, request_id: str, amounts: dict[str, int], owners: Sequence[Limited] = (),
                   sizes: Sizes = NO_SIZES, limits: dict[str, int] | None = None,
                   wallet: tuple[str, float, bool] | None = None) -> list[BucketState]:
        segments = [self._segments(owner, limits) for owner in owners]
        n = len(amounts) + sum(segment[0] for segment in segments)
        request, merchant, payer, reserved = sizes
        head = [self.prefix, self._now(), self.ttl_ms, request_id, request, merchant, -1 if payer is None else payer,
                reserved]
        if wallet is None:
            head += ["", -1, 0, n]
        else:
            pot, max_age, positive = wallet
            head += [pot, -1 if max_age == math.inf else int(max_age * 1000), int(positive), n]
        for pot, amount in amounts.items():
            head += [pot, amount, -1]
        result = await self.wire.run(_HOLD, packed(*head), *[segment[1] for segment in segments],
                                     packed(sum(segment[2] for segment in segments)),
                                     *[segment[3] for segment in segments])
        outcome = int(result[0])
        if outcome == 1:
            figures = result[1:]
            return [BucketState(figures[i], figures[i + 1]) for i in range(0, len(figures), 2)]
        if outcome == -3:
            raise WalletStale(wallet[0])
        if outcome == -4:
            raise WalletEmpty(int(result[1]))
        pots = [*amounts, *(pot for owner in owners for pot, _ in owner.holds)]
        if outcome == -1:  # flushed between the cashier's confirm and this hold
            raise KeyError(pots[int(result[1])])
        if outcome == 0:
            raise InsufficientFunds(pots[int(result[1])], max(int(result[2]), 0))
        buckets = [bucket for owner in owners for bucket in owner.buckets]
        raise RateLimited(buckets[int(result[1])].name, int(result[2]), int(result[3]))

    def _segments(self, owner: Limited, limits: dict[str, int] | None) -> tuple[int, Packed, int, Packed]:
        """An owner's pots (as many, then their triples) and buckets (as many, then their quads) as the hold
        script takes them: the same every request, so packed once per owner (but where `limits` moves a pot's)."""
        if limits is None and (known := self._packed.get(id(owner))) is not None and known[0] is owner:
            return known[1]
        pots = [value for pot, kind in owner.holds for value in (pot, f"k{kind}", (limits or {}).get(pot, -1))]
        buckets = [value for bucket in owner.buckets for value in bucket]
        segments = (len(owner.holds), packed(*pots), len(owner.buckets), packed(*buckets))
        if limits is None:
            if len(self._packed) > PACKED_OWNERS:
                self._packed.clear()
            self._packed[id(owner)] = (owner, segments)  # the owner kept: its id is not reused meanwhile
        return segments

    async def true_up(self, *changes: tuple[Bucket, int]) -> None:
        args = [self.prefix, self._now()]
        for bucket, delta in changes:
            args += [bucket.name, bucket.per_minute, bucket.capacity, delta]
        if changes:
            await self.wire.script(_TRUE_UP, *args)

    async def add(self, *charges: tuple[str, str, int]) -> None:
        """Costs already incurred, (request id, pot, amount) each: one round trip per RELEASE_BATCH."""
        args = [value for charge in charges if charge[2] > 0 for value in charge]
        for i in range(0, len(args), 3 * RELEASE_BATCH):
            await self.wire.script(_ADD, self.prefix, self._now(), self.ttl_ms, *args[i:i + 3 * RELEASE_BATCH])

    async def release(self, *request_ids: str, spends: Sequence[tuple[str, int]] = ()) -> None:
        await self.settle((), spends, request_ids)

    async def settle(self, confirms: Sequence[tuple[str, int, int]], spends: Sequence[tuple[str, int]] = (),
                     request_ids: Sequence[str] = ()) -> list[int]:
        """A ledger commit: its wallets' figures (pot, amount, version), its spends on versionless pots, its
        requests' holds released; one round trip per RELEASE_BATCH requests, the figures and spends with the first.
        The confirmed pots' available after."""
        head = [self.prefix, self._now(), self.ttl_ms, len(confirms)]
        for confirm in confirms:
            head += confirm
        head.append(len(spends))
        for spend in spends:
            head += spend
        available = await self.wire.script(_SETTLE, *head, *request_ids[:RELEASE_BATCH])
        for i in range(RELEASE_BATCH, len(request_ids), RELEASE_BATCH):
            await self.wire.script(_SETTLE, self.prefix, self._now(), self.ttl_ms, 0, 0, *request_ids[i:i + RELEASE_BATCH])
        return [int(value) for value in available]

    async def close(self) -> None:
        await self.wire.close()


class _Away(Exception):
    """Redis did not answer this call."""


class FailoverHolds:
    """Redis while it answers, this process's own book while it does not (retried every `retry_after` s).

    Reads and reservations go to one store; confirmations, spends and releases go to both, so the
    local book is warm when Redis fails and a request held in either is released in either.
    """

    def __init__(self, remote: RedisHolds, local: LocalHolds, retry_after: float = 1.0,
                 clock=time.monotonic):
        self.remote, self.local = remote, local
        self.retry_after = retry_after
        self._clock = clock
        self._down_since: float | None = None  # the last failure while Redis is taken to be away
        self._missed: set[str] = set()  # versionless pots whose spends Redis missed while away

    @property
    def falling_back(self) -> bool:
        """Redis failed and has not answered since: holds are this process's own."""
        return self._down_since is not None

    @property
    def redis_up(self) -> bool:
        return self._down_since is None or self._clock() >= self._down_since + self.retry_after

    async def _one(self, name: str, *args):
        if self.redis_up:
            try:
                return await self._remote(name, *args)
            except _Away:
                pass
        return await getattr(self.local, name)(*args)

    async def _unconfirm_missed(self) -> None:
        """Redis is back, without the spends it missed: those pots are confirmed from the ledger again."""
        missed, self._missed = self._missed, set()
        try:
            await self.remote.unconfirm(*missed)
        except REDIS_AWAY:
            self._missed |= missed

    async def _remote(self, name: str, *args, **kwargs):
        """The call on Redis; any answer, a refusal such as InsufficientFunds included, means it is up."""
        started = self._clock()
        try:
            result = await getattr(self.remote, name)(*args, **kwargs)
        except REDIS_AWAY as e:
            self._away(e)
            raise _Away from e
        except Exception:
            self._answered(started)
            raise
        self._answered(started)
        return result

    def _answered(self, started: float) -> None:
        """Only a call begun after the last failure shows Redis back; one begun before was just quicker."""
        if self._down_since is not None and started >= self._down_since:
            self._down_since = None
            log.warning("tollgate: Redis answers again; holds are shared again")
        if self._missed:
            create_task(self._unconfirm_missed(), name="tollgate-redis-unconfirm", keep_ref=True)

    def _away(self, error: Exception) -> None:
        if self._down_since is None:
            log.error("tollgate: Redis is unreachable (%s); holding in this process until it answers",
                      type(error).__name__)
        self._down_since = self._clock()

    async def is_fresh(self, pot: str, max_age: float) -> bool:
        return await self._one("is_fresh", pot, max_age)

    async def available(self, pot: str) -> int:
        return await self._one("available", pot)

    async def fresh_available(self, pot: str, max_age: float) -> int | None:
        return await self._one("fresh_available", pot, max_age)

    async def hold(self, request_id: str, amounts: dict[str, int], owners: Sequence[Limited] = (),
                   sizes: Sizes = NO_SIZES, limits: dict[str, int] | None = None,
                   wallet: tuple[str, float, bool] | None = None) -> list[BucketState]:
        return await self._one("hold", request_id, amounts, owners, sizes, limits, wallet)

    async def true_up(self, *changes: tuple[Bucket, int]) -> None:
        await self._one("true_up", *changes)

    async def generation(self, pot: str) -> int:
        return await self._one("generation", pot)

    async def confirm_new(self, pot: str, amount: int, generation: int, expires_at: float | None = None,
                          limit: int | None = None) -> None:
        """Into the store that will hold against it: the local one only while Redis is away."""
        await self._one("confirm_new", pot, amount, generation, expires_at, limit)

    async def add(self, *charges: tuple[str, str, int]) -> None:
        await self._one("add", *charges)

    async def confirm(self, pot: str, amount: int, version: int) -> None:
        await self.settle(((pot, amount, version),))

    async def release(self, *request_ids: str, spends: Sequence[tuple[str, int]] = ()) -> None:
        await self.settle((), spends, request_ids)

    async def settle(self, confirms: Sequence[tuple[str, int, int]], spends: Sequence[tuple[str, int]] = (),
                     request_ids: Sequence[str] = ()) -> list[int]:
        """On both stores, as `confirm` and `release`: the figures of the one admitting now."""
        available = await self.local.settle(confirms, spends, request_ids)
        if self.redis_up:
            try:
                return await self._remote("settle", confirms, spends, request_ids)
            except _Away:
                pass
        self._missed.update(pot for pot, _ in spends)
        return available

    async def close(self) -> None:
        await self.remote.close()
