"""`tollgate`: the operator's command line over the ledger. Rich tables for people, `--json` for scripts.

Money is printed as decimal strings (USD) in both forms; secret keys are printed once, on creation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from addons.catalog import load_catalog
from addons.ledger import accounts
from addons.ledger.models import Account, ApiKey, Wallet, open_database
from addons.reports import USAGE_GROUPS, recent_requests, usage_by
from addons.settings import load_settings, resolve_database_url
from pricing.money import format_usd, parse_usd

console = Console(soft_wrap=True)  # long keys and commands stay copyable on one line


def _emit(args, data, table: Table | None = None, text: str | None = None) -> None:
    if args.json:
        print(json.dumps(data, default=_json_default, indent=2))
    elif table is not None:
        console.print(table)
    if text and not args.json:
        console.print(text)


def _json_default(value):
    if isinstance(value, datetime):
        return value.isoformat() + "Z"
    raise TypeError(type(value).__name__)


def _money_fields(row: dict) -> dict:
    """Replace every *_nanos int with a decimal-string USD field of the same stem."""
    return {(k[: -len("_nanos")] if k.endswith("_nanos") else k): (format_usd(v or 0) if k.endswith("_nanos") else v)
            for k, v in row.items()}


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


def cmd_wallet(args) -> None:
    account, wallet = _account(args.account)
    if args.action == "topup":
        try:
            amount = parse_usd(args.amount)
        except ValueError as e:
            raise SystemExit(f"tollgate: {e}") from None
        balance = accounts.credit_wallet(wallet.id, amount, "topup", note=args.note)
    else:
        balance = accounts.wallet_balance(wallet.id)
    data = {"account": account.name, "wallet": wallet.id, "balance": format_usd(balance)}
    _emit(args, data, text=f"Account {account.name!r}: balance {format_usd(balance)} USD")


def cmd_requests(args) -> None:
    rows = [_money_fields(r) for r in recent_requests(args.limit)]
    for row in rows:
        row["metadata"] = json.loads(row["metadata"]) if row["metadata"] else None
    columns = ["id", "created_at", "provider", "model", "status", "streamed", "input_tokens",
               "output_tokens", "provider_cost", "charged", "usage_source"]
    _emit(args, rows, _table("Requests", columns, [[r[c] for c in columns] for r in rows]))


def cmd_usage(args) -> None:
    rows = [_money_fields(r) for r in usage_by(args.by)]
    columns = ["group", "requests", "input_tokens", "output_tokens", "provider_cost", "charged"]
    _emit(args, rows, _table(f"Usage by {args.by}", columns, [[r[c] for c in columns] for r in rows]))


def cmd_providers(args) -> None:
    catalog = load_catalog(overrides=load_settings().provider_overrides)
    rows = [
        {"id": p.id, "name": p.name, "hosts": list(p.hosts), "api_family": p.api_family,
         "credential_env": p.credential_env, "configured": bool(os.environ.get(p.credential_env)),
         "upstream": p.upstream}
        for p in catalog.providers
    ]
    _emit(args, rows, _table("Providers", ["id", "hosts", "family", "credential", "configured", "upstream"],
                             [[r["id"], ", ".join(r["hosts"]), r["api_family"], r["credential_env"],
                               "yes" if r["configured"] else "no", r["upstream"]] for r in rows]))


def cmd_ca(args) -> None:
    confdir = Path(args.confdir).expanduser()
    cert = confdir / "mitmproxy-ca-cert.pem"
    exports = {name: str(cert) for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")}
    exports["HTTPS_PROXY"] = "http://127.0.0.1:8080"
    if args.exports and not args.json:
        print("\n".join(f"export {k}={v}" for k, v in exports.items()))
        return
    data = {"ca_cert": str(cert), "exists": cert.exists(), "exports": exports}
    lines = [f"CA certificate: {cert}" + ("" if cert.exists() else " (created when the proxy first starts)")]
    lines += [f"export {k}={v}" for k, v in exports.items()]
    _emit(args, data, text="\n".join(lines))


def cmd_audit(args) -> None:
    mismatches = [{"wallet": w, "balance": format_usd(c), "entries_sum": format_usd(s)}
                  for w, c, s in accounts.audit_wallets()]
    _emit(args, {"ok": not mismatches, "mismatches": mismatches},
          text="audit: every balance equals the sum of its entries" if not mismatches else
          "\n".join(f"MISMATCH {m['wallet']}: balance {m['balance']} != entries {m['entries_sum']}" for m in mismatches))
    if mismatches:
        raise SystemExit(1)


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

    wallet = sub.add_parser("wallet", parents=[common], help="show or top up an account's wallet")
    wallet.add_argument("action", nargs="?", choices=["topup"])
    wallet.add_argument("amount", nargs="?", help="USD amount for topup, e.g. 10 or 2.50")
    wallet.add_argument("--account", default=accounts.DEFAULT_ACCOUNT)
    wallet.add_argument("--note")
    wallet.set_defaults(fn=cmd_wallet)

    requests = sub.add_parser("requests", parents=[common], help="recent requests")
    requests.add_argument("--limit", type=int, default=20)
    requests.set_defaults(fn=cmd_requests)
    usage = sub.add_parser("usage", parents=[common], help="usage and cost roll-up")
    usage.add_argument("--by", choices=sorted(USAGE_GROUPS), default="provider")
    usage.set_defaults(fn=cmd_usage)
    sub.add_parser("providers", parents=[common], help="the provider catalog").set_defaults(fn=cmd_providers)
    ca = sub.add_parser("ca", parents=[common], help="the CA certificate clients must trust")
    ca.add_argument("--confdir", default=os.environ.get("MITMPROXY_CONFDIR", "~/.mitmproxy"))
    ca.add_argument("--exports", action="store_true", help="print only shell export lines")
    ca.set_defaults(fn=cmd_ca)
    sub.add_parser("audit", parents=[common], help="check balances against ledger entries").set_defaults(fn=cmd_audit)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    if args.command == "wallet" and args.action == "topup" and args.amount is None:
        raise SystemExit("tollgate: wallet topup needs an AMOUNT")
    if args.command not in ("ca", "providers"):
        try:
            settings = load_settings()
        except ValueError as e:
            raise SystemExit(f"tollgate: {e}") from None
        open_database(resolve_database_url(getattr(args, "database_url", None) or settings.database_url))
    args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
