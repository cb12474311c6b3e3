"""Peewee models of the ledger, bound through a proxy so one code path serves SQLite and PostgreSQL.

Money columns are integer nano-dollars (pricing.money). A wallet's balance_nanos is a cache of
the sum of its entries, moved only in the transaction that inserts the entry; `tollgate audit`
style checks compare the two.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path

from peewee import (
    BigIntegerField,
    BooleanField,
    CharField,
    DatabaseProxy,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
    BigAutoField,
)
from playhouse.db_url import connect

database = DatabaseProxy()


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class BaseModel(Model):
    class Meta:
        database = database


class Account(BaseModel):
    id = CharField(primary_key=True, default=lambda: new_id("acct"))
    name = CharField(unique=True)
    created_at = DateTimeField(default=utcnow)


class Wallet(BaseModel):
    """customer_id is "" for the account's own wallet; customers' prepaid wallets come with billing."""

    id = CharField(primary_key=True, default=lambda: new_id("wal"))
    account = ForeignKeyField(Account, backref="wallets")
    customer_id = CharField(default="")
    balance_nanos = BigIntegerField(default=0)
    created_at = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("account", "customer_id"), True),)


class LedgerEntry(BaseModel):
    """Immutable: rows are only ever inserted. Unique per (wallet, reason, request) for idempotence."""

    id = BigAutoField()
    wallet = ForeignKeyField(Wallet, backref="entries")
    amount_nanos = BigIntegerField()
    reason = CharField()  # topup | usage | refund | adjustment
    request_id = CharField(null=True)
    note = CharField(null=True)
    created_at = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("wallet", "reason", "request_id"), True),)


class ApiKey(BaseModel):
    id = CharField(primary_key=True, default=lambda: new_id("key"))
    account = ForeignKeyField(Account, backref="keys")
    name = CharField()
    key_hash = CharField(unique=True)
    prefix = CharField()
    created_at = DateTimeField(default=utcnow)
    revoked_at = DateTimeField(null=True)


class RequestRow(BaseModel):
    id = CharField(primary_key=True)
    created_at = DateTimeField(index=True)
    account = ForeignKeyField(Account)
    key = ForeignKeyField(ApiKey, null=True)
    customer_id = CharField(null=True)
    provider = CharField()
    model = CharField(null=True)
    endpoint = CharField()
    status = IntegerField(null=True)
    streamed = BooleanField(default=False)
    input_tokens = IntegerField(default=0)
    cache_read_tokens = IntegerField(default=0)
    cache_write_tokens = IntegerField(default=0)
    output_tokens = IntegerField(default=0)
    reasoning_tokens = IntegerField(default=0)
    provider_cost_nanos = BigIntegerField(default=0)
    charged_nanos = BigIntegerField(default=0)
    latency_ms = IntegerField(null=True)
    ttfb_ms = IntegerField(null=True)
    usage_source = CharField()  # reported | estimated | none
    byok = BooleanField(default=False)
    error = CharField(null=True)
    metadata = TextField(null=True)

    class Meta:
        table_name = "request"


MODELS = (Account, Wallet, LedgerEntry, ApiKey, RequestRow)


def open_database(url: str):
    """Connect by URL (playhouse.db_url) and create the tables; SQLite runs in WAL mode."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        db = connect(url, pragmas={"journal_mode": "wal", "busy_timeout": 10000, "synchronous": "normal"})
    else:
        db = connect(url)
    database.initialize(db)
    with db.connection_context():
        db.create_tables(MODELS, safe=True)
    return db
