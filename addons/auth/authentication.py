"""Who is calling: a request's credential resolved to the Tollgate key it proves, before anything is billed.

- a secret key (plain, or inside a forward token): the key with that secret's hash;
- a signed token: its signature checked, then the key it names by id;
- a provider key the app sent instead: the account it is registered to (`tollgate keys
  register-provider-key`); an unregistered one is refused, or with `capture.provider_keys: track`
  billed to `capture.account`.

An unknown key is 401 `invalid_credential`, a revoked one 403 `key_revoked`, a paused one 403
`key_paused`, an expired one 401 `key_expired`; a request outside the key's allowed models or
providers is 403 `key_scope` (check_key_scope, once the model is read). All of it is read from the
cached KeyRecord: no query per request, and a change is seen within the cache's TTL. A provider key stands
for no Tollgate key: its Caller carries a stand-in KeyRecord (key_id None) naming the account that pays.
What the credential asks for (customer, meter, bring-your-own-key, billing off) is passed on unchecked:
billing.plan decides whether the key's account can bill it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from addons.auth.account_cache import AccountCache
from addons.auth.credentials import CallerCredential
from addons.auth.signed_tokens import SignedClaims, out_of_scope, verify_signed_token
from addons.core.errors import Forbidden, ProviderNotConfigured, Unauthorized
from addons.core.secret_formats import hash_secret
from addons.core.settings import CaptureSettings
from addons.ledger.accounts import DEFAULT_ACCOUNT, KeyRecord


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: the key that pays, the signed token if that was the credential, and the
    billing fields its forward or signed token carries."""

    key: KeyRecord
    token: SignedClaims | None = None
    customer_id: str | None = None
    meter_slug: str | None = None
    provider_key: str | None = None  # bring your own key: forwarded as it came
    disable_billing: bool = False


def unknown_provider_key(provider: str, captured: bool) -> Unauthorized:
    """The refusal of an unregistered provider key: what it looks like, and the two ways to fix it."""
    fix = ("send your Tollgate key (tg_sk_…) where the app puts its provider key, or register this key for the "
           f"account that pays: tollgate keys register-provider-key --account A --provider {provider} < keyfile")
    if captured:
        return Unauthorized("unknown_provider_key", f"this request carries a provider key for {provider} that is not "
                                                    f"registered with the gateway, not a Tollgate credential: {fix}")
    return Unauthorized("invalid_credential", f"this looks like a provider key, not a Tollgate credential: {fix}")


async def _provider_key_caller(key: str, provider: str, cache: AccountCache, capture: CaptureSettings,
                               captured: bool) -> Caller:
    """The account a provider key is registered to, or under `capture.provider_keys: track` the capture account."""
    registered = await cache.provider_key(hash_secret(key), provider)
    if registered is not None:
        payer = KeyRecord(None, registered.account_id, registered.wallet_id, False,
                          name=f"provider key {registered.registration_id}")
        return Caller(payer, provider_key=None if registered.swap else key)
    if capture.provider_keys != "track":
        raise unknown_provider_key(provider, captured)
    name = capture.account or DEFAULT_ACCOUNT
    account = await cache.account(name)
    if account is None:
        raise ProviderNotConfigured("capture_account_missing",
                                    f"capture.account {name!r} is not an account in the ledger; fix the setting")
    return Caller(KeyRecord(None, account.account_id, account.wallet_id, False, name="unregistered provider key"),
                  provider_key=key)


def _asked_for(credential: CallerCredential, signed: SignedClaims | None) -> tuple:
    """(customer_id, meter_slug, provider_key, disable_billing) as the signed or forward token carries them."""
    if signed is not None:
        return signed.customer_id, signed.meter_slug, signed.provider_key, signed.disable_billing
    token = credential.token
    if token is None:
        return None, None, None, False
    return token.customer_id, token.meter_slug, token.provider_key, token.disable_billing


async def authenticate(credential: CallerCredential, cache: AccountCache, signing_key: bytes | None, *,
                       provider: str = "", capture: CaptureSettings | None = None, captured: bool = False) -> Caller:
    """provider: the catalog id the request goes to; captured: the client did not choose the gateway
    (transparent, WireGuard or local capture), which changes only how an unknown provider key is refused."""
    if credential.provider_key is not None:
        return await _provider_key_caller(credential.provider_key, provider, cache, capture or CaptureSettings(),
                                          captured)
    signed = None
    if credential.signed_token is not None:
        if signing_key is None:
            raise Unauthorized("token_signature_invalid", "signed tokens are not enabled on this gateway")
        signed = verify_signed_token(credential.signed_token, signing_key)
        key = await cache.key_by_id(signed.key_id)
    else:
        key = await cache.key(hash_secret(credential.secret_key))
    if key is None:
        raise Unauthorized("invalid_credential", "unknown Tollgate secret key")
    return Caller(usable_key(key), signed, *_asked_for(credential, signed))


def usable_key(key: KeyRecord) -> KeyRecord:
    """The key, unless it is revoked, paused or expired (every way of proving a key ends here)."""
    if key.revoked:
        raise Forbidden("key_revoked", "this Tollgate secret key has been revoked")
    if key.status != "active":
        raise Forbidden("key_paused", "this Tollgate key is paused; it works again once resumed")
    if key.expires_at is not None and time.time() >= key.expires_at:
        raise Unauthorized("key_expired", "this Tollgate key has expired")
    return key


def check_key_scope(key: KeyRecord, provider_id: str, model: str | None) -> None:
    """403 `key_scope` for a provider or model outside the key's allow-lists (as a signed token's scope)."""
    if (key.allowed_providers or key.allowed_models) and (
            refused := out_of_scope(key.allowed_providers, key.allowed_models, provider_id, model)):
        raise Forbidden("key_scope", f"this key does not allow {refused}")
