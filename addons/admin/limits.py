"""Limits as the API takes and shows them, on spend keys and customers, in the shape of Lava's `RestSpendKey`:

    spend_limit    {amount: "10.00", cycle}    USD per period (a customer's counts the fees it was charged)
    request_limit  {count: 100, cycle}          requests per period (keys only)
    rate_limit     {rpm: 60, burst: 10|null}    requests per minute; burst: let through at once (keys only;
                                                null: a full minute's worth)
    tpm            10000                        Tollgate's own: tokens per minute

A cycle is daily, weekly, monthly or total (Lava's names; Tollgate's day, week and month are taken too, and
answered in Lava's). In a body, a field left out is unchanged and null clears that limit. Answers add each
period's `resets_at` (null for total). The values are checked by the service's own rules
(addons/services/limits.py), and a refusal is 422 `invalid_field` naming the field (`spend_limit.cycle`).
"""

from __future__ import annotations

from collections.abc import Sequence

from addons.admin.web import Invalid, iso, nanos_of, usd
from addons.core.limits import LAVA_CYCLES, NO_LIMITS, TO_LAVA, check_cycle
from addons.services import limits
from addons.services.errors import BadRequest

KEY_FIELDS = ("spend_limit", "request_limit", "rate_limit", "tpm")
CUSTOMER_FIELDS = ("spend_limit", "rate_limit", "tpm")
CYCLE_NAMES = (*LAVA_CYCLES, "day", "week", "month")
MAX_COUNT = 2**31 - 1  # the ledger's integer columns

_CYCLE = {"type": "string", "enum": list(CYCLE_NAMES)}
_COUNT = {"type": "integer", "minimum": 1, "maximum": MAX_COUNT}
SCHEMAS = {
    "spend_limit": {"type": ["object", "null"], "required": ["amount", "cycle"], "additionalProperties": False,
                    "properties": {"amount": {"type": "string", "description": "USD, a decimal string"},
                                   "cycle": _CYCLE}},
    "request_limit": {"type": ["object", "null"], "required": ["count", "cycle"], "additionalProperties": False,
                      "properties": {"count": _COUNT, "cycle": _CYCLE}},
    "rate_limit": {"type": ["object", "null"], "required": ["rpm"], "additionalProperties": False,
                   "properties": {"rpm": _COUNT, "burst": {**_COUNT, "type": ["integer", "null"]}}},
    "tpm": {**_COUNT, "type": ["integer", "null"], "description": "tokens per minute (Tollgate's own)"},
}
CUSTOMER_SCHEMAS = {
    **{name: SCHEMAS[name] for name in CUSTOMER_FIELDS},
    "rate_limit": {"type": ["object", "null"], "required": ["rpm"], "additionalProperties": False,
                   "properties": {"rpm": _COUNT}},
}


def _object(body: dict, name: str, known: Sequence[str], shape: str) -> dict | None:
    value = body[name]
    if value is None:
        return None
    if not isinstance(value, dict):
        raise Invalid(name, f"must be an object {shape}, or null for no limit")
    for field in value:
        if field not in known:
            raise Invalid(f"{name}.{field}", f"is not a field of {name} (known: {', '.join(known)})")
    return value


def _count(number, param: str, *, required: bool = True) -> int | None:
    if number is None:
        if required:
            raise Invalid(param, f"is required: a whole number from 1 to {MAX_COUNT}")
        return None
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= MAX_COUNT:
        raise Invalid(param, f"must be a whole number from 1 to {MAX_COUNT}" + ("" if required else ", or null"))
    return number


def _cycle(value: dict, name: str) -> str:
    cycle = value.get("cycle")
    if not isinstance(cycle, str) or cycle not in CYCLE_NAMES:
        raise Invalid(f"{name}.cycle", "must be one of daily, weekly, monthly, total (or day, week, month)")
    return check_cycle(cycle)


def _spend_limit(body: dict, customer: bool) -> dict:
    value = _object(body, "spend_limit", ("amount", "cycle"), '{"amount": "10.00", "cycle": "monthly"}')
    if value is None:
        return {"spend_limit_nanos": None, "spend_cycle": None}
    if value.get("amount") is None:
        raise Invalid("spend_limit.amount", "is required: a positive amount in USD, as a string")
    amount = nanos_of(value["amount"], "spend_limit.amount")
    return {"spend_limit_nanos": amount, "spend_cycle": _cycle(value, "spend_limit")}


def _request_limit(body: dict, customer: bool) -> dict:
    value = _object(body, "request_limit", ("count", "cycle"), '{"count": 100, "cycle": "daily"}')
    if value is None:
        return {"request_limit": None, "request_cycle": None}
    count = _count(value.get("count"), "request_limit.count")
    return {"request_limit": count, "request_cycle": _cycle(value, "request_limit")}


def _rate_limit(body: dict, customer: bool) -> dict:
    value = _object(body, "rate_limit", ("rpm", "burst"), '{"rpm": 60}' if customer else '{"rpm": 60, "burst": 10}')
    if value is not None and customer and value.get("burst") is not None:
        raise Invalid("rate_limit.burst", "a customer's rate limit has no burst: a full minute's worth at once")
    columns = {"rpm": None if value is None else _count(value.get("rpm"), "rate_limit.rpm")}
    if not customer:
        columns["rpm_burst"] = None if value is None else _count(value.get("burst"), "rate_limit.burst", required=False)
    return columns


def _tpm(body: dict, customer: bool) -> dict:
    return {"tpm": _count(body["tpm"], "tpm", required=False)}


_PARSERS = {"spend_limit": _spend_limit, "request_limit": _request_limit, "rate_limit": _rate_limit, "tpm": _tpm}


def changes(body: dict, *, customer: bool = False) -> dict:
    """The limit columns (services.limits' change names) that `body` sets, or clears with null; fields left out
    are absent. Each field is checked alone by the service's rules: Invalid naming it."""
    found: dict = {}
    for field in CUSTOMER_FIELDS if customer else KEY_FIELDS:
        if field not in body:
            continue
        columns = _PARSERS[field](body, customer)
        try:
            limits.apply_changes(NO_LIMITS, columns)
        except BadRequest as e:
            raise Invalid(field, e.message) from None
        found.update(columns)
    return found


# -- answers --------------------------------------------------------------------------------

def _period(use: limits.PeriodUse | None) -> dict:
    return {"resets_at": iso(use.resets_at) if use else None}


def render(view: limits.LimitsView, *, customer: bool = False) -> dict:
    """The limit objects of an answer, null where unset, each spend or request limit with its `resets_at`."""
    held = view.limits
    shown = {"spend_limit": None if held.spend_limit_nanos is None else {
        "amount": usd(held.spend_limit_nanos), "cycle": TO_LAVA[held.spend_cycle], **_period(view.spend)}}
    if not customer:
        shown["request_limit"] = None if held.request_limit is None else {
            "count": held.request_limit, "cycle": TO_LAVA[held.request_cycle], **_period(view.requests)}
    rate = None if held.rpm is None else {"rpm": held.rpm} if customer else {"rpm": held.rpm, "burst": held.burst}
    return shown | {"rate_limit": rate, "tpm": held.tpm}
