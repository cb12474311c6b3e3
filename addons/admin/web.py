"""What every API route shares: JSON in and out, the error shape, field checks, money and time as Lava writes
them, and cursor pagination.

Errors are the gateway's own tree (addons/core/errors.py, rendered `{"error": {"type", "code", "message"}}`);
a field that fails its check is 422 `invalid_field` with the field named in `param` and in the message.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from addons.core.errors import GatewayError
from addons.services.listing import Listing
from pricing.money import MAX_USD, NANOS_PER_USD, format_usd

MAX_BODY = 1 << 20  # an API call's JSON body; the proxy's own limit applies to what passes through it
DEFAULT_LIMIT = 10  # Lava's page size
MAX_LIMIT = 100


class Invalid(GatewayError):
    """A field the API cannot take: 422, naming the field."""

    status = 422
    type = "invalid_request_error"

    def __init__(self, field: str, message: str):
        super().__init__("invalid_field", f"{field}: {message}", details={"param": field})
        self.field = field


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(data, separators=(",", ":")), status, headers, media_type="application/json")


def error_response(error: GatewayError, headers: dict[str, str] | None = None) -> Response:
    return Response(error.body(), error.status, headers, media_type="application/json")


async def read_json(request: Request) -> dict:
    """The request's JSON object; an empty body is {} (Lava's SDK sends none for POST .../rotate)."""
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise Invalid("body", f"larger than {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise Invalid("body", "is not valid JSON") from None
    if not isinstance(data, dict):
        raise Invalid("body", "must be a JSON object")
    return data


# -- fields ---------------------------------------------------------------------------------

_MISSING = object()


def text(body: dict, name: str, *, required: bool = False, max_length: int = 255, nullable: bool = True,
         default: Any = None) -> str | None:
    value = body.get(name, _MISSING)
    if value is _MISSING or (value is None and nullable and not required):
        if required:
            raise Invalid(name, "is required")
        return default if value is _MISSING else None
    if not isinstance(value, str):
        raise Invalid(name, "must be a string")
    if required and not value.strip():
        raise Invalid(name, "must not be empty")
    if len(value) > max_length:
        raise Invalid(name, f"must be at most {max_length} characters")
    return value


def integer(body: dict, name: str, *, minimum: int = 0, maximum: int = 2**53, default: int | None = None,
            required: bool = False) -> int | None:
    value = body.get(name)
    if value is None:
        if required:
            raise Invalid(name, "is required")
        return default
    if isinstance(value, str) and value.strip().isdigit():  # Lava's SDK sends tier starts as strings
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(name, "must be a whole number")
    if not minimum <= value <= maximum:
        raise Invalid(name, f"must be between {minimum} and {maximum}")
    return value


def amount_nanos(body: dict, name: str, *, required: bool = False, positive: bool = True) -> int | None:
    """A dollar amount, given as a decimal string (Lava's money) or a number, to exact nano-dollars."""
    value = body.get(name)
    if value is None:
        if required:
            raise Invalid(name, "is required")
        return None
    return nanos_of(value, name, positive=positive)


def nanos_of(value: Any, name: str, *, positive: bool = True) -> int:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Invalid(name, "must be a decimal amount in USD, as a string")
    try:
        usd = Decimal(str(value).strip())
    except ArithmeticError:
        raise Invalid(name, f"must be a decimal amount in USD, not {str(value)[:40]!r}") from None
    if not usd.is_finite() or usd < 0 or (positive and usd == 0) or usd > MAX_USD:
        raise Invalid(name, "must be a positive amount" if positive else "must not be negative")
    if usd.as_tuple().exponent < -9:
        raise Invalid(name, "has more than 9 decimal places")
    return int(usd * NANOS_PER_USD)


def metadata(body: dict, name: str = "metadata") -> dict | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise Invalid(name, "must be a JSON object")
    if len(json.dumps(value)) > 16_384:
        raise Invalid(name, "must be at most 16 KiB of JSON")
    return value


def choice(body: dict, name: str, options: Sequence[str], *, default: str | None = None,
           required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise Invalid(name, f"is required: one of {', '.join(options)}")
        return default
    if value not in options:
        raise Invalid(name, f"must be one of {', '.join(options)}")
    return value


def timestamp(value: str | None, name: str) -> datetime | None:
    """An ISO 8601 time (a date alone is its midnight) as naive UTC, the ledger's own."""
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        raise Invalid(name, "must be an ISO 8601 time, e.g. 2026-12-01T00:00:00Z") from None
    return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed


def reject_unknown(body: dict, known: Sequence[str]) -> None:
    """A misspelt field is an error, not silently ignored."""
    for name in body:
        if name not in known:
            raise Invalid(name, f"is not a field of this call (known: {', '.join(known)})")


# -- output ---------------------------------------------------------------------------------

def usd(nanos: int | None) -> str | None:
    """Money as Lava writes it: a decimal string."""
    return None if nanos is None else format_usd(nanos)


def iso(at: datetime | None) -> str | None:
    """Ledger times are naive UTC: ISO 8601 with a Z."""
    if at is None:
        return None
    if isinstance(at, str):
        at = datetime.fromisoformat(at)
    return at.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


# -- pagination -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int
    after: tuple | None  # the last (sort value, id) the client has seen


def page_request(request: Request) -> PageRequest:
    raw_limit = request.query_params.get("limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
            raise Invalid("limit", f"must be a whole number from 1 to {MAX_LIMIT}")
        limit = int(raw_limit)
    cursor = request.query_params.get("cursor")
    return PageRequest(limit, decode_cursor(cursor) if cursor else None)


def encode_cursor(values: tuple) -> str:
    raw = json.dumps([v.isoformat() if isinstance(v, datetime) else v for v in values])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(values, list) or len(values) != 2 or not isinstance(values[1], str):
            raise ValueError
        return (datetime.fromisoformat(values[0]) if isinstance(values[0], str) else values[0], values[1])
    except (ValueError, TypeError):
        raise Invalid("cursor", "is not a cursor this API returned") from None


def paginate(listing: Listing, page: PageRequest, render: Callable[[Any], Any] = lambda result: result) -> dict:
    """A service's listing, newest first by (sort_field, id_field), keyset-paginated: rows written while a client
    pages never shift a page, so it neither skips nor repeats a row that existed when it started. Each row is
    read as the service's result (listing.views for the page at once, else listing.view), then rendered."""
    query, sort_field, id_field = listing.query, listing.sort_field, listing.id_field
    if page.after is not None:
        sort_value, row_id = page.after
        query = query.where((sort_field < sort_value) | ((sort_field == sort_value) & (id_field < row_id)))
    rows = list(query.order_by(sort_field.desc(), id_field.desc()).limit(page.limit + 1))
    has_more = len(rows) > page.limit
    rows = rows[: page.limit]
    next_cursor = None
    if has_more:
        last = rows[-1]
        next_cursor = encode_cursor((getattr(last, sort_field.name), getattr(last, id_field.name)))
    results = listing.views(rows) if listing.views else [listing.view(row) for row in rows]
    return {"data": [render(result) for result in results], "has_more": has_more, "next_cursor": next_cursor}
