"""A merchant's customers: prepaid balances, auto top-up and overdraft, and this cycle's usage."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from addons.ledger import accounts
from addons.ledger.models import Account, Customer
from addons.services.errors import BadRequest, Conflict, NotFound
from addons.services.reports import customer_view


@dataclass(frozen=True, slots=True)
class Holds:
    count: int
    amount_nanos: int


@dataclass(frozen=True, slots=True)
class CustomerView:
    customer_id: str
    wallet: str
    balance_nanos: int
    holds: Holds  # open holds: requests admitted but not yet settled
    cycle_start: datetime
    cycle_usage: dict[str, Decimal]  # meter slug -> units used this cycle
    cycle_fees_nanos: int
    cycle_requests: int
    autopay_threshold_nanos: int | None
    autopay_amount_nanos: int | None
    overdraft_limit_nanos: int


def _view(customer: Customer) -> CustomerView:
    view = customer_view(customer)
    return CustomerView(**{**view, "holds": Holds(**view["holds"])})


def _get(account: str, customer_id: str) -> Customer:
    try:
        return accounts.get_customer(account, customer_id)
    except LookupError as e:
        raise NotFound("customer_not_found", str(e)) from None


def create(account: str, customer_id: str, *, balance_nanos: int = 0, autopay_threshold_nanos: int | None = None,
           autopay_amount_nanos: int | None = None, overdraft_limit_nanos: int = 0) -> CustomerView:
    """A new customer of `account` (created if new) with its own wallet, opened with `balance_nanos`."""
    if (autopay_threshold_nanos is None) != (autopay_amount_nanos is None):
        raise BadRequest("autopay_incomplete", "the auto top-up threshold and amount go together")
    try:
        customer = accounts.create_customer(
            account, customer_id, balance_nanos=balance_nanos, autopay_threshold_nanos=autopay_threshold_nanos,
            autopay_amount_nanos=autopay_amount_nanos, overdraft_limit_nanos=overdraft_limit_nanos)
    except ValueError as e:
        raise Conflict("customer_exists", str(e)) from None
    return _view(Customer.get_by_id(customer.id))


def get(account: str, customer_id: str) -> CustomerView:
    return _view(_get(account, customer_id))


def topup(account: str, customer_id: str, amount_nanos: int, *, note: str | None = None) -> CustomerView:
    if amount_nanos <= 0:
        raise BadRequest("invalid_amount", "a top-up is a positive amount")
    customer = _get(account, customer_id)
    accounts.credit_wallet(customer.wallet_id, amount_nanos, "topup", note=note)
    return _view(Customer.get_by_id(customer.id))


def list_customers(account: str) -> list[CustomerView]:
    query = Customer.select().join(Account).where(Account.name == account).order_by(Customer.customer_id)
    return [_view(customer) for customer in query]
