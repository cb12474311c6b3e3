"""The merchant's wallet as a key without limits is admitted against it: only checked to be positive, so with Redis
an instance asks once a glance (addons/billing/cashier.py GLANCE) while it is, and every time once it is not; the
costs requests incurred wait for their commit in the hot store only until it comes, never after it."""

from __future__ import annotations

import asyncio
import time

import pytest

from addons.billing import cashier
from addons.billing.hold_stores import FailoverHolds
from addons.ledger.accounts import credit_wallet, ensure_account, wallet_state
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
