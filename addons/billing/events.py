"""Billing events: rows of the `event` table, each also logged at INFO.

An event is inserted through the current connection, so inside a transaction it commits or
rolls back with the change it reports. Data is a JSON object; money in it is integer nano-dollars
(keys ending in `_nanos`). Events never carry secrets.
"""

from __future__ import annotations

import json
import logging

from addons.ledger.models import Event

log = logging.getLogger(__name__)

TOPUP_REQUESTED = "topup.requested"
TOPUP_SUCCEEDED = "topup.succeeded"
TOPUP_FAILED = "topup.failed"
BALANCE_LOW = "balance.low"
BALANCE_DEPLETED = "balance.depleted"

EVENT_NAMES = (TOPUP_REQUESTED, TOPUP_SUCCEEDED, TOPUP_FAILED, BALANCE_LOW, BALANCE_DEPLETED)


def record_event(name: str, wallet_id: str | None, **data) -> Event:
    """Insert an Event row (inside the caller's transaction, if any) and log it."""
    if name not in EVENT_NAMES:
        raise ValueError(f"unknown billing event {name!r}")
    event = Event.create(name=name, wallet=wallet_id, data=json.dumps(data, sort_keys=True, default=str))
    details = " ".join(f"{key}={value}" for key, value in sorted(data.items()))
    log.info("tollgate event %s wallet=%s%s", name, wallet_id, f" {details}" if details else "")
    return event


def event_data(event: Event) -> dict:
    return json.loads(event.data or "{}")
