"""The CLI's commands over the ledger: each parses its arguments, calls one service and renders the result.

A service's refusal (addons/services/errors.py) reaches the operator as `tollgate: MESSAGE` through main().
"""

from __future__ import annotations

import getpass
import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from rich.console import Group

from addons.cli.limit_flags import limit_changes
from addons.cli.limit_output import limits_data, limits_line, limits_table
from addons.cli.output import WIDE_WIDTH, compact_table, emit, money_fields, rows_table, table, text_block
from addons.services import (
    audit,
    bootstrap,
    customers,
    events,
    keys,
    meters,
    prices,
    requests,
    tokens,
    usage,
    wallets,
    webhooks,
)
from addons.services.errors import BadRequest
from pricing.money import format_usd, parse_usd

# Requests whose provider cost is not known (addons/services/reports.py): shown apart, never as $0.00.
UNKNOWN_COST = ("unpriced", "unmetered")


def amount(text: str, allow_zero: bool = False) -> int:
    try:
        return parse_usd(text)
    except ValueError as e:
        if allow_zero and text.strip() in ("0", "0.0", "0.00"):
            return 0
        raise SystemExit(f"tollgate: {e}") from None


def cmd_init(args) -> None:
    setup = bootstrap.init_ledger()
    secret, balance = setup.secret_key, format_usd(setup.balance_nanos)
    text = (
        f"[bold]Admin secret key (shown once, store it now):[/bold] {secret}\n"
        "Next steps:\n"
        "  1. fund the wallet:      .venv/bin/tollgate wallet topup 10\n"
        "  2. trust the proxy's CA: eval \"$(.venv/bin/tollgate ca --exports)\"\n"
        "  3. point an app at it:   OPENAI_API_KEY=<the key above> python my_app.py\n"
        "  4. the dashboard and REST API: http://127.0.0.1:8082/ (sign in with the key above; the API also\n"
        "     answers under the proxy's own /v1/, e.g. http://127.0.0.1:8080/v1/customers)\n"
        "The proxy reads real provider keys from its environment: OPENAI_API_KEY=sk-... ./run_proxy.sh"
        if secret
        else f"Ledger ready; account {setup.account!r} has balance {balance} USD."
    )
    emit(args, money_fields(asdict(setup)), text=text)


def cmd_keys_create(args) -> None:
    scope = {"allowed_models": args.allow_model, "allowed_providers": args.allow_provider,
             "expires_at": _expiry(args), "limits": limit_changes(args.limits)}
    if args.spend_key:
        key = keys.create_spend_key(args.name, args.account, **scope)
    else:
        key = keys.create_key(args.name, args.account, args.role, **scope)
    info = keys.account_key(None, key.id, None)
    data = {**_key_data(info, keys.key_limits_view(info)), "secret_key": key.secret_key}  # as `keys show` has them
    shown = limits_table(data["limits"])
    created = f"Key {key.id} created. Secret (shown once): {key.secret_key}"
    emit(args, data, Group(created, shown) if shown else created)


def _expiry(args) -> datetime | None:
    """--expires-in (seconds from now) or --expires-at, as the naive UTC the ledger keeps; None: never."""
    if args.expires_in is not None:
        return datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=args.expires_in)
    return keys.future_expiry(args.expires_at)


def cmd_keys_update(args) -> None:
    key = keys.account_key(None, args.id, None)
    changes = limit_changes(args.limits, key.limits)
    if args.name is not None:
        changes["name"] = args.name
    if args.pause or args.resume:
        changes["status"] = "paused" if args.pause else "active"
    for scope, given, clear in (("allowed_models", args.allow_model, args.clear_allowed_models),
                                ("allowed_providers", args.allow_provider, args.clear_allowed_providers)):
        if given or clear:
            changes[scope] = given  # None when cleared: no restriction
    if args.no_expiry or args.expires_in is not None or args.expires_at is not None:
        changes["expires_at"] = _expiry(args)
    if not changes:
        raise BadRequest("nothing_to_change", "keys update: give at least one change (see --help)")
    _show_key(args, keys.update_key(None, args.id, None, **changes))


def cmd_keys_show(args) -> None:
    _show_key(args, keys.account_key(None, args.id, None))


def _key_data(key: keys.KeyInfo, view=None) -> dict:
    return {**asdict(key), "expired": key.expired, "limits": limits_data(key.limits, view)}


def _show_key(args, key: keys.KeyInfo) -> None:
    """The key, its limits with the current periods' use, and its requests and spend ever."""
    used = keys.usage_by_key([key.id]).get(key.id, keys.KeyUsage())
    data = {**_key_data(key, keys.key_limits_view(key)), "usage": money_fields(asdict(used))}
    state = "revoked" if key.revoked_at else "expired" if key.expired else key.status
    details = {"key": f"{key.id} ({key.name})", "account": key.account,
               "kind": key.kind if key.kind == "spend" else f"secret, role {key.role}", "status": state,
               "models": ", ".join(key.allowed_models or ()) or "every model",
               "providers": ", ".join(key.allowed_providers or ()) or "every provider",
               "expires": key.expires_at or "never", "created": key.created_at, "revoked": key.revoked_at,
               "requests (ever)": used.requests, "spend (ever)": f"{format_usd(used.spend_nanos)} USD",
               "last used": used.last_used_at}
    emit(args, data, _with_limits(details, data["limits"]))


def _with_limits(details: dict, limits: dict) -> Group:
    """`name: value` lines, then the limits' table (or a line saying there are none)."""
    shown = limits_table(limits)
    return Group(text_block(details), shown) if shown else Group(text_block({**details, "limits": "none"}))


def _key_status(key: keys.KeyInfo) -> str:
    """Blank for a key that works (revoked shows in its own column), else why it is refused."""
    return key.status if key.status != "active" else "expired" if key.expired else ""


def cmd_keys_list(args) -> None:
    listed = keys.list_keys()
    data = [_key_data(k) for k in listed]
    rows = [[k.id, k.name, k.account, k.prefix, k.created_at, k.revoked_at, "spend" if k.kind == "spend" else k.role,
             limits_line(shown["limits"]), _key_status(k)] for k, shown in zip(listed, data, strict=True)]
    columns = ["id", "name", "account", "prefix", "created", "revoked", "role", "limits", "status"]
    for column in ("status", "limits"):  # each only when some key is paused or expired, or has limits
        at = columns.index(column)
        if not any(row[at] for row in rows):
            columns, rows = columns[:at] + columns[at + 1:], [row[:at] + row[at + 1:] for row in rows]
    emit(args, data, table("Keys", columns, rows))


def cmd_keys_revoke(args) -> None:
    key = keys.revoke_key(args.id)
    emit(args, asdict(key), text=f"Key {key.id} revoked.")


def _read_provider_key() -> str:
    """From stdin, so the key stays out of the shell history and the process list; prompted without echo."""
    return getpass.getpass("provider key: ") if sys.stdin.isatty() else sys.stdin.read()


def cmd_keys_register_provider_key(args) -> None:
    keys.require_provider(args.provider)  # before the key is asked for
    row = keys.register_provider_key(args.account, args.provider, _read_provider_key(), swap=args.swap)
    billed = "as managed: the gateway's own key replaces it" if row.swap else "as bring-your-own-key"
    data = {"id": row.id, "account": row.account, "provider": row.provider, "prefix": row.prefix, "swap": row.swap}
    emit(args, data, text=f"Provider key {row.prefix} registered as {row.id}: {args.provider} requests carrying it "
                          f"are billed to account {args.account!r} {billed}.")


def cmd_keys_provider_keys(args) -> None:
    rows = [asdict(k) for k in keys.list_provider_keys()]
    emit(args, rows, table("Provider keys", ["id", "account", "provider", "prefix", "swap", "created", "revoked"],
                           [list(r.values()) for r in rows]))


def cmd_keys_revoke_provider_key(args) -> None:
    row = keys.revoke_provider_key(args.id)
    emit(args, asdict(row), text=f"Provider key registration {row.id} revoked.")


def cmd_wallet(args) -> None:
    if args.action == "topup":
        wallets.wallet(args.account)  # an unknown account is named before the amount is read
        view = wallets.topup(args.account, amount(args.amount), note=args.note)
    else:
        view = wallets.wallet(args.account)
    balance = format_usd(view.balance_nanos)
    emit(args, money_fields(asdict(view)), text=f"Account {view.account!r}: balance {balance} USD")


# `tollgate requests`: the columns of the compact view, which fits 100 columns, and the first ones of --wide.
COMPACT = ["id", "time", "key", "model", "in/out", "cost", "ms", "status", "flags"]
WIDE_FIRST = ["id", "created_at", "provider", "model", "customer_id", "status", "input_tokens", "output_tokens",
              "provider_cost", "charged", "fee", "usage_source"]
FLAG_LETTERS = {"streamed": "S", "estimated": "E", "unpriced": "U"}
FLAG_LEGEND = "flags: S streamed, E usage estimated (a cut stream), U provider cost not known (unpriced)"


def _request_row(record: requests.RequestRecord, names: dict[str, str]) -> dict:
    row = money_fields(asdict(record))
    row["metadata"] = json.loads(row["metadata"]) if row["metadata"] else None
    row["media_usage"] = json.loads(row["media_usage"]) if row["media_usage"] else None
    if row["price_source"] in UNKNOWN_COST:
        row["provider_cost"] = None  # not known, which is not $0.00
    row["key_name"] = names.get(record.key)
    row["flags"] = requests.flags(record)
    return row


def _clip(text: str | None, width: int) -> str:
    text = text or ""
    return text if len(text) <= width else text[: width - 1] + "…"


def _compact(row: dict) -> list:
    cost = row["price_source"] if row["price_source"] in UNKNOWN_COST else row["provider_cost"]
    return [row["id"].removeprefix("req_")[:8], row["created_at"].strftime("%m-%d %H:%M:%S"),
            _clip(row["key_name"] or row["key"], 12), _clip(row["model"], 24),
            f"{row['input_tokens']}/{row['output_tokens']}", cost,
            row["latency_ms"], row["status"], "".join(FLAG_LETTERS[f] for f in row["flags"])]


def _wide(row: dict, columns: list[str]) -> list:
    return [row["price_source"] if c == "provider_cost" and row["price_source"] in UNKNOWN_COST
            else json.dumps(row[c]) if isinstance(row[c], (dict, list)) else row[c] for c in columns]


def cmd_requests(args) -> None:
    status, status_class = args.status or (None, None)
    records = requests.recent(args.limit, customer=args.customer, key=args.key, model=args.model,
                              provider=args.provider, status=status, status_class=status_class,
                              since=args.since, until=args.until)
    names = requests.key_names()
    rows = [_request_row(r, names) for r in records]
    columns = [*WIDE_FIRST, *(c for c in (rows[0] if rows else requests.FIELDS) if c not in WIDE_FIRST)]
    if args.wide:
        shown = table("Requests", columns, [_wide(r, columns) for r in rows])
    else:
        shown = compact_table("Requests", COMPACT, [_compact(r) for r in rows])
    legend = FLAG_LEGEND if not args.wide and any(r["flags"] for r in rows) else None
    emit(args, rows, shown, text=legend, csv_rows=rows, csv_columns=list(rows[0]) if rows else WIDE_FIRST,
         width=None if not args.wide else WIDE_WIDTH)


def _unknown_cost(row: dict) -> dict:
    """A group whose every request is unpriced or unmetered has no known provider cost: null, not 0.00."""
    if row["requests"] and row["unpriced_requests"] + row["unmetered_requests"] == row["requests"]:
        row["provider_cost"] = None
    return row


def _cost_cell(row: dict) -> str:
    """The known cost, and how many requests it leaves out."""
    left_out = [f"{row[f'{s}_requests']} {s}" for s in UNKNOWN_COST if row[f"{s}_requests"]]
    if row["provider_cost"] is None:
        return " + ".join(left_out)
    return " + ".join([row["provider_cost"], *left_out])


def _usage_row(row: usage.UsageRow, by: str) -> dict:
    data = asdict(row)
    if by != "key":
        del data["key_name"]
    return _unknown_cost(money_fields(data))


def _group_cell(row: dict, by: str) -> str:
    """A key by its name (--json has its id too); a group without a value (no customer, no meter) as -."""
    if row["group"] is None:
        return "-"
    return (row.get("key_name") or row["group"]) if by == "key" else row["group"]


def cmd_usage(args) -> None:
    report = usage.usage(args.by, customer=args.customer, since=args.since, until=args.until, account=args.account)
    rows = [_usage_row(r, report.by) for r in report.rows]
    totals = _unknown_cost(money_fields(asdict(report.totals)))
    columns = ["group", "requests", "input_tokens", "output_tokens", "provider_cost", "charged", "fee", "margin",
               "unpriced_requests", "unmetered_requests"]
    shown = [*rows, {**totals, "group": "total"}]
    rendered = table(f"Usage by {args.by}", [args.by, *columns[1:]],
                     [[_group_cell(r, args.by) if c == "group" else _cost_cell(r) if c == "provider_cost" else r[c]
                       for c in columns] for r in shown])
    rendered.columns[0].no_wrap = True  # a date, a model or a key name stays whole
    unknown = totals["unpriced_requests"] + totals["unmetered_requests"]
    note = (f"{totals['unpriced_requests']} unpriced and {totals['unmetered_requests']} unmetered requests: their "
            "provider cost is not known and not in provider_cost (tollgate prices missing)") if unknown else None
    emit(args, {"by": args.by, "rows": rows, "totals": totals}, rendered, text=note, csv_rows=rows, csv_columns=columns)


def _customer_dict(view: customers.CustomerView, account: str) -> dict:
    data = money_fields(asdict(view))
    data["cycle_usage"] = {slug: _units(units) for slug, units in view.cycle_usage.items()}
    used = customers.limits_view(account, view.customer_id) if view.limits.any else None
    data["limits"] = limits_data(view.limits, used, customer=True)
    return data


def _units(units: Decimal) -> str:
    return format(units.normalize(), "f")


CUSTOMER_SETTINGS = ("autopay_threshold", "autopay_amount", "overdraft_limit")  # USD flags of create and update


def cmd_customers(args) -> None:
    if args.action == "create":
        if (args.autopay_threshold is None) != (args.autopay_amount is None):
            raise SystemExit("tollgate: --autopay-threshold and --autopay-amount go together")
        view = customers.create(
            args.account, args.id, balance_nanos=amount(args.balance, allow_zero=True) if args.balance else 0,
            autopay_threshold_nanos=amount(args.autopay_threshold) if args.autopay_threshold else None,
            autopay_amount_nanos=amount(args.autopay_amount) if args.autopay_amount else None,
            overdraft_limit_nanos=amount(args.overdraft_limit, allow_zero=True) if args.overdraft_limit else 0,
            limit_changes=limit_changes(args.limits),
        )
    elif args.action == "update":
        current = customers.get(args.account, args.id)
        changes = {**limit_changes(args.limits, current.limits, "customer"),
                   **{f"{name}_nanos": vars(args)[name] for name in CUSTOMER_SETTINGS if name in vars(args)}}
        if not changes:
            raise BadRequest("nothing_to_change", "customers update: give at least one change (see --help)")
        view = customers.update(args.account, args.id, **changes).view
    elif args.action == "topup":
        customers.get(args.account, args.id)  # an unknown customer is named before the amount is read
        view = customers.topup(args.account, args.id, amount(args.amount), note=args.note)
    elif args.action == "list":
        rows = [_customer_dict(c, args.account) for c in customers.list_customers(args.account)]
        columns = ["customer_id", "balance", "cycle_fees", "cycle_requests", "autopay_threshold", "autopay_amount"]
        shown = [{**row, "limits": limits_line(row["limits"])} for row in rows]
        columns += ["limits"] if any(row["limits"] for row in shown) else []
        emit(args, rows, rows_table("Customers", columns, shown), csv_rows=rows)
        return
    else:
        view = customers.get(args.account, args.id)
    data = _customer_dict(view, args.account)
    emit(args, data, _with_limits({k: v for k, v in data.items() if k != "limits"}, data["limits"]))


def cmd_meters(args) -> None:
    if args.action == "create":
        meter = meters.create(args.account, args.slug, rate_type=args.rate_type, unit=args.unit, tiers=args.tier or [],
                              percentage=args.percentage, base_cost_payer=args.base_cost_payer,
                              token_basis=args.token_basis)
    elif args.action == "list":
        rows = [asdict(m) for m in meters.list_meters(args.account)]
        columns = ["slug", "rate_type", "unit", "percentage", "base_cost_payer", "token_basis"]
        emit(args, rows, rows_table("Meters", columns, rows), csv_rows=rows)
        return
    else:
        meter = meters.get(args.account, args.slug)
    data = asdict(meter)
    tiers = [f"from {t['start']}: {t['rate']} USD per {meter.unit}" for t in data["tiers"]]
    emit(args, data, text=text_block({**data, "tiers": tiers}))


def cmd_webhooks(args) -> None:
    if args.action == "create":
        created = webhooks.create(args.account, args.name, args.url)
        data = {**asdict(created.webhook), "secret": created.secret}
        emit(args, data, text=text_block(data) + "\nThe secret signs every event (x-tollgate-signature) and is not "
                                                 "shown again: store it with the receiver.")
        return
    if args.action == "list":
        rows = [asdict(w) for w in webhooks.list_webhooks(args.account)]
        emit(args, rows, rows_table("Webhooks", ["id", "name", "url", "created_at"], rows), csv_rows=rows)
        return
    if args.action == "delete":
        emit(args, {"id": webhooks.delete(args.account, args.id), "deleted": True},
             text=f"Webhook {args.id} deleted: it receives no more events.")
        return
    if args.action == "update":
        if args.name is None and args.url is None:
            raise SystemExit("tollgate: webhooks update needs --name or --url")
        hook = webhooks.update(args.account, args.id, name=args.name, url=args.url)
    else:
        hook = webhooks.get(args.account, args.id)
    data = asdict(hook)
    emit(args, data, text=text_block(data))


def cmd_token(args) -> None:
    issued = tokens.issue_token(
        args.secret_key, customer=args.customer, meter=args.meter, provider_key=args.provider_key,
        disable_billing=args.disable_billing, signed=args.signed, expires_in=args.expires_in,
        allow_providers=args.allow_provider, allow_models=args.allow_model,
        spend_cap_nanos=amount(args.spend_cap) if args.spend_cap else None)
    emit(args, asdict(issued), text=issued.token)


def cmd_events(args) -> None:
    rows = [asdict(e) for e in events.recent(args.limit)]
    emit(args, rows, table("Events", ["id", "name", "wallet", "data", "created_at"],
                           [[r["id"], r["name"], r["wallet"], _event_data(r["data"]), r["created_at"]] for r in rows]),
         csv_rows=rows)


def _event_data(data: dict) -> str:
    """An event's facts for people: money as USD decimals, `name=value` pairs."""
    return ", ".join(f"{k}={v}" for k, v in money_fields(data).items())


def cmd_prices(args) -> None:
    if args.action == "missing":
        rows = [asdict(m) for m in prices.missing(since=args.since, until=args.until)]
        columns = ["provider", "model", "requests", "input_tokens", "output_tokens", "first_seen", "last_seen"]
        hint = ("Add a price for each to pricing/overrides.yaml (or `prices:` in the settings), e.g.\n"
                "  - {provider: PROVIDER, model: MODEL, input_mtok: \"1.00\", output_mtok: \"2.00\"}\n"
                "then charge what those requests cost: tollgate prices reprice --since DATE"
                if rows else "No model was seen without a price.")
        emit(args, rows, rows_table("Models without a price", columns, rows),
             text=hint, csv_rows=rows, csv_columns=columns)
        return
    report = prices.reprice_unpriced(since=args.since, until=args.until, dry_run=args.dry_run)
    rows = [money_fields(asdict(r)) for r in report.repriced]
    columns = ["request_id", "provider", "model", "price_source", "provider_cost", "merchant", "customer",
               "customer_uncollected"]
    verb = "would re-price" if args.dry_run else "re-priced"
    emit(args, {"dry_run": args.dry_run, "repriced": rows, "still_unpriced": report.still_unpriced},
         rows_table(f"Requests {verb}", columns, rows),
         text=f"{len(rows)} requests {verb} (new ledger entries: reason reprice); {report.still_unpriced} still "
              "without a price.")


def cmd_audit(args) -> None:
    mismatches = [money_fields(asdict(m)) for m in audit.audit().mismatches]
    emit(args, {"ok": not mismatches, "mismatches": mismatches},
         text="audit: every balance equals the sum of its entries" if not mismatches else
         "\n".join(f"MISMATCH {m['wallet']}: balance {m['balance']} != entries {m['entries_sum']}" for m in mismatches))
    if mismatches:
        raise SystemExit(1)
