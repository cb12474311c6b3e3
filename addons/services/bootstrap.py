"""`tollgate init`: the default account, its wallet and its first (admin) key, made once."""

from __future__ import annotations

from dataclasses import dataclass

from addons.ledger import accounts
from addons.ledger.models import ApiKey


@dataclass(frozen=True, slots=True)
class Setup:
    account: str
    balance_nanos: int
    secret_key: str | None  # the admin key's secret, only on the run that created it


def init_ledger() -> Setup:
    """Idempotent: a second run creates nothing and returns no secret."""
    account, wallet = accounts.ensure_account(accounts.DEFAULT_ACCOUNT)
    secret = None
    if not ApiKey.select().where(ApiKey.account == account).exists():
        _, secret = accounts.create_key("admin", account.name, role="admin")
    return Setup(account.name, wallet.balance_nanos, secret)
