"""The account cache's reads: requests that miss the cache together share one database read."""

from __future__ import annotations

import asyncio
import threading

import pytest
from peewee import OperationalError

from addons.auth.account_cache import AccountCache
from addons.core.errors import LedgerUnavailable
from addons.ledger.models import database, open_database


@pytest.fixture
def ledger(tmp_path):
    """SQLite only: what is under test is the cache's sharing of reads, the same for either database."""
    db = open_database(f"sqlite:///{tmp_path}/ledger.db")
    yield db
    db.close()
    database.initialize(None)


class SlowQuery:
    """A ledger query that takes a while and counts how often it ran (on the cache's thread pool)."""

    def __init__(self, answer="row", error: Exception | None = None):
        self.answer, self.error = answer, error
        self.calls = 0
        self.release = threading.Event()

    def __call__(self, key_hash):
        self.calls += 1
        self.release.wait(5)
        if self.error:
            raise self.error
        return f"{self.answer}:{key_hash}"


async def _gather_while_running(cache: AccountCache, query: SlowQuery, n: int, arg="h1"):
    callers = [asyncio.create_task(cache._cached(query, arg)) for _ in range(n)]
    await asyncio.sleep(0.05)  # all of them are waiting on the read now
    query.release.set()
    return callers, await asyncio.gather(*callers, return_exceptions=True)


def test_callers_missing_the_cache_together_share_one_read(ledger):
    async def scenario():
        cache, query = AccountCache(ttl=60), SlowQuery()
        _, answers = await _gather_while_running(cache, query, 32)
        again = await cache._cached(query, "h1")  # now cached
        other = await cache._cached(query, "h2")  # another key is its own read
        cache.close()
        return query.calls, answers, again, other

    calls, answers, again, other = asyncio.run(scenario())
    assert calls == 2 and answers == ["row:h1"] * 32 and again == "row:h1" and other == "row:h2"


def test_a_read_runs_again_once_the_shared_one_is_done(ledger):
    async def scenario():
        cache, query = AccountCache(ttl=0), SlowQuery()  # nothing stays cached
        await _gather_while_running(cache, query, 4)
        await cache._cached(query, "h1")
        cache.close()
        return query.calls

    assert asyncio.run(scenario()) == 2


def test_a_caller_that_goes_away_leaves_the_read_to_the_others(ledger):
    async def scenario():
        cache, query = AccountCache(ttl=60), SlowQuery()
        first = asyncio.create_task(cache._cached(query, "h1"))
        second = asyncio.create_task(cache._cached(query, "h1"))
        await asyncio.sleep(0.05)
        first.cancel()  # e.g. its client disconnected
        query.release.set()
        answer = await second
        cache.close()
        return first, answer, query.calls

    first, answer, calls = asyncio.run(scenario())
    assert first.cancelled() and answer == "row:h1" and calls == 1


def test_a_shared_read_that_fails_on_the_database_is_503_for_every_caller(ledger):
    async def scenario():
        cache, query = AccountCache(ttl=60, serve_stale=False), SlowQuery(error=OperationalError("gone"))
        _, answers = await _gather_while_running(cache, query, 8)
        down = cache.ledger_down
        cache.close()
        return answers, down, query.calls

    answers, down, calls = asyncio.run(scenario())
    assert calls == 1 and down
    assert all(isinstance(a, LedgerUnavailable) and a.code == "ledger_unavailable" for a in answers)
