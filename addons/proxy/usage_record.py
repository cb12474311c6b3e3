"""A finished request's usage record, assembled from what the Gateway carried from `request` to its end.

The Gateway decides (the price, the price source, what billing charges now); this module only puts
the facts together: usage, timing, who pays, and the units a customer's meter counts. The customer's
fee is decided later, when the ledger writer commits (addons.billing.charges.request_fees).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from mitmproxy import http

from addons.billing.charges import RequestCharges
from addons.billing.plan import BillingPlan
from addons.core.catalog import Provider
from addons.ledger.writer import UsageRecord
from addons.rewrite.endpoint import Rewrite
from addons.usage.base import UsageReader, UsageReading
from pricing import meters


@dataclass(slots=True)
class Pending:
    """What a forwarded request carries from `request` to `response`/`error`."""

    request_id: str
    started: float
    provider: Provider
    plan: BillingPlan
    reader: UsageReader
    metadata: dict[str, str] | None
    streamed: bool = False
    rate_headers: list[tuple[bytes, bytes]] | None = None  # x-ratelimit-* of the key's or customer's rate limits
    model: str | None = None  # the model the operator maps the request's deployment to (Azure), over the response's
    session_id: str | None = None  # a Realtime session's responses: the session they belong to
    rewrite: Rewrite | None = None  # a /v1/rewrite request's translation (addons/rewrite/endpoint.py)
    content_type: str | None = None  # the response's, as the provider sent it

    @property
    def created_at(self) -> datetime:
        return datetime.fromtimestamp(self.started, UTC).replace(tzinfo=None)


def usage_record(state: Pending, result: UsageReading, response: http.Response | None, *, status: int | None,
                 error: str | None, cost_nanos: int, price_source: str, charges: RequestCharges,
                 billable: bool) -> UsageRecord:
    """The record of a request the usage reader read: `result` is the reader's, `charges` billing's."""
    plan, usage = state.plan, result.usage
    units = meters.units_of(plan.meter, state.reader.measured(usage)) if plan.meter and billable else 0
    ttfb = response.timestamp_start if response else None
    end = (response.timestamp_end if response else None) or time.time()
    return UsageRecord(
        id=state.request_id,
        created_at=state.created_at,
        account=plan.key.account_id,
        wallet_id=plan.key.wallet_id,
        key=plan.key.key_id,
        provider=state.provider.id,
        endpoint=state.reader.endpoint,
        model=result.model or state.reader.model,
        customer_id=plan.customer.customer_id if plan.customer else None,
        meter_slug=plan.meter.slug if plan.meter else None,
        token_id=plan.token.token_id if plan.token else None,
        status=status,
        streamed=state.streamed,
        input_tokens=usage.input_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        output_tokens=usage.output_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        provider_cost_nanos=cost_nanos,
        charged_nanos=charges.merchant_nanos,
        latency_ms=round((end - state.started) * 1000),
        ttfb_ms=round((ttfb - state.started) * 1000) if ttfb else None,
        usage_source=result.source,
        price_source=price_source,
        byok=plan.byok,
        error=error,
        metadata=state.metadata,
        customer_wallet_id=plan.customer.wallet_id if plan.customer else None,
        meter_id=plan.meter_id,
        units_micro=meters.units_to_micro(units) if units else 0,
        bill_customer=plan.bill_customer and billable,
        customer_byok_fee_nanos=charges.customer_byok_fee_nanos,
        session_id=state.session_id,
        client_format=state.rewrite.client_format if state.rewrite else None,
        **_media_columns(result),
    )


def _media_columns(result: UsageReading) -> dict[str, int | str]:
    """The quantities of an image, audio, speech or rerank request, in the columns that record them."""
    media = result.media
    if media is None:
        return {}
    seconds = media.audio_seconds
    return {"images": media.images, "search_units": media.search_units, "input_characters": media.characters,
            "input_duration_ms": int(seconds * 1000) if seconds is not None else 0, "media_usage": media.to_json()}


def unmetered_record(state: Pending, status: int | None) -> UsageRecord:
    """The record of a request whose metering failed: its row, without usage and charging nothing."""
    return UsageRecord(
        id=state.request_id, created_at=state.created_at, account=state.plan.key.account_id,
        wallet_id=state.plan.key.wallet_id, key=state.plan.key.key_id, provider=state.provider.id,
        endpoint=state.reader.endpoint, model=state.reader.model, status=status, streamed=state.streamed,
        byok=state.plan.byok, bill_customer=False, error="metering_failed", metadata=state.metadata,
        client_format=state.rewrite.client_format if state.rewrite else None,
    )
