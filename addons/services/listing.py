"""A list the admin API pages through (addons.admin.web.paginate): the rows' query, its keyset order and how a
row becomes the service's typed result. The API shell pages it without knowing the ledger's models."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Listing:
    query: Any  # the rows, unordered: the pager orders them newest first
    sort_field: Any  # e.g. created_at
    id_field: Any  # unique, breaks ties of sort_field
    view: Callable[[Any], Any]  # a row -> the service's result for it
    views: Callable[[list], list] | None = None  # a page's rows -> their results at once, where that is cheaper
