"""Lava's `secret_keys`: the keys that call this API (by their role: admin or account) and the gateway.

The secret is in the creation's answer only; lists show its hint. Only an admin key may create or
revoke an admin key (403 `admin_only`), so an account key cannot raise itself or lock the operator out.
"""

from __future__ import annotations

from addons.admin.auth import require_admin
from addons.admin.endpoints import Call, Endpoint
from addons.admin.web import choice, iso, paginate, reject_unknown, text
from addons.services import keys


def secret_key_view(key: keys.KeyInfo) -> dict:
    return {"secret_key_id": key.id, "name": key.name, "secret_key_hint": key.prefix,
            "created_at": iso(key.created_at), "role": key.role, "revoked_at": iso(key.revoked_at)}


def list_secret_keys(call: Call) -> dict:
    listing = keys.key_listing(call.account, "secret")
    return paginate(listing, call.page(), secret_key_view)


def create_secret_key(call: Call) -> tuple[int, dict]:
    reject_unknown(call.body, ("name", "role", "account"))
    name = text(call.body, "name", required=True)
    role = choice(call.body, "role", keys.ROLES, default="account")
    if role == "admin":
        require_admin(call.principal, "creating an admin key")
    account = call.account
    created = keys.create_key(name, account, role)
    return 201, secret_key_view(keys.account_key(account, created.id, "secret")) | {"secret_key": created.secret_key}


def delete_secret_key(call: Call) -> dict:
    """Revoked, not erased: its requests keep naming it. The gateway refuses it within tollgate_cache_ttl_ms."""
    key = keys.account_key(call.account, call.params["secret_key_id"], "secret")
    if key.role == "admin":
        require_admin(call.principal, "revoking an admin key")
    revoked = keys.revoke_account_key(call.account, key.id, "secret")
    return {"id": revoked.id, "deleted": True}


ENDPOINTS = [
    Endpoint("GET", "/secret_keys", list_secret_keys, "List the account's secret keys (hints, never secrets)",
             query={"cursor": "string", "limit": "integer", "account": "string"}),
    Endpoint("POST", "/secret_keys", create_secret_key,
             "Create a secret key; the secret is in this answer only. Honours Idempotency-Key: a repeat is 409 "
             "secret_shown_once, since the secret is never stored", status=201, idempotent=True,
             secret=("secret_key", "secret_key_id"),
             body={"name": "string", "role": "string", "account": "string"}),
    Endpoint("DELETE", "/secret_keys/{secret_key_id}", delete_secret_key, "Revoke a secret key",
             query={"account": "string"}),
]
