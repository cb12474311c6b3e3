"""An account's own wallet: its balance, and top-ups (each a ledger entry)."""

from __future__ import annotations

from dataclasses import dataclass

from addons.ledger import accounts
from addons.services.errors import BadRequest, NotFound


@dataclass(frozen=True, slots=True)
class WalletView:
    account: str
    wallet: str
    balance_nanos: int


def account_id(account: str) -> str:
    """The id of the account named `account`; NotFound (`account_not_found`) if there is none."""
    return account_record(account).account_id


def account_record(account: str) -> accounts.AccountRecord:
    """The account named `account` and its own wallet; NotFound (`account_not_found`) if there is none."""
    found = accounts.find_account(account)
    if found is None:
        raise NotFound("account_not_found", f"no account named {account!r}")
    return found


def wallet(account: str = accounts.DEFAULT_ACCOUNT) -> WalletView:
    found = account_record(account)
    return WalletView(account, found.wallet_id, accounts.wallet_balance(found.wallet_id))


def topup(account: str, amount_nanos: int, *, note: str | None = None) -> WalletView:
    """Credit the account's wallet; the entry and the new balance commit together."""
    if amount_nanos <= 0:
        raise BadRequest("invalid_amount", "a top-up is a positive amount")
    found = account_record(account)
    return WalletView(account, found.wallet_id, accounts.credit_wallet(found.wallet_id, amount_nanos, "topup", note=note))
