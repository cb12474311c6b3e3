"""HoldBook: money set aside for requests in flight, against a fake clock (no sleeping); the
Redis store's batched release; and the failover to the in-process book while Redis is away."""

from __future__ import annotations

import asyncio
import math
import os
from typing import NamedTuple

import pytest
import redis

from addons.billing.hold_stores import REDIS_AWAY, FailoverHolds, LocalHolds, RedisHolds
from addons.billing.holds import (
    MERCHANT,
    PAYER,
    REQUEST,
    TOKENS,
    Bucket,
    BucketState,
    HoldBook,
    InsufficientFunds,
    RateLimited,
    rates_of,
)
from tests.harness import free_port

TTL = 60.0


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def book(clock) -> HoldBook:
    book = HoldBook(hold_ttl=TTL, clock=clock)
    book.confirm("wallet", 1_000, version=1)
    book.confirm("token", 300, version=0)
    return book


@pytest.mark.parametrize(
    "amounts, available",
    [
        ({"wallet": 400}, {"wallet": 600, "token": 300}),  # 1000 - 400
        ({"wallet": 400, "token": 300}, {"wallet": 600, "token": 0}),  # the whole token pot may be held
        ({"wallet": 1_000}, {"wallet": 0, "token": 300}),
    ],
)
def test_hold_reserves_in_every_pot(book, amounts, available):
    book.hold("req_a", amounts)
    assert {pot: book.available(pot) for pot in available} == available


@pytest.mark.parametrize(
    "amounts, short, left",
    [
        ({"wallet": 400, "token": 301}, "token", 300),  # the second pot is short by one
        ({"wallet": 1_001, "token": 10}, "wallet", 1_000),  # the first pot is short
    ],
)
def test_hold_reserves_in_no_pot_when_one_is_short(book, amounts, short, left):
    with pytest.raises(InsufficientFunds) as caught:
        book.hold("req_a", amounts)
    assert (caught.value.pot, caught.value.available) == (short, left)
    assert (book.available("wallet"), book.available("token")) == (1_000, 300)  # nothing reserved anywhere


def test_insufficient_funds_reports_what_is_left_after_other_holds(book):
    book.hold("req_a", {"wallet": 700})
    with pytest.raises(InsufficientFunds) as caught:
        book.hold("req_b", {"wallet": 301})
    assert (caught.value.pot, caught.value.available) == ("wallet", 300)  # 1000 - 700


def test_insufficient_funds_never_reports_a_negative_amount(book):
    book.confirm("wallet", -50, version=2)  # an overdrawn wallet
    with pytest.raises(InsufficientFunds) as caught:
        book.hold("req_a", {"wallet": 1})
    assert caught.value.available == 0


def test_available_is_confirmed_less_open_holds(book):
    book.hold("req_a", {"wallet": 100})
    book.hold("req_b", {"wallet": 250})
    assert book.available("wallet") == 650  # 1000 - 100 - 250
    book.confirm("wallet", 900, version=2)  # a commit elsewhere moved the balance
    assert book.available("wallet") == 550  # 900 - 100 - 250


def test_release_frees_the_hold(book):
    book.hold("req_a", {"wallet": 600})
    book.hold("req_b", {"wallet": 100})
    book.release("req_a")
    assert book.available("wallet") == 900  # 1000 - 100
    book.release("req_a")  # twice is harmless
    book.release("req_unknown")
    assert book.available("wallet") == 900


def test_a_request_holding_in_two_pots_is_released_from_both(book):
    book.hold("req_a", {"wallet": 200, "token": 50})
    book.hold("req_b", {"wallet": 10, "token": 5})
    book.release("req_a")
    assert (book.available("wallet"), book.available("token")) == (990, 295)  # only req_b's holds remain


@pytest.mark.parametrize(
    "elapsed, available",
    [
        (TTL - 0.001, 600),  # still held: 1000 - 400
        (TTL, 1_000),  # expires at exactly hold time + ttl
        (TTL + 3600, 1_000),
    ],
)
def test_an_expired_hold_stops_counting(book, clock, elapsed, available):
    book.hold("req_a", {"wallet": 400})
    clock.now += elapsed
    assert book.available("wallet") == available


def test_an_expired_hold_no_longer_blocks_admission(book, clock):
    book.hold("req_a", {"wallet": 1_000})
    with pytest.raises(InsufficientFunds):
        book.hold("req_b", {"wallet": 1})
    clock.now += TTL + 1
    book.hold("req_b", {"wallet": 1_000})
    assert book.available("wallet") == 0


def test_holds_run_out_in_the_order_they_were_last_taken(book, clock):
    """A hold taken again (an incurred cost added to it) lasts from then: it runs out after those held before."""
    start = clock.now
    book.hold("req_a", {"wallet": 100})
    clock.now += 10
    book.hold("req_b", {"wallet": 200})
    clock.now += 10
    book.add("req_a", "wallet", 300)  # req_a's holds now last till 20 + TTL
    clock.now = start + 10 + TTL  # req_b's time is up, req_a's not
    assert book.available("wallet") == 1_000 - 400
    book.hold("req_c", {"wallet": 600})  # the room req_b had is back
    with pytest.raises(InsufficientFunds):
        book.hold("req_d", {"wallet": 1})
    clock.now = start + 20 + TTL
    assert book.fresh_available("wallet", math.inf) == 1_000 - 600  # req_a's run out too
    book.release("req_c")
    assert book.available("wallet") == 1_000


@pytest.mark.parametrize(
    "version, amount, confirmed",
    [
        (4, 10, 500),  # older than the version held: ignored (a read raced a commit)
        (5, 700, 700),  # same version: taken
        (6, 20, 20),  # newer: taken
    ],
)
def test_confirm_ignores_older_versions(clock, version, amount, confirmed):
    book = HoldBook(hold_ttl=TTL, clock=clock)
    book.confirm("wallet", 500, version=5)
    book.confirm("wallet", amount, version=version)
    assert book.available("wallet") == confirmed


def test_spend_lowers_a_versionless_pot(book):
    book.hold("req_a", {"token": 100})
    book.settle(spends=[("token", 120)], request_ids=["req_a"])  # the commit charged 120
    assert book.available("token") == 180  # 300 - 120
    book.settle(spends=[("token", 200)])
    assert book.available("token") == -20  # 180 - 200: spent beyond the cap shows as negative
    book.settle(spends=[("token:unknown", 5)])  # a pot never confirmed: nothing to lower, no error


def test_a_past_periods_pot_is_forgotten_once_a_new_one_is_confirmed(clock):
    wall = Clock(now=1_800_000_000.0)
    book = HoldBook(hold_ttl=TTL, clock=clock, wall=wall)
    book.confirm_new("lim:key:k:key_requests:day:d1", 10, 0, limit=10, expires_at=wall.now + 86_400)
    book.hold("req_a", {"lim:key:k:key_requests:day:d1": 1})
    wall.now += 86_400  # the day and its holds' time are over
    book.confirm_new("lim:key:k:key_requests:day:d2", 10, 0, limit=10, expires_at=wall.now + 86_400)
    with pytest.raises(KeyError):
        book.available("lim:key:k:key_requests:day:d1")
    assert book.generation("lim:key:k:key_requests:day:d1") == 0
    book.release("req_a")  # a late commit of a forgotten pot's request: nothing to do, no error
    assert book.available("lim:key:k:key_requests:day:d2") == 10


def test_add_reserves_without_checking_and_goes_with_its_request(book):
    book.hold("req_a", {"wallet": 900})
    book.add("req_a", "wallet", 300)  # already incurred: no check, even past the balance
    assert book.available("wallet") == -200  # 1000 - 900 - 300
    book.add("req_b", "wallet", 50)
    book.release("req_a")
    assert book.available("wallet") == 950  # 1000 - 50
    book.release("req_b")
    assert book.available("wallet") == 1_000


@pytest.mark.parametrize("pot, amount", [("wallet", 0), ("wallet", -5), ("unknown", 100)])
def test_add_ignores_nothing_to_hold(book, pot, amount):
    book.add("req_a", pot, amount)
    assert book.available("wallet") == 1_000


@pytest.mark.parametrize(
    "age, max_age, fresh",
    [
        (0.0, 1.0, True),
        (0.999, 1.0, True),
        (1.0, 1.0, False),  # as old as allowed is stale
        (5.0, 1.0, False),
        (1e9, float("inf"), True),  # an infinite max age: read once, kept
    ],
)
def test_is_fresh_by_age(clock, age, max_age, fresh):
    book = HoldBook(hold_ttl=TTL, clock=clock)
    book.confirm("wallet", 10, version=1)
    clock.now += age
    assert book.is_fresh("wallet", max_age) is fresh


def test_is_fresh_is_false_for_an_unknown_pot_and_renewed_by_a_confirm(book, clock):
    assert book.is_fresh("nobody", 1e9) is False
    clock.now += 10
    assert book.is_fresh("wallet", 5) is False
    book.confirm("wallet", 1_000, version=1)  # same version re-read: fresh again
    assert book.is_fresh("wallet", 5) is True
    clock.now += 10
    book.confirm("wallet", 1, version=0)  # an older version renews nothing
    assert book.is_fresh("wallet", 5) is False


@pytest.fixture
def url():
    """An empty Redis database for the Redis hold store (db 14; the e2e tests use 12 and 13)."""
    url = "redis://127.0.0.1:6379/14"
    try:
        redis.Redis.from_url(url).flushdb()
    except redis.ConnectionError as e:
        if os.environ.get("CI"):
            pytest.fail(f"Redis is required in CI: {e}")
        pytest.skip(f"Redis not reachable: {e}")
    yield url
    redis.Redis.from_url(url).flushdb()


def test_redis_holds_release_a_committed_batch_in_one_call(url):
    """The Redis store: holds of a whole ledger batch go in one call, and a late add for a released
    request is ignored (the tombstone), as with one request at a time."""

    async def scenario():
        store = RedisHolds(url, hold_ttl=TTL)
        try:
            await store.confirm("wallet", 10_000, version=1)
            ids = [f"req_{i}" for i in range(1200)]  # more than one release script call
            for request_id in ids:
                await store.hold(request_id, {"wallet": 5})
            await store.add(("req_keep", "wallet", 3), ("req_keep", "wallet", 4), ("req_none", "wallet", 0))
            assert await store.available("wallet") == 10_000 - 1200 * 5 - 7
            await store.release(*ids)
            assert await store.available("wallet") == 10_000 - 7
            await store.add(("req_0", "wallet", 100))  # late, after its release: ignored
            await store.release()  # nothing to release: no call, no error
            await store.add(*((f"req_late_{i}", "wallet", 1) for i in range(1100)))  # three script calls
            assert await store.available("wallet") == 10_000 - 7 - 1100
            await store.release(*(f"req_late_{i}" for i in range(1100)))
            assert await store.available("wallet") == 10_000 - 7
        finally:
            await store.close()

    asyncio.run(scenario())


def test_redis_admissions_of_one_loop_turn_share_a_write_and_keep_their_own_answers(url, monkeypatch):
    """Admissions made in the same loop turn leave for Redis as one write on the store's one connection; each caller
    still gets its own outcome (a hold, a refusal naming its pot, a read), and a dead Redis fails every one of them
    as a call of its own would."""

    async def scenario():
        store = RedisHolds(url, hold_ttl=TTL)
        try:
            await store.confirm("wallet", 1_000, version=1)
            await store.confirm("small", 10, version=1)
            await store.hold("req_warm", {"wallet": 0})
            await store.fresh_available("wallet", 60.0)  # both scripts loaded: each is sent by its sha alone
            writes = []
            transport = store.wire._transport
            real_write = transport.write
            monkeypatch.setattr(transport, "write", lambda data: writes.append(data) or real_write(data))
            outcomes = await asyncio.gather(
                *(store.hold(f"req_{i}", {"wallet": 100}) for i in range(8)),
                store.hold("req_big", {"small": 50}), store.fresh_available("wallet", 60.0),
                store.fresh_available("nobody", 60.0), return_exceptions=True)
            assert len(writes) == 1 and writes[0].count(b"EVALSHA") == 11
            assert outcomes[:8] == [[]] * 8
            assert isinstance(outcomes[8], InsufficientFunds) and outcomes[8].pot == "small"
            assert outcomes[9] == 200 and outcomes[10] is None  # answered in the order sent
            assert await store.available("wallet") == 200
        finally:
            await store.close()
        dead = RedisHolds(f"redis://127.0.0.1:{free_port()}/0", hold_ttl=TTL)  # nothing listens there
        try:
            failed = await asyncio.gather(*(dead.fresh_available("wallet", 60.0) for _ in range(3)),
                                          return_exceptions=True)
            assert all(isinstance(e, REDIS_AWAY) for e in failed), failed
        finally:
            await dead.close()

    asyncio.run(scenario())


def test_admissions_call_their_script_by_sha_and_survive_redis_losing_it(url):
    """Admissions call their script by sha alone (no SCRIPT EXISTS round trip before each); when Redis has lost the
    script (a restart, SCRIPT FLUSH), each call sends it again and every caller still gets its answer."""

    def script_checks() -> int:
        return redis.Redis.from_url(url).info("commandstats").get("cmdstat_script|exists", {}).get("calls", 0)

    def together(store: RedisHolds, amounts: list[int]):
        return asyncio.gather(*(store.hold(f"req_{amount}_{i}", {"wallet": amount}) for i, amount in enumerate(amounts)),
                              return_exceptions=True)

    async def scenario():
        store = RedisHolds(url, hold_ttl=TTL)
        try:
            await store.confirm("wallet", 1_000, version=1)
            await store.hold("req_first", {"wallet": 1})  # the script, loaded
            checks = script_checks()
            assert await together(store, [100] * 5) == [[]] * 5
            assert script_checks() == checks
            redis.Redis.from_url(url).script_flush()
            outcomes = await together(store, [10, 10, 10, 900])
            assert outcomes[:3] == [[]] * 3 and isinstance(outcomes[3], InsufficientFunds)
            assert await store.available("wallet") == 1_000 - 1 - 500 - 30
        finally:
            await store.close()

    asyncio.run(scenario())


def test_redis_fresh_available_is_none_until_confirmed_and_after_max_age(url):

    async def scenario():
        store = RedisHolds(url, hold_ttl=TTL)
        try:
            assert await store.fresh_available("wallet", 60.0) is None  # never confirmed
            await store.confirm("wallet", 1_000, version=1)
            await store.hold("req_a", {"wallet": 300})
            assert await store.fresh_available("wallet", 60.0) == 700
            assert await store.fresh_available("wallet", 0.0) is None  # confirmed too long ago for max_age 0
        finally:
            await store.close()

    asyncio.run(scenario())


def test_failover_holds_in_process_while_redis_is_away_and_returns_to_it(private_redis):
    async def scenario():
        store = FailoverHolds(RedisHolds(private_redis.url, hold_ttl=TTL), LocalHolds(TTL), retry_after=0.2)
        try:
            await store.confirm("wallet", 1_000, version=1)
            await store.hold("req_a", {"wallet": 300})
            assert await store.available("wallet") == 700 and store.redis_up and not store.falling_back
            await asyncio.gather(*(store.available("wallet") for _ in range(8)))  # several pooled connections
            private_redis.stop()
            assert await store.available("wallet") == 1_000  # the local book: confirmed, not Redis's holds
            assert not store.redis_up and store.falling_back  # what tollgate_redis_fallback shows
            await store.hold("req_b", {"wallet": 900})
            with pytest.raises(InsufficientFunds):  # the local book still guards this instance
                await store.hold("req_c", {"wallet": 200})
            await store.release("req_b")
            assert await store.available("wallet") == 1_000
            private_redis.start()  # empty, as after a restart
            await asyncio.sleep(0.25)
            assert await store.fresh_available("wallet", 60.0) is None  # Redis again: reconfirm from the ledger
            await asyncio.gather(*(store.is_fresh("wallet", 60.0) for _ in range(8)))
            assert store.redis_up and not store.falling_back  # no pooled connection to the dead server failed again
            await store.confirm("wallet", 1_000, version=2)
            await store.hold("req_d", {"wallet": 100})
            assert await store.available("wallet") == 900
        finally:
            await store.close()

    asyncio.run(scenario())


def test_failover_returns_to_redis_once_under_load_after_a_restart(private_redis, caplog):
    """The pool's connections to the dead server are dropped at the first failure, so once Redis is back
    none of them fails later and sends holds back into the process (seen as flapping in the soak)."""

    async def scenario():
        store = FailoverHolds(RedisHolds(private_redis.url, hold_ttl=TTL), LocalHolds(TTL), retry_after=0.2)
        await store.confirm("wallet", 10**12, version=1)
        stop = asyncio.Event()

        async def client(i: int) -> None:
            n = 0
            while not stop.is_set():
                try:
                    await store.hold(f"req_{i}_{n}", {"wallet": 1})
                except KeyError:  # a restarted Redis has no pots: the cashier confirms again
                    await store.confirm("wallet", 10**12, version=2)
                n += 1
                await asyncio.sleep(0.001 * (i % 5))

        clients = [asyncio.create_task(client(i)) for i in range(32)]
        await asyncio.sleep(0.5)
        private_redis.stop()
        await asyncio.sleep(0.5)
        private_redis.start()
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.gather(*clients)
        await store.close()

    asyncio.run(scenario())
    events = [r.getMessage().split(";")[0] for r in caplog.records if "Redis" in r.getMessage()]
    assert events == ["tollgate: Redis is unreachable (ConnectionError)", "tollgate: Redis answers again"]


class Owner(NamedTuple):
    """A key's limits as a hold takes them (addons/billing/limits.py OwnerLimits)."""

    holds: tuple[tuple[str, int], ...]
    buckets: tuple[Bucket, ...]

    @property
    def rates(self):
        return rates_of(self.buckets)


OWNER = Owner((("lim:req", REQUEST), ("lim:spend", MERCHANT), ("lim:cus", PAYER)),
              (Bucket("rpm:k", 60, 2, 1), Bucket("tpm:k", 600, 1_000, TOKENS)))


def run_on_store(where: str, request, scenario, clock=None) -> None:
    """`scenario(store)` on the in-process store or on Redis, `clock` (epoch seconds) its time where given; the store
    closed after."""
    if where == "redis":
        store = RedisHolds(request.getfixturevalue("url"), hold_ttl=TTL)
        if clock is not None:
            store.clock = clock
    else:
        store = LocalHolds(TTL)
        if clock is not None:
            store.book._clock = clock

    async def on():
        try:
            await scenario(store)
        finally:
            await store.close()

    asyncio.run(on())


@pytest.mark.parametrize("where", ["in-process", "redis"])
def test_an_owners_pots_and_buckets_are_held_alike_in_process_and_in_redis(where, request):
    """Each limit pot holds the request's size of its kind (none where that size is None: a customer not billed),
    each bucket takes 1 or the reserved tokens; a short pot or an empty bucket is named whatever came before it, and
    a changed limit moves its pot's room. The same on both stores, Redis packing an owner's part once."""

    async def scenario(store):
        for pot, figure in (("lim:req", 3), ("lim:spend", 500), ("lim:cus", 50)):
            await store.confirm_new(pot, figure, 0, limit=figure)
        states = await store.hold("r1", {}, [OWNER], (1, 200, None, 300))
        assert states == [BucketState(1, 1000), BucketState(700, 30_000)]
        assert [await store.available(pot) for pot in ("lim:req", "lim:spend", "lim:cus")] == [2, 300, 50]
        with pytest.raises(InsufficientFunds) as short:  # the payer's size, now held, is over its pot
            await store.hold("r2", {}, [OWNER], (1, 10, 60, 10))
        assert (short.value.pot, short.value.available) == ("lim:cus", 50)
        with pytest.raises(RateLimited) as limited:
            await store.hold("r3", {}, [OWNER], (1, 10, 10, 800))
        assert limited.value.bucket == "tpm:k"
        await store.hold("r4", {}, [OWNER], (1, 10, 10, 10), limits={"lim:spend": 900})  # raised by 400
        assert [await store.available(pot) for pot in ("lim:req", "lim:spend", "lim:cus")] == [1, 690, 40]
        with pytest.raises(RateLimited) as limited:  # the burst of 2 is taken
            await store.hold("r5", {}, [OWNER], (1, 10, 10, 10))
        assert limited.value.bucket == "rpm:k"

    run_on_store(where, request, scenario, clock=lambda: 1_000.0)  # no refill between holds


@pytest.mark.parametrize("where", ["in-process", "redis"])
def test_a_true_up_moves_a_bucket_as_if_the_usage_had_been_taken_at_admission(where, request):
    """Tokens given back land on the bucket as refilled till now, up to its capacity; tokens used beyond the
    reservation are taken from it as it stands now. 600 tokens a minute: 10 a second, up to 1,000."""
    bucket = Bucket("tpm:t", 600, 1_000, TOKENS)
    owner = Owner((), (bucket,))
    now = [1_000.0]

    async def scenario(store):
        await store.hold("r1", {}, [owner], (1, 0, None, 800))  # 200 left
        now[0] += 30  # 300 refilled: 500
        await store.true_up((bucket, -700))  # it used 100 of its 800: 700 back, full again (not 200 + 700)
        assert await store.hold("r2", {}, [owner], (1, 0, None, 1_000)) == [BucketState(0, 100_000)]
        now[0] += 10  # 100 refilled
        await store.true_up((bucket, 50))  # it used 50 more than it reserved: 50 left
        with pytest.raises(RateLimited):
            await store.hold("r3", {}, [owner], (1, 0, None, 51))
        assert await store.hold("r4", {}, [owner], (1, 0, None, 50)) == [BucketState(0, 100_000)]

    run_on_store(where, request, scenario, clock=lambda: now[0])


@pytest.mark.parametrize("where", ["in-process", "redis"])
def test_a_spend_committed_while_a_pot_is_read_from_the_ledger_is_taken_off_its_first_figure(where, request):
    """confirm_new takes off what was spent on the pot since generation() was read: the ledger read may have
    missed it (it is never counted twice as long as the read is taken to have missed it: at worst too little room)."""

    async def scenario(store):
        generation = await store.generation("token:t")
        await store.settle((), [("token:t", 30)])  # committed while the ledger is read: the read did not see it
        await store.confirm_new("token:t", 100, generation)
        assert await store.available("token:t") == 70
        await store.settle((), [("token:t", 5)])  # once confirmed, a spend lowers the figure
        assert await store.available("token:t") == 65
        generation = await store.generation("token:t")
        await store.confirm_new("token:t", 100, generation)  # already confirmed: stays as it is
        assert await store.available("token:t") == 65

    run_on_store(where, request, scenario)


@pytest.mark.parametrize("where", ["in-process", "redis"])
def test_a_request_held_again_holds_more_and_is_released_whole(where, request):
    """A top-up (Cashier.top_up: a Realtime session's next response growing as the client adds audio) holds the
    request again: the amounts add up, checked against what is left besides the first hold, on any of its pots or
    a new one; one release gives all of it back. Both stores alike."""

    async def scenario(store):
        await store.confirm("wallet", 100, 1)
        await store.confirm_new("lim:spend", 80, 0, limit=80)
        await store.hold("r1", {"wallet": 40})
        await store.hold("r1", {"wallet": 30, "lim:spend": 50})
        assert [await store.available(pot) for pot in ("wallet", "lim:spend")] == [30, 30]
        with pytest.raises(InsufficientFunds) as short:  # 31 is over what r1's two holds left
            await store.hold("r1", {"wallet": 31})
        assert (short.value.pot, short.value.available) == ("wallet", 30)
        assert await store.available("wallet") == 30  # a refused top-up holds nothing
        await store.release("r1")
        assert [await store.available(pot) for pot in ("wallet", "lim:spend")] == [100, 80]

    run_on_store(where, request, scenario)
