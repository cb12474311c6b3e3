"""Forward tokens for apps: plain (base64 of the Lava fields, embedding the secret key) or signed (HMAC, naming
the key by id, with an expiry, a scope and a spend cap)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from addons.auth.credentials import ForwardToken, encode_forward_token
from addons.auth.signed_tokens import issue_signed_token, load_signing_key
from addons.core.secret_formats import hash_secret
from addons.core.settings import PROJECT_ROOT, load_settings
from addons.ledger.models import ApiKey
from addons.services.errors import BadRequest, Unauthorized

SIGNING_KEY_FILE = PROJECT_ROOT / "data" / "token-signing.key"  # used when the settings configure no key


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    signed: bool


def issue_token(secret_key: str, *, customer: str | None = None, meter: str | None = None,
                provider_key: str | None = None, disable_billing: bool = False, signed: bool = False,
                expires_in: int | None = None, allow_providers: Sequence[str] | None = None,
                allow_models: Sequence[str] | None = None, spend_cap_nanos: int | None = None) -> IssuedToken:
    """A token for the active key `secret_key`; expires_in, allow_* and the spend cap are for signed tokens only."""
    key = ApiKey.get_or_none(ApiKey.key_hash == hash_secret(secret_key))
    if key is None or key.revoked_at is not None:
        raise Unauthorized("inactive_secret_key", "the secret key is not an active Tollgate key")
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
