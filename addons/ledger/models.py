"""Peewee models of the ledger, bound through a proxy so one code path serves SQLite and PostgreSQL.

Money columns are integer nano-dollars (pricing.money). A wallet's balance_nanos is a cache of
the sum of its entries, moved only in the transaction that inserts the entry; `tollgate audit`
style checks compare the two.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from datetime import UTC, datetime
from pathlib import Path

from peewee import (
    SQL,
    BigAutoField,
    BigIntegerField,
    BooleanField,
    CharField,
    Check,
    DatabaseProxy,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)
from playhouse.db_url import connect
from playhouse.migrate import SchemaMigrator, migrate

database = DatabaseProxy()

DEFAULT_ACCOUNT = "default"  # the account `tollgate init` makes, and the one commands use unless told
KEY_ROLES = ("admin", "account")  # admin: every account; account: its own account only
KEY_KINDS = ("secret", "spend")  # secret: the REST API (by its role) and the gateway; spend: the gateway only
KEY_STATUSES = ("active", "paused")  # a paused key is refused until resumed


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
    version = BigIntegerField(default=0)  # bumped with every balance move, so caches can order reads
    created_at = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("account", "customer_id"), True),)


class Customer(BaseModel):
    """A merchant's customer; its prepaid balance is the wallet (account, customer_id)."""

    id = CharField(primary_key=True, default=lambda: new_id("cus"))
    account = ForeignKeyField(Account, backref="customers")
    customer_id = CharField()  # the merchant's own id for the customer
    wallet = ForeignKeyField(Wallet, unique=True)
    autopay_threshold_nanos = BigIntegerField(null=True)
    autopay_amount_nanos = BigIntegerField(null=True)
    overdraft_limit_nanos = BigIntegerField(default=0)  # how far below zero charges may take the balance
    created_at = DateTimeField(default=utcnow)
    # who the customer is, as the merchant describes it (Lava's customer fields); all optional
    reference_id = CharField(null=True)
    email = CharField(null=True)
    phone = CharField(null=True)
    name = CharField(null=True)
    metadata = TextField(null=True)  # a JSON object
    # deleted: unknown to the API and refused for new requests; the row, its wallet and entries stay, and so
    # does its customer_id (never reused)
    deleted_at = DateTimeField(null=True)
    # Limits on top of the prepaid balance (addons/core/limits.py), NULL: none; spend counts the customer's fees
    spend_limit_nanos = BigIntegerField(null=True)
    spend_cycle = CharField(null=True)
    rpm = IntegerField(null=True)
    tpm = IntegerField(null=True)

    class Meta:
        indexes = ((("account", "customer_id"), True),)


class MeterRow(BaseModel):
    """A price list for customers. Tiers are JSON [[start_units, "rate"], ...], rates decimal strings."""

    id = CharField(primary_key=True, default=lambda: new_id("mtr"))
    account = ForeignKeyField(Account, backref="meters")
    slug = CharField()
    rate_type = CharField()  # fixed | percentage | hybrid
    percentage = CharField(null=True)  # markup in percent of provider cost, a decimal string
    base_cost_payer = CharField()  # customer | merchant
    unit = CharField()  # tokens_1m | characters_1m | minutes | requests
    token_basis = CharField(default="input+output")  # input+output | output
    tiers = TextField(default="[]")
    created_at = DateTimeField(default=utcnow)
    name = CharField(null=True)  # what people call it; NULL: its slug
    # deleted: unknown to the API and refused for new requests; its slug stays reserved, and requests priced by
    # it keep pointing at the row
    deleted_at = DateTimeField(null=True)

    class Meta:
        table_name = "meter"
        indexes = ((("account", "slug"), True),)


class MeterUsage(BaseModel):
    """A customer's running total of a meter's units in one billing cycle, in micro-units."""

    wallet = ForeignKeyField(Wallet)
    meter = ForeignKeyField(MeterRow)
    cycle_start = DateTimeField()
    units_micro = BigIntegerField(default=0)

    class Meta:
        table_name = "meter_usage"
        indexes = ((("wallet", "meter", "cycle_start"), True),)


class LedgerEntry(BaseModel):
    """Immutable: rows are only ever inserted. Unique per (wallet, reason, request) for idempotence."""

    id = BigAutoField()
    wallet = ForeignKeyField(Wallet, backref="entries")
    amount_nanos = BigIntegerField()
    reason = CharField()  # topup | usage | autopay | refund | adjustment
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
    # what the key may reach through the REST API: KEY_ROLES. The database default serves an older
    # release still inserting keys without it: they get the narrow role.
    role = CharField(default="account", constraints=[SQL("DEFAULT 'account'"), Check("role IN ('admin', 'account')")])
    # KEY_KINDS: a spend key (Lava's) pays for gateway requests but never authenticates the REST API
    kind = CharField(default="secret", constraints=[SQL("DEFAULT 'secret'")])
    status = CharField(default="active", constraints=[SQL("DEFAULT 'active'")])  # KEY_STATUSES
    # What the gateway lets the key reach, as JSON lists; NULL: everything. A model pattern ending in * is a prefix.
    allowed_models = TextField(null=True)
    allowed_providers = TextField(null=True)
    expires_at = DateTimeField(null=True)  # refused from then on; NULL: never
    # Limits (addons/core/limits.py), NULL: none. A spend or request limit counts per its cycle: day, week,
    # month or total. rpm_burst: requests let through at once (NULL: rpm).
    spend_limit_nanos = BigIntegerField(null=True)
    spend_cycle = CharField(null=True)
    request_limit = IntegerField(null=True)
    request_cycle = CharField(null=True)
    rpm = IntegerField(null=True)
    rpm_burst = IntegerField(null=True)
    tpm = IntegerField(null=True)
    # The secret, sealed (core.sealed_secrets): AWS SigV4 callers (Bedrock) sign with it, and a signature can
    # only be checked with the secret itself, never with its hash. NULL: a key made before this column
    # (rotate it to sign AWS requests).
    sigv4_secret_sealed = TextField(null=True)


class ProviderKeyRow(BaseModel):
    """A provider key (sk-...) an app sends instead of a Tollgate key, registered to the account that pays.

    Stored by fingerprint (SHA-256) only. `swap`: the gateway replaces the key with its managed one and
    bills the provider cost; otherwise the key goes on as bring-your-own-key and the BYOK fee is billed.
    """

    id = CharField(primary_key=True, default=lambda: new_id("pkey"))
    account = ForeignKeyField(Account, backref="provider_keys")
    provider = CharField()  # catalog provider id the key is for
    key_hash = CharField(index=True)  # unique among active rows, checked on registration
    prefix = CharField()  # for display: "sk-pr…"
    swap = BooleanField(default=False)
    created_at = DateTimeField(default=utcnow)
    revoked_at = DateTimeField(null=True)

    class Meta:
        table_name = "provider_key"


class RequestRow(BaseModel):
    """A request's facts and what it was charged; addons.ledger.writer.UsageRecord has a field per column."""

    id = CharField(primary_key=True)
    created_at = DateTimeField(index=True)
    account = ForeignKeyField(Account)
    key = ForeignKeyField(ApiKey, null=True)
    customer_id = CharField(null=True)
    meter_slug = CharField(null=True)
    token_id = CharField(null=True)  # the signed token used, for its spend cap
    token_spend_nanos = BigIntegerField(default=0)  # what counts against that cap: its payer's charge
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
    charged_nanos = BigIntegerField(default=0)  # debited from the merchant's wallet
    fee_nanos = BigIntegerField(default=0)  # debited from the customer's balance
    fee_uncollected_nanos = BigIntegerField(default=0)  # the part of the fee the balance could not cover
    latency_ms = IntegerField(null=True)
    ttfb_ms = IntegerField(null=True)
    usage_source = CharField(default="none")  # reported | estimated | none
    # catalog | override | unpriced | unmetered | free (addons/billing/price_guard.py), or reported (usage a
    # merchant reported, whose provider cost Tollgate never paid); NULL: a row written before price sources were recorded
    price_source = CharField(null=True)
    bill_customer = BooleanField(null=True)  # the customer was billed for it (NULL: an older row)
    byok = BooleanField(default=False)
    error = CharField(null=True)
    metadata = TextField(null=True)
    # What a merchant reported through POST /v1/requests besides tokens (addons/services/reported.py): text
    # characters, and audio or video duration in milliseconds; the proxy fills them for speech and transcriptions.
    input_characters = IntegerField(default=0)
    output_characters = IntegerField(default=0)
    input_duration_ms = IntegerField(default=0)
    output_duration_ms = IntegerField(default=0)
    # Media the proxy read (pricing.usage.MediaUsage): images generated, rerank search units billed. Added to
    # older ledgers on start (_add_missing_columns), their rows 0.
    images = IntegerField(default=0)
    search_units = IntegerField(default=0)
    # Every media quantity the request was priced with (pricing.usage.MediaUsage.to_json: image size and quality,
    # megapixels, audio and image tokens, compute time too), so `tollgate prices reprice` prices it again exactly.
    # NULL: a request without media, or one recorded before this column (added like `images`).
    media_usage = TextField(null=True)
    # An OpenAI Realtime session's id (the provider's, else one Tollgate made), on each of its responses' rows:
    # a session is charged per response (addons/proxy/realtime.py). Added to older ledgers on start, NULL there.
    session_id = CharField(null=True)
    # The client format of a /v1/rewrite request (openai, anthropic, google, bedrock): what the caller spoke, the
    # provider and model columns being what it was translated to. NULL for a native request. Added like `images`.
    client_format = CharField(null=True, max_length=16)

    class Meta:
        table_name = "request"
        # a key's or customer's use in a limit's period (addons/ledger/accounts.py key_period_use)
        indexes = ((("key", "created_at"), False), (("account", "customer_id", "created_at"), False))


class TopUp(BaseModel):
    """An automatic top-up; at most one pending per wallet, enforced by the database."""

    id = CharField(primary_key=True, default=lambda: new_id("top"))
    wallet = ForeignKeyField(Wallet)
    amount_nanos = BigIntegerField()
    status = CharField()  # pending | succeeded | failed
    attempts = IntegerField(default=0)
    pending_wallet = CharField(null=True, unique=True)  # = wallet while pending, NULL after: one at a time
    error = CharField(null=True)
    created_at = DateTimeField(default=utcnow)
    finished_at = DateTimeField(null=True)

    class Meta:
        table_name = "topup"


class Hold(BaseModel):
    """An open hold, mirrored from the proxy so the CLI can show it; removed when its request settles.

    The admission check itself runs in the proxy's memory; a row whose request never settles
    (a crash) stops counting once expires_at has passed.
    """

    request_id = CharField(primary_key=True)
    wallet = ForeignKeyField(Wallet)
    amount_nanos = BigIntegerField()
    expires_at = DateTimeField()


class Event(BaseModel):
    """Billing events: topup.requested|succeeded|failed, balance.low, balance.depleted."""

    id = BigAutoField()
    name = CharField(index=True)
    wallet = ForeignKeyField(Wallet, null=True)
    data = TextField(default="{}")
    created_at = DateTimeField(default=utcnow)


class WebhookRow(BaseModel):
    """A URL registered to receive its account's billing events (addons/billing/event_delivery.py).

    The signing secret is sealed (addons/core/sealed_secrets.py), not hashed: Tollgate signs with it.
    Deleting sets deleted_at; a deleted webhook receives nothing more.
    """

    id = CharField(primary_key=True, default=lambda: new_id("wh"))
    account = ForeignKeyField(Account, backref="webhooks")
    name = CharField()
    url = TextField()
    sealed_secret = TextField()
    created_at = DateTimeField(default=utcnow)
    deleted_at = DateTimeField(null=True)

    class Meta:
        table_name = "webhook"


class IdempotencyRow(BaseModel):
    """An API call made with an Idempotency-Key, and its answer (addons/admin/idempotency.py)."""

    account = ForeignKeyField(Account)
    key = CharField()
    request_hash = CharField()  # SHA-256 of the method, path and body
    status = IntegerField(null=True)  # NULL only inside the transaction that claimed the key
    response = TextField(null=True)
    created_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "idempotency_key"
        indexes = ((("account", "key"), True),)


MODELS = (Account, Wallet, Customer, MeterRow, MeterUsage, LedgerEntry, ApiKey, ProviderKeyRow, RequestRow, TopUp, Hold,
          Event, IdempotencyRow, WebhookRow)


def open_database(url: str):
    """Connect by URL (playhouse.db_url) and create the tables; SQLite runs in WAL mode."""
    # peewee logs every statement at DEBUG: a gateway run with -v (either launcher) shows its connections,
    # not the ledger's SQL.
    logging.getLogger("peewee").setLevel(logging.INFO)
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        # BEGIN IMMEDIATE: a transaction that reads a balance and then writes holds the lock from its start
        db = connect(
            url, pragmas={"journal_mode": "wal", "busy_timeout": 10000, "synchronous": "normal"}, lock_type="IMMEDIATE"
        )
    else:
        db = connect(url)
    database.initialize(db)
    with db.connection_context():
        db.create_tables(MODELS, safe=True)
        _add_missing_columns(db)
    return db


def _init_key_is_admin() -> None:
    """Roles arrive: the key `tollgate init` made (named admin, the default account's first) was the operator's
    admin key and stays so; every other key gets the narrow role, so no app's key gains reach it never had."""
    first = (ApiKey.select(ApiKey.id, ApiKey.name).join(Account).where(Account.name == DEFAULT_ACCOUNT)
             .order_by(ApiKey.created_at, ApiKey.id).first())
    if first is not None and first.name == "admin":
        ApiKey.update(role="admin").where(ApiKey.id == first.id).execute()


# What an added column's existing rows get other than its default: (model, field name) -> the update.
BACKFILLS = {(ApiKey, "role"): _init_key_is_admin}


def _add_missing_columns(db) -> None:
    """Bring a ledger made by an older release up to date: add the columns it lacks.

    Idempotent, and safe against another process doing the same at once (a column that appeared
    meanwhile is fine). Old rows get the field's default, or NULL: "not recorded then".
    """
    for model in MODELS:
        table = model._meta.table_name
        present = {column.name for column in db.get_columns(table)}
        for field in model._meta.sorted_fields:
            if field.column_name in present:
                continue
            if not field.null and field.default is None:
                raise RuntimeError(f"ledger table {table} lacks column {field.column_name}, which has no default")
            try:
                with db.atomic():  # the column and the values it starts with arrive together, or not at all
                    migrate(SchemaMigrator.from_database(db).add_column(table, field.column_name, field))
                    if (model, field.name) in BACKFILLS:
                        BACKFILLS[model, field.name]()
            except Exception:
                if field.column_name not in {column.name for column in db.get_columns(table)}:
                    raise


_PYTHON_TYPES = ((ForeignKeyField, str), (BooleanField, bool), (IntegerField, int), (DateTimeField, datetime),
                 (CharField, str), (TextField, str))


def facts_of(model: type[Model], leave_out: tuple[str, ...] = (), *, frozen: bool = False) -> type:
    """A slots dataclass with a keyword field per column of `model` but `leave_out`, built once at import,
    so a column is declared in one place: the model.

    A field is required where its column is NOT NULL without a default; otherwise it defaults to the
    column's default, or None. A foreign key holds the id.
    """
    specs = []
    for column in model._meta.sorted_fields:
        if column.name in leave_out:
            continue
        kind = next((python for peewee_type, python in _PYTHON_TYPES if isinstance(column, peewee_type)), object)
        required = not column.null and column.default is None
        specs.append((column.name, kind if not column.null else kind | None,
                      dataclasses.field() if required else dataclasses.field(default=column.default)))
    return dataclasses.make_dataclass(f"{model.__name__}Facts", specs, slots=True, kw_only=True, frozen=frozen)
