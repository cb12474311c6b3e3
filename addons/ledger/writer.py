"""Ledger writes off mitmproxy's event loop: hooks enqueue, one thread writes in batches.

A batch is one transaction: request rows, their usage entries, and the wallet balance moves.
A request already in the ledger is skipped whole, so re-submitting a record is harmless.
A batch that fails on the connection is retried until the database is back. A batch the
database refuses as data (a constraint or a value it cannot hold) is split, and a record it
refuses on its own is appended to a dead-letter file and logged, so one bad record can
neither wedge the writer nor vanish.

What a batch charges is billing's business: whoever builds the writer hands it the charging function
(the gateway passes addons.billing.charges.apply_charges), so the ledger imports nothing of billing.
That function returns each request's fees rather than setting them on the records, and the writer
writes the rows from the records' facts and those fees.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path

from peewee import (
    InterfaceError,
    OperationalError,
)

from addons.core.settings import PROJECT_ROOT
from addons.ledger.bulk import bulk_insert, execute
from addons.ledger.models import Hold, RequestRow, database, facts_of

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RequestFees:
    """What billing charged a request at commit, against the balances and running totals locked then.

    Each field is a RequestRow column; billing's charging function returns these (it never sets them on
    the record) and the writer writes them into the request's row.
    """

    fee_nanos: int = 0  # debited from the customer's balance
    fee_uncollected_nanos: int = 0  # the part of the customer's fee the balance could not cover
    token_spend_nanos: int = 0  # what counts against the signed token's spend cap: its payer's charge


NO_FEES = RequestFees()
_FEE_COLUMNS = tuple(f.name for f in fields(RequestFees))
@dataclass(slots=True, kw_only=True)
class UsageRecord(facts_of(RequestRow, leave_out=_FEE_COLUMNS)):
    """A finished request: a field per RequestRow column (but the fees billing decides at commit), and
    what billing needs to charge it. A column added to RequestRow is a field here with no other edit.

    charged_nanos (the merchant's debit) and customer_byok_fee_nanos were decided by billing when the
    request ended (addons.billing.charges.request_charges); the customer's fee is decided at commit.
    """

    metadata: dict[str, str] | None = None  # the column holds it as JSON
    # billing inputs, not columns
    wallet_id: str  # the merchant's wallet
    customer_wallet_id: str | None = None
    meter_id: str | None = None
    units_micro: int = 0
    customer_byok_fee_nanos: int = 0

    def row(self, fees: RequestFees = NO_FEES) -> dict:
        """The request's row: its facts and the fees billing returned for it (none: not charged)."""
        data = {name: getattr(self, name) for name in _FACT_COLUMNS}  # not asdict: it deep-copies every field
        data["metadata"] = json.dumps(self.metadata) if self.metadata else None
        data["model"] = self.model[: RequestRow.model.max_length] if self.model else None  # caller-supplied
        data.update({name: getattr(fees, name) for name in _FEE_COLUMNS})
        return data

    def values(self, fees: RequestFees = NO_FEES) -> tuple:
        """row() in _COLUMNS order, for bulk_insert."""
        return tuple(self.row(fees).values())


@dataclass(slots=True)
class CommitReport:
    """What a committed batch changed, for the proxy's holds and the auto top-up, and each request's fees."""

    request_ids: list[str] = field(default_factory=list)
    wallets: dict[str, tuple[int, int]] = field(default_factory=dict)  # wallet -> (balance, version)
    token_charges: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    charged_customer_wallets: set[str] = field(default_factory=set)
    customer_fees: dict[str, int] = field(default_factory=dict)  # request id -> fee its customer was charged
    fees: dict[str, RequestFees] = field(default_factory=dict)  # request id -> its row's fees; absent: none
    written: list[UsageRecord] = field(default_factory=list)  # the rows this batch inserted (not those already there)


# Writes the ledger entries and balance moves of records not yet in the ledger, inside the batch's
# transaction, and returns the fees each request's row records (addons.billing.charges.apply_charges).
Charge = Callable[[list[UsageRecord]], CommitReport]

_FACT_COLUMNS = tuple(column.name for column in RequestRow._meta.sorted_fields if column.name not in _FEE_COLUMNS)
_COLUMNS = _FACT_COLUMNS + _FEE_COLUMNS
_HOLD_COLUMNS = ("request_id", "wallet", "amount_nanos", "expires_at")


@dataclass(slots=True)
class HoldRecord:
    """A hold the proxy opened, mirrored into the ledger for `tollgate customers show`; `added`: more held under a
    request mirrored already (a Realtime top-up), added to its row."""

    request_id: str
    wallet_id: str
    amount_nanos: int
    expires_at: datetime
    added: bool = False


def write_batch(items: list[UsageRecord | HoldRecord], charge: Charge) -> CommitReport:
    """Request rows and their charges go in together, so a request already present is skipped whole."""
    holds = [(h.request_id, h.wallet_id, h.amount_nanos, h.expires_at)
             for h in items if isinstance(h, HoldRecord) and not h.added]
    records = list({r.id: r for r in reversed(items) if isinstance(r, UsageRecord)}.values())  # one per request id
    with database.atomic():
        bulk_insert(Hold, _HOLD_COLUMNS, holds, ignore_duplicates=True)
        for h in items:
            if isinstance(h, HoldRecord) and h.added:  # rare: a row per Realtime top-up of a customer's hold
                execute('UPDATE "hold" SET "amount_nanos" = "amount_nanos" + %s, "expires_at" = %s '
                        'WHERE "request_id" = %s', h.amount_nanos, h.expires_at, h.request_id)
        if not records:
            return CommitReport()
        ids = [r.id for r in records]
        present = {rid for (rid,) in execute('SELECT "id" FROM "request" WHERE "id" IN %(list)s', ids)}
        fresh = sorted((r for r in records if r.id not in present), key=lambda r: r.created_at)
        report = charge(fresh) if fresh else CommitReport()
        bulk_insert(RequestRow, _COLUMNS, [r.values(report.fees.get(r.id, NO_FEES)) for r in fresh])
        if held := [r.id for r in records if r.customer_wallet_id]:  # only a customer's request has a hold row
            execute('DELETE FROM "hold" WHERE "request_id" IN %(list)s', held)
        report.request_ids, report.written = ids, fresh
        return report


class LedgerWriter:
    def __init__(
        self,
        charge: Charge,
        batch_size: int = 500,
        linger: float = 0.02,
        retry_delay: float = 1.0,
        dead_letters: Path = PROJECT_ROOT / "data" / "ledger-rejected.jsonl",
        on_commit: Callable[[CommitReport], None] | None = None,
    ):
        self._inbox: collections.deque[UsageRecord | HoldRecord | None] = collections.deque()
        self._arrived = threading.Event()  # set by the first record after the writer took a batch
        self._charge = charge
        self._on_commit = on_commit
        self._batch_size = batch_size
        self._linger = linger
        self._retry_delay = retry_delay
        self._dead_letters = dead_letters
        self._pending = 0
        self.failing = False  # the last write failed on the connection: the database is away (a metric)
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="tollgate-ledger-writer", daemon=True)
        self._thread.start()

    def submit(self, record: UsageRecord | HoldRecord) -> None:
        """Non-blocking: safe to call from a hook. Only the first record of a batch wakes the writer thread:
        a wake-up per record (a futex call and a GIL hand-over to the writer each) cost more than the write."""
        with self._idle:
            self._pending += 1
        self._inbox.append(record)
        if not self._arrived.is_set():
            self._arrived.set()

    @property
    def queued(self) -> int:
        """Records submitted and not yet written."""
        return self._pending

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is written; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 10.0) -> bool:
        self._inbox.append(None)
        self._arrived.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _next_batch(self) -> tuple[list[UsageRecord | HoldRecord], bool]:
        """Up to batch_size records: what arrives within `linger` of the first, or is already waiting;
        (.., True) once close() was called and everything before it is taken."""
        batch: list[UsageRecord | HoldRecord] = []
        while not batch:
            self._arrived.wait()
            if 0 < len(self._inbox) < self._batch_size and self._inbox[-1] is not None:
                time.sleep(self._linger)  # meanwhile submit() only appends
            self._arrived.clear()  # before taking: a record appended after this sets it again
            while len(batch) < self._batch_size and self._inbox:
                item = self._inbox.popleft()
                if item is None:
                    if not batch:
                        return [], True
                    self._inbox.appendleft(None)
                    break
                batch.append(item)
        if self._inbox:
            self._arrived.set()  # more than one batch was waiting
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

    def _write_until_done(self, batch: list[UsageRecord | HoldRecord]) -> None:
        while True:
            try:
                database.connect(reuse_if_open=True)
                report = write_batch(batch, self._charge)
            except (OperationalError, InterfaceError) as e:  # the database is away: keep and retry
                log.error("ledger write of %d records failed, retrying: %s", len(batch), type(e).__name__)
                self.failing = True
                if not database.is_closed():
                    database.close()
                time.sleep(self._retry_delay)
                continue
            except Exception as e:  # refused as data: find the record(s) at fault
                if len(batch) == 1:
                    self._reject(batch[0], e)
                    return
                middle = len(batch) // 2
                self._write_until_done(batch[:middle])
                self._write_until_done(batch[middle:])
                return
            self.failing = False
            if self._on_commit and report.request_ids:
                try:
                    self._on_commit(report)
                except Exception:
                    log.exception("ledger commit callback failed")
            return

    def _reject(self, item: UsageRecord | HoldRecord, error: Exception) -> None:
        if isinstance(item, HoldRecord):  # a hold mirror is informational: losing one loses no money
            log.error("ledger refused the hold of %s (%s)", item.request_id, type(error).__name__)
            return
        log.error("ledger refused request %s (%s); kept in %s", item.id, type(error).__name__, self._dead_letters)
        if self._on_commit:  # nothing was charged: let the proxy release the request's holds
            self._on_commit(CommitReport(request_ids=[item.id]))
        self._dead_letters.parent.mkdir(parents=True, exist_ok=True)
        with self._dead_letters.open("a") as out:
            out.write(json.dumps({"error": type(error).__name__, "record": item.row()}, default=str) + "\n")
