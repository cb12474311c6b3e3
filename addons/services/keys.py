"""Tollgate secret keys, and the provider keys apps send instead, registered to the account that pays."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from addons.core.catalog import load_catalog
from addons.core.settings import load_settings
from addons.ledger import accounts
from addons.ledger.models import KEY_ROLES, Account, ApiKey
from addons.core.secret_formats import hash_secret
from addons.services.errors import BadRequest, NotFound, Unauthorized

# admin: the REST API lets the key reach every account; account (the default): its own account only.
Role = Literal["admin", "account"]
ROLES: tuple[Role, ...] = KEY_ROLES


@dataclass(frozen=True, slots=True)
class CreatedKey:
    id: str
    name: str
    account: str
    secret_key: str  # shown once: only its hash is kept
    role: Role


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    name: str
    account: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    role: Role


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


def create_key(name: str, account: str = accounts.DEFAULT_ACCOUNT, role: Role = "account") -> CreatedKey:
    """A new secret key for `account` (created if new); an admin key reaches every account."""
    row, secret = accounts.create_key(name, account, require_role(role))
    return CreatedKey(row.id, row.name, account, secret, row.role)


def list_keys() -> list[KeyInfo]:
    query = ApiKey.select(ApiKey, Account.name.alias("account_name")).join(Account).order_by(ApiKey.created_at)
    return [KeyInfo(k.id, k.name, k.account_name, k.prefix, k.created_at, k.revoked_at, k.role)
            for k in query.objects()]


def owner_of(secret_key: str) -> KeyOwner:
    """Unauthorized unless `secret_key` is an active Tollgate secret key."""
    record = accounts.find_key(hash_secret(secret_key))
    if record is None or record.revoked or record.key_id is None:
        raise Unauthorized("invalid_secret_key", "the secret key is not an active Tollgate key")
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
