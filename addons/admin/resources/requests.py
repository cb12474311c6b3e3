"""Requests, as Lava's `RestRequest`: list (by customer, meter and metadata), retrieve, and create, Lava's
post-request mode, where a merchant reports usage that did not go through the proxy (services.reported).

Tollgate's own facts of a request ride along in the same object (latency, streaming, where its usage and
price came from, the fee and the merchant's debit, the HTTP status)."""

from __future__ import annotations

import json
import re
from decimal import Decimal

from addons.admin import web
from addons.admin.endpoints import Call, Endpoint
from addons.admin.web import Invalid
from addons.services import reported, requests
from addons.services.requests import RequestDetail

MAX_COUNT = 2**31 - 1  # the ledger's integer columns
MAX_FILTERS = 20
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,255}")
_METADATA_KEY = re.compile(r"[A-Za-z0-9_]{1,255}")  # as the proxy takes x-lava-metadata (addons/proxy/metadata.py)
MAX_METADATA_PAIRS = 100
MAX_METADATA_VALUE = 255


def metadata_filters(call: Call) -> list[tuple[str, str]]:
    """`metadata_filters` as Lava's SDK sends it: JSON of [[key, value], ...] (a JSON object is taken too); a
    request matches when its metadata holds every pair."""
    raw = call.query.get("metadata_filters")
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise Invalid("metadata_filters", 'must be JSON of [key, value] pairs, e.g. [["user","u_1"]]') from None
    pairs = list(value.items()) if isinstance(value, dict) else value
    if not isinstance(pairs, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2
                                              and all(isinstance(s, str) for s in p) for p in pairs):
        raise Invalid("metadata_filters", 'must be JSON of [key, value] pairs of strings, e.g. [["user","u_1"]]')
    if len(pairs) > MAX_FILTERS:
        raise Invalid("metadata_filters", f"at most {MAX_FILTERS} pairs")
    return [(key, value) for key, value in pairs]


def _seconds(ms: int) -> int | float:
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


def _money(nanos: int | None, known: bool = True) -> str | None:
    return web.usd(nanos) if known else None


def render(detail: RequestDetail) -> dict:
    r = detail.record
    known = detail.cost_known
    return {
        "request_id": r.id,
        "status": detail.status,
        "customer_id": r.customer_id,
        "meter_id": detail.meter_id,
        "provider": r.provider,
        "provider_key_type": "unmanaged" if r.byok else "managed",
        "model": r.model,
        "endpoint": r.endpoint,
        "client_format": r.client_format,  # Tollgate's own: what a /v1/rewrite caller spoke (None: native)
        "model_usage": {
            "input_tokens": r.input_tokens,
            "output_tokens": r.output_tokens,
            "total_tokens": r.input_tokens + r.output_tokens,
            "input_characters": r.input_characters,
            "output_characters": r.output_characters,
            "total_characters": r.input_characters + r.output_characters,
            "input_seconds": _seconds(r.input_duration_ms),
            "output_seconds": _seconds(r.output_duration_ms),
            "total_seconds": _seconds(r.input_duration_ms + r.output_duration_ms),
            "input_cost": _money(detail.input_cost_nanos, known and detail.input_cost_nanos is not None),
            "output_cost": _money(detail.output_cost_nanos, known and detail.output_cost_nanos is not None),
            "total_cost": _money(r.provider_cost_nanos, known),
            # Tollgate's own
            "cache_read_tokens": r.cache_read_tokens,
            "cache_write_tokens": r.cache_write_tokens,
            "reasoning_tokens": r.reasoning_tokens,
        },
        "cost": _money(r.provider_cost_nanos, known),
        "charge": {
            "amount": web.usd(detail.charge_nanos),
            "rate_type": detail.rate_type,
            "breakdown": [{"tier": {"start": t.start, "rate": t.rate, "type": t.unit},
                           "tokens": int(t.units) if t.unit == "tokens_1m" else 0,
                           "characters": int(t.units) if t.unit == "characters_1m" else 0,
                           "seconds": _decimal_number(t.units * 60) if t.unit == "minutes" else 0,
                           "cost": web.usd(t.cost_nanos)} for t in detail.breakdown],
        },
        "metadata": detail.metadata,
        "created_at": web.iso(r.created_at),
        # Tollgate's own
        "status_code": r.status,
        "error": r.error,
        "key_id": r.key,
        "meter_slug": r.meter_slug,
        "streamed": r.streamed,
        "latency_ms": r.latency_ms,
        "ttfb_ms": r.ttfb_ms,
        "usage_source": r.usage_source,
        "price_source": r.price_source,
        "fee": web.usd(r.fee_nanos),
        "fee_uncollected": web.usd(r.fee_uncollected_nanos),
        "charged": web.usd(r.charged_nanos),
        "billed_to_customer": requests.billed_to_customer(r),
    }


def _decimal_number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def list_requests(call: Call) -> dict:
    listing = requests.listing(call.account, customer=call.query.get("customer_id") or None,
                               meter=call.query.get("meter_id") or None, metadata=metadata_filters(call))
    return web.paginate(listing, call.page(), render)


def retrieve_request(call: Call) -> dict:
    return render(requests.get(call.account, call.params["request_id"]))


# -- reported usage ------------------------------------------------------------------------------------------

CREATE_FIELDS = {"request_id": "string", "customer_id": "string", "meter_slug": "string", "metadata": "object",
                 "input_tokens": "integer", "output_tokens": "integer", "input_characters": "integer",
                 "output_characters": "integer", "input_seconds": "number", "output_seconds": "number",
                 "account": "string"}


def _milliseconds(body: dict, name: str) -> int:
    """Seconds as Lava sends them (a number), to whole milliseconds: finer is refused, not rounded."""
    value = body.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise Invalid(name, "must be a number of seconds")
    try:
        seconds = Decimal(str(value).strip())
    except ArithmeticError:
        raise Invalid(name, "must be a number of seconds") from None
    if not seconds.is_finite() or seconds < 0 or seconds * 1000 > MAX_COUNT:
        raise Invalid(name, f"must be between 0 and {MAX_COUNT // 1000} seconds")
    ms = seconds * 1000
    if ms != ms.to_integral_value():
        raise Invalid(name, "has more than 3 decimal places (milliseconds)")
    return int(ms)


def _metadata(body: dict) -> dict[str, str] | None:
    """The request's metadata, held to what the proxy takes in x-lava-metadata: string values, simple keys."""
    value = web.metadata(body)
    if not value:
        return None
    if len(value) > MAX_METADATA_PAIRS:
        raise Invalid("metadata", f"has more than {MAX_METADATA_PAIRS} pairs")
    for key, item in value.items():
        if not _METADATA_KEY.fullmatch(key):
            raise Invalid("metadata", f"key {key[:40]!r} must be 1-255 ASCII letters, digits or underscores")
        if not isinstance(item, str) or not 1 <= len(item) <= MAX_METADATA_VALUE:
            raise Invalid("metadata", f"value of {key!r} must be a string of 1-{MAX_METADATA_VALUE} characters")
    return value


def create_request(call: Call) -> tuple[int, dict]:
    body = call.body
    web.reject_unknown(body, list(CREATE_FIELDS))
    request_id = web.text(body, "request_id", required=True)
    if not _REQUEST_ID.fullmatch(request_id):
        raise Invalid("request_id", "must be 1-255 letters, digits, or _ . : -")
    customer_id = web.text(body, "customer_id", required=True)
    meter_slug = web.text(body, "meter_slug", required=True)
    usage = reported.ReportedUsage(
        **{name: web.integer(body, name, maximum=MAX_COUNT, default=0)
           for name in ("input_tokens", "output_tokens", "input_characters", "output_characters")},
        input_duration_ms=_milliseconds(body, "input_seconds"),
        output_duration_ms=_milliseconds(body, "output_seconds"))
    metadata = _metadata(body)
    account = call.account
    key_id = call.principal.key_id if call.principal.account == account else None  # a key of this account only
    done = reported.report(account, request_id, customer_id=customer_id, meter_slug=meter_slug, usage=usage,
                           metadata=metadata, key_id=key_id)
    _notify_autopay(call, done.charged_wallets)
    return (201 if done.created else 200), render(done.request)


def _notify_autopay(call: Call, wallets: tuple[str, ...]) -> None:
    """As the gateway after a commit: the admin process's auto top-up (app.state.autopay, services.autopay) checks
    each customer wallet charged, once the charge is committed (inside an Idempotency-Key call, with its answer)."""
    autopay = getattr(call.request.app.state, "autopay", None)
    if autopay is None or not wallets:
        return

    def notify() -> None:
        for wallet_id in wallets:
            autopay.notify_charged(wallet_id)

    call.after_commit.append(notify)


ENDPOINTS = [
    Endpoint("GET", "/requests", list_requests, "List requests, newest first",
             query={"customer_id": "string", "meter_id": "string", "metadata_filters": "string", "cursor": "string",
                    "limit": "integer", "account": "string"}),
    Endpoint("POST", "/requests", create_request,
             "Report a request that did not go through the proxy: priced by the meter and charged to the customer "
             "(201; 200 for a repeat of a recorded request_id, which charges nothing)",
             status=201, idempotent=True, body=CREATE_FIELDS),
    Endpoint("GET", "/requests/{request_id}", retrieve_request, "Retrieve a request",
             query={"account": "string"}),
]
