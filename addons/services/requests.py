"""The request log: one row per request the gateway served or refused after authentication."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime

from addons.services.reports import key_names, recent_requests

__all__ = ["FIELDS", "RequestRecord", "flags", "key_names", "recent"]  # key_names: a request's key by name


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """A row of the `request` table, its fields in the table's order (tests/test_services.py checks both agree)."""

    id: str
    created_at: datetime
    account: str
    key: str | None
    customer_id: str | None
    meter_slug: str | None
    token_id: str | None
    token_spend_nanos: int
    provider: str
    model: str | None
    endpoint: str
    status: int | None
    streamed: bool
    input_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    provider_cost_nanos: int
    charged_nanos: int  # debited from the merchant's wallet
    fee_nanos: int  # debited from the customer's balance
    fee_uncollected_nanos: int
    latency_ms: int | None
    ttfb_ms: int | None
    usage_source: str  # reported | estimated | none
    price_source: str | None  # catalog | override | unpriced | unmetered | free; None: an older row
    bill_customer: bool | None
    byok: bool
    error: str | None
    metadata: str | None  # the caller's metadata, a JSON object as text


FIELDS = tuple(f.name for f in fields(RequestRecord))


def recent(limit: int = 20, *, customer: str | None = None, key: str | None = None, model: str | None = None,
           provider: str | None = None, status: int | None = None, status_class: int | None = None,
           since: datetime | None = None, until: datetime | None = None) -> list[RequestRecord]:
    """The newest `limit` requests matching every filter given, over [since, until) in naive UTC.

    `key` is a key's id or name; `model` ending in * matches a prefix; `status` is an HTTP status and
    `status_class` its hundreds digit (4 for every 4xx).
    """
    rows = recent_requests(limit, customer, key=key, model=model, provider=provider, status=status,
                           status_class=status_class, since=since, until=until)
    return [RequestRecord(**{name: row[name] for name in FIELDS}) for row in rows]


def flags(record: RequestRecord) -> list[str]:
    """What a reader should know about a request's numbers: streamed, usage estimated, cost not known."""
    return [name for name, on in (("streamed", record.streamed), ("estimated", record.usage_source == "estimated"),
                                  ("unpriced", record.price_source in ("unpriced", "unmetered"))) if on]

