"""Lava's `customers` resource, with Tollgate's prepaid balance riding along in the same object, and top-ups.

A customer answers as Lava's RestCustomer (customer_id, reference_id, contact, subscription, metadata,
created_at) plus `name`, `wallet_id`, `balance`, `available` (balance + overdraft - open holds), `holds`,
`autopay_threshold`, `autopay_amount` and `overdraft_limit`, money as decimal strings, and its limits as a
spend key's are written (addons/admin/limits.py): `spend_limit {amount, cycle, resets_at}` on the fees it is
charged, `current_spend` (those fees in the current period; null without a spend limit), `rate_limit {rpm}`
and `tpm`, each null when unset. Deleting one is a soft delete (services/customers.py): afterwards it is 404
here and refused for new requests.
"""

from __future__ import annotations

import re

from addons.admin import limits, web
from addons.admin.endpoints import Call, Endpoint
from addons.admin.web import Invalid
from addons.core.errors import BadRequest
from addons.services import customers
from addons.services.customers import CustomerDetail
from addons.services.limits import LimitsView

PROFILE = ("reference_id", "email", "phone", "name")
MONEY_SETTINGS = ("autopay_threshold", "autopay_amount", "overdraft_limit")
CREATE_FIELDS = ("customer_id", *PROFILE, "metadata", *MONEY_SETTINGS, *limits.CUSTOMER_FIELDS, "account")
UPDATE_FIELDS = (*PROFILE, "metadata", *MONEY_SETTINGS, *limits.CUSTOMER_FIELDS, "account")
# a customer id travels in paths and forward tokens: printable, no spaces or slashes
_CUSTOMER_ID = re.compile(r"[^\s/?#%]{1,255}")

BODY_TYPES = {"customer_id": "string", **dict.fromkeys(PROFILE, "string"), "metadata": "object",
              **dict.fromkeys(MONEY_SETTINGS, "string"), **limits.CUSTOMER_SCHEMAS, "account": "string"}


def render(customer: CustomerDetail, account: str) -> dict:
    """The customer's answer; with a spend limit, the current period's fees are read too."""
    view = customer.view
    held = view.limits
    used = (customers.limits_view(account, customer.customer_id) if held.spend_limit_nanos is not None
            else LimitsView(held, None, None))
    shown = limits.render(used, customer=True)
    first, _, last = (customer.name or "").partition(" ")
    return {
        "customer_id": customer.customer_id,
        "reference_id": customer.reference_id,
        "contact": {"phone": customer.phone or "", "email": customer.email or "", "first_name": first,
                    "last_name": last},
        "subscription": None,
        "metadata": customer.metadata,
        "created_at": web.iso(customer.created_at),
        "name": customer.name,
        "wallet_id": view.wallet,
        "balance": web.usd(view.balance_nanos),
        "available": web.usd(view.available_nanos),
        "holds": {"count": view.holds.count, "amount": web.usd(view.holds.amount_nanos)},
        "autopay_threshold": web.usd(view.autopay_threshold_nanos),
        "autopay_amount": web.usd(view.autopay_amount_nanos),
        "overdraft_limit": web.usd(view.overdraft_limit_nanos),
        "spend_limit": shown["spend_limit"],
        "current_spend": web.usd(used.spend.used) if used.spend else None,
        "rate_limit": shown["rate_limit"],
        "tpm": shown["tpm"],
    }


def _money_settings(body: dict) -> dict:
    """The money settings present in `body`, as nanos (None where the body clears one)."""
    return {f"{name}_nanos": web.amount_nanos(body, name, positive=name != "overdraft_limit")
            for name in MONEY_SETTINGS if name in body}


def _profile(body: dict) -> dict:
    fields = {name: web.text(body, name) for name in PROFILE if name in body}
    if "metadata" in body:
        fields["metadata"] = web.metadata(body)
    return fields


def _fields(body: dict, known: tuple[str, ...]) -> None:
    web.reject_unknown(body, known)
    web.text(body, "account")  # an admin names the account it acts on (Call.account)


def _autopay_pair(action):
    """The service's refusal of a threshold without an amount (or the reverse) names the field."""
    try:
        return action()
    except BadRequest as e:
        if e.code == "autopay_incomplete":
            raise Invalid("autopay_amount", "goes together with autopay_threshold: set both, or clear both") from None
        raise


def create_customer(call: Call) -> dict:
    body = call.body
    _fields(body, CREATE_FIELDS)
    customer_id = web.text(body, "customer_id")
    if customer_id is not None and not _CUSTOMER_ID.fullmatch(customer_id):
        raise Invalid("customer_id", "must be 1 to 255 characters without spaces, '/', '?', '#' or '%'")
    settings = {name: value for name, value in _money_settings(body).items() if value is not None}
    limit_changes = limits.changes(body, customer=True)
    account = call.account
    view = _autopay_pair(lambda: customers.create(account, customer_id, **settings, **_profile(body),
                                                  limit_changes=limit_changes))
    return render(customers.detail(account, view.customer_id), account)


def list_customers(call: Call) -> dict:
    account = call.account
    return web.paginate(customers.listing(account), call.page(), lambda customer: render(customer, account))


def retrieve_customer(call: Call) -> dict:
    account = call.account
    return render(customers.detail(account, call.params["customer_id"]), account)


def update_customer(call: Call) -> dict:
    body = call.body
    _fields(body, UPDATE_FIELDS)
    changes = {**_profile(body), **_money_settings(body), **limits.changes(body, customer=True)}
    account, customer_id = call.account, call.params["customer_id"]
    return render(_autopay_pair(lambda: customers.update(account, customer_id, **changes)), account)


def delete_customer(call: Call) -> dict:
    customer_id = customers.delete(call.account, call.params["customer_id"])
    return {"id": customer_id, "deleted": True, "success": True}


def topup_customer(call: Call) -> dict:
    """Records a payment the merchant took: a ledger entry on the customer's wallet. Answers the customer."""
    body = call.body
    _fields(body, ("amount", "note", "account"))
    amount = web.amount_nanos(body, "amount", required=True)
    note = web.text(body, "note")
    account, customer_id = call.account, call.params["customer_id"]
    customers.topup(account, customer_id, amount, note=note)
    return render(customers.detail(account, customer_id), account)


_PAGE = {"cursor": "string", "limit": "integer", "account": "string"}
_ACCOUNT = {"account": "string"}

ENDPOINTS = [
    Endpoint("POST", "/customers", create_customer, "Create a customer (Tollgate makes its customer_id unless given)",
             status=201, idempotent=True, body=BODY_TYPES, query=_ACCOUNT),
    Endpoint("GET", "/customers", list_customers, "List the account's customers, newest first", query=_PAGE),
    Endpoint("GET", "/customers/{customer_id}", retrieve_customer, "Retrieve a customer with its balance",
             query=_ACCOUNT),
    Endpoint("PATCH", "/customers/{customer_id}", update_customer,
             "Update a customer: its profile, money settings or limits (null clears a field)",
             body={name: kind for name, kind in BODY_TYPES.items() if name != "customer_id"}, query=_ACCOUNT),
    Endpoint("DELETE", "/customers/{customer_id}", delete_customer,
             "Delete a customer (its wallet and entries stay; new requests naming it are refused)", query=_ACCOUNT),
    Endpoint("POST", "/customers/{customer_id}/topups", topup_customer,
             "Record a payment: top up the customer's balance; answers the customer", idempotent=True,
             body={"amount": "string", "note": "string", "account": "string"}, query=_ACCOUNT),
]
