"""Opening the ledger for an operator's session (the CLI's --database-url, or the settings' URL)."""

from __future__ import annotations

from addons.core.settings import resolve_database_url
from addons.ledger.accounts import DEFAULT_ACCOUNT
from addons.ledger.models import open_database

__all__ = ["DEFAULT_ACCOUNT", "open_ledger"]


def open_ledger(url: str):
    """Connect to the ledger at `url` (a `${VAR}` in it is resolved) and create any missing tables."""
    return open_database(resolve_database_url(url))
