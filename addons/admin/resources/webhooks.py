"""Lava's `webhooks`: URLs that receive the account's billing events (topup.requested|succeeded|failed,
balance.low, balance.depleted), each signed with its own `webhook_secret`, shown in the creation's answer
only.

Idempotency-Key on creation is honoured by the service (webhooks.create_once), not by the app's generic
wrapper, which would store the answer, secret and all, in the idempotency table: only the webhook's id is
stored there, and a repeat reads the secret back from the webhook's sealed copy.
"""

from __future__ import annotations

from addons.admin import web
from addons.admin.endpoints import Call, Endpoint
from addons.admin.web import Invalid
from addons.services import webhooks
from addons.services.idempotency import fingerprint

FIELDS = ("name", "url")


def _render(info: webhooks.WebhookInfo) -> dict:
    return {"webhook_id": info.id, "name": info.name, "url": info.url, "created_at": web.iso(info.created_at)}


def _url(body: dict, *, required: bool) -> str | None:
    url = web.text(body, "url", required=required, max_length=webhooks.MAX_URL_LENGTH, nullable=False)
    if url is not None and (problem := webhooks.url_problem(url)):
        raise Invalid("url", problem)
    return url


def _name(body: dict, *, required: bool) -> str | None:
    name = web.text(body, "name", required=required, nullable=False)
    if name is not None and not name.strip():
        raise Invalid("name", "must not be empty")
    return name


def create_webhook(call: Call) -> tuple[int, dict]:
    web.reject_unknown(call.body, (*FIELDS, "account"))
    name, url = _name(call.body, required=True), _url(call.body, required=True)
    key = call.request.headers.get("idempotency-key")
    if key is None:
        created = webhooks.create(call.account, name, url)
    else:
        request_hash = fingerprint(call.request.method, call.request.url.path, {**call.body, "account": call.account})
        created = webhooks.create_once(call.account, name, url, account_id=call.principal.account_id,
                                       idempotency_key=key, request_hash=request_hash)
    return 201, {**_render(created.webhook), "webhook_secret": created.secret}


def list_webhooks(call: Call) -> dict:
    listing = webhooks.listing(call.account)
    return web.paginate(listing, call.page(), _render)


def get_webhook(call: Call) -> dict:
    return _render(webhooks.get(call.account, call.params["webhook_id"]))


def update_webhook(call: Call) -> dict:
    web.reject_unknown(call.body, (*FIELDS, "account"))
    name, url = _name(call.body, required=False), _url(call.body, required=False)
    return _render(webhooks.update(call.account, call.params["webhook_id"], name=name, url=url))


def delete_webhook(call: Call) -> dict:
    return {"id": webhooks.delete(call.account, call.params["webhook_id"]), "deleted": True}


_BODY = {"name": "string", "url": "string"}
_ACCOUNT = {"account": "string"}  # admin keys: act on another account
ENDPOINTS = [
    Endpoint("POST", "/webhooks", create_webhook,
             "Register a webhook for billing events; its webhook_secret is in this answer only "
             "(honours Idempotency-Key)", status=201, body={**_BODY, **_ACCOUNT}),
    Endpoint("GET", "/webhooks", list_webhooks, "List webhooks, newest first",
             query={"cursor": "string", "limit": "integer", **_ACCOUNT}),
    Endpoint("GET", "/webhooks/{webhook_id}", get_webhook, "Retrieve a webhook", query=_ACCOUNT),
    Endpoint("PATCH", "/webhooks/{webhook_id}", update_webhook, "Rename a webhook or change its URL",
             body={**_BODY, **_ACCOUNT}),
    Endpoint("DELETE", "/webhooks/{webhook_id}", delete_webhook, "Delete a webhook: it receives nothing more",
             query=_ACCOUNT),
]
