"""Who pays for a request, decided from its authenticated caller (addons.auth.authentication) before
anything is forwarded.

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
account authentication found for it: as bring-your-own-key, the key going on as it came, or,
registered with --swap, as managed, the key replaced by the gateway's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal

from addons.auth.account_cache import AccountCache
from addons.auth.authentication import Caller
from addons.auth.signed_tokens import SignedClaims
from addons.core.errors import BadRequest
from addons.ledger.accounts import CustomerRecord, KeyRecord
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
        return self.provider_key is None  # not byok

    @property
    def capped(self) -> bool:
        """A signed token with a spend cap pays: its cap is a pot its requests hold against."""
        return self.token is not None and self.token.spend_cap_nanos is not None

    @property
    def limited(self) -> bool:
        """The key's limits, or a customer's, may apply (addons/billing/limits.py RequestLimits.owners)."""
        return self.key.limits.any or self.customer is not None

    @property
    def holds(self) -> bool:
        """Whether its requests hold anything: a customer's balance, a token's cap, a key's or customer's limits
        (else admission only checks the merchant's wallet is positive)."""
        return self.bill_customer or self.capped or self.limited


async def plan_for(caller: Caller, cache: AccountCache) -> BillingPlan:
    """The caller's billing, checked against its key's account: the customer and meter must be the account's."""
    customer_id, meter_slug, disable_billing = caller.customer_id, caller.meter_slug, caller.disable_billing
    if customer_id and not meter_slug:
        raise BadRequest("contradictory_token", "customer_id needs a meter_slug that prices the customer's usage")
    if disable_billing and not customer_id:
        raise BadRequest("contradictory_token", "disable_billing applies only to a customer_id")
    key = caller.key
    meter = await cache.meter(key.account_id, meter_slug) if meter_slug else None
    if meter_slug and meter is None:
        raise BadRequest("unknown_meter", f"no meter {meter_slug!r} in this key's account")
    customer = await cache.customer(key.account_id, customer_id) if customer_id else None
    if customer_id and customer is None:
        raise BadRequest("unknown_customer", f"no customer {customer_id!r} in this key's account")
    meter_id, spec = meter or (None, None)
    return BillingPlan(key, customer, meter_id, spec, bool(customer) and not disable_billing, caller.provider_key,
                       caller.token)


def byok_fee(cost_nanos: int, percent: Decimal, per_request_nanos: int) -> int:
    """The service fee a bring-your-own-key request pays instead of the provider cost."""
    return to_nanos(Decimal(cost_nanos) * percent / 100 / 10**9) + per_request_nanos


def worst_case_fee(spec: meters.MeterSpec, units: Decimal, provider_cost_nanos: int) -> int:
    """An upper bound of the meter's fee: every unit at the meter's highest tier rate."""
    flat = replace(spec, tiers=(meters.Tier(Decimal(0), meters.max_rate(spec)),)) if spec.tiers else spec
    return meters.fee(flat, units=units, running_before=Decimal(0), provider_cost_nanos=provider_cost_nanos)
