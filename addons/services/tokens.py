"""Forward tokens for apps: plain (base64 of the Lava fields, embedding the secret key) or signed (HMAC, naming
the key by id, with an expiry, a scope and a spend cap)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from addons.auth.credentials import ForwardToken, encode_forward_token
from addons.auth.signed_tokens import issue_signed_token, load_signing_key
from addons.core.secret_formats import hash_secret
from addons.core.settings import PROJECT_ROOT, load_settings
from addons.ledger import accounts
from addons.ledger.models import ApiKey
from addons.services.errors import BadRequest, NotFound, Unauthorized

SIGNING_KEY_FILE = PROJECT_ROOT / "data" / "token-signing.key"  # used when the settings configure no key


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    signed: bool


def issue_token(secret_key: str, *, customer: str | None = None, meter: str | None = None,
                provider_key: str | None = None, disable_billing: bool = False, signed: bool = False,
                expires_in: int | None = None, allow_providers: Sequence[str] | None = None,
                allow_models: Sequence[str] | None = None, spend_cap_nanos: int | None = None,
                account: str | None = None) -> IssuedToken:
    """A token for the active key `secret_key`; expires_in, allow_* and the spend cap are for signed tokens only.

    `account` (the admin API's caller): the key must be one of its keys (NotFound otherwise, as for anything of
    another account), and the customer and meter named must be its own."""
    key = ApiKey.get_or_none(ApiKey.key_hash == hash_secret(secret_key))
    if key is None or key.revoked_at is not None:
        raise Unauthorized("inactive_secret_key", "the secret key is not an active Tollgate key")
    if account is not None:
        _check_account(key, account, customer, meter)
    if not signed:
        if any(v is not None for v in (expires_in, allow_providers, allow_models, spend_cap_nanos)):
            raise BadRequest("signed_only", "an expiry, allowed providers or models and a spend cap need a signed token")
        return IssuedToken(encode_forward_token(ForwardToken(secret_key, customer, meter, provider_key,
                                                             disable_billing)), False)
    try:
        signing_key = load_signing_key(load_settings().billing.token_signing_key, SIGNING_KEY_FILE)
        token = issue_signed_token(
            signing_key, key_id=key.id, customer_id=customer, meter_slug=meter, provider_key=provider_key,
            disable_billing=disable_billing, expires_in=expires_in, allow_providers=tuple(allow_providers or ()),
            allow_models=tuple(allow_models or ()), spend_cap_nanos=spend_cap_nanos)
    except ValueError as e:
        raise BadRequest("invalid_token_request", str(e)) from None
    return IssuedToken(token, True)


def _check_account(key: ApiKey, account: str, customer: str | None, meter: str | None) -> None:
    found = accounts.find_account(account)
    if found is None or key.account_id != found.account_id:
        raise NotFound("secret_key_not_found", f"the secret key is not a key of account {account!r}")
    if customer and accounts.find_customer(found.account_id, customer) is None:
        raise NotFound("customer_not_found", f"no customer {customer!r}")
    if meter and accounts.find_meter(found.account_id, meter) is None:
        raise NotFound("meter_not_found", f"no meter {meter!r}")
