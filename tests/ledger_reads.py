"""End-to-end assertions read the gateway's ledger in this process, in the shapes `tollgate ... --json` prints.

Each read opens its own connection and binds only its query to it (`query.bind(db)`), never the models, so the
process-wide `addons.ledger.models.database` proxy that in-process tests open stays untouched; and `wait_for`
polls a condition instead of sleeping a fixed time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from peewee import JOIN, fn
from playhouse.db_url import connect

from addons.ledger.models import Account, Customer, LedgerEntry, RequestRow, Wallet
from pricing.money import format_usd

T = TypeVar("T")
UNKNOWN_COST = ("unpriced", "unmetered")  # price sources whose provider cost is not known (`tollgate requests`)


def wait_for(read: Callable[[], T], timeout: float = 10.0, what: str = "the condition",
             until: Callable[[T], object] = bool) -> T:
    """Poll `read` until `until(result)` holds (by default: the result is truthy) and return that result;
    fail naming `what` and the last result after `timeout` seconds."""
    deadline, interval = time.monotonic() + timeout, 0.02
    while True:
        result = read()
        if until(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last seen: {result!r:.300})")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.2)


def _usd(row: dict) -> dict:
    """As the CLI prints a row: every *_nanos int a decimal-string USD field of the same stem, datetimes ISO + Z."""
    out = {}
    for key, value in row.items():
        if key.endswith("_nanos") and isinstance(value, int):
            key, value = key[: -len("_nanos")], format_usd(value)
        elif isinstance(value, datetime):
            value = value.isoformat() + "Z"
        out[key] = value
    return out


def _request_as_listed(row: dict) -> dict:
    row = _usd(row)
    row["metadata"] = json.loads(row["metadata"]) if row["metadata"] else None
    row["media_usage"] = json.loads(row["media_usage"]) if row["media_usage"] else None
    if row["price_source"] in UNKNOWN_COST:
        row["provider_cost"] = None  # not known, which is not $0.00
    return row


class Ledger:
    """Read-only view of one ledger database (a `sqlite:///` or `postgresql://` URL), one connection per read."""

    def __init__(self, database_url: str):
        self.database_url = database_url

    def _read(self, query):
        pragmas = {"busy_timeout": 10000} if self.database_url.startswith("sqlite") else None
        db = connect(self.database_url, **({"pragmas": pragmas} if pragmas else {}))
        try:
            with db.connection_context():
                return list(query.bind(db))
        finally:
            db.close()

    def requests(self, limit: int = 200, customer: str | None = None) -> list[dict]:
        """The newest rows first, as `tollgate requests --json` lists them."""
        query = RequestRow.select().order_by(RequestRow.created_at.desc(), RequestRow.id).limit(limit)
        if customer:
            query = query.where(RequestRow.customer_id == customer)
        return [_request_as_listed(row) for row in self._read(query.dicts())]

    def request(self, request_id: str) -> dict | None:
        """One request's row as `tollgate requests --json` shows it, or None while it is not written."""
        rows = self._read(RequestRow.select().where(RequestRow.id == request_id).dicts())
        return _request_as_listed(rows[0]) if rows else None

    def request_row(self, request_id: str, timeout: float = 10.0) -> dict:
        """A request's row, waiting for the gateway's background writer to commit it."""
        return wait_for(lambda: self.request(request_id), timeout, f"request {request_id} to reach the ledger")

    def wallet(self, account: str = "default") -> dict:
        """An account's own wallet, as `tollgate wallet --json` shows it."""
        query = (Wallet.select(Account.name.alias("account"), Wallet.id.alias("wallet"), Wallet.balance_nanos)
                 .join(Account).where(Account.name == account, Wallet.customer_id == "").dicts())
        rows = self._read(query)
        assert rows, f"no account named {account!r}"
        return _usd(rows[0])

    def balance(self, customer: str | None = None, account: str = "default") -> str:
        """A customer's balance (`tollgate customers show`), or the account's own without one; a USD string."""
        if customer is None:
            return self.wallet(account)["balance"]
        query = (Wallet.select(Wallet.balance_nanos).join(Customer, on=(Customer.wallet == Wallet.id))
                 .join(Account, on=(Customer.account == Account.id))
                 .where(Account.name == account, Customer.customer_id == customer).tuples())
        rows = self._read(query)
        assert rows, f"no customer {customer!r} of account {account!r}"
        return format_usd(rows[0][0])

    def key_use(self, key_id: str) -> tuple[str, int]:
        """What a key's requests were charged (a USD string) and how many there are: `tollgate requests --key`
        added up."""
        query = (RequestRow.select(fn.COALESCE(fn.SUM(RequestRow.charged_nanos), 0), fn.COUNT(RequestRow.id))
                 .where(RequestRow.key == key_id).tuples())
        [(spend, count)] = self._read(query)
        return format_usd(int(spend)), int(count)

    def audit_ok(self) -> bool:
        """What `tollgate audit --json` reports as ok: every wallet's balance equals the sum of its entries."""
        sums = (LedgerEntry.select(LedgerEntry.wallet.alias("wallet_id"), fn.SUM(LedgerEntry.amount_nanos).alias("total"))
                .group_by(LedgerEntry.wallet).alias("sums"))
        summed = fn.COALESCE(sums.c.total, 0)
        query = (Wallet.select(Wallet.id).join(sums, JOIN.LEFT_OUTER, on=(sums.c.wallet_id == Wallet.id))
                 .where(Wallet.balance_nanos != summed).tuples())
        return not self._read(query)
