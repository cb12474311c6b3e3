"""Key and balance lookups for the hot path: cached in memory, refreshed off the event loop.

A cached answer lives for `ttl` seconds, so a revocation or a top-up made by the CLI is seen
within that time. Charges this process made since a balance was read are subtracted from it,
so a wallet is not reported positive on the strength of a stale read.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from addons.ledger.accounts import KeyRecord, find_key, wallet_balance
from addons.ledger.models import database


def _in_connection(fn, *args):
    database.connect(reuse_if_open=True)
    try:
        return fn(*args)
    except Exception:
        database.close()
        raise


class KeyStore:
    def __init__(self, ttl: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self._ttl = ttl
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tollgate-db-read")
        self._keys: dict[str, tuple[float, KeyRecord | None]] = {}
        self._balances: dict[str, tuple[float, int, int]] = {}
        self._local_debits: dict[str, int] = defaultdict(int)

    async def _read(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, _in_connection, fn, *args)

    async def key(self, key_hash: str) -> KeyRecord | None:
        cached = self._keys.get(key_hash)
        if cached and cached[0] > self._clock():
            return cached[1]
        record = await self._read(find_key, key_hash)
        self._keys[key_hash] = (self._clock() + self._ttl, record)
        return record

    async def balance(self, wallet_id: str) -> int:
        cached = self._balances.get(wallet_id)
        if cached and cached[0] > self._clock():
            return cached[1] - (self._local_debits[wallet_id] - cached[2])
        debits_before = self._local_debits[wallet_id]
        balance = await self._read(wallet_balance, wallet_id)
        self._balances[wallet_id] = (self._clock() + self._ttl, balance, debits_before)
        return balance - (self._local_debits[wallet_id] - debits_before)

    def debit(self, wallet_id: str, amount_nanos: int) -> None:
        self._local_debits[wallet_id] += amount_nanos

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
