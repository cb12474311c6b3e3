"""Accounts, keys and wallets: the synchronous operations the CLI runs and the gateway runs off-loop."""

from __future__ import annotations

from dataclasses import dataclass

from peewee import fn

from addons.credentials import display_prefix, hash_secret, new_secret_key
from addons.ledger.models import Account, ApiKey, LedgerEntry, Wallet, database, utcnow

DEFAULT_ACCOUNT = "default"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the hot path needs to know about a key, detached from the database."""

    key_id: str
    account_id: str
    wallet_id: str
    revoked: bool


def ensure_account(name: str = DEFAULT_ACCOUNT) -> tuple[Account, Wallet]:
    with database.atomic():
        account, _ = Account.get_or_create(name=name)
        wallet, _ = Wallet.get_or_create(account=account, customer_id="")
    return account, wallet


def create_key(name: str, account_name: str = DEFAULT_ACCOUNT) -> tuple[ApiKey, str]:
    """Returns the row and the secret; the secret exists only in this return value."""
    account, _ = ensure_account(account_name)
    secret = new_secret_key()
    row = ApiKey.create(account=account, name=name, key_hash=hash_secret(secret), prefix=display_prefix(secret))
    return row, secret


def revoke_key(key_id: str) -> ApiKey:
    key = ApiKey.get_or_none(ApiKey.id == key_id)
    if key is None:
        raise LookupError(f"no key {key_id}")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        key.save()
    return key


def find_key(key_hash: str) -> KeyRecord | None:
    row = (
        ApiKey.select(ApiKey, Wallet.id.alias("wallet_id"))
        .join(Wallet, on=(Wallet.account == ApiKey.account) & (Wallet.customer_id == ""))
        .where(ApiKey.key_hash == key_hash)
        .dicts()
        .first()
    )
    if row is None:
        return None
    return KeyRecord(row["id"], row["account"], row["wallet_id"], row["revoked_at"] is not None)


def wallet_balance(wallet_id: str) -> int:
    return Wallet.select(Wallet.balance_nanos).where(Wallet.id == wallet_id).scalar() or 0


def credit_wallet(wallet_id: str, amount_nanos: int, reason: str = "topup", note: str | None = None) -> int:
    """Insert the entry and move the cached balance in one transaction; returns the new balance."""
    with database.atomic():
        LedgerEntry.create(wallet=wallet_id, amount_nanos=amount_nanos, reason=reason, note=note)
        Wallet.update(balance_nanos=Wallet.balance_nanos + amount_nanos).where(Wallet.id == wallet_id).execute()
        return wallet_balance(wallet_id)


def audit_wallets() -> list[tuple[str, int, int]]:
    """Wallets whose cached balance differs from the sum of their entries: (wallet, cached, summed)."""
    sums = dict(
        LedgerEntry.select(LedgerEntry.wallet, fn.COALESCE(fn.SUM(LedgerEntry.amount_nanos), 0))
        .group_by(LedgerEntry.wallet)
        .tuples()
    )
    return [
        (wallet.id, wallet.balance_nanos, int(sums.get(wallet.id, 0)))
        for wallet in Wallet.select()
        if wallet.balance_nanos != int(sums.get(wallet.id, 0))
    ]
