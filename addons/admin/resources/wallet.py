"""Tollgate's own: the acting account's wallet (what its requests' provider costs are paid from), and top-ups of
it, which only an admin key records (403 `admin_only`): an account does not credit itself."""

from __future__ import annotations

from addons.admin import web
from addons.admin.auth import require_admin
from addons.admin.endpoints import Call, Endpoint
from addons.services import wallets
from addons.services.wallets import WalletView


def render(wallet: WalletView) -> dict:
    return {"account": wallet.account, "wallet_id": wallet.wallet, "balance": web.usd(wallet.balance_nanos)}


def retrieve_wallet(call: Call) -> dict:
    return render(wallets.wallet(call.account))


def topup_wallet(call: Call) -> dict:
    require_admin(call.principal, "topping up an account's wallet")
    body = call.body
    web.reject_unknown(body, ("amount", "account", "note"))
    web.text(body, "account")
    amount = web.amount_nanos(body, "amount", required=True)
    note = web.text(body, "note")
    return render(wallets.topup(call.account, amount, note=note))


ENDPOINTS = [
    Endpoint("GET", "/wallet", retrieve_wallet, "The account's own wallet and balance", query={"account": "string"},
             tag="wallet"),
    Endpoint("POST", "/wallet/topups", topup_wallet, "Record a payment into an account's wallet (admin)",
             idempotent=True, body={"amount": "string", "account": "string", "note": "string"},
             query={"account": "string"}, tag="wallet"),
]
