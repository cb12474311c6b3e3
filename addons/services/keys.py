"""Tollgate keys, and the provider keys apps send instead, registered to the account that pays.

A key is a secret key (Lava's `secret_keys`: the REST API by its role, and the gateway) or a spend key
(Lava's `spend_keys`: the gateway only, never the REST API, so a key handed to an app cannot mint
itself an unrestricted one). Either may be paused, expire, or be confined to some models and
providers; the gateway refuses what it does not allow (addons/auth/authentication.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from peewee import JOIN, fn

from addons.core.catalog import load_catalog
from addons.core.errors import Forbidden
from addons.core.limits import NO_LIMITS, Limits
from addons.core.secret_formats import hash_secret
from addons.core.settings import load_settings
from addons.ledger import accounts
from addons.ledger.models import KEY_KINDS, KEY_ROLES, KEY_STATUSES, Account, ApiKey, RequestRow, Wallet, utcnow
from addons.services import limits as key_limits
from addons.services.errors import BadRequest, Conflict, NotFound, Unauthorized
from addons.services.listing import Listing

# admin: the REST API lets the key reach every account; account (the default): its own account only.
Role = Literal["admin", "account"]
ROLES: tuple[Role, ...] = KEY_ROLES
Kind = Literal["secret", "spend"]
KINDS: tuple[Kind, ...] = KEY_KINDS
Status = Literal["active", "paused"]
STATUSES: tuple[Status, ...] = KEY_STATUSES


@dataclass(frozen=True, slots=True)
class CreatedKey:
    id: str
    name: str
    account: str
    secret_key: str  # shown once: only its hash is kept
    role: Role
    kind: Kind = "secret"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    name: str
    account: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    role: Role
    kind: Kind = "secret"
    status: Status = "active"
    allowed_models: tuple[str, ...] | None = None  # None: every model
    allowed_providers: tuple[str, ...] | None = None  # None: every provider
    expires_at: datetime | None = None
    wallet_id: str = ""  # the account's wallet, which pays for the key's requests
    limits: Limits = NO_LIMITS

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= utcnow()


@dataclass(frozen=True, slots=True)
class KeyUsage:
    """A key's requests in the ledger (refusals write none)."""

    requests: int = 0
    spend_nanos: int = 0  # what its account's wallet was charged for them
    last_used_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class KeyOwner:
    """Who an active secret key belongs to, and what its role lets it reach."""

    key_id: str
    key_name: str
    account_id: str
    account: str
    role: Role


@dataclass(frozen=True, slots=True)
class ProviderKeyInfo:
    id: str
    account: str
    provider: str
    prefix: str
    swap: bool  # managed: the gateway's own key replaces it; otherwise bring-your-own-key
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class Revoked:
    id: str
    revoked_at: datetime


def require_role(role: str) -> Role:
    """BadRequest `invalid_role` unless `role` is one of ROLES."""
    if role not in ROLES:
        raise BadRequest("invalid_role", f"a key's role is one of {', '.join(ROLES)}, not {role!r}")
    return role


def create_key(name: str, account: str = accounts.DEFAULT_ACCOUNT, role: Role = "account", *,
               allowed_models: Sequence[str] | None = None, allowed_providers: Sequence[str] | None = None,
               expires_at: datetime | None = None, limits: dict | None = None) -> CreatedKey:
    """A new secret key for `account` (created if new); an admin key reaches every account. `limits`: limit
    columns (services.limits.KEY_LIMIT_CHANGES) to values."""
    require_providers(allowed_providers)
    row, secret = accounts.create_key(name, account, require_role(role), allowed_models=allowed_models,
                                      allowed_providers=allowed_providers, expires_at=expires_at,
                                      limits=key_limits.apply_changes(NO_LIMITS, limits or {}))
    return CreatedKey(row.id, row.name, account, secret, row.role)


def require_status(status: str) -> Status:
    if status not in STATUSES:
        raise BadRequest("invalid_status", f"a key's status is one of {', '.join(STATUSES)}, not {status!r}")
    return status


def require_providers(providers: Sequence[str] | None) -> None:
    """BadRequest `provider_not_found` naming the first id that is not in the catalog."""
    if not providers:
        return
    catalog = load_catalog(overrides=load_settings().provider_overrides)
    for provider in providers:
        if catalog.by_id(provider) is None:
            raise BadRequest("provider_not_found", f"no provider {provider!r} in the catalog")


def future_expiry(expires_at: datetime | None) -> datetime | None:
    """An expiry an operator gives a key, refused once passed: most likely a typo (pausing or revoking a key is how
    to stop it now)."""
    if expires_at is not None and expires_at <= utcnow():
        raise BadRequest("expiry_in_past", f"the expiry {expires_at:%Y-%m-%d %H:%M:%S} UTC has already passed; "
                                           "to stop a key now, pause or revoke it")
    return expires_at


def create_spend_key(name: str, account: str = accounts.DEFAULT_ACCOUNT, *, status: Status = "active",
                     allowed_models: Sequence[str] | None = None, allowed_providers: Sequence[str] | None = None,
                     expires_at: datetime | None = None, limits: dict | None = None) -> CreatedKey:
    """A key for the gateway only (never the REST API), paid for by `account`'s wallet; None lists: no restriction.
    `limits`: as create_key's."""
    require_providers(allowed_providers)
    row, secret = accounts.create_key(name, account, kind="spend", status=require_status(status),
                                      allowed_models=allowed_models, allowed_providers=allowed_providers,
                                      expires_at=expires_at, limits=key_limits.apply_changes(NO_LIMITS, limits or {}))
    return CreatedKey(row.id, row.name, account, secret, row.role, row.kind)


def _keys():
    return (ApiKey.select(ApiKey, Account.name.alias("account_name"), Wallet.id.alias("wallet_id"))
            .join(Account).switch(ApiKey)
            .join(Wallet, JOIN.LEFT_OUTER, on=(Wallet.account == ApiKey.account) & (Wallet.customer_id == "")))


def _info(row) -> KeyInfo:
    models, providers = accounts.key_scope(row.allowed_models), accounts.key_scope(row.allowed_providers)
    return KeyInfo(row.id, row.name, row.account_name, row.prefix, row.created_at, row.revoked_at, row.role,
                   row.kind, row.status, models or None, providers or None, row.expires_at, row.wallet_id or "",
                   accounts.limits_of(row))


def list_keys() -> list[KeyInfo]:
    return [_info(k) for k in _keys().order_by(ApiKey.created_at).objects()]


def key_listing(account: str, kind: Kind) -> Listing:
    """The `kind` keys of `account`, revoked ones too, for the API's paginated lists."""
    query = _keys().where(Account.name == account, ApiKey.kind == kind).objects()
    return Listing(query, ApiKey.created_at, ApiKey.id, _info)


def account_key(account: str | None, key_id: str, kind: Kind | None) -> KeyInfo:
    """NotFound unless `key_id` is a `kind` key of `account`: another account's key is as none. None: any
    account (the operator's CLI), any kind."""
    query = _keys().where(ApiKey.id == key_id)
    if account is not None:
        query = query.where(Account.name == account)
    if kind is not None:
        query = query.where(ApiKey.kind == kind)
    row = query.objects().first()
    if row is None:
        raise NotFound("key_not_found", f"no {kind or 'Tollgate'} key {key_id}")
    return _info(row)


def _live_key(account: str | None, key_id: str, kind: Kind | None) -> KeyInfo:
    key = account_key(account, key_id, kind)
    if key.revoked_at is not None:
        raise Conflict("key_revoked", f"key {key_id} is revoked; create another")
    return key


def update_key(account: str, key_id: str, kind: Kind | None, **changes) -> KeyInfo:
    """Change any of accounts.KEY_CHANGES (name, status, allowed_models, allowed_providers, expires_at, and the
    limit columns: None clears one) of a live key; the gateway sees it within tollgate_cache_ttl_ms.
    kind None: a key of either kind."""
    key = _live_key(account, key_id, kind)
    if "status" in changes:
        require_status(changes["status"])
    require_providers(changes.get("allowed_providers"))
    limit_changes = {name: changes.pop(name) for name in key_limits.KEY_LIMIT_CHANGES if name in changes}
    if limit_changes:
        changes.update(key_limits.columns(key_limits.apply_changes(key.limits, limit_changes)))
    accounts.update_key(key_id, **changes)
    return account_key(account, key_id, kind)


def key_limits_view(key: KeyInfo) -> key_limits.LimitsView:
    """The key's limits with what the current periods have used and when they reset."""
    return key_limits.key_view(key.id, key.limits)


def rotate_key(account: str, key_id: str, kind: Kind) -> CreatedKey:
    """A new secret for a live key, same id and history; the old secret is refused from now on (by the gateway
    within tollgate_cache_ttl_ms: it may have cached the key)."""
    _live_key(account, key_id, kind)
    row, secret = accounts.rotate_key(key_id)
    return CreatedKey(row.id, row.name, account, secret, row.role, row.kind)


def revoke_account_key(account: str, key_id: str, kind: Kind) -> Revoked:
    """revoke_key, for a `kind` key of `account` only (NotFound otherwise)."""
    account_key(account, key_id, kind)
    return revoke_key(key_id)


def usage_by_key(key_ids: Sequence[str]) -> dict[str, KeyUsage]:
    """Each key's requests, charges and last request, in one query; a key without requests is absent."""
    if not key_ids:
        return {}
    spend = fn.COALESCE(fn.SUM(RequestRow.charged_nanos), 0)
    query = (RequestRow.select(RequestRow.key, fn.COUNT(RequestRow.id), spend, fn.MAX(RequestRow.created_at))
             .where(RequestRow.key.in_(list(key_ids))).group_by(RequestRow.key).tuples())
    return {key_id: KeyUsage(int(count), int(spend), last) for key_id, count, spend, last in query}


def owner_of(secret_key: str) -> KeyOwner:
    """Unauthorized unless `secret_key` is an active Tollgate secret key; a spend key or a paused one is
    Forbidden: the caller holds it, so saying why reveals nothing."""
    record = accounts.find_key(hash_secret(secret_key))
    if record is None or record.revoked or record.key_id is None:
        raise Unauthorized("invalid_secret_key", "the secret key is not an active Tollgate key")
    if record.expires_at is not None and record.expires_at <= time.time():
        raise Unauthorized("key_expired", "this Tollgate key has expired")
    if record.kind != "secret":
        raise Forbidden("secret_key_required", "a spend key pays for gateway requests only; the REST API takes "
                                               "a secret key (POST /v1/secret_keys, or tollgate keys create)")
    if record.status != "active":
        raise Forbidden("key_paused", "this Tollgate key is paused; it works again once resumed")
    name = Account.select(Account.name).where(Account.id == record.account_id).scalar()
    return KeyOwner(record.key_id, record.name, record.account_id, name, record.role)


def account_exists(name: str) -> bool:
    return accounts.find_account(name) is not None


def revoke_key(key_id: str) -> Revoked:
    """Idempotent: a key revoked already keeps its first revocation time."""
    try:
        row = accounts.revoke_key(key_id)
    except LookupError as e:
        raise NotFound("key_not_found", str(e)) from None
    return Revoked(row.id, row.revoked_at)


def require_provider(provider: str) -> None:
    """NotFound unless `provider` is in the catalog (with the settings' overrides)."""
    if load_catalog(overrides=load_settings().provider_overrides).by_id(provider) is None:
        raise NotFound("provider_not_found", f"no provider {provider!r} in the catalog")


def register_provider_key(account: str, provider: str, key: str, *, swap: bool = False) -> ProviderKeyInfo:
    """Bill requests carrying `key` for `provider` to `account` (created if new); only its fingerprint is kept."""
    require_provider(provider)
    try:
        row = accounts.register_provider_key(account, provider, key, swap=swap)
    except accounts.AlreadyExists as e:
        raise Conflict("provider_key_registered", str(e)) from None
    except ValueError as e:
        raise BadRequest("invalid_provider_key", str(e)) from None
    return ProviderKeyInfo(row.id, account, row.provider, row.prefix, row.swap, row.created_at, row.revoked_at)


def list_provider_keys() -> list[ProviderKeyInfo]:
    return [ProviderKeyInfo(**row) for row in accounts.provider_keys()]


def revoke_provider_key(registration_id: str) -> Revoked:
    try:
        row = accounts.revoke_provider_key(registration_id)
    except LookupError as e:
        raise NotFound("provider_key_not_found", str(e)) from None
    return Revoked(row.id, row.revoked_at)
