"""How a key's or customer's limits show: one shape for --json (money as decimal strings, each spend or request
limit with its current period's use when known), a table for people, and one short line for lists.

    {"spend": {"limit": "10.00", "period": "month", "used": "0.42", "remaining": "9.58",
               "period_start": "2026-12-01T00:00:00Z", "resets_at": "2027-01-01T00:00:00Z"} | null,
     "requests": {... counts ...} | null, "rpm": 60, "burst": null, "tpm": null}

A customer has no `requests` or `burst`. A `total` period never resets: its period_start and resets_at are null.
"""

from __future__ import annotations

from rich.table import Table

from addons.cli.output import table
from addons.core.limits import Limits
from addons.services.limits import LimitsView, PeriodUse
from pricing.money import format_usd

RATES = (("rpm", "requests a minute"), ("burst", "burst"), ("tpm", "tokens a minute"))


def limits_data(limits: Limits, view: LimitsView | None = None, *, customer: bool = False) -> dict:
    """The --json shape above; `view` adds the current periods' use."""
    data = {"spend": _period(limits.spend_limit_nanos, limits.spend_cycle, view and view.spend, format_usd)}
    if not customer:
        data["requests"] = _period(limits.request_limit, limits.request_cycle, view and view.requests, int)
    data |= {"rpm": limits.rpm, "burst": limits.burst, "tpm": limits.tpm}
    if customer:
        del data["burst"]
    return data


def _period(limit: int | None, cycle: str | None, use: PeriodUse | None, shown) -> dict | None:
    if limit is None:
        return None
    data = {"limit": shown(limit), "period": cycle}
    if use is not None:
        data |= {"used": shown(use.used), "remaining": shown(use.remaining), "period_start": use.period_start,
                 "resets_at": use.resets_at}
    return data


def limits_table(data: dict) -> Table | None:
    """One row a limit that is set, with its period's use; None when there is none."""
    rows = [[name, f"{p['limit']} USD" if name == "spend" else p["limit"], p["period"], p.get("used"),
             p.get("remaining"), _resets(p)] for name in ("spend", "requests") if (p := data.get(name))]
    rows += [[label, data[name], "", "", "", ""] for name, label in RATES if data.get(name) is not None]
    return table("Limits", ["limit", "value", "period", "used", "remaining", "resets (UTC)"], rows) if rows else None


def _resets(period: dict) -> str:
    if period["period"] == "total":
        return "never"
    return period["resets_at"].strftime("%Y-%m-%d %H:%M") if period.get("resets_at") else ""


def limits_line(data: dict) -> str:
    """For lists: 10.00 USD/month, 50 requests/day, 60 rpm (burst 10), 1000 tpm."""
    periods = [f"{p['limit']} {unit}" + (" in total" if p["period"] == "total" else f"/{p['period']}")
               for name, unit in (("spend", "USD"), ("requests", "requests")) if (p := data.get(name))]
    rpm = f"{data['rpm']} rpm" + (f" (burst {data['burst']})" if data.get("burst") else "") if data["rpm"] else None
    tpm = f"{data['tpm']} tpm" if data["tpm"] else None
    return ", ".join(part for part in (*periods, rpm, tpm) if part)
