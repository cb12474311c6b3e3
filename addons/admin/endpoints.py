"""The API's routes as data: each resource module lists its `Endpoint`s, and app.py, the OpenAPI document
and the tests all read the same list.

A handler is a plain function of one `Call`, run on a worker thread (it reads and writes the ledger),
returning the JSON answer (a dict) or (status, dict).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from addons.admin.auth import Principal, acting_account
from addons.admin.web import PageRequest, page_request


@dataclass(slots=True)
class Call:
    request: Request
    principal: Principal
    body: dict
    params: Mapping[str, str]  # path parameters
    after_commit: list[Callable[[], None]] = field(default_factory=list)  # run once the call's work is committed

    @property
    def query(self) -> Mapping[str, str]:
        return self.request.query_params

    @property
    def account(self) -> str:
        """The account this call acts on (auth.acting_account): the key's own unless an admin names another."""
        return acting_account(self.principal, self.query.get("account") or self.body.get("account"))

    def page(self) -> PageRequest:
        return page_request(self.request)


Handler = Callable[[Call], Any]


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str  # under /v1, e.g. "/customers/{customer_id}"
    handler: Handler
    summary: str
    status: int = 200  # the status of a success
    idempotent: bool = False  # honours Idempotency-Key (creations, top-ups, reported requests)
    secret: tuple[str, str] | None = None  # (secret field, id field) of a creation whose answer shows a secret once
    body: Mapping[str, str | Mapping] = field(default_factory=dict)  # JSON field -> OpenAPI type or schema
    query: Mapping[str, str] = field(default_factory=dict)  # query parameter -> OpenAPI type
    tag: str = ""
