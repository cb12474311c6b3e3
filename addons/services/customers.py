"""A merchant's customers: who they are, their prepaid balances, auto top-up and overdraft, and this cycle's usage.

A deleted customer is soft-deleted: unknown to every service and refused for new requests (the account cache
finds live customers only), while its wallet and its immutable entries stay, and its id is never reused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from addons.core.limits import NO_LIMITS, Limits
from addons.ledger import accounts
from addons.ledger.models import Account, Customer, new_id
from addons.services import limits
from addons.services.errors import BadRequest, Conflict, NotFound
from addons.services.listing import Listing
from addons.services.reports import customer_views

PROFILE_FIELDS = ("reference_id", "email", "phone", "name", "metadata")  # who the customer is, all optional
SETTINGS = ("autopay_threshold_nanos", "autopay_amount_nanos", "overdraft_limit_nanos")
LIMITS = limits.CUSTOMER_LIMIT_CHANGES  # spend_limit_nanos, spend_cycle, rpm, tpm (services/limits.py)


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
    limits: Limits = NO_LIMITS

    @property
    def available_nanos(self) -> int:
        """What new requests may still spend: the balance, plus the overdraft, less the open holds."""
        return self.balance_nanos + self.overdraft_limit_nanos - self.holds.amount_nanos


@dataclass(frozen=True, slots=True)
class CustomerDetail:
    """A customer as the API shows it: who it is (Lava's customer fields) and where its balance stands."""

    customer_id: str
    reference_id: str | None
    email: str | None
    phone: str | None
    name: str | None
    metadata: dict[str, Any] | None
    created_at: datetime
    view: CustomerView


def _views(customers: list[Customer]) -> list[CustomerView]:
    return [CustomerView(**{**view, "holds": Holds(**view["holds"])}, limits=accounts.limits_of(customer))
            for customer, view in zip(customers, customer_views(customers), strict=True)]


def _view(customer: Customer) -> CustomerView:
    return _views([customer])[0]


def limits_view(account: str, customer_id: str) -> limits.LimitsView:
    """The customer's limits with what the current period has used and when it resets."""
    customer = _get(account, customer_id)
    return limits.customer_view(customer.account_id, customer.customer_id, accounts.limits_of(customer))


def _details(customers: list[Customer]) -> list[CustomerDetail]:
    return [CustomerDetail(customer.customer_id, customer.reference_id, customer.email, customer.phone, customer.name,
                           None if customer.metadata is None else json.loads(customer.metadata), customer.created_at,
                           view) for customer, view in zip(customers, _views(customers), strict=True)]


def _detail(customer: Customer) -> CustomerDetail:
    return _details([customer])[0]


def _get(account: str, customer_id: str) -> Customer:
    try:
        return accounts.get_customer(account, customer_id)
    except LookupError as e:
        raise NotFound("customer_not_found", str(e)) from None


def _check_autopay(threshold: int | None, amount: int | None) -> None:
    if (threshold is None) != (amount is None):
        raise BadRequest("autopay_incomplete", "the auto top-up threshold and amount go together")


def create(account: str, customer_id: str | None = None, *, balance_nanos: int = 0,
           autopay_threshold_nanos: int | None = None, autopay_amount_nanos: int | None = None,
           overdraft_limit_nanos: int = 0, reference_id: str | None = None, email: str | None = None,
           phone: str | None = None, name: str | None = None, metadata: dict | None = None,
           limit_changes: dict | None = None) -> CustomerView:
    """A new customer of `account` (created if new) with its own wallet, opened with `balance_nanos`.
    Without `customer_id`, Tollgate makes one (cus_...), as Lava does. `limit_changes`: LIMITS to values."""
    _check_autopay(autopay_threshold_nanos, autopay_amount_nanos)
    limit_columns = limits.columns(limits.apply_changes(NO_LIMITS, limit_changes or {}), customer=True)
    try:
        customer = accounts.create_customer(
            account, customer_id or new_id("cus"), balance_nanos=balance_nanos,
            autopay_threshold_nanos=autopay_threshold_nanos, autopay_amount_nanos=autopay_amount_nanos,
            overdraft_limit_nanos=overdraft_limit_nanos, reference_id=reference_id, email=email, phone=phone,
            name=name, metadata=None if metadata is None else json.dumps(metadata), **limit_columns)
    except accounts.AlreadyExists as e:
        raise Conflict("customer_deleted" if e.deleted else "customer_exists", str(e)) from None
    return _view(Customer.get_by_id(customer.id))


def get(account: str, customer_id: str) -> CustomerView:
    return _view(_get(account, customer_id))


def detail(account: str, customer_id: str) -> CustomerDetail:
    return _detail(_get(account, customer_id))


def update(account: str, customer_id: str, **changes) -> CustomerDetail:
    """Change the named PROFILE_FIELDS, SETTINGS and LIMITS; None clears one (an overdraft limit goes back to 0)."""
    unknown = set(changes) - set(PROFILE_FIELDS) - set(SETTINGS) - set(LIMITS)
    if unknown:
        raise BadRequest("unknown_field", f"customers have no field {sorted(unknown)[0]!r}")
    customer = _get(account, customer_id)
    columns = dict(changes)
    if "metadata" in columns and columns["metadata"] is not None:
        columns["metadata"] = json.dumps(columns["metadata"])
    if limit_changes := {name: columns.pop(name) for name in LIMITS if name in columns}:
        merged = limits.apply_changes(accounts.limits_of(customer), limit_changes)
        columns.update(limits.columns(merged, customer=True))
    if "overdraft_limit_nanos" in columns and columns["overdraft_limit_nanos"] is None:
        columns["overdraft_limit_nanos"] = 0
    _check_autopay(columns.get("autopay_threshold_nanos", customer.autopay_threshold_nanos),
                   columns.get("autopay_amount_nanos", customer.autopay_amount_nanos))
    if columns:
        Customer.update(**columns).where(Customer.id == customer.id).execute()
    return _detail(Customer.get_by_id(customer.id))


def delete(account: str, customer_id: str) -> str:
    """Soft delete (see the module's docstring); the customer's id."""
    accounts.delete_customer(_get(account, customer_id))
    return customer_id


def topup(account: str, customer_id: str, amount_nanos: int, *, note: str | None = None) -> CustomerView:
    if amount_nanos <= 0:
        raise BadRequest("invalid_amount", "a top-up is a positive amount")
    customer = _get(account, customer_id)
    accounts.credit_wallet(customer.wallet_id, amount_nanos, "topup", note=note)
    return _view(Customer.get_by_id(customer.id))


def _live(account: str):
    return Customer.select().join(Account).where(Account.name == account, Customer.deleted_at.is_null())


def list_customers(account: str) -> list[CustomerView]:
    return _views(list(_live(account).order_by(Customer.customer_id)))


def listing(account: str) -> Listing:
    """The account's live customers for the API's pages, newest first."""
    return Listing(_live(account), Customer.created_at, Customer.id, _detail, _details)
