"""`tollgate`: the operator's command line over the ledger. Rich tables for people, `--json` for scripts.

Money is printed as decimal strings (USD) in both forms; secret keys are printed once, on creation.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import getpass
import json
import os
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from addons.auth.credentials import ForwardToken, encode_forward_token
from addons.auth.signed_tokens import issue_signed_token, load_signing_key
from addons.billing.reprice import reprice
from addons.core.catalog import load_catalog
from addons.core.secret_formats import hash_secret
from addons.core.settings import PROJECT_ROOT, load_settings, resolve_database_url
from addons.host import capture, trust
from addons.ledger import accounts
from addons.ledger.models import Account, ApiKey, Customer, Event, MeterRow, Wallet, open_database
from addons.proxy.runtime_info import read_running, runtime_file
from addons.services.reports import UNKNOWN_COST, USAGE_GROUPS, customer_view, missing_prices, recent_requests, usage_by
from pricing import meters
from pricing.cost import shipped_overrides
from pricing.money import format_usd, parse_usd

console = Console(soft_wrap=True)  # long keys and commands stay copyable on one line


def _emit(args, data, table: Table | None = None, text: str | None = None, csv_rows: list[dict] | None = None,
          csv_columns: list[str] | None = None) -> None:
    if getattr(args, "csv", False) and csv_rows is not None:
        columns = csv_columns or (list(csv_rows[0]) if csv_rows else [])
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()} for r in csv_rows)
    elif args.json:
        print(json.dumps(data, default=_json_default, indent=2))
    elif table is not None:
        console.print(table)
    if text and not args.json and not getattr(args, "csv", False):
        console.print(text)


def _json_default(value):
    if isinstance(value, datetime):
        return value.isoformat() + "Z"
    raise TypeError(type(value).__name__)


def _money_fields(value):
    """Every *_nanos int becomes a decimal-string USD field of the same stem, nested dicts too."""
    if not isinstance(value, dict):
        return value
    return {
        (k[: -len("_nanos")] if k.endswith("_nanos") else k):
            (format_usd(v) if k.endswith("_nanos") and isinstance(v, int) else _money_fields(v))
        for k, v in value.items()
    }


def _amount(text: str, allow_zero: bool = False) -> int:
    try:
        return parse_usd(text)
    except ValueError as e:
        if allow_zero and text.strip() in ("0", "0.0", "0.00"):
            return 0
        raise SystemExit(f"tollgate: {e}") from None


def _date(text: str) -> datetime:
    """A date or time; one with a UTC offset is converted, since the ledger keeps naive UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def _table(title: str, columns: list[str], rows: list[list]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    return table


def _account(name: str) -> tuple[Account, Wallet]:
    account = Account.get_or_none(Account.name == name)
    if account is None:
        raise SystemExit(f"tollgate: no account named {name!r}")
    return account, Wallet.get(Wallet.account == account, Wallet.customer_id == "")


def cmd_init(args) -> None:
    account, wallet = accounts.ensure_account(accounts.DEFAULT_ACCOUNT)
    secret = None
    if not ApiKey.select().where(ApiKey.account == account).exists():
        _, secret = accounts.create_key("admin", account.name)
    data = {"account": account.name, "balance": format_usd(wallet.balance_nanos), "secret_key": secret}
    text = (
        f"[bold]Admin secret key (shown once, store it now):[/bold] {secret}\n"
        "Next steps:\n"
        "  1. fund the wallet:      .venv/bin/tollgate wallet topup 10\n"
        "  2. trust the proxy's CA: eval \"$(.venv/bin/tollgate ca --exports)\"\n"
        "  3. point an app at it:   OPENAI_API_KEY=<the key above> python my_app.py\n"
        "The proxy reads real provider keys from its environment: OPENAI_API_KEY=sk-... ./run_proxy.sh"
        if secret
        else f"Ledger ready; account {account.name!r} has balance {format_usd(wallet.balance_nanos)} USD."
    )
    _emit(args, data, text=text)


def cmd_keys_create(args) -> None:
    row, secret = accounts.create_key(args.name, args.account)
    data = {"id": row.id, "name": row.name, "account": args.account, "secret_key": secret}
    _emit(args, data, text=f"Key {row.id} created. Secret (shown once): {secret}")


def cmd_keys_list(args) -> None:
    query = ApiKey.select(ApiKey, Account.name.alias("account_name")).join(Account).order_by(ApiKey.created_at)
    rows = [
        {"id": k.id, "name": k.name, "account": k.account_name, "prefix": k.prefix,
         "created_at": k.created_at, "revoked_at": k.revoked_at}
        for k in query.objects()
    ]
    _emit(args, rows, _table("Keys", ["id", "name", "account", "prefix", "created", "revoked"],
                             [list(r.values()) for r in rows]))


def cmd_keys_revoke(args) -> None:
    try:
        key = accounts.revoke_key(args.id)
    except LookupError as e:
        raise SystemExit(f"tollgate: {e}") from None
    _emit(args, {"id": key.id, "revoked_at": key.revoked_at}, text=f"Key {key.id} revoked.")


def _read_provider_key() -> str:
    """From stdin, so the key stays out of the shell history and the process list; prompted without echo."""
    return getpass.getpass("provider key: ") if sys.stdin.isatty() else sys.stdin.read()


def cmd_keys_register_provider_key(args) -> None:
    catalog = load_catalog(overrides=load_settings().provider_overrides)
    if catalog.by_id(args.provider) is None:
        raise SystemExit(f"tollgate: no provider {args.provider!r} in the catalog (see tollgate providers)")
    try:
        row = accounts.register_provider_key(args.account, args.provider, _read_provider_key(), swap=args.swap)
    except ValueError as e:
        raise SystemExit(f"tollgate: {e}") from None
    billed = "as managed: the gateway's own key replaces it" if row.swap else "as bring-your-own-key"
    data = {"id": row.id, "account": args.account, "provider": row.provider, "prefix": row.prefix, "swap": row.swap}
    _emit(args, data, text=f"Provider key {row.prefix} registered as {row.id}: {args.provider} requests carrying it "
                           f"are billed to account {args.account!r} {billed}.")


def cmd_keys_provider_keys(args) -> None:
    rows = accounts.provider_keys()
    _emit(args, rows, _table("Provider keys", ["id", "account", "provider", "prefix", "swap", "created", "revoked"],
                             [list(r.values()) for r in rows]))


def cmd_keys_revoke_provider_key(args) -> None:
    try:
        row = accounts.revoke_provider_key(args.id)
    except LookupError as e:
        raise SystemExit(f"tollgate: {e}") from None
    _emit(args, {"id": row.id, "revoked_at": row.revoked_at}, text=f"Provider key registration {row.id} revoked.")


def cmd_wallet(args) -> None:
    account, wallet = _account(args.account)
    if args.action == "topup":
        balance = accounts.credit_wallet(wallet.id, _amount(args.amount), "topup", note=args.note)
    else:
        balance = accounts.wallet_balance(wallet.id)
    data = {"account": account.name, "wallet": wallet.id, "balance": format_usd(balance)}
    _emit(args, data, text=f"Account {account.name!r}: balance {format_usd(balance)} USD")


def cmd_requests(args) -> None:
    rows = [_money_fields(r) for r in recent_requests(args.limit, customer=args.customer)]
    for row in rows:
        row["metadata"] = json.loads(row["metadata"]) if row["metadata"] else None
        if row["price_source"] in UNKNOWN_COST:
            row["provider_cost"] = None  # not known, which is not $0.00
    columns = ["id", "created_at", "provider", "model", "customer_id", "status", "input_tokens",
               "output_tokens", "provider_cost", "charged", "fee", "usage_source"]
    table = _table("Requests", columns, [[r["price_source"] if c == "provider_cost" and r["price_source"] in UNKNOWN_COST
                                          else r[c] for c in columns] for r in rows])
    _emit(args, rows, table, csv_rows=rows, csv_columns=list(rows[0]) if rows else columns)


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


def cmd_usage(args) -> None:
    rows, totals = usage_by(args.by, customer=args.customer, since=args.since, until=args.until)
    rows, totals = [_unknown_cost(_money_fields(r)) for r in rows], _unknown_cost(_money_fields(totals))
    columns = ["group", "requests", "input_tokens", "output_tokens", "provider_cost", "charged", "fee", "margin",
               "unpriced_requests", "unmetered_requests"]
    shown = [*rows, {**totals, "group": "total"}]
    table = _table(f"Usage by {args.by}", columns, [[_cost_cell(r) if c == "provider_cost" else r[c] for c in columns]
                                                    for r in shown])
    unknown = totals["unpriced_requests"] + totals["unmetered_requests"]
    note = (f"{totals['unpriced_requests']} unpriced and {totals['unmetered_requests']} unmetered requests: their "
            "provider cost is not known and not in provider_cost (tollgate prices missing)") if unknown else None
    _emit(args, {"by": args.by, "rows": rows, "totals": totals}, table, text=note, csv_rows=rows, csv_columns=columns)


def _customer_or_exit(args) -> Customer:
    try:
        return accounts.get_customer(args.account, args.id)
    except LookupError as e:
        raise SystemExit(f"tollgate: {e}") from None


def cmd_customers(args) -> None:
    if args.action == "create":
        if (args.autopay_threshold is None) != (args.autopay_amount is None):
            raise SystemExit("tollgate: --autopay-threshold and --autopay-amount go together")
        try:
            customer = accounts.create_customer(
                args.account, args.id, balance_nanos=_amount(args.balance, allow_zero=True) if args.balance else 0,
                autopay_threshold_nanos=_amount(args.autopay_threshold) if args.autopay_threshold else None,
                autopay_amount_nanos=_amount(args.autopay_amount) if args.autopay_amount else None,
                overdraft_limit_nanos=_amount(args.overdraft_limit, allow_zero=True) if args.overdraft_limit else 0,
            )
        except ValueError as e:
            raise SystemExit(f"tollgate: {e}") from None
    elif args.action == "topup":
        customer = _customer_or_exit(args)
        accounts.credit_wallet(customer.wallet_id, _amount(args.amount), "topup", note=args.note)
    elif args.action == "list":
        rows = [_money_fields(customer_view(c)) for c in
                Customer.select().join(Account).where(Account.name == args.account).order_by(Customer.customer_id)]
        columns = ["customer_id", "balance", "cycle_fees", "cycle_requests", "autopay_threshold", "autopay_amount"]
        _emit(args, rows, _table("Customers", columns, [[r[c] for c in columns] for r in rows]), csv_rows=rows)
        return
    else:
        customer = _customer_or_exit(args)
    view = _money_fields(customer_view(Customer.get_by_id(customer.id)))
    _emit(args, view, text="\n".join(f"{k}: {v}" for k, v in view.items()))


def _meter_dict(row: MeterRow) -> dict:
    return {"slug": row.slug, "rate_type": row.rate_type, "unit": row.unit, "percentage": row.percentage,
            "base_cost_payer": row.base_cost_payer, "token_basis": row.token_basis,
            "tiers": [{"start": start, "rate": rate} for start, rate in json.loads(row.tiers)]}


def cmd_meters(args) -> None:
    account, _ = accounts.ensure_account(args.account)
    if args.action == "create":
        try:
            spec = meters.make_meter_spec(args.slug, args.rate_type, args.unit, args.tier or [], args.percentage,
                                          args.base_cost_payer, args.token_basis)
        except ValueError as e:
            raise SystemExit(f"tollgate: {e}") from None
        if accounts.find_meter(account.id, spec.slug):
            raise SystemExit(f"tollgate: meter {spec.slug!r} already exists")
        row = MeterRow.create(account=account, slug=spec.slug, rate_type=spec.rate_type, unit=spec.unit,
                              percentage=None if spec.percentage is None else str(spec.percentage),
                              base_cost_payer=spec.base_cost_payer, token_basis=spec.token_basis,
                              tiers=meters.tiers_json(spec))
    elif args.action == "list":
        rows = [_meter_dict(m) for m in MeterRow.select().where(MeterRow.account == account).order_by(MeterRow.slug)]
        columns = ["slug", "rate_type", "unit", "percentage", "base_cost_payer", "token_basis"]
        _emit(args, rows, _table("Meters", columns, [[r[c] for c in columns] for r in rows]), csv_rows=rows)
        return
    else:
        row = accounts.find_meter(account.id, args.slug)
        if row is None:
            raise SystemExit(f"tollgate: no meter {args.slug!r}")
    data = _meter_dict(row)
    _emit(args, data, text="\n".join(f"{k}: {v}" for k, v in data.items()))


def cmd_token(args) -> None:
    key = ApiKey.get_or_none(ApiKey.key_hash == hash_secret(args.secret_key))
    if key is None or key.revoked_at is not None:
        raise SystemExit("tollgate: --secret-key is not an active Tollgate key")
    if args.signed:
        try:
            signing_key = load_signing_key(load_settings().billing.token_signing_key,
                                           PROJECT_ROOT / "data" / "token-signing.key")
            token = issue_signed_token(
                signing_key, key_id=key.id, customer_id=args.customer, meter_slug=args.meter,
                provider_key=args.provider_key, disable_billing=args.disable_billing, expires_in=args.expires_in,
                allow_providers=tuple(args.allow_provider or ()), allow_models=tuple(args.allow_model or ()),
                spend_cap_nanos=_amount(args.spend_cap) if args.spend_cap else None,
            )
        except ValueError as e:
            raise SystemExit(f"tollgate: {e}") from None
    else:
        if any(v is not None for v in (args.expires_in, args.allow_provider, args.allow_model, args.spend_cap)):
            raise SystemExit("tollgate: --expires-in, --allow-*, --spend-cap need --signed")
        token = encode_forward_token(ForwardToken(args.secret_key, args.customer, args.meter, args.provider_key,
                                                  args.disable_billing))
    _emit(args, {"token": token, "signed": args.signed}, text=token)


def cmd_events(args) -> None:
    rows = [{"id": e.id, "name": e.name, "wallet": e.wallet_id, "data": json.loads(e.data), "created_at": e.created_at}
            for e in Event.select().order_by(Event.id.desc()).limit(args.limit)]
    _emit(args, rows, _table("Events", ["id", "name", "wallet", "data", "created_at"],
                             [[r["id"], r["name"], r["wallet"], json.dumps(r["data"]), r["created_at"]] for r in rows]),
          csv_rows=rows)


def cmd_providers(args) -> None:
    catalog = load_catalog(overrides=load_settings().provider_overrides)
    running = read_running()
    source = "running gateway" if running else "this shell's environment"
    has_key = set(running.get("provider_keys") or ()) if running else None
    rows = [
        {"id": p.id, "name": p.name, "hosts": list(p.hosts), "api_family": p.api_family,
         "credential_env": p.credential_env,
         "configured": p.id in has_key if running else bool(os.environ.get(p.credential_env)),
         "source": source, "upstream": p.upstream}
        for p in catalog.providers
    ]
    column = "gateway has key" if running else "key in this shell"
    text = (f"Keys as the running gateway (pid {running['pid']}, started {running.get('started_at')}) has them."
            if running else "No running gateway found: the key column reports this shell's environment, "
                            "which a gateway started from this shell would have.")
    table = _table("Providers", ["id", "hosts", "family", "credential", column, "upstream"],
                   [[r["id"], ", ".join(r["hosts"]), r["api_family"], r["credential_env"],
                     "yes" if r["configured"] else "no", r["upstream"]] for r in rows])
    table.columns[4].no_wrap = True  # the header says whose keys these are
    _emit(args, rows, table, text=text)


DEFAULT_PROXY = "127.0.0.1:8080"


def _proxy_url(port: int | None, running: dict | None) -> tuple[str, str | None]:
    """HTTPS_PROXY for clients: --port, else the running gateway's proxy listener, else the default; and a note."""
    if port is not None:
        return f"http://127.0.0.1:{port}", None
    if running is None:
        return f"http://{DEFAULT_PROXY}", (f"no running gateway found ({runtime_file()}); HTTPS_PROXY assumes "
                                           f"{DEFAULT_PROXY}: pass --port if the gateway listens elsewhere")
    addrs = [(host, p) for listener in running.get("listeners") or () if listener.get("type") in ("regular", "upstream")
             for host, p in listener.get("listen_addrs") or ()]
    if not addrs:
        modes = ", ".join(listener.get("mode", "?") for listener in running.get("listeners") or ()) or "none"
        return f"http://{DEFAULT_PROXY}", (f"the running gateway (pid {running['pid']}) has no HTTP proxy listener "
                                           f"(modes: {modes}); HTTPS_PROXY assumes {DEFAULT_PROXY}")
    host, p = sorted(addrs, key=lambda a: ":" in a[0])[0]  # IPv4 first
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    note = ("the running gateway requires proxy credentials (--proxyauth): put them in HTTPS_PROXY as "
            "http://USER:PASS@HOST:PORT" if running.get("proxyauth") else None)
    return f"http://{f'[{host}]' if ':' in host else host}:{p}", note


def cmd_ca(args) -> None:
    running = read_running()
    confdir = Path(args.confdir or (running or {}).get("confdir")
                   or os.environ.get("MITMPROXY_CONFDIR", "~/.mitmproxy")).expanduser()
    cert = confdir / trust.CA_FILE
    if args.install or args.uninstall:
        try:
            changes = trust.install(cert) if args.install else trust.uninstall()
        except trust.TrustError as e:
            raise SystemExit(f"tollgate: {e}") from None
        _emit(args, {"ca_cert": str(cert), "changes": changes}, text="\n".join(changes))
        return
    proxy, note = _proxy_url(args.port, running)
    if note:
        print(f"tollgate: {note}", file=sys.stderr)
    if not cert.exists():
        missing = (f"mitmproxy's CA does not exist yet ({cert}): start the gateway once (./run_proxy.sh), "
                   "which creates it, then run this again")
        if args.exports and not args.json:
            raise SystemExit(f"tollgate: {missing}")
        _emit(args, {"ca_cert": str(cert), "exists": False, "bundle": None, "exports": {}}, text=missing)
        return
    bundle = str(trust.write_bundle(cert))
    exports = {"SSL_CERT_FILE": bundle, "REQUESTS_CA_BUNDLE": bundle, "NODE_EXTRA_CA_CERTS": str(cert),
               "HTTPS_PROXY": proxy}
    lines = [f"export {k}={shlex.quote(v)}" for k, v in exports.items()]
    if args.exports and not args.json:
        print("\n".join(lines))
        return
    data = {"ca_cert": str(cert), "exists": True, "bundle": bundle, "exports": exports}
    _emit(args, data, text="\n".join([f"CA certificate: {cert}",
                                      f"CA bundle (the system's roots and this CA): {bundle}", *lines]))


def cmd_prices(args) -> None:
    if args.action == "missing":
        rows = missing_prices(since=args.since, until=args.until)
        columns = ["provider", "model", "requests", "input_tokens", "output_tokens", "first_seen", "last_seen"]
        hint = ("Add a price for each to pricing/overrides.yaml (or `prices:` in the settings), e.g.\n"
                "  - {provider: PROVIDER, model: MODEL, input_mtok: \"1.00\", output_mtok: \"2.00\"}\n"
                "then charge what those requests cost: tollgate prices reprice --since DATE"
                if rows else "No model was seen without a price.")
        _emit(args, rows, _table("Models without a price", columns, [[r[c] for c in columns] for r in rows]),
              text=hint, csv_rows=rows, csv_columns=columns)
        return
    settings = load_settings()
    catalog = load_catalog(overrides=settings.provider_overrides)
    try:
        overrides = settings.price_overrides + shipped_overrides()
    except ValueError as e:
        raise SystemExit(f"tollgate: {e}") from None
    done, left = reprice(since=args.since, until=args.until, pricing_ids={p.id: p.pricing_id for p in catalog.providers},
                         overrides=overrides, billing=settings.billing, dry_run=args.dry_run)
    rows = [_money_fields(dataclasses.asdict(r)) for r in done]
    columns = ["request_id", "provider", "model", "price_source", "provider_cost", "merchant", "customer",
               "customer_uncollected"]
    verb = "would re-price" if args.dry_run else "re-priced"
    _emit(args, {"dry_run": args.dry_run, "repriced": rows, "still_unpriced": left},
          _table(f"Requests {verb}", columns, [[r[c] for c in columns] for r in rows]),
          text=f"{len(rows)} requests {verb} (new ledger entries: reason reprice); {left} still without a price.")


def cmd_audit(args) -> None:
    mismatches = [{"wallet": w, "balance": format_usd(c), "entries_sum": format_usd(s)}
                  for w, c, s in accounts.audit_wallets()]
    _emit(args, {"ok": not mismatches, "mismatches": mismatches},
          text="audit: every balance equals the sum of its entries" if not mismatches else
          "\n".join(f"MISMATCH {m['wallet']}: balance {m['balance']} != entries {m['entries_sum']}" for m in mismatches))
    if mismatches:
        raise SystemExit(1)


# -- capture: transparent capture rules on this host (addons/host/capture.py) ----------------------------

def cmd_capture(args) -> None:
    try:
        if args.action == "on":
            _capture_on(args)
        elif args.action == "off":
            _capture_off(args)
        else:
            _emit(args, status := capture.capture_status(_capture_binaries()), text=_capture_status_text(status))
    except capture.CaptureError as e:
        raise SystemExit(f"tollgate capture: {e}") from None


def _capture_binaries() -> dict[str, str]:
    found = capture.binaries()
    capture.require_net_admin()
    return found


def _capture_on(args) -> None:
    if args.uid is not None:
        selector = capture.Selector("uid", str(capture.resolve_uid(args.uid)))
    else:
        selector = capture.Selector("cgroup", args.cgroup)
    gateway_uid = (capture.resolve_uid(args.gateway_user) if args.gateway_user is not None
                   else capture.default_gateway_uid(args.port))
    plan = capture.plan_on(selector, args.port, gateway_uid)
    if args.dry_run:
        commands = [capture.command_line(name, step) for _, name in capture.FAMILIES for step in plan]
    else:
        commands = capture.capture_on(selector, args.port, gateway_uid, _capture_binaries())
    what = f"{selector.describe()}: TCP {', '.join(map(str, capture.PORTS))} -> port {args.port}"
    data = {"selector": {selector.kind: selector.value}, "port": args.port, "gateway_uid": gateway_uid,
            "dry_run": args.dry_run, "commands": commands}
    text = "\n".join(commands) if args.dry_run else (
        f"capturing {what} (the gateway's uid {gateway_uid} excluded); undo with: tollgate capture off")
    if not args.dry_run and capture.listener_uid(args.port) is None:
        text += (f"\nnothing listens on port {args.port} yet: start the gateway with --mode transparent "
                 f"--listen-port {args.port}; until then the captured connections are refused")
    _emit(args, data, text=text)


def _capture_off(args) -> None:
    if args.dry_run:
        commands = [capture.command_line(name, step) for _, name in capture.FAMILIES
                    for step in capture.plan_off([shlex.join(["-A", "OUTPUT", *capture.JUMP])])]
    else:
        commands = capture.capture_off(_capture_binaries())
    text = "\n".join(commands) if args.dry_run else (
        f"removed {len(commands)} firewall change(s) tagged {capture.COMMENT}" if commands else "no capture rules")
    _emit(args, {"dry_run": args.dry_run, "commands": commands}, text=text)


def _capture_status_text(status: dict) -> str:
    lines = ["capture is " + ("on" if status["active"] else "off")]
    for family, found in status["families"].items():
        lines += [f"{family}: {rule}" for rule in found["jump"] + found["rules"]]
    return "\n".join(lines)


def _add_capture_parser(sub, common) -> None:
    capture_cmd = sub.add_parser("capture", parents=[common],
                                 help="transparent capture of apps on this host (iptables)")
    actions = capture_cmd.add_subparsers(dest="action", required=True)
    on = actions.add_parser("on", parents=[common], help="redirect a user's or cgroup's TCP 80/443 to the gateway")
    who = on.add_mutually_exclusive_group(required=True)
    who.add_argument("--uid", metavar="USER", help="capture this user's connections (name or number)")
    who.add_argument("--cgroup", metavar="PATH", help="capture this cgroup v2's connections (e.g. /app.slice)")
    on.add_argument("--port", type=int, default=8080, help="the gateway's transparent-mode port (default 8080)")
    on.add_argument("--gateway-user", metavar="USER",
                    help="the user the gateway runs as, never captured (default: the owner of the listener on "
                         "--port, else you)")
    on.add_argument("--dry-run", action="store_true", help="print the iptables commands instead of running them")
    off = actions.add_parser("off", parents=[common], help="remove every rule tollgate capture installed")
    off.add_argument("--dry-run", action="store_true", help="print the iptables commands instead of running them")
    actions.add_parser("status", parents=[common], help="show the capture rules in place")
    capture_cmd.set_defaults(fn=cmd_capture)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    common.add_argument("--database-url", default=argparse.SUPPRESS,
                        help="ledger URL (default: TOLLGATE_DATABASE_URL or config/gateway.yaml)")
    parser = argparse.ArgumentParser(prog="tollgate", parents=[common], description="Tollgate AI gateway ledger")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("init", parents=[common], help="create the ledger and the admin key").set_defaults(fn=cmd_init)
    keys = sub.add_parser("keys", parents=[common], help="Tollgate secret keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", parents=[common], help="create a secret key")
    create.add_argument("--name", required=True)
    create.add_argument("--account", default=accounts.DEFAULT_ACCOUNT, help="account to create or use")
    create.set_defaults(fn=cmd_keys_create)
    keys.add_parser("list", parents=[common]).set_defaults(fn=cmd_keys_list)
    revoke = keys.add_parser("revoke", parents=[common])
    revoke.add_argument("id")
    revoke.set_defaults(fn=cmd_keys_revoke)
    register = keys.add_parser("register-provider-key", parents=[common],
                               help="bill an app that sends its own provider key (read from stdin) to an account")
    register.add_argument("--account", required=True, help="the account that pays (created if new)")
    register.add_argument("--provider", required=True, help="catalog provider id the key is for, e.g. openai")
    register.add_argument("--swap", action="store_true",
                          help="replace the key with the gateway's own and bill the provider cost (managed), "
                               "instead of passing it on and billing the BYOK fee")
    register.set_defaults(fn=cmd_keys_register_provider_key)
    keys.add_parser("provider-keys", parents=[common], help="registered provider keys").set_defaults(
        fn=cmd_keys_provider_keys)
    revoke_provider = keys.add_parser("revoke-provider-key", parents=[common])
    revoke_provider.add_argument("id")
    revoke_provider.set_defaults(fn=cmd_keys_revoke_provider_key)

    wallet = sub.add_parser("wallet", parents=[common], help="show or top up an account's wallet")
    wallet.add_argument("action", nargs="?", choices=["topup"])
    wallet.add_argument("amount", nargs="?", help="USD amount for topup, e.g. 10 or 2.50")
    wallet.add_argument("--account", default=accounts.DEFAULT_ACCOUNT)
    wallet.add_argument("--note")
    wallet.set_defaults(fn=cmd_wallet)

    export = argparse.ArgumentParser(add_help=False)
    export.add_argument("--csv", action="store_true", help="CSV rows for export")
    requests = sub.add_parser("requests", parents=[common, export], help="recent requests")
    requests.add_argument("--limit", type=int, default=20)
    requests.add_argument("--customer")
    requests.set_defaults(fn=cmd_requests)
    usage = sub.add_parser("usage", parents=[common, export], help="usage, cost, fees and margin roll-up")
    usage.add_argument("--by", choices=sorted(USAGE_GROUPS), default="provider")
    usage.add_argument("--customer")
    usage.add_argument("--since", type=_date, help="from this date or time (UTC, inclusive)")
    usage.add_argument("--until", type=_date, help="up to this date or time (UTC, exclusive)")
    usage.set_defaults(fn=cmd_usage)

    account = argparse.ArgumentParser(add_help=False)
    account.add_argument("--account", default=accounts.DEFAULT_ACCOUNT, help="the merchant account")
    customers = sub.add_parser("customers", parents=[common], help="customers and their prepaid balances")
    csub = customers.add_subparsers(dest="action", required=True)
    ccreate = csub.add_parser("create", parents=[common, account])
    ccreate.add_argument("id")
    ccreate.add_argument("--balance", help="opening balance, USD")
    ccreate.add_argument("--autopay-threshold", help="top up when the balance falls below this, USD")
    ccreate.add_argument("--autopay-amount", help="the bundle each auto top-up buys, USD")
    ccreate.add_argument("--overdraft-limit", help="how far below zero charges may go, USD (default 0)")
    ctopup = csub.add_parser("topup", parents=[common, account])
    ctopup.add_argument("id")
    ctopup.add_argument("amount")
    ctopup.add_argument("--note")
    cshow = csub.add_parser("show", parents=[common, account])
    cshow.add_argument("id")
    csub.add_parser("list", parents=[common, account, export])
    customers.set_defaults(fn=cmd_customers)

    meter_cmd = sub.add_parser("meters", parents=[common], help="price lists for customers")
    msub = meter_cmd.add_subparsers(dest="action", required=True)
    mcreate = msub.add_parser("create", parents=[common, account])
    mcreate.add_argument("slug")
    mcreate.add_argument("--rate-type", required=True, choices=meters.RATE_TYPES)
    mcreate.add_argument("--unit", required=True, choices=meters.UNITS)
    mcreate.add_argument("--tier", action="append", help="START:RATE, START in raw units; repeat for tiers")
    mcreate.add_argument("--percentage", help="markup in percent of the provider cost (percentage, hybrid)")
    mcreate.add_argument("--base-cost-payer", choices=meters.BASE_COST_PAYERS)
    mcreate.add_argument("--token-basis", choices=meters.TOKEN_BASES, default="input+output")
    msub.add_parser("list", parents=[common, account, export])
    mshow = msub.add_parser("show", parents=[common, account])
    mshow.add_argument("slug")
    meter_cmd.set_defaults(fn=cmd_meters)

    token = sub.add_parser("token", parents=[common], help="print a forward token")
    token.add_argument("--secret-key", required=True)
    token.add_argument("--customer")
    token.add_argument("--meter")
    token.add_argument("--provider-key", help="bring your own provider key")
    token.add_argument("--disable-billing", action="store_true")
    token.add_argument("--signed", action="store_true", help="HMAC-signed; does not embed the secret key")
    token.add_argument("--expires-in", type=int, help="seconds (signed tokens)")
    token.add_argument("--allow-provider", action="append", help="restrict to a provider id (signed tokens)")
    token.add_argument("--allow-model", action="append", help="restrict to a model, trailing * allowed (signed)")
    token.add_argument("--spend-cap", help="USD the token may spend in all (signed tokens)")
    token.set_defaults(fn=cmd_token)

    events = sub.add_parser("events", parents=[common, export], help="billing events (top-ups, low balances)")
    events.add_argument("--limit", type=int, default=50)
    events.set_defaults(fn=cmd_events)
    sub.add_parser("providers", parents=[common],
                   help="the provider catalog, and which keys the running gateway has").set_defaults(fn=cmd_providers)
    ca = sub.add_parser("ca", parents=[common], help="the CA certificate clients must trust")
    ca.add_argument("--confdir", help="mitmproxy's confdir (default: the running gateway's, else "
                                      "MITMPROXY_CONFDIR, else ~/.mitmproxy)")
    ca.add_argument("--exports", action="store_true", help="print only shell export lines")
    ca.add_argument("--port", type=int, help="the gateway's port for HTTPS_PROXY (default: the running gateway's)")
    trust_store = ca.add_mutually_exclusive_group()
    trust_store.add_argument("--install", action="store_true", help="add the CA to the system trust store (root)")
    trust_store.add_argument("--uninstall", action="store_true", help="remove it from the system trust store (root)")
    ca.set_defaults(fn=cmd_ca)
    prices = sub.add_parser("prices", parents=[common], help="models without a price, and charging them later")
    psub = prices.add_subparsers(dest="action", required=True)
    pmissing = psub.add_parser("missing", parents=[common, export], help="models seen without a price")
    pmissing.add_argument("--since", type=_date, help="from this date or time (UTC, inclusive)")
    pmissing.add_argument("--until", type=_date, help="up to this date or time (UTC, exclusive)")
    preprice = psub.add_parser("reprice", parents=[common],
                               help="price unpriced requests with today's price lists; adds ledger entries")
    preprice.add_argument("--since", type=_date, required=True, help="from this date or time (UTC, inclusive)")
    preprice.add_argument("--until", type=_date, help="up to this date or time (UTC, exclusive)")
    preprice.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
    prices.set_defaults(fn=cmd_prices)
    sub.add_parser("audit", parents=[common], help="check balances against ledger entries").set_defaults(fn=cmd_audit)
    _add_capture_parser(sub, common)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    if args.command == "wallet" and args.action == "topup" and args.amount is None:
        raise SystemExit("tollgate: wallet topup needs an AMOUNT")
    if args.command not in ("ca", "providers", "capture"):
        try:
            settings = load_settings()
        except ValueError as e:
            raise SystemExit(f"tollgate: {e}") from None
        open_database(resolve_database_url(getattr(args, "database_url", None) or settings.database_url))
    args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
