"""The dashboard on the admin listener: `/` is a static page (addons/admin/static/, Chart.js vendored, nothing
from the network) that signs in with a secret key kept in the tab's sessionStorage and reads `/dashboard/data`
every few seconds, authenticated exactly as the API is (Bearer key, the failed-auth throttle, an account key
sees its own account).

An admin key sees every account unless it names one (`?account=`); its totals are then `tollgate usage`'s for
the same period.
"""

from __future__ import annotations

import logging
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from addons.admin.auth import Principal, acting_account, authenticate
from addons.admin.web import Invalid, choice, error_response, integer, iso, json_response, usd
from addons.core.errors import GatewayError
from addons.core.limits import TO_LAVA
from addons.services import customers, dashboard, keys, requests
from addons.services.limits import LimitsView, PeriodUse

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
STATIC_PATH = "/dashboard/static"
DATA_PATH = "/dashboard/data"
# The page loads its own files only: no CDN, no inline script, and it talks to this listener alone.
PAGE_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "cache-control": "no-store",
}
STATUS_CLASSES = {"2xx": 2, "3xx": 3, "4xx": 4, "5xx": 5}
MAX_SERIES = 12  # the chart's palette; the rest are one series, "other"
SERIES_VALUES = ("provider_cost", "fees", "requests")


async def page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS, media_type="text/html")


async def data(request: Request) -> Response:
    try:
        answer = await run_in_threadpool(_data, request)
    except GatewayError as e:
        return error_response(e, {"cache-control": "no-store"})
    except Exception:
        log.exception("tollgate admin: internal error on GET %s", DATA_PATH)
        return error_response(GatewayError("internal_error", "the dashboard's data could not be read"))
    return json_response(answer, headers={"cache-control": "no-store"})


def _data(request: Request) -> dict:
    """On a worker thread: authenticates, then reads the ledger through the services."""
    principal = authenticate(request, request.app.state.throttle)
    query = dict(request.query_params)
    account = _scope(principal, query.get("account"))
    by = choice(query, "by", dashboard.SPEND_GROUPS, default="provider")
    limit = integer(query, "limit", minimum=1, maximum=dashboard.MAX_REQUESTS, default=50)
    filters = _filters(query)
    spend = dashboard.spend(by, account=account)
    names = requests.key_names()
    return {
        "signed_in": {"key_name": principal.key_name, "account": principal.account, "role": principal.role},
        "account": account,  # null: every account
        "accounts": dashboard.account_names() if principal.is_admin else [principal.account],
        "period": {"since": spend.since.date().isoformat(), "days": [d.isoformat() for d in spend.days],
                   "cli": f"tollgate usage --since {spend.since.date().isoformat()}"},
        "totals": _totals(spend),
        "chart": _chart(spend),
        "customers": [_customer(mark) for mark in dashboard.customer_marks(account)],
        "requests": [_request(record, names) for record in dashboard.recent_requests(filters, account=account,
                                                                                     limit=limit)],
        "keys": [_key(key) for key in dashboard.account_keys(account)],
    }


def _scope(principal: Principal, requested: str | None) -> str | None:
    """The account shown: an admin key's default is every account (None), an account key's its own."""
    if principal.is_admin and not requested:
        return None
    return acting_account(principal, requested)


def _filters(query: dict) -> dashboard.RequestFilters:
    status = query.get("status") or None
    status_code = status_class = None
    if status in STATUS_CLASSES:
        status_class = STATUS_CLASSES[status]
    elif status is not None:
        if not (status.isdigit() and len(status) == 3):
            raise Invalid("status", "must be an HTTP status (429) or a class (2xx, 3xx, 4xx, 5xx)")
        status_code = int(status)
    given = {name: (query.get(name) or "").strip() or None for name in ("provider", "model", "customer", "key")}
    return dashboard.RequestFilters(status=status_code, status_class=status_class, **given)


def _totals(spend: dashboard.Spend) -> dict:
    t = spend.totals
    return {"requests": t.requests, "input_tokens": t.input_tokens, "output_tokens": t.output_tokens,
            "provider_cost": usd(t.provider_cost_nanos), "charged": usd(t.charged_nanos), "fees": usd(t.fee_nanos),
            "margin": usd(t.margin_nanos), "unpriced_requests": t.unpriced_requests,
            "unmetered_requests": t.unmetered_requests, "errors_recorded": spend.errors}


def _chart(spend: dashboard.Spend) -> dict:
    """One series per provider or model, the costliest first, with a value for every day of the period; past
    MAX_SERIES the rest are added up, exactly, as one series named "other"."""
    index = {day: n for n, day in enumerate(spend.days)}
    series: dict[str | None, dict[str, list[int]]] = {}
    for row in spend.rows:
        values = series.setdefault(row.group, {name: [0] * len(index) for name in SERIES_VALUES})
        for name, value in zip(SERIES_VALUES, (row.provider_cost_nanos, row.fee_nanos, row.requests)):
            values[name][index[row.day]] += value
    ordered = sorted(series.items(), key=lambda item: (-sum(item[1]["provider_cost"]), -sum(item[1]["requests"]),
                                                       item[0] or ""))
    if len(ordered) > MAX_SERIES:
        rest = ordered[MAX_SERIES - 1:]
        other = {name: [sum(values[name][n] for _, values in rest) for n in range(len(index))]
                 for name in SERIES_VALUES}
        ordered = [*ordered[:MAX_SERIES - 1], ("other", other)]
    return {"by": spend.by, "labels": [d.isoformat() for d in spend.days],
            "series": [{"group": group, "provider_cost": [usd(v) for v in values["provider_cost"]],
                        "fees": [usd(v) for v in values["fees"]], "requests": values["requests"]}
                       for group, values in ordered]}


def _customer(mark: dashboard.CustomerMark) -> dict:
    view = mark.customer
    return {"account": mark.account, "customer_id": view.customer_id, "balance": usd(view.balance_nanos),
            "available": usd(view.balance_nanos - view.holds.amount_nanos),
            "holds": {"count": view.holds.count, "amount": usd(view.holds.amount_nanos)},
            "autopay_threshold": usd(view.autopay_threshold_nanos), "autopay_amount": usd(view.autopay_amount_nanos),
            "cycle_fees": usd(view.cycle_fees_nanos), "cycle_requests": view.cycle_requests, "mark": mark.mark,
            "limits": _limits(customers.limits_view(mark.account, view.customer_id)) if view.limits.any else None}


def _request(record: requests.RequestRecord, names: dict[str, str]) -> dict:
    return {"id": record.id, "created_at": iso(record.created_at), "key": record.key,
            "key_name": names.get(record.key) if record.key else None, "customer_id": record.customer_id,
            "provider": record.provider, "model": record.model, "status": record.status,
            "input_tokens": record.input_tokens, "output_tokens": record.output_tokens,
            "provider_cost": usd(record.provider_cost_nanos), "fee": usd(record.fee_nanos),
            "latency_ms": record.latency_ms, "flags": requests.flags(record), "error": record.error}


def _key(key: keys.KeyInfo) -> dict:
    return {"id": key.id, "name": key.name, "account": key.account, "prefix": key.prefix, "role": key.role,
            "kind": key.kind, "status": key.status, "created_at": iso(key.created_at),
            "revoked_at": iso(key.revoked_at),
            "limits": _limits(keys.key_limits_view(key)) if key.limits.any else None}


def _use(use: PeriodUse | None, money: bool) -> dict | None:
    """A spend or request limit: what its current period used of it, and when the period resets."""
    if use is None:
        return None
    shown = usd if money else int
    return {"used": shown(use.used), "limit": shown(use.limit), "cycle": TO_LAVA[use.cycle],
            "resets_at": iso(use.resets_at)}


def _limits(view: LimitsView) -> dict:
    """A key's or customer's limits as the page shows them (the API's shape: addons/admin/limits.py)."""
    held = view.limits
    return {"spend": _use(view.spend, True), "requests": _use(view.requests, False), "rpm": held.rpm,
            "burst": held.burst, "tpm": held.tpm}


def routes() -> list[BaseRoute]:
    return [Route("/", page, methods=["GET"], name="dashboard"),
            Route(DATA_PATH, data, methods=["GET"], name="dashboard_data"),
            Mount(STATIC_PATH, StaticFiles(directory=STATIC), name="dashboard_static")]
