"""The request log: one row per request the gateway served or refused after authentication."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime

from addons.ledger.models import RequestRow, facts_of
from addons.services.reports import key_names, recent_requests

__all__ = ["FIELDS", "RequestRecord", "flags", "key_names", "recent"]  # key_names: a request's key by name


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRecord(facts_of(RequestRow, frozen=True)):
    """A row of the `request` table: a field per column, in the table's order, derived from RequestRow
    (money in integer nanos; `metadata` the caller's JSON object as text)."""


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

