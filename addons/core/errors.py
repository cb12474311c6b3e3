"""The errors the gateway itself answers with, as one small tree.

GatewayError                 any refusal made by Tollgate (never a provider's own error)
├── BadRequest          400  malformed input: forward token, metadata, forward URL; a
│                            contradictory token, or a customer or meter the account lacks
├── Unauthorized        401  no credential, an unknown one, a bad signature, an expired token
├── PaymentRequired     402  the wallet, customer balance, token spend cap or a spend limit cannot cover it
├── Forbidden           403  a revoked or paused key, a provider or model outside a key's or token's scope
├── NotFound            404  a path on the gateway itself that it does not serve
├── PayloadTooLarge     413  a request body over tollgate_max_request_body
├── TooManyRequests     429  a client address over its failed-authentication allowance; a key or
│                            customer over its request limit or its requests or tokens per minute
├── HeadersTooLarge     431  request headers over tollgate_max_header_bytes, or oversized metadata
├── UpstreamUnreachable 502  the provider could not be reached, or resolved to a non-public address
├── ProviderNotConfigured 503 the operator has not set the provider's key
├── LedgerUnavailable   503  the ledger database cannot be read (policy `tollgate_ledger_outage`)
├── ShuttingDown        503  the gateway is draining before it stops
└── UpstreamTimeout     504  the provider did not answer in time

Each renders as {"error": {"type", "code", "message"}}, plus the `details` a refusal carries (a limit, what
was used, when it resets); `headers` go on the answer (retry-after). Messages never carry secrets.
"""

from __future__ import annotations

import json


class GatewayError(Exception):
    status = 500
    type = "gateway_error"

    def __init__(self, code: str, message: str, *, details: dict | None = None, headers: dict | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers

    def body(self) -> bytes:
        error = {"type": self.type, "code": self.code, "message": self.message}
        if self.details:
            error.update(self.details)
        return json.dumps({"error": error}).encode()


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"


class PaymentRequired(GatewayError):
    status = 402
    type = "insufficient_balance"


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"


class NotFound(GatewayError):
    status = 404
    type = "not_found"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"


class TooManyRequests(GatewayError):
    status = 429
    type = "rate_limit_error"


class HeadersTooLarge(GatewayError):
    status = 431
    type = "invalid_request_error"


class UpstreamUnreachable(GatewayError):
    status = 502
    type = "upstream_error"


class ProviderNotConfigured(GatewayError):
    status = 503
    type = "provider_not_configured"


class LedgerUnavailable(GatewayError):
    status = 503
    type = "ledger_unavailable"


class ShuttingDown(GatewayError):
    status = 503
    type = "unavailable"


class UpstreamTimeout(GatewayError):
    status = 504
    type = "upstream_timeout"
