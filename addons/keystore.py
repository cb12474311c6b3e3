"""Ledger reads for the hot path: cached in memory, done on a thread pool, never on the event loop.

A cached answer lives for `ttl` seconds, so a revocation, a new customer or a changed meter made
by the CLI is seen within that time. Balances are not cached here: the hold book keeps them.

No secret is compared here: a key is found by the SHA-256 of its secret (credentials.hash_secret),
a dict key in the cache and an indexed column in the ledger. A timing difference could at most
tell how much of a digest matched, which gives nothing towards a 256-bit secret, so constant-time
comparison is not needed. Where a secret value is compared (signed-token and webhook signatures),
it is with hmac.compare_digest.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from addons.ledger import accounts
from addons.ledger.accounts import CustomerRecord, KeyRecord
from addons.ledger.models import database
from pricing import meters

MAX_CACHED = 50_000


def _in_connection(fn, *args):
    database.connect(reuse_if_open=True)
    try:
        return fn(*args)
    except Exception:
        database.close()
        raise


def _meter(account_id: str, slug: str) -> tuple[str, meters.MeterSpec] | None:
    row = accounts.find_meter(account_id, slug)
    return row and (row.id, meters.spec_from_row(row))


class KeyStore:
    def __init__(self, ttl: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self._ttl = ttl
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tollgate-db-read")
        self._cache: dict[tuple, tuple[float, object]] = {}

    async def read(self, fn, *args):
        """Uncached: for figures the caller keeps itself (balances, a token's spend)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, _in_connection, fn, *args)

    async def _cached(self, fn, *args):
        cached = self._cache.get((fn, *args))
        if cached and cached[0] > self._clock():
            return cached[1]
        value = await self.read(fn, *args)
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

    async def customer(self, account_id: str, customer_id: str) -> CustomerRecord | None:
        return await self._cached(accounts.find_customer, account_id, customer_id)

    async def meter(self, account_id: str, slug: str) -> tuple[str, meters.MeterSpec] | None:
        return await self._cached(_meter, account_id, slug)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
