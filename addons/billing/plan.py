"""Who pays for a request, decided from its credential before anything is forwarded.

| credential fields                       | merchant wallet pays      | customer balance pays  |
|-----------------------------------------|---------------------------|------------------------|
| secret key                              | provider cost             | -                      |
| + meter_slug                            | provider cost (metered)   | -                      |
| + customer_id + meter_slug              | provider cost             | the meter's fee        |
| ... + disable_billing                   | provider cost             | nothing (tracked)      |
| ... + provider_key (bring your own key) | BYOK fee, unless customer | BYOK fee, if customer  |

A customer without a meter, or disable_billing without a customer, is a contradiction and
refused; so is a customer or meter the key's account does not have. Never a silent fallback.

An app that sends its own provider key (sk-...) instead of a Tollgate credential is billed to the
account the key is registered to (`tollgate keys register-provider-key`): as bring-your-own-key,
the key going on as it came, or, registered with --swap, as managed, the key replaced by the
gateway's. An unregistered one is refused, or with `capture.provider_keys: track` forwarded as
bring-your-own-key and metered to `capture.account`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal

from addons.auth.credentials import CallerCredential, hash_secret
from addons.auth.keystore import KeyStore
from addons.auth.signed_tokens import SignedClaims, verify_signed_token
from addons.core.errors import BadRequest, Forbidden, ProviderNotConfigured, Unauthorized
from addons.core.settings import CaptureSettings
from addons.ledger.accounts import DEFAULT_ACCOUNT, CustomerRecord, KeyRecord
from pricing import meters
from pricing.money import to_nanos


@dataclass(frozen=True, slots=True)
class BillingPlan:
    key: KeyRecord
    customer: CustomerRecord | None = None
    meter_id: str | None = None
    meter: meters.MeterSpec | None = None
    bill_customer: bool = False
    provider_key: str | None = None  # bring your own key
    token: SignedClaims | None = None

    @property
    def byok(self) -> bool:
        return self.provider_key is not None

    @property
    def merchant_pays_provider(self) -> bool:
        return not self.byok


def _fields(credential: CallerCredential, signed: SignedClaims | None) -> tuple:
    if signed is not None:
        return signed.customer_id, signed.meter_slug, signed.provider_key, signed.disable_billing
    token = credential.token
    if token is None:
        return None, None, None, False
    return token.customer_id, token.meter_slug, token.provider_key, token.disable_billing


def unknown_provider_key(provider: str, captured: bool) -> Unauthorized:
    """The refusal of an unregistered provider key: what it looks like, and the two ways to fix it."""
    fix = ("send your Tollgate key (tg_sk_…) where the app puts its provider key, or register this key for the "
           f"account that pays: tollgate keys register-provider-key --account A --provider {provider} < keyfile")
    if captured:
        return Unauthorized("unknown_provider_key", f"this request carries a provider key for {provider} that is not "
                                                    f"registered with the gateway, not a Tollgate credential: {fix}")
    return Unauthorized("invalid_credential", f"this looks like a provider key, not a Tollgate credential: {fix}")


async def provider_key_plan(key: str, provider: str, keys: KeyStore, capture: CaptureSettings,
                            captured: bool) -> BillingPlan:
    """Who pays for a request that carries a provider key; no Tollgate key is involved (key_id None)."""
    registered = await keys.provider_key(hash_secret(key), provider)
    if registered is not None:
        payer = KeyRecord(None, registered.account_id, registered.wallet_id, False,
                          name=f"provider key {registered.registration_id}")
        return BillingPlan(payer, provider_key=None if registered.swap else key)
    if capture.provider_keys != "track":
        raise unknown_provider_key(provider, captured)
    name = capture.account or DEFAULT_ACCOUNT
    account = await keys.account(name)
    if account is None:
        raise ProviderNotConfigured("capture_account_missing",
                                    f"capture.account {name!r} is not an account in the ledger; fix the setting")
    return BillingPlan(KeyRecord(None, account.account_id, account.wallet_id, False, name="unregistered provider key"),
                       provider_key=key)


async def resolve_plan(credential: CallerCredential, keys: KeyStore, signing_key: bytes | None, *,
                       provider: str = "", capture: CaptureSettings | None = None,
                       captured: bool = False) -> BillingPlan:
    """provider: the catalog id the request goes to; captured: the client did not choose the gateway
    (transparent, WireGuard or local capture), which changes only how an unknown provider key is refused."""
    if credential.provider_key is not None:
        return await provider_key_plan(credential.provider_key, provider, keys, capture or CaptureSettings(),
                                       captured)
    signed = None
    if credential.signed_token is not None:
        if signing_key is None:
            raise Unauthorized("token_signature_invalid", "signed tokens are not enabled on this gateway")
        signed = verify_signed_token(credential.signed_token, signing_key)
        key = await keys.key_by_id(signed.key_id)
    else:
        key = await keys.key(hash_secret(credential.secret_key))
    if key is None:
        raise Unauthorized("invalid_credential", "unknown Tollgate secret key")
    if key.revoked:
        raise Forbidden("key_revoked", "this Tollgate secret key has been revoked")
    customer_id, meter_slug, provider_key, disable_billing = _fields(credential, signed)
    if customer_id and not meter_slug:
        raise BadRequest("contradictory_token", "customer_id needs a meter_slug that prices the customer's usage")
    if disable_billing and not customer_id:
        raise BadRequest("contradictory_token", "disable_billing applies only to a customer_id")
    meter = await keys.meter(key.account_id, meter_slug) if meter_slug else None
    if meter_slug and meter is None:
        raise BadRequest("unknown_meter", f"no meter {meter_slug!r} in this key's account")
    customer = await keys.customer(key.account_id, customer_id) if customer_id else None
    if customer_id and customer is None:
        raise BadRequest("unknown_customer", f"no customer {customer_id!r} in this key's account")
    meter_id, spec = meter or (None, None)
    return BillingPlan(key, customer, meter_id, spec, bool(customer) and not disable_billing, provider_key, signed)


def byok_fee(cost_nanos: int, percent: Decimal, per_request_nanos: int) -> int:
    """The service fee a bring-your-own-key request pays instead of the provider cost."""
    return to_nanos(Decimal(cost_nanos) * percent / 100 / 10**9) + per_request_nanos


def worst_case_fee(spec: meters.MeterSpec, units: Decimal, provider_cost_nanos: int) -> int:
    """An upper bound of the meter's fee: every unit at the meter's highest tier rate."""
    flat = replace(spec, tiers=(meters.Tier(Decimal(0), meters.max_rate(spec)),)) if spec.tiers else spec
    return meters.fee(flat, units=units, running_before=Decimal(0), provider_cost_nanos=provider_cost_nanos)
