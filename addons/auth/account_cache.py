"""The ledger's account records, cached for the hot path: read on a thread pool, never on the event loop.

What it holds: keys (by secret hash and by id), provider-key registrations, accounts, customers and
meters, the records that say who a caller is and how it is billed. Balances and a token's spend are
not cached here (the hold book keeps them); `read` runs them uncached, sharing a read in flight.

A cached answer lives for `ttl` seconds, so a revocation, a new customer or a changed meter made
by the CLI or the API is seen within that time. A deleted customer or meter is not found (the
ledger's lookups find live ones only), so requests naming it are refused as for an unknown one.

When the database cannot be reached the cache marks the ledger down and probes it until it
answers. Meanwhile, with `serve_stale`, cached answers are used past their time (a key unknown to
this process gets 503); without it, every lookup is refused with 503 at once.

No secret is compared here: a key (a Tollgate secret, or a provider key an app registered) is found
by the SHA-256 of its secret (core.secret_formats.hash_secret), a dict key in the cache and an indexed column
in the ledger. A timing difference could at most tell how much of a digest matched, which gives
nothing towards a high-entropy secret, so constant-time comparison is not needed. Where a secret
value is compared (signed-token and webhook signatures), it is with hmac.compare_digest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from mitmproxy.utils.asyncio_utils import create_task
from peewee import InterfaceError, OperationalError

from addons.core.errors import LedgerUnavailable
from addons.ledger import accounts
from addons.ledger.accounts import AccountRecord, CustomerRecord, KeyRecord, ProviderKeyRecord
from addons.ledger.models import database
from pricing import meters

MAX_CACHED = 50_000
LEDGER_ERRORS = (OperationalError, InterfaceError)  # what peewee raises for a database that is away
log = logging.getLogger(__name__)


def _in_connection(fn, *args):
    database.connect(reuse_if_open=True)
    try:
        return fn(*args)
    except Exception:
        database.close()
        raise


def _ping() -> None:
    database.execute_sql("SELECT 1")


def _meter(account_id: str, slug: str) -> tuple[str, meters.MeterSpec] | None:
    row = accounts.find_meter(account_id, slug)
    return row and (row.id, meters.spec_from_row(row))


class AccountCache:
    def __init__(self, ttl: float = 1.0, clock: Callable[[], float] = time.monotonic, serve_stale: bool = True,
                 probe_interval: float = 0.5):
        self._ttl = ttl
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tollgate-db-read")
        self._cache: dict[tuple, tuple[float, object]] = {}
        self._running: dict[tuple, asyncio.Future] = {}  # reads in progress, shared by their callers
        self.serve_stale = serve_stale
        self.ledger_down = False
        self._probe_interval = probe_interval

    async def read(self, fn, *args):
        """Uncached: for figures the caller keeps itself (balances, a token's spend). Callers asking for the
        same read while it runs share it: when a cached key expires, all the requests in flight on it miss
        at once, and one database read serves them all."""
        if self.ledger_down and not self.serve_stale:
            raise _unavailable()
        query = (fn, *args)
        running = self._running.get(query)
        if running is None:
            running = self._running[query] = asyncio.get_running_loop().run_in_executor(
                self._pool, _in_connection, fn, *args)
            running.add_done_callback(lambda done: self._finished(query, done))
        try:
            return await asyncio.shield(running)  # a caller that goes away leaves the read to the others
        except LEDGER_ERRORS:
            self._mark_down()
            raise _unavailable() from None

    def _finished(self, query: tuple, done: asyncio.Future) -> None:
        if self._running.get(query) is done:
            del self._running[query]
        if not done.cancelled():
            done.exception()  # retrieved, also when every caller went away

    def _mark_down(self) -> None:
        if not self.ledger_down:
            self.ledger_down = True
            log.error("tollgate: the ledger database is unreachable; %s until it answers again",
                      "serving on cached keys and balances" if self.serve_stale else "refusing requests (503)")
            create_task(self._probe_until_up(), name="tollgate-ledger-probe", keep_ref=True)

    async def _probe_until_up(self) -> None:
        loop = asyncio.get_running_loop()
        while self.ledger_down:
            await asyncio.sleep(self._probe_interval)
            try:
                await loop.run_in_executor(self._pool, _in_connection, _ping)
            except LEDGER_ERRORS:
                continue
            except RuntimeError:  # the pool was shut down: this cache is closed
                return
            self.ledger_down = False
            log.warning("tollgate: the ledger database answers again")

    async def _cached(self, fn, *args):
        cached = self._cache.get((fn, *args))
        if cached and (cached[0] > self._clock() or (self.ledger_down and self.serve_stale)):
            return cached[1]
        try:
            value = await self.read(fn, *args)
        except LedgerUnavailable:
            if cached and self.serve_stale:
                return cached[1]
            raise
        if len(self._cache) >= MAX_CACHED:  # unknown keys a caller invents must not grow memory
            now = self._clock()
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
        self._cache[(fn, *args)] = (self._clock() + self._ttl, value)
        return value

    async def key(self, key_hash: str) -> KeyRecord | None:
        return await self._cached(accounts.find_key, key_hash)

    async def key_by_id(self, key_id: str) -> KeyRecord | None:
        return await self._cached(accounts.find_key_by_id, key_id)

    async def sigv4_secret(self, key_id: str) -> str | None:
        """The secret an AWS SigV4 caller signs with (ledger.accounts.find_sigv4_secret), unsealed off the loop."""
        return await self._cached(accounts.find_sigv4_secret, key_id)

    async def provider_key(self, key_hash: str, provider: str) -> ProviderKeyRecord | None:
        """A provider key an app sent instead of a Tollgate key, by fingerprint: registered to whom."""
        return await self._cached(accounts.find_provider_key, key_hash, provider)

    async def account(self, name: str) -> AccountRecord | None:
        return await self._cached(accounts.find_account, name)

    async def customer(self, account_id: str, customer_id: str) -> CustomerRecord | None:
        return await self._cached(accounts.find_customer, account_id, customer_id)

    async def meter(self, account_id: str, slug: str) -> tuple[str, meters.MeterSpec] | None:
        return await self._cached(_meter, account_id, slug)

    def close(self) -> None:
        self.ledger_down = False  # ends a probe
        self._pool.shutdown(wait=False, cancel_futures=True)


def _unavailable() -> LedgerUnavailable:
    return LedgerUnavailable("ledger_unavailable", "the gateway cannot reach its ledger database; retry shortly")
