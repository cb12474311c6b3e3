"""No request served at a silent $0: what to do when the ledger cannot know a request's provider cost.

Two holes, one per side: a model no price list knows (`unpriced`), and an endpoint whose usage
Tollgate does not read (`unmetered`: images, audio, rerank, ...; addons/usage/base.price_basis).
Settings `pricing.unpriced` / `pricing.unmetered` say `flag` (serve, record the row as such, warn
once per process) or `refuse` (402 before forwarding, so nothing is charged). Unset, the default
refuses exactly where a customer's fee would silently come out wrong: an unpriced model when the
billed customer's fee depends on the provider cost, an unmetered endpoint whenever a customer is
billed; track mode (no customer billed) flags.

The row's price_source: `catalog`, `override` or `unpriced` (pricing/cost.py), `unmetered`, or
`free` for requests that cost nothing at the provider (listing models, counting tokens).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from addons.billing.plan import BillingPlan
from addons.core.errors import PaymentRequired
from addons.core.settings import Settings
from addons.usage.base import UsageReader

log = logging.getLogger(__name__)

_WARNED_MAX = 10_000  # (provider, model) pairs come from callers: bound the memory of what was warned


class PriceUnknown(PaymentRequired):
    """402: the request's provider cost could not be known, and the operator chose not to serve it."""

    type = "pricing_error"


def fee_depends_on_provider_cost(plan: BillingPlan, settings: Settings) -> bool:
    """Would the billed customer's fee change with the provider cost? Then a cost of $0 undercharges it."""
    if not plan.bill_customer:
        return False
    spec = plan.meter
    if spec is not None and (spec.rate_type in ("percentage", "hybrid") or spec.base_cost_payer == "customer"):
        return True
    return plan.byok and settings.billing.byok_fee_percent > 0  # the customer pays a share of the cost


def unpriced_policy(plan: BillingPlan, settings: Settings) -> str:
    if settings.pricing.unpriced is not None:
        return settings.pricing.unpriced
    return "refuse" if fee_depends_on_provider_cost(plan, settings) else "flag"


def unmetered_policy(plan: BillingPlan, settings: Settings) -> str:
    if settings.pricing.unmetered is not None:
        return settings.pricing.unmetered
    return "refuse" if plan.bill_customer else "flag"


def admit(plan: BillingPlan, reader: UsageReader, settings: Settings, source_of: Callable[[str], str]) -> None:
    """Before forwarding (and before any hold): raise PriceUnknown where the policy refuses.

    source_of(model) is the price source the model would get. A model known only from the response
    cannot be checked here; its row is flagged instead.
    """
    if reader.basis == "unmetered" and unmetered_policy(plan, settings) == "refuse":
        raise PriceUnknown(
            "endpoint_unmetered",
            "Tollgate does not read usage for this endpoint yet, so it cannot be charged; "
            "the operator can serve it unmetered with the setting pricing.unmetered: flag",
        )
    if reader.basis == "metered" and reader.model and unpriced_policy(plan, settings) == "refuse":
        if source_of(reader.model) == "unpriced":
            raise PriceUnknown(
                "model_unpriced",
                f"model {reader.model[:100]!r} has no price in this gateway's price lists, so it cannot be "
                "charged; the operator can add it to pricing/overrides.yaml or the settings' prices",
            )


def price_source(reader: UsageReader, cost_source: str, status: int | None) -> str:
    """The row's price_source. A provider's error answer (status >= 400) is priced as its model,
    never `unmetered`: nothing was generated, and its usage_source stays `none`."""
    answered_error = status is not None and status >= 400
    if reader.basis == "free":
        return "free"
    if reader.basis == "unmetered" and not answered_error:
        return "unmetered"
    return cost_source


class Warnings:
    """One warning per (provider, model) (unmetered: per endpoint path) per process for flagged rows;
    never a key, only names."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str, str]] = set()

    def flagged(self, source: str, provider: str, model: str | None, path: str | None = None) -> None:
        if source not in ("unpriced", "unmetered"):
            return
        what = (model or "?") if source == "unpriced" else ((path or "").partition("?")[0] or "?")
        key = (source, provider, what[:200])
        if key in self._seen or len(self._seen) >= _WARNED_MAX:
            return
        self._seen.add(key)
        if source == "unpriced":
            log.warning("tollgate: %s model %r has no price: its requests are recorded as unpriced, not charged "
                        "for provider cost (see `tollgate prices missing`)", provider, key[2])
        else:
            log.warning("tollgate: %s %s is not metered: its requests are recorded as unmetered, not charged "
                        "for provider cost (setting pricing.unmetered)", provider, key[2])


_warnings = Warnings()


def warn_once(source: str, provider: str, model: str | None, path: str | None = None) -> None:
    """Log a flagged (unpriced or unmetered) request, once per model or endpoint path (its query dropped)
    in this process."""
    _warnings.flagged(source, provider, model, path)
