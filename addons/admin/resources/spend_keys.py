"""Lava's `spend_keys`: keys for the gateway only (never this API), paid for by the account's wallet, each
`active` or `paused`, with an optional expiry, model and provider allow-lists, and limits, all of which the
gateway enforces (403 `key_paused`, 401 `key_expired`, 403 `key_scope`, 402 or 429 at a limit).

Limits are `spend_limit {amount, cycle}`, `request_limit {count, cycle}`, `rate_limit {rpm, burst}` and
Tollgate's `tpm` (addons/admin/limits.py); each answered limit carries its period's `resets_at`.
`current_spend` and `current_requests` are the current period's of the spend and request limit; without that
limit there is no period, and they are the key's whole life, equal to the `total_*` figures.
"""

from __future__ import annotations

from datetime import datetime

from addons.admin import limits
from addons.admin.endpoints import Call, Endpoint
from addons.admin.web import Invalid, iso, paginate, reject_unknown, text, timestamp, usd
from addons.services import keys
from addons.services.errors import BadRequest

FIELDS = ("name", "status", "request_shape", "allowed_models", "allowed_providers", "expires_at",
          *limits.KEY_FIELDS, "account")
MAX_PATTERNS = 100
NO_USE = keys.KeyUsage()


def spend_key_view(key: keys.KeyInfo, used: keys.KeyUsage | None = None) -> dict:
    """Lava's RestSpendKey (plus `tpm`, each limit's `resets_at` and `revoked_at`); reads the limits' periods,
    then (unless given) the key's totals: in that order, so a request committed between the two reads can
    only add to the totals, and the current period never shows more than the key's lifetime."""
    view = keys.key_limits_view(key)
    if used is None:
        used = keys.usage_by_key([key.id]).get(key.id, NO_USE)
    spend = view.spend.used if view.spend else used.spend_nanos
    requests = view.requests.used if view.requests else used.requests
    shown = limits.render(view)
    return {
        "spend_key_id": key.id, "key_preview": key.prefix, "name": key.name, "status": key.status,
        "request_shape": "openai", "wallet_id": key.wallet_id,
        "allowed_models": list(key.allowed_models) if key.allowed_models else None,
        "allowed_providers": list(key.allowed_providers) if key.allowed_providers else None,
        "spend_limit": shown["spend_limit"], "current_spend": usd(spend), "total_spend": usd(used.spend_nanos),
        "request_limit": shown["request_limit"], "current_requests": requests, "total_requests": used.requests,
        "rate_limit": shown["rate_limit"], "tpm": shown["tpm"],
        "expires_at": iso(key.expires_at), "last_used_at": iso(used.last_used_at), "created_at": iso(key.created_at),
        "revoked_at": iso(key.revoked_at),
    }


# -- fields ---------------------------------------------------------------------------------

def _allow_list(body: dict, name: str) -> list[str] | None:
    """A non-empty list of names, or null for no restriction ([] would be a key that reaches nothing)."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise Invalid(name, "must be a non-empty list of strings, or null to allow everything")
    if len(value) > MAX_PATTERNS:
        raise Invalid(name, f"must have at most {MAX_PATTERNS} entries")
    for item in value:
        if not isinstance(item, str) or not item.strip() or len(item) > 200:
            raise Invalid(name, "each entry must be a non-empty string of at most 200 characters")
        if "*" in item[:-1]:
            raise Invalid(name, f"{item!r}: a * may only end a pattern, which then matches by prefix (gpt-4o*)")
    if name == "allowed_providers":
        try:
            keys.require_providers(value)
        except BadRequest as e:
            raise Invalid(name, e.message) from None
    return value


def _expiry(body: dict) -> datetime | None:
    value = body.get("expires_at")
    if value is not None and not isinstance(value, str):
        raise Invalid("expires_at", "must be an ISO 8601 time, e.g. 2026-12-01T00:00:00Z, or null")
    try:
        return keys.future_expiry(timestamp(value, "expires_at"))
    except BadRequest as e:
        raise Invalid("expires_at", e.message) from None


def _status(body: dict) -> str:
    if body["status"] not in keys.STATUSES:
        raise Invalid("status", f"must be one of {', '.join(keys.STATUSES)}")
    return body["status"]


def _changes(body: dict) -> tuple[dict, dict]:
    """What a create or update sets, by service keyword, and the limit columns it sets or clears; fields left out
    are absent."""
    reject_unknown(body, FIELDS)
    if body.get("request_shape") not in (None, "openai"):
        raise Invalid("request_shape", "must be openai: a key calls each provider in that provider's own shape")
    changes: dict = {}
    if "name" in body:
        changes["name"] = text(body, "name", required=True)
    if "status" in body:
        changes["status"] = _status(body)
    for field in ("allowed_models", "allowed_providers"):
        if field in body:
            changes[field] = _allow_list(body, field)
    if "expires_at" in body:
        changes["expires_at"] = _expiry(body)
    return changes, limits.changes(body)


# -- handlers -------------------------------------------------------------------------------

def list_spend_keys(call: Call) -> dict:
    listing = keys.key_listing(call.account, "spend")
    page = paginate(listing, call.page())
    used = keys.usage_by_key([key.id for key in page["data"]])
    return page | {"data": [spend_key_view(key, used.get(key.id, NO_USE)) for key in page["data"]]}


def create_spend_key(call: Call) -> tuple[int, dict]:
    changes, limit_columns = _changes(call.body)
    if "name" not in changes:
        raise Invalid("name", "is required")
    account = call.account
    created = keys.create_spend_key(account=account, limits=limit_columns, **changes)
    return 201, spend_key_view(keys.account_key(account, created.id, "spend"), NO_USE) | {"key": created.secret_key}


def retrieve_spend_key(call: Call) -> dict:
    return spend_key_view(keys.account_key(call.account, call.params["spend_key_id"], "spend"))


def update_spend_key(call: Call) -> dict:
    """The gateway sees the change (a pause, a resume, new allow-lists or limits) within tollgate_cache_ttl_ms;
    a limit given as null is cleared, one left out is unchanged."""
    changes, limit_columns = _changes(call.body)
    return spend_key_view(keys.update_key(call.account, call.params["spend_key_id"], "spend", **changes,
                                       **limit_columns))


def revoke_spend_key(call: Call) -> dict:
    revoked = keys.revoke_account_key(call.account, call.params["spend_key_id"], "spend")
    return {"success": True, "id": revoked.id, "deleted": True}


def rotate_spend_key(call: Call) -> dict:
    """A new secret, same key: the old secret is refused from now on (by the gateway within its cache's TTL)."""
    reject_unknown(call.body, ("account",))
    account = call.account
    rotated = keys.rotate_key(account, call.params["spend_key_id"], "spend")
    return spend_key_view(keys.account_key(account, rotated.id, "spend")) | {"key": rotated.secret_key}


_BODY = {"name": "string", "status": {"type": "string", "enum": list(keys.STATUSES)}, "request_shape": "string",
         "allowed_models": {"type": ["array", "null"], "items": {"type": "string"}},
         "allowed_providers": {"type": ["array", "null"], "items": {"type": "string"}},
         "expires_at": {"type": ["string", "null"], "format": "date-time"}, **limits.SCHEMAS, "account": "string"}
_ACCOUNT = {"account": "string"}

ENDPOINTS = [
    Endpoint("POST", "/spend_keys", create_spend_key,
             "Create a spend key (the gateway only); the key is in this answer only. Honours Idempotency-Key: a "
             "repeat is 409 secret_shown_once, since the key is never stored", status=201, body=_BODY,
             idempotent=True, secret=("key", "spend_key_id")),
    Endpoint("GET", "/spend_keys", list_spend_keys, "List the account's spend keys",
             query={"cursor": "string", "limit": "integer", "account": "string"}),
    Endpoint("GET", "/spend_keys/{spend_key_id}", retrieve_spend_key, "Retrieve a spend key", query=_ACCOUNT),
    Endpoint("PUT", "/spend_keys/{spend_key_id}", update_spend_key,
             "Update a spend key's name, status (pause, resume), allow-lists, expiry or limits (null clears one)",
             body=_BODY),
    Endpoint("DELETE", "/spend_keys/{spend_key_id}", revoke_spend_key, "Revoke a spend key", query=_ACCOUNT),
    Endpoint("POST", "/spend_keys/{spend_key_id}/rotate", rotate_spend_key,
             "Give a spend key a new secret; the old one is refused from then on", body=_ACCOUNT),
]
