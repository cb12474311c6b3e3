"""Accounts, keys and wallets: the synchronous operations the CLI runs and the gateway runs off-loop."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from peewee import JOIN, IntegrityError, fn

from addons.core.limits import NO_LIMITS, Limits
from addons.core.sealed_secrets import seal, unseal
from addons.core.secret_formats import (
    SECRET_PREFIX,
    display_prefix,
    hash_secret,
    looks_like_tollgate_credential,
    new_secret_key,
    provider_key_prefix,
)
from addons.ledger.models import (
    DEFAULT_ACCOUNT,
    Account,
    ApiKey,
    Customer,
    LedgerEntry,
    MeterRow,
    ProviderKeyRow,
    RequestRow,
    Wallet,
    database,
    utcnow,
)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the hot path needs to know about a key, detached from the database."""

    key_id: str | None  # None: billed through a registered or tracked provider key, no Tollgate key
    account_id: str
    wallet_id: str
    revoked: bool
    name: str = ""  # what the operator calls it (shown in mitmweb's flow comments)
    role: str = "account"  # models.KEY_ROLES: admin reaches every account through the REST API, account its own
    kind: str = "secret"  # models.KEY_KINDS: a spend key pays for gateway requests, never reaches the REST API
    status: str = "active"  # models.KEY_STATUSES: a paused key is refused
    expires_at: float | None = None  # epoch seconds (compared on every request); None: never
    allowed_models: tuple[str, ...] = ()  # empty: every model; a pattern ending in * is a prefix
    allowed_providers: tuple[str, ...] = ()  # empty: every provider
    limits: Limits = NO_LIMITS


# The ApiKey columns of each Limits field (a customer's are named alike, less those it lacks).
LIMIT_COLUMNS = {"spend_limit_nanos": "spend_limit_nanos", "spend_cycle": "spend_cycle",
                 "request_limit": "request_limit", "request_cycle": "request_cycle", "rpm": "rpm",
                 "burst": "rpm_burst", "tpm": "tpm"}
CUSTOMER_LIMITS = ("spend_limit_nanos", "spend_cycle", "rpm", "tpm")


def limits_of(row) -> Limits:
    """The Limits of an ApiKey or Customer row, a model or a dict of its columns; the columns it lacks are None."""
    get = row.get if isinstance(row, dict) else lambda column: getattr(row, column, None)
    return Limits(**{field: get(column) for field, column in LIMIT_COLUMNS.items()})


def limit_columns(limits: Limits) -> dict:
    """The ApiKey columns that store `limits`."""
    return {column: getattr(limits, field) for field, column in LIMIT_COLUMNS.items()}


def _json_list(values: Sequence[str] | None) -> str | None:
    return None if values is None else json.dumps(list(values))


def key_scope(text: str | None) -> tuple[str, ...]:
    """An ApiKey's allowed_models or allowed_providers column as a tuple; () for NULL (no restriction)."""
    return tuple(json.loads(text)) if text else ()


def ensure_account(name: str = DEFAULT_ACCOUNT) -> tuple[Account, Wallet]:
    with database.atomic():
        account, _ = Account.get_or_create(name=name)
        wallet, _ = Wallet.get_or_create(account=account, customer_id="")
    return account, wallet


def create_key(name: str, account_name: str = DEFAULT_ACCOUNT, role: str = "account", *, kind: str = "secret",
               status: str = "active", allowed_models: Sequence[str] | None = None,
               allowed_providers: Sequence[str] | None = None,
               expires_at: datetime | None = None, limits: Limits = NO_LIMITS) -> tuple[ApiKey, str]:
    """Returns the row and the secret; the secret exists only in this return value."""
    account, _ = ensure_account(account_name)
    secret = new_secret_key()
    row = ApiKey.create(account=account, name=name, key_hash=hash_secret(secret), prefix=display_prefix(secret),
                        sigv4_secret_sealed=seal(secret), role=role, kind=kind, status=status,
                        allowed_models=_json_list(allowed_models), allowed_providers=_json_list(allowed_providers),
                        expires_at=expires_at,
                        **limit_columns(limits))
    return row, secret


def rotate_key(key_id: str) -> tuple[ApiKey, str]:
    """A new secret for the key, same id and history; the old secret's hash is gone, so it is unknown from now
    (the proxy's cache forgets it within tollgate_cache_ttl_ms). LookupError: no such key."""
    secret = new_secret_key()
    with database.atomic():
        if not ApiKey.update(key_hash=hash_secret(secret), prefix=display_prefix(secret),
                             sigv4_secret_sealed=seal(secret)).where(ApiKey.id == key_id).execute():
            raise LookupError(f"no key {key_id}")
        return ApiKey.get_by_id(key_id), secret


# The columns update_key may change; the two lists are given as sequences (None: no restriction).
KEY_CHANGES = ("name", "status", "allowed_models", "allowed_providers", "expires_at", *LIMIT_COLUMNS.values())


def update_key(key_id: str, **changes) -> ApiKey:
    """Change the KEY_CHANGES given; LookupError: no such key."""
    if unknown := set(changes) - set(KEY_CHANGES):
        raise TypeError(f"update_key cannot change {', '.join(sorted(unknown))}")
    values = {name: _json_list(value) if name.startswith("allowed_") else value for name, value in changes.items()}
    with database.atomic():
        if values and not ApiKey.update(**values).where(ApiKey.id == key_id).execute():
            raise LookupError(f"no key {key_id}")
        row = ApiKey.get_or_none(ApiKey.id == key_id)
    if row is None:
        raise LookupError(f"no key {key_id}")
    return row


def _revoke(model, row_id: str, what: str):
    """Mark a key or registration revoked, once; the row stays for the ledger's history."""
    row = model.get_or_none(model.id == row_id)
    if row is None:
        raise LookupError(f"no {what} {row_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        row.save()
    return row


def revoke_key(key_id: str) -> ApiKey:
    return _revoke(ApiKey, key_id, "key")


@dataclass(frozen=True, slots=True)
class AccountRecord:
    account_id: str
    wallet_id: str


def find_account(name: str) -> AccountRecord | None:
    row = (Wallet.select(Wallet.id, Wallet.account).join(Account)
           .where(Account.name == name, Wallet.customer_id == "").tuples().first())
    return row and AccountRecord(row[1], row[0])


# -- provider keys that apps send instead of a Tollgate key -------------------------------------

@dataclass(frozen=True, slots=True)
class ProviderKeyRecord:
    """A registered provider key, as the hot path needs it."""

    registration_id: str
    account_id: str
    wallet_id: str
    swap: bool


def register_provider_key(account_name: str, provider: str, key: str, swap: bool = False) -> ProviderKeyRow:
    """Map a provider key's fingerprint to an account; the key itself is not kept. AlreadyExists: the key has an
    active registration (named, never the key). ValueError: not a usable provider key."""
    key = key.strip()
    if not key:
        raise ValueError("no provider key given (it is read from stdin)")
    if key.startswith(SECRET_PREFIX):
        raise ValueError("this is a Tollgate secret key, not a provider key: apps can send it as it is")
    if looks_like_tollgate_credential(key):
        raise ValueError("this is a Tollgate token, not a provider key: apps can send it as it is")
    if not key.isascii() or not key.isprintable() or " " in key:
        raise ValueError("a provider key is one line of printable ASCII without spaces")
    key_hash = hash_secret(key)
    account, _ = ensure_account(account_name)
    with database.atomic():
        existing = (ProviderKeyRow.select(ProviderKeyRow, Account.name.alias("account_name")).join(Account)
                    .where(ProviderKeyRow.key_hash == key_hash, ProviderKeyRow.revoked_at.is_null()).objects().first())
        if existing is not None:
            raise AlreadyExists(f"this key is registered already as {existing.id} (account {existing.account_name!r}, "
                                f"provider {existing.provider}); revoke that registration first to change it")
        return ProviderKeyRow.create(account=account, provider=provider, key_hash=key_hash,
                                     prefix=provider_key_prefix(key), swap=swap)


def find_provider_key(key_hash: str, provider: str) -> ProviderKeyRecord | None:
    """The active registration of this key for this provider; a revoked one is as none."""
    row = (
        ProviderKeyRow.select(ProviderKeyRow.id, ProviderKeyRow.account, Wallet.id, ProviderKeyRow.swap)
        .join(Wallet, on=(Wallet.account == ProviderKeyRow.account) & (Wallet.customer_id == ""))
        .where(ProviderKeyRow.key_hash == key_hash, ProviderKeyRow.provider == provider,
               ProviderKeyRow.revoked_at.is_null())
        .tuples()
        .first()
    )
    return row and ProviderKeyRecord(row[0], row[1], row[2], bool(row[3]))


def provider_keys() -> list[dict]:
    query = (ProviderKeyRow.select(ProviderKeyRow, Account.name.alias("account_name")).join(Account)
             .order_by(ProviderKeyRow.created_at))
    return [{"id": r.id, "account": r.account_name, "provider": r.provider, "prefix": r.prefix, "swap": r.swap,
             "created_at": r.created_at, "revoked_at": r.revoked_at} for r in query.objects()]


def revoke_provider_key(registration_id: str) -> ProviderKeyRow:
    return _revoke(ProviderKeyRow, registration_id, "provider key registration")


@dataclass(frozen=True, slots=True)
class CustomerRecord:
    customer_id: str
    wallet_id: str
    overdraft_limit_nanos: int
    limits: Limits = NO_LIMITS


def _find_key(condition) -> KeyRecord | None:
    row = (
        ApiKey.select(ApiKey, Wallet.id.alias("wallet_id"))
        .join(Wallet, on=(Wallet.account == ApiKey.account) & (Wallet.customer_id == ""))
        .where(condition)
        .dicts()
        .first()
    )
    if row is None:
        return None
    expires_at = row["expires_at"]
    return KeyRecord(row["id"], row["account"], row["wallet_id"], row["revoked_at"] is not None, row["name"],
                     row["role"], row["kind"], row["status"],
                     None if expires_at is None else expires_at.replace(tzinfo=UTC).timestamp(),
                     key_scope(row["allowed_models"]), key_scope(row["allowed_providers"]), limits_of(row))


def find_key(key_hash: str) -> KeyRecord | None:
    return _find_key(ApiKey.key_hash == key_hash)


def find_key_by_id(key_id: str) -> KeyRecord | None:
    return _find_key(ApiKey.id == key_id)


def find_sigv4_secret(key_id: str) -> str | None:
    """The key's secret, unsealed, for checking an AWS SigV4 signature made with it; None: no such key, or one
    made before secrets were sealed. UnsealError: the sealing key changed."""
    sealed = ApiKey.select(ApiKey.sigv4_secret_sealed).where(ApiKey.id == key_id).scalar()
    return unseal(sealed) if sealed else None


def find_customer(account_id: str, customer_id: str) -> CustomerRecord | None:
    """A live customer of the account; a deleted one is as unknown (requests naming it are refused)."""
    row = Customer.get_or_none(Customer.account == account_id, Customer.customer_id == customer_id,
                               Customer.deleted_at.is_null())
    return row and CustomerRecord(row.customer_id, row.wallet_id, row.overdraft_limit_nanos, limits_of(row))


def find_meter(account_id: str, slug: str) -> MeterRow | None:
    """A live meter of the account; a deleted one is as unknown (requests and tokens naming it are refused)."""
    return MeterRow.get_or_none(MeterRow.account == account_id, MeterRow.slug == slug, MeterRow.deleted_at.is_null())


def wallet_state(wallet_id: str) -> tuple[int, int]:
    """(balance, version): the version orders this read against the writer's commits."""
    row = Wallet.select(Wallet.balance_nanos, Wallet.version).where(Wallet.id == wallet_id).tuples().first()
    return row or (0, 0)


def token_spent(token_id: str) -> int:
    """What a signed token's payer has been charged (the customer's fees, else the merchant's debits)."""
    total = fn.COALESCE(fn.SUM(RequestRow.token_spend_nanos), 0)
    return int(RequestRow.select(total).where(RequestRow.token_id == token_id).scalar())


def key_period_use(key_id: str, since: datetime | None) -> tuple[int, int]:
    """(what the key's account was charged, requests) for the key's requests from `since` (None: ever)."""
    query = RequestRow.select(fn.COALESCE(fn.SUM(RequestRow.charged_nanos), 0), fn.COUNT(RequestRow.id)).where(
        RequestRow.key == key_id)
    if since is not None:
        query = query.where(RequestRow.created_at >= since)
    spend, count = query.tuples().first()
    return int(spend), int(count)


def customer_period_spend(account_id: str, customer_id: str, since: datetime | None) -> int:
    """The fees the customer was charged for requests from `since` (None: ever)."""
    query = RequestRow.select(fn.COALESCE(fn.SUM(RequestRow.fee_nanos), 0)).where(
        RequestRow.account == account_id, RequestRow.customer_id == customer_id)
    if since is not None:
        query = query.where(RequestRow.created_at >= since)
    return int(query.scalar())


def wallet_balance(wallet_id: str) -> int:
    return Wallet.select(Wallet.balance_nanos).where(Wallet.id == wallet_id).scalar() or 0


def credit_wallet(wallet_id: str, amount_nanos: int, reason: str = "topup", note: str | None = None) -> int:
    """Insert the entry and move the cached balance in one transaction; returns the new balance."""
    with database.atomic():
        LedgerEntry.create(wallet=wallet_id, amount_nanos=amount_nanos, reason=reason, note=note)
        Wallet.update(balance_nanos=Wallet.balance_nanos + amount_nanos, version=Wallet.version + 1).where(
            Wallet.id == wallet_id
        ).execute()
        return wallet_balance(wallet_id)


def audit_wallets() -> list[tuple[str, int, int]]:
    """Wallets whose cached balance differs from the sum of their entries: (wallet, cached, summed).

    One statement, so balances and entries come from one snapshot even while the proxy commits.
    """
    sums = (LedgerEntry.select(LedgerEntry.wallet.alias("wallet_id"), fn.SUM(LedgerEntry.amount_nanos).alias("total"))
            .group_by(LedgerEntry.wallet).alias("sums"))
    summed = fn.COALESCE(sums.c.total, 0)
    query = (Wallet.select(Wallet.id, Wallet.balance_nanos, summed)
             .join(sums, JOIN.LEFT_OUTER, on=(sums.c.wallet_id == Wallet.id))
             .where(Wallet.balance_nanos != summed))
    return [(wallet_id, balance, int(total)) for wallet_id, balance, total in query.tuples()]


class AlreadyExists(ValueError):
    """A customer id or meter slug the account has already; `deleted`: taken by one since deleted, whose id
    stays reserved so that the ledger's history never names two of them."""

    def __init__(self, message: str, deleted: bool = False):
        super().__init__(message)
        self.deleted = deleted


def _taken(what: str, name: str, row, key: str = "id") -> AlreadyExists:
    if row is not None and row.deleted_at is not None:
        return AlreadyExists(f"{what} {name!r} was deleted; its {key} stays reserved, choose another", deleted=True)
    return AlreadyExists(f"{what} {name!r} already exists")


def create_customer(account_name: str, customer_id: str, *, balance_nanos: int = 0,
                    autopay_threshold_nanos: int | None = None, autopay_amount_nanos: int | None = None,
                    overdraft_limit_nanos: int = 0, **profile) -> Customer:
    """The customer and its wallet, opened with `balance_nanos` (an entry). `profile`: reference_id, email,
    phone, name, metadata (JSON text). AlreadyExists: the id is taken, by a live or a deleted customer."""
    account, _ = ensure_account(account_name)
    existing = Customer.get_or_none(Customer.account == account, Customer.customer_id == customer_id)
    if existing is not None:
        raise _taken("customer", customer_id, existing)
    try:
        with database.atomic():  # a savepoint inside a caller's transaction: a lost race leaves it usable
            wallet = Wallet.create(account=account, customer_id=customer_id)
            customer = Customer.create(
                account=account, customer_id=customer_id, wallet=wallet,
                autopay_threshold_nanos=autopay_threshold_nanos, autopay_amount_nanos=autopay_amount_nanos,
                overdraft_limit_nanos=overdraft_limit_nanos, **profile,
            )
            if balance_nanos:
                credit_wallet(wallet.id, balance_nanos, "topup", note="opening balance")
    except IntegrityError:  # created meanwhile by another process
        raise _taken("customer", customer_id, None) from None
    return customer


def get_customer(account_name: str, customer_id: str) -> Customer:
    """A live customer of the named account; LookupError for an unknown or deleted one."""
    customer = (
        Customer.select().join(Account)
        .where(Account.name == account_name, Customer.customer_id == customer_id, Customer.deleted_at.is_null())
        .first()
    )
    if customer is None:
        raise LookupError(f"no customer {customer_id!r} in account {account_name!r}")
    return customer


def delete_customer(customer: Customer) -> None:
    """Soft delete: new requests naming the customer are refused (once the gateway's account cache has let go of
    it, within a second); requests in flight still settle; its wallet and immutable entries stay."""
    Customer.update(deleted_at=utcnow()).where(Customer.id == customer.id, Customer.deleted_at.is_null()).execute()


def create_meter(account: Account, slug: str, **columns) -> MeterRow:
    """AlreadyExists: the slug is taken, by a live or a deleted meter."""
    existing = MeterRow.get_or_none(MeterRow.account == account, MeterRow.slug == slug)
    if existing is not None:
        raise _taken("meter", slug, existing, "slug")
    try:
        with database.atomic():
            return MeterRow.create(account=account, slug=slug, **columns)
    except IntegrityError:
        raise _taken("meter", slug, None, "slug") from None


def delete_meter(meter: MeterRow) -> None:
    """Soft delete: tokens and requests naming it are refused from now on; rows it priced keep their slug."""
    MeterRow.update(deleted_at=utcnow()).where(MeterRow.id == meter.id, MeterRow.deleted_at.is_null()).execute()
