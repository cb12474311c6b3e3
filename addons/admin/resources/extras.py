"""Tollgate's own additions under /v1: billing events, the ledger's audit, the providers the gateway has
configured, and forward tokens (as `tollgate token`)."""

from __future__ import annotations

from typing import Any

from addons.admin import web
from addons.admin.auth import bearer, require_admin
from addons.admin.endpoints import Call, Endpoint
from addons.admin.web import Invalid
from addons.rewrite.formats import client_formats_for
from addons.services import audit, events, providers, tokens
from addons.services.events import ListedEvent
from pricing.money import format_usd

MAX_LIST = 100


def _money(data: Any) -> Any:
    """An event's facts with money as Lava writes it: each *_nanos integer a decimal string under its stem."""
    if not isinstance(data, dict):
        return data
    return {(k[: -len("_nanos")] if k.endswith("_nanos") and isinstance(v, int) else k):
            (format_usd(v) if k.endswith("_nanos") and isinstance(v, int) else _money(v)) for k, v in data.items()}


def _event(listed: ListedEvent) -> dict:
    event = listed.event
    return {"id": event.id, "type": event.name, "wallet": event.wallet, "customer_id": listed.customer_id,
            "data": _money(event.data), "created_at": web.iso(event.created_at)}


def list_events(call: Call) -> dict:
    """An account key sees its own account's events; an admin key every account's, or the one it names."""
    every = call.principal.is_admin and not call.query.get("account")
    listing = events.listing(None if every else call.account, name=call.query.get("type") or None,
                             customer=call.query.get("customer_id") or None)
    return web.paginate(listing, call.page(), _event)


def retrieve_audit(call: Call) -> dict:
    require_admin(call.principal, "the audit")
    report = audit.audit()
    return {"ok": report.ok,
            "mismatches": [{"wallet": m.wallet, "balance": web.usd(m.balance_nanos),
                            "entries_sum": web.usd(m.entries_sum_nanos)} for m in report.mismatches]}


def list_providers(call: Call) -> dict:
    return {"object": "list", "data": [
        {"id": p.id, "name": p.name, "hosts": list(p.hosts), "base_url": p.base_url, "api_family": p.api_family,
         "pricing_id": p.pricing_id, "credential_env": p.credential_env, "credential_set": p.credential_set,
         "upstream": p.upstream, "format": client_formats_for(p.api_family)} for p in providers.configured()]}


# -- forward tokens ------------------------------------------------------------------------------------------

TOKEN_FIELDS = {"secret_key": "string", "customer_id": "string", "meter_slug": "string", "provider_key": "string",
                "disable_billing": "boolean", "signed": "boolean", "expires_in": "integer",
                "allowed_providers": "array", "allowed_models": "array", "spend_cap": "string", "account": "string"}


def _flag(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise Invalid(name, "must be true or false")
    return value


def _names(body: dict, name: str) -> list[str] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= 255 for v in value):
        raise Invalid(name, "must be a list of names")
    if len(value) > MAX_LIST:
        raise Invalid(name, f"must name at most {MAX_LIST}")
    return value


def create_token(call: Call) -> tuple[int, dict]:
    """A token for the calling key, or for another key of the same account given as `secret_key`."""
    body = call.body
    web.reject_unknown(body, list(TOKEN_FIELDS))
    secret = web.text(body, "secret_key", max_length=1024) or bearer(call.request)
    issued = tokens.issue_token(
        secret, customer=web.text(body, "customer_id"), meter=web.text(body, "meter_slug"),
        provider_key=web.text(body, "provider_key", max_length=1024), disable_billing=_flag(body, "disable_billing"),
        signed=_flag(body, "signed"), expires_in=web.integer(body, "expires_in", minimum=1, maximum=10 * 365 * 86400),
        allow_providers=_names(body, "allowed_providers"), allow_models=_names(body, "allowed_models"),
        spend_cap_nanos=web.amount_nanos(body, "spend_cap"), account=call.account)
    return 201, {"token": issued.token, "signed": issued.signed}


ENDPOINTS = [
    Endpoint("GET", "/events", list_events, "List billing events (top-ups, low and depleted balances), newest first",
             query={"type": "string", "customer_id": "string", "cursor": "string", "limit": "integer",
                    "account": "string"}, tag="tollgate"),
    Endpoint("GET", "/audit", retrieve_audit, "Check every wallet's balance against its entries (admin)",
             tag="tollgate"),
    Endpoint("GET", "/providers", list_providers,
             "The providers the gateway fronts, and whether its environment has each one's key", tag="tollgate"),
    Endpoint("POST", "/tokens", create_token, "Issue a forward token (plain or signed), as `tollgate token`",
             status=201, body=TOKEN_FIELDS, tag="tollgate"),
]
