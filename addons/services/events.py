"""Billing events (top-ups requested, succeeded or failed; low and depleted balances), newest first."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from addons.ledger.models import Event
from addons.services import wallets
from addons.services.listing import Listing
from addons.services.reports import events_query


@dataclass(frozen=True, slots=True)
class EventRecord:
    id: int
    name: str
    wallet: str | None
    data: dict  # money in it is integer nano-dollars, keys ending in _nanos
    created_at: datetime


def recent(limit: int = 50) -> list[EventRecord]:
    return [EventRecord(e.id, e.name, e.wallet_id, json.loads(e.data), e.created_at)
            for e in Event.select().order_by(Event.id.desc()).limit(limit)]


@dataclass(frozen=True, slots=True)
class ListedEvent:
    event: EventRecord
    customer_id: str | None  # whose wallet it is: a customer's, or None for the account's own


def _listed(event: Event) -> ListedEvent:
    return ListedEvent(EventRecord(event.id, event.name, event.wallet_id, json.loads(event.data), event.created_at),
                       getattr(event, "customer_id", None) or None)


def listing(account: str | None, *, name: str | None = None, customer: str | None = None) -> Listing:
    """The events of `account`'s wallets (its own and its customers'), or of every wallet with None; of one event
    name, of one customer (its customer_id)."""
    account_id = None if account is None else wallets.account_id(account)
    query = events_query(account_id, customer)
    if name:
        query = query.where(Event.name == name)
    # Event ids only grow: sorted by id, with the name as the cursor's (never deciding) second field, since a
    # cursor names its row by a string
    return Listing(query, Event.id, Event.name, _listed)
