"""The auto top-up worker for a process that charges customers outside the proxy (the admin process, which records
reported requests): after such a charge, `notify_charged(wallet)` lets it check the wallet as the gateway does after
each commit (addons/billing/autopay.py: a top-up when the balance falls below the threshold, balance.low and
balance.depleted events). Several processes may each run one: a wallet has at most one pending top-up."""

from __future__ import annotations

from addons.billing.autopay import AutoTopUp
from addons.core.settings import load_settings

__all__ = ["AutoTopUp", "start_autopay"]


def start_autopay() -> AutoTopUp:
    """A worker thread with the settings' billing.autopay; `close()` it when the process stops."""
    return AutoTopUp(load_settings().billing.autopay)
