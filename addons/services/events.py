"""Billing events (top-ups requested, succeeded or failed; low and depleted balances), newest first."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from addons.ledger.models import Event


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
