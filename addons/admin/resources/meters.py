"""Lava's `meters` resource over Tollgate's meters (pricing/meters.py), with Tollgate's extras as optional fields.

How Lava's meter maps onto Tollgate's:
- `tier_type` is the meter's unit; `tiers [{start, rate}]` (strings) are Tollgate's "START:RATE" tiers, rates in
  USD per unit (per million for *_1m units).
- `rate_type: percentage`: Lava's tier rate is the markup in percent of the provider cost. Tollgate's percentage
  meters have one markup, so such a meter takes one tier starting at 0 (or Tollgate's `percentage` field
  instead), and answers with that one tier.
- Tollgate's own: `rate_type: hybrid` (tiers plus a `percentage`), `token_basis`, `base_cost_payer`.

A meter is found by its id or its slug. Deleting one is a soft delete (services/meters.py): afterwards it is 404
here, tokens and requests naming it are refused, and its slug stays reserved (creating it again is 409).
"""

from __future__ import annotations

from addons.admin import web
from addons.admin.endpoints import Call, Endpoint
from addons.admin.web import Invalid
from addons.services import meters
from addons.services.meters import MeterDetail
from pricing import meters as pricing
from pricing.money import non_negative_decimal

CREATE_FIELDS = ("name", "meter_slug", "rate_type", "tier_type", "tiers", "percentage", "token_basis",
                 "base_cost_payer", "account")
UPDATE_FIELDS = ("name", "tiers", "percentage", "account")
BODY_TYPES = {"name": "string", "meter_slug": "string", "rate_type": "string", "tier_type": "string",
              "tiers": "array", "percentage": "string", "token_basis": "string", "base_cost_payer": "string",
              "account": "string"}


def render(meter: MeterDetail) -> dict:
    view = meter.view
    if view.rate_type == "percentage":  # Lava's percentage meter: its one tier's rate is the markup
        tiers = [{"start": 0, "rate": view.percentage, "type": view.unit}]
    else:
        tiers = [{"start": tier.start, "rate": tier.rate, "type": view.unit} for tier in view.tiers]
    return {
        "meter_id": meter.meter_id,
        "meter_slug": view.slug,
        "name": meter.name,
        "rate_type": view.rate_type,
        "tiers": tiers,
        "created_at": web.iso(meter.created_at),
        "percentage": view.percentage,
        "token_basis": view.token_basis,
        "base_cost_payer": view.base_cost_payer,
        "unit": view.unit,
    }


def _decimal(value, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Invalid(field, "must be a decimal number, as a string")
    try:
        non_negative_decimal(value, field)
    except ValueError as e:
        raise Invalid(field, str(e).removeprefix(f"{field} ")) from None
    return str(value).strip()


def _tiers(body: dict) -> list[tuple[int, str]] | None:
    """Lava's [{start, rate}] (strings, or a whole number for start), checked one by one."""
    value = body.get("tiers")
    if value is None:
        return None
    if not isinstance(value, list):
        raise Invalid("tiers", "must be a list of {start, rate}")
    tiers = []
    for i, tier in enumerate(value):
        field = f"tiers[{i}]"
        if not isinstance(tier, dict):
            raise Invalid(field, "must be an object {start, rate}")
        for name in tier:
            if name not in ("start", "rate", "type"):  # `type` as a retrieved meter has it
                raise Invalid(f"{field}.{name}", "is not a field of a tier (start, rate)")
        start = web.integer({f"{field}.start": tier.get("start")}, f"{field}.start", required=True)
        if tier.get("rate") is None:
            raise Invalid(f"{field}.rate", "is required")
        tiers.append((start, _decimal(tier["rate"], f"{field}.rate")))
    return tiers


def _rates(rate_type: str, tiers: list[tuple[int, str]] | None, percentage: str | None) -> tuple[list[str], str | None]:
    """Lava's tiers -> Tollgate's "START:RATE" tiers and percentage (see the module's docstring)."""
    if rate_type == "percentage" and tiers:
        if percentage is not None:
            raise Invalid("percentage", "a percentage meter's markup is its tier's rate or `percentage`, not both")
        if len(tiers) != 1 or tiers[0][0] != 0:
            raise Invalid("tiers", "a percentage meter takes one tier starting at 0; its rate is the markup in "
                                   "percent of the provider cost")
        return [], tiers[0][1]
    return [f"{start}:{rate}" for start, rate in tiers or []], percentage


def _field_of(message: str) -> str:
    """Which field a refusal of pricing.meters.make_meter_spec is about: its messages name it."""
    for words, field in (("slug", "meter_slug"), ("token basis", "token_basis"), ("base cost payer", "base_cost_payer"),
                         ("tier", "tiers")):
        if words in message:
            return field
    return "percentage"  # "fixed meters take no percentage", "hybrid meters need a percentage", its value


def _check(slug: str, rate_type: str, unit: str, tiers: list[str], percentage: str | None,
           base_cost_payer: str | None, token_basis: str) -> None:
    """The whole meter checked as the service will check it, so that a refusal is 422 naming its field."""
    try:
        pricing.make_meter_spec(slug, rate_type, unit, tiers, percentage, base_cost_payer, token_basis)
    except ValueError as e:
        raise Invalid(_field_of(str(e)), str(e)) from None


def _fields(body: dict, known: tuple[str, ...]) -> None:
    web.reject_unknown(body, known)
    web.text(body, "account")  # an admin names the account it acts on (Call.account)


def _percentage(body: dict) -> str | None:
    return None if body.get("percentage") is None else _decimal(body["percentage"], "percentage")


def create_meter(call: Call) -> dict:
    body = call.body
    _fields(body, CREATE_FIELDS)
    name = web.text(body, "name")
    slug = web.text(body, "meter_slug", max_length=64)
    if not name and not slug:
        raise Invalid("name", "is required")
    rate_type = web.choice(body, "rate_type", pricing.RATE_TYPES, required=True)
    unit = web.choice(body, "tier_type", pricing.UNITS, required=True)
    token_basis = web.choice(body, "token_basis", pricing.TOKEN_BASES, default="input+output")
    payer = web.choice(body, "base_cost_payer", pricing.BASE_COST_PAYERS)
    tiers, percentage = _rates(rate_type, _tiers(body), _percentage(body))
    _check(slug or "meter", rate_type, unit, tiers, percentage, payer, token_basis)
    account = call.account
    view = meters.create(account, slug, rate_type=rate_type, unit=unit, tiers=tiers, percentage=percentage,
                         base_cost_payer=payer, token_basis=token_basis, name=name)
    return render(meters.detail(account, view.slug))


def list_meters(call: Call) -> dict:
    listing = meters.listing(call.account)
    return web.paginate(listing, call.page(), render)


def retrieve_meter(call: Call) -> dict:
    return render(meters.detail(call.account, call.params["meter_id"]))


def update_meter(call: Call) -> dict:
    body = call.body
    _fields(body, UPDATE_FIELDS)
    account, meter_id = call.account, call.params["meter_id"]
    changes = {}
    if "name" in body:
        changes["name"] = web.text(body, "name")
    if body.get("tiers") is not None or body.get("percentage") is not None:
        view = meters.detail(account, meter_id).view
        tiers, percentage = _rates(view.rate_type, _tiers(body), _percentage(body))
        if body.get("tiers") is not None and (tiers or view.rate_type != "percentage"):
            changes["tiers"] = tiers
        if percentage is not None:
            changes["percentage"] = percentage
        current = [f"{tier.start}:{tier.rate}" for tier in view.tiers]
        _check(view.slug, view.rate_type, view.unit, changes.get("tiers", current),
               changes.get("percentage", view.percentage), view.base_cost_payer, view.token_basis)
    return render(meters.update(account, meter_id, **changes))


def delete_meter(call: Call) -> dict:
    return {"id": meters.delete(call.account, call.params["meter_id"]), "deleted": True}


_PAGE = {"cursor": "string", "limit": "integer", "account": "string"}
_ACCOUNT = {"account": "string"}

ENDPOINTS = [
    Endpoint("POST", "/meters", create_meter, "Create a meter (its slug made from its name unless given)",
             status=201, idempotent=True, body=BODY_TYPES, query=_ACCOUNT),
    Endpoint("GET", "/meters", list_meters, "List the account's meters, newest first", query=_PAGE),
    Endpoint("GET", "/meters/{meter_id}", retrieve_meter, "Retrieve a meter by its id or slug", query=_ACCOUNT),
    Endpoint("PATCH", "/meters/{meter_id}", update_meter, "Rename a meter or change its rates",
             body={"name": "string", "tiers": "array", "percentage": "string", "account": "string"},
             query=_ACCOUNT),
    Endpoint("DELETE", "/meters/{meter_id}", delete_meter,
             "Delete a meter (its slug stays reserved; tokens naming it are refused)", query=_ACCOUNT),
]
