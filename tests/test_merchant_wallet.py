"""The merchant's wallet as a key without limits is admitted against it: only checked to be positive, so with Redis
an instance asks once a glance (addons/billing/cashier.py GLANCE) while it is, and every time once it is not; the
costs requests incurred wait for their commit in the hot store only until it comes, never after it."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis

from addons.billing import cashier
from addons.billing.hold_stores import FailoverHolds
from addons.ledger.accounts import credit_wallet, ensure_account, wallet_state
from addons.ledger.models import RequestRow
from addons.services import keys
from tests import test_limits
from tests.harness import shared_redis
from tests.test_limits import REDIS_DB, Driver, outcome

drive = test_limits.drive  # Drivers on the in-process hold book and on Redis


@pytest.fixture
def redis_url() -> str:
    shared_redis(REDIS_DB)
    return f"redis://127.0.0.1:6379/{REDIS_DB}"


def counted_glances(d: Driver, monkeypatch) -> list:
    """The merchant wallet checks that reach Redis."""
    asked = []
    remote = d.gw.cashier.holds.remote
    real = remote.fresh_available

    async def counting(*args):
        asked.append(args)
        return await real(*args)
    monkeypatch.setattr(remote, "fresh_available", counting)
    return asked


def test_a_key_without_limits_asks_redis_for_the_merchants_wallet_once_a_glance(gw, redis_url, monkeypatch):
    d = Driver(gw, redis_url=redis_url)
    try:
        secret = keys.create_spend_key("plain").secret_key
        assert outcome(d.send(secret)) == 200  # the wallet, confirmed from the ledger into Redis
        asked = counted_glances(d, monkeypatch)
        assert [outcome(d.send(secret)) for _ in range(5)] == [200] * 5
        assert len(asked) == 1
        monkeypatch.setattr(cashier, "GLANCE", 0.0)
        time.sleep(0.03)  # the glance taken at its first request is over
        assert [outcome(d.send(secret)) for _ in range(3)] == [200] * 3
        assert len(asked) == 4
    finally:
        d.close()


def test_an_empty_merchant_wallet_is_asked_again_on_every_request(gw, redis_url, monkeypatch):
    d = Driver(gw, redis_url=redis_url)
    try:
        wallet = ensure_account()[1].id
        credit_wallet(wallet, -wallet_state(wallet)[0])  # nothing left
        asked = counted_glances(d, monkeypatch)
        secret = keys.create_spend_key("plain").secret_key
        assert [outcome(d.send(secret)) for _ in range(3)] == [402] * 3
        assert len(asked) == 3  # not glanced: a top-up must admit the next request
        credit_wallet(wallet, 10**12)
        d.now += 2  # the hot store's figure is older than the gateway's cache TTL: read from the ledger again
        assert outcome(d.send(secret)) == 200
    finally:
        d.close()


def test_a_committed_requests_cost_is_not_held_after_its_commit(drive):
    """The cost a request incurred waits for its commit in the hot store (other instances see it), but one committed
    before it was sent is never sent: sent after its release, it would hold the wallet until the hold expired."""
    d = drive()
    secret = keys.create_spend_key("plain").secret_key
    assert [outcome(d.send(secret)) for _ in range(4)] == [200] * 4
    d.settle()
    d.loop.run_until_complete(asyncio.sleep(cashier.ADD_LINGER + 0.05))  # any add still waiting is sent
    wallet = ensure_account()[1].id
    balance, _ = wallet_state(wallet)
    holds = d.gw.cashier.holds
    if isinstance(holds, FailoverHolds):  # Redis
        available = d.loop.run_until_complete(holds.available(wallet))
    else:
        available = holds.book.available(wallet)
    assert available == balance


def available_in_hot_store(d: Driver, wallet: str) -> int:
    holds = d.gw.cashier.holds
    if isinstance(holds, FailoverHolds):  # Redis
        return d.loop.run_until_complete(holds.available(wallet))
    return holds.book.available(wallet)


def test_a_cost_sent_before_its_commit_is_released_by_the_commit(drive, monkeypatch):
    """A commit that comes after the request's incurred cost was sent to the hot store releases it there: the wallet's
    room comes back to its committed balance at once, not when the hold expires."""
    d = drive()
    secret = keys.create_spend_key("plain").secret_key
    assert outcome(d.send(secret)) == 200
    d.settle()
    wallet = ensure_account()[1].id
    before = wallet_state(wallet)[0]
    committing = threading.Event()
    real_charge = d.gw.writer._charge
    monkeypatch.setattr(d.gw.writer, "_charge", lambda records: committing.wait(10) and real_charge(records))
    assert outcome(d.send(secret)) == 200
    d.loop.run_until_complete(asyncio.sleep(cashier.ADD_LINGER + 0.05))  # sent: the commit waits
    held = before - available_in_hot_store(d, wallet)
    assert held > 0  # the request's cost, held for the commit to come
    committing.set()
    d.settle()
    after = wallet_state(wallet)[0]
    assert before - after == held  # what was held is what was charged
    assert available_in_hot_store(d, wallet) == after  # and released with the commit


def test_only_requests_that_hold_something_are_released_in_redis(gw, redis_url):
    """A commit releases in Redis the requests that hold there (money, a limit's room, a cost sent): a key without
    limits leaves nothing to release, so its commits cost Redis no work per request."""
    d = Driver(gw, redis_url=redis_url)
    try:
        plain = keys.create_spend_key("plain")
        limited = keys.create_spend_key("limited", limits={"request_limit": 100, "request_cycle": "day"})
        assert outcome(d.send(plain.secret_key)) == 200
        assert outcome(d.send(limited.secret_key)) == 200
        d.settle()
        ids = {row.key_id: row.id for row in RequestRow.select()}
        hot = redis.Redis.from_url(redis_url)
        assert hot.exists(f"tollgate:done:{ids[limited.id]}") == 1  # released (and tombstoned)
        assert hot.exists(f"tollgate:req:{ids[limited.id]}") == 0
        assert hot.exists(f"tollgate:done:{ids[plain.id]}") == 0  # never held: nothing sent
        assert not d.gw.cashier._limited and not d.gw.cashier.open_holds
    finally:
        d.close()


def test_commits_renew_the_glance_so_steady_traffic_never_asks_redis(gw, redis_url, monkeypatch):
    """A commit's settle comes back with the merchant wallet's figure in Redis: while commits come more often than
    GLANCE, requests glance at the committed balance and ask Redis nothing."""
    d = Driver(gw, redis_url=redis_url)
    try:
        secret = keys.create_spend_key("plain").secret_key
        monkeypatch.setattr(cashier, "GLANCE", 0.2)
        for _ in range(2):  # the first reads the wallet from the ledger, the second glances at it
            assert outcome(d.send(secret)) == 200
            d.settle()
        asked = counted_glances(d, monkeypatch)
        started = time.monotonic()
        for _ in range(6):
            assert outcome(d.send(secret)) == 200
            d.settle()
            time.sleep(0.03)
        assert time.monotonic() - started > 0.3  # longer than one glance
        assert asked == []
        wallet = ensure_account()[1].id
        figure, _ = d.gw.cashier._glances[wallet]
        assert figure == wallet_state(wallet)[0]  # the committed balance, every cost in it
    finally:
        d.close()
