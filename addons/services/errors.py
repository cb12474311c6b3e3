"""The refusals a service answers with: the gateway's own error tree (addons/core/errors.py), plus Conflict.

NotFound     404  no such account, key, provider key registration, customer or meter
BadRequest   400  input the ledger cannot take: a bad meter, provider key or token request
Unauthorized 401  a secret key that is not an active Tollgate key
Conflict     409  a customer or meter that exists already, a provider key registered already

Each carries a stable `code` (for scripts and the admin API) and a message meant for the operator.
"""

from __future__ import annotations

from addons.core.errors import BadRequest, GatewayError, NotFound, Unauthorized

__all__ = ["BadRequest", "Conflict", "GatewayError", "NotFound", "Unauthorized"]


class Conflict(GatewayError):
    status = 409
    type = "conflict"
