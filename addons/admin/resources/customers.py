"""Lava's `customers` resource, with Tollgate's prepaid balance riding along in the same object, and top-ups.

A customer answers as Lava's RestCustomer (customer_id, reference_id, contact, subscription, metadata,
created_at) plus `name`, `wallet_id`, `balance`, `available` (balance + overdraft - open holds), `holds`,
`autopay_threshold`, `autopay_amount` and `overdraft_limit`, money as decimal strings. Deleting one is a soft
delete (services/customers.py): afterwards it is 404 here and refused for new requests.
"""

from __future__ import annotations

import re

from addons.admin import web
from addons.admin.endpoints import Call, Endpoint
from addons.admin.web import Invalid
from addons.core.errors import BadRequest
from addons.services import customers
from addons.services.customers import CustomerDetail

PROFILE = ("reference_id", "email", "phone", "name")
MONEY_SETTINGS = ("autopay_threshold", "autopay_amount", "overdraft_limit")
CREATE_FIELDS = ("customer_id", *PROFILE, "metadata", *MONEY_SETTINGS, "account")
UPDATE_FIELDS = (*PROFILE, "metadata", *MONEY_SETTINGS, "account")
# a customer id travels in paths and forward tokens: printable, no spaces or slashes
_CUSTOMER_ID = re.compile(r"[^\s/?#%]{1,255}")

BODY_TYPES = {"customer_id": "string", **dict.fromkeys(PROFILE, "string"), "metadata": "object",
              **dict.fromkeys(MONEY_SETTINGS, "string"), "account": "string"}


def render(customer: CustomerDetail) -> dict:
    view = customer.view
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
    account = call.account
    view = _autopay_pair(lambda: customers.create(account, customer_id, **settings, **_profile(body)))
    return render(customers.detail(account, view.customer_id))


def list_customers(call: Call) -> dict:
    listing = customers.listing(call.account)
    return web.paginate(listing, call.page(), render)


def retrieve_customer(call: Call) -> dict:
    return render(customers.detail(call.account, call.params["customer_id"]))


def update_customer(call: Call) -> dict:
    body = call.body
    _fields(body, UPDATE_FIELDS)
    changes = {**_profile(body), **_money_settings(body)}
    account, customer_id = call.account, call.params["customer_id"]
    return render(_autopay_pair(lambda: customers.update(account, customer_id, **changes)))


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
    return render(customers.detail(account, customer_id))


_PAGE = {"cursor": "string", "limit": "integer", "account": "string"}
_ACCOUNT = {"account": "string"}

ENDPOINTS = [
    Endpoint("POST", "/customers", create_customer, "Create a customer (Tollgate makes its customer_id unless given)",
             status=201, idempotent=True, body=BODY_TYPES, query=_ACCOUNT),
    Endpoint("GET", "/customers", list_customers, "List the account's customers, newest first", query=_PAGE),
    Endpoint("GET", "/customers/{customer_id}", retrieve_customer, "Retrieve a customer with its balance",
             query=_ACCOUNT),
    Endpoint("PATCH", "/customers/{customer_id}", update_customer, "Update a customer (null clears a field)",
             body={name: kind for name, kind in BODY_TYPES.items() if name != "customer_id"}, query=_ACCOUNT),
    Endpoint("DELETE", "/customers/{customer_id}", delete_customer,
             "Delete a customer (its wallet and entries stay; new requests naming it are refused)", query=_ACCOUNT),
    Endpoint("POST", "/customers/{customer_id}/topups", topup_customer,
             "Record a payment: top up the customer's balance; answers the customer", idempotent=True,
             body={"amount": "string", "note": "string", "account": "string"}, query=_ACCOUNT),
]
