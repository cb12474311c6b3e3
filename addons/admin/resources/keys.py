"""Lava's `secret_keys`: the keys that call this API (by their role: admin or account) and the gateway.

The secret is in the creation's answer only; lists show its hint. Only an admin key may create or
revoke an admin key (403 `admin_only`), so an account key cannot raise itself or lock the operator out.
"""

from __future__ import annotations

from collections.abc import Callable

from addons.admin.auth import require_admin
from addons.admin.endpoints import Call, Endpoint
from addons.admin.web import choice, iso, paginate, reject_unknown, text
from addons.services import keys
from addons.services.errors import Conflict
from addons.services.idempotency import fingerprint, run_once


def created_once(call: Call, secret_field: str, id_field: str,
                 create: Callable[[], tuple[int, dict]]) -> tuple[int, dict]:
    """`create`, honouring Idempotency-Key without keeping a secret in clear: the idempotency store holds the
    answer with `secret_field` removed, and a repeat of a creation that went through is 409
    `secret_shown_once` naming what it created (its secret cannot be shown again; a client that lost it
    revokes that object). Such endpoints are declared idempotent=False, so the app does not store the
    whole answer itself."""
    idempotency_key = call.request.headers.get("idempotency-key")
    if idempotency_key is None:
        return create()
    shown: list[str] = []

    def work() -> tuple[int, dict]:
        status, answer = create()
        shown.append(answer.pop(secret_field))
        return status, answer

    request_hash = fingerprint(call.request.method, call.request.url.path, call.body)
    status, answer = run_once(call.principal.account_id, idempotency_key, request_hash, work)
    if not shown:
        raise Conflict("secret_shown_once", f"the first request with this Idempotency-Key created {answer[id_field]}; "
                                            "its secret was shown once, in that answer. If it was lost, delete "
                                            f"{answer[id_field]} and create another")
    return status, {**answer, secret_field: shown[0]}


def secret_key_view(key: keys.KeyInfo) -> dict:
    return {"secret_key_id": key.id, "name": key.name, "secret_key_hint": key.prefix,
            "created_at": iso(key.created_at), "role": key.role, "revoked_at": iso(key.revoked_at)}


def list_secret_keys(call: Call) -> dict:
    listing = keys.key_listing(call.account, "secret")
    return paginate(listing.query, call.page(), listing.sort_field, listing.id_field,
                    lambda row: secret_key_view(listing.view(row)))


def create_secret_key(call: Call) -> tuple[int, dict]:
    reject_unknown(call.body, ("name", "role", "account"))
    name = text(call.body, "name", required=True)
    role = choice(call.body, "role", keys.ROLES, default="account")
    if role == "admin":
        require_admin(call.principal, "creating an admin key")
    account = call.account

    def create() -> tuple[int, dict]:
        created = keys.create_key(name, account, role)
        view = secret_key_view(keys.account_key(account, created.id, "secret"))
        return 201, view | {"secret_key": created.secret_key}

    return created_once(call, "secret_key", "secret_key_id", create)


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
             "secret_shown_once, since the secret is never stored", status=201,
             body={"name": "string", "role": "string", "account": "string"}),
    Endpoint("DELETE", "/secret_keys/{secret_key_id}", delete_secret_key, "Revoke a secret key",
             query={"account": "string"}),
]
