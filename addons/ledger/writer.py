"""Ledger writes off mitmproxy's event loop: hooks enqueue, one thread writes in batches.

A batch is one transaction: request rows, their usage entries, and the wallet balance moves.
A request already in the ledger is skipped whole, so re-submitting a record is harmless.
A batch that fails on the connection is retried until the database is back. A batch the
database refuses as data (a constraint or a value it cannot hold) is split, and a record it
refuses on its own is appended to a dead-letter file and logged, so one bad record can
neither wedge the writer nor vanish.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime

from pathlib import Path

from peewee import InterfaceError, OperationalError

from addons.ledger.models import LedgerEntry, RequestRow, Wallet, database
from addons.settings import PROJECT_ROOT

log = logging.getLogger(__name__)


@dataclass(slots=True)
class UsageRecord:
    id: str
    created_at: datetime
    account: str
    wallet_id: str
    key: str | None
    provider: str
    endpoint: str
    model: str | None = None
    customer_id: str | None = None
    status: int | None = None
    streamed: bool = False
    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    provider_cost_nanos: int = 0
    charged_nanos: int = 0
    latency_ms: int | None = None
    ttfb_ms: int | None = None
    usage_source: str = "none"
    byok: bool = False
    error: str | None = None
    metadata: dict[str, str] | None = field(default=None)

    def row(self) -> dict:
        data = asdict(self)
        del data["wallet_id"]
        data["metadata"] = json.dumps(self.metadata) if self.metadata else None
        data["model"] = self.model[: RequestRow.model.max_length] if self.model else None  # caller-supplied
        return data


def write_batch(records: list[UsageRecord]) -> None:
    """Request rows and their usage entries go in together, so a request already present is skipped whole."""
    records = list({r.id: r for r in reversed(records)}.values())  # one record per request id
    with database.atomic():
        present = {
            request_id
            for (request_id,) in RequestRow.select(RequestRow.id).where(RequestRow.id.in_([r.id for r in records])).tuples()
        }
        fresh = [r for r in records if r.id not in present]
        if not fresh:
            return
        RequestRow.insert_many([r.row() for r in fresh]).execute()
        charged = [r for r in fresh if r.charged_nanos]
        if not charged:
            return
        LedgerEntry.insert_many(
            [dict(wallet=r.wallet_id, amount_nanos=-r.charged_nanos, reason="usage", request_id=r.id) for r in charged]
        ).execute()
        debits: dict[str, int] = defaultdict(int)
        for r in charged:
            debits[r.wallet_id] += r.charged_nanos
        for wallet_id, amount in debits.items():
            Wallet.update(balance_nanos=Wallet.balance_nanos - amount).where(Wallet.id == wallet_id).execute()


class LedgerWriter:
    def __init__(
        self,
        batch_size: int = 500,
        linger: float = 0.02,
        retry_delay: float = 1.0,
        dead_letters: Path = PROJECT_ROOT / "data" / "ledger-rejected.jsonl",
    ):
        self._queue: queue.SimpleQueue[UsageRecord | None] = queue.SimpleQueue()
        self._batch_size = batch_size
        self._linger = linger
        self._retry_delay = retry_delay
        self._dead_letters = dead_letters
        self._pending = 0
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="tollgate-ledger-writer", daemon=True)
        self._thread.start()

    def submit(self, record: UsageRecord) -> None:
        """Non-blocking: safe to call from a hook."""
        with self._idle:
            self._pending += 1
        self._queue.put(record)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is written; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 10.0) -> bool:
        self._queue.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _next_batch(self) -> tuple[list[UsageRecord], bool]:
        first = self._queue.get()
        if first is None:
            return [], True
        batch, deadline = [first], time.monotonic() + self._linger
        while len(batch) < self._batch_size:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)
                break
            batch.append(item)
        return batch, False

    def _run(self) -> None:
        while True:
            batch, stop = self._next_batch()
            if stop:
                return
            self._write_until_done(batch)
            with self._idle:
                self._pending -= len(batch)
                self._idle.notify_all()

    def _write_until_done(self, batch: list[UsageRecord]) -> None:
        while True:
            try:
                database.connect(reuse_if_open=True)
                write_batch(batch)
                return
            except (OperationalError, InterfaceError) as e:  # the database is away: keep and retry
                log.error("ledger write of %d records failed, retrying: %s", len(batch), type(e).__name__)
                if not database.is_closed():
                    database.close()
                time.sleep(self._retry_delay)
            except Exception as e:  # refused as data: find the record(s) at fault
                if len(batch) == 1:
                    self._reject(batch[0], e)
                    return
                middle = len(batch) // 2
                self._write_until_done(batch[:middle])
                self._write_until_done(batch[middle:])
                return

    def _reject(self, record: UsageRecord, error: Exception) -> None:
        log.error("ledger refused request %s (%s); kept in %s", record.id, type(error).__name__, self._dead_letters)
        self._dead_letters.parent.mkdir(parents=True, exist_ok=True)
        with self._dead_letters.open("a") as out:
            out.write(json.dumps({"error": type(error).__name__, "record": record.row()}, default=str) + "\n")
