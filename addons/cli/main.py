"""`tollgate`: the operator's command line. It parses arguments, calls one service (addons/services/) and renders
the result: rich tables for people, `--json` for scripts.

Money is printed as decimal strings (USD) in both forms; secret keys are printed once, on creation.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from addons.cli.host_commands import _proxy_url, add_capture_parser, cmd_ca, cmd_providers
from addons.cli.ledger_commands import (
    cmd_audit,
    cmd_customers,
    cmd_events,
    cmd_init,
    cmd_keys_create,
    cmd_keys_list,
    cmd_keys_provider_keys,
    cmd_keys_register_provider_key,
    cmd_keys_revoke,
    cmd_keys_revoke_provider_key,
    cmd_keys_show,
    cmd_keys_update,
    cmd_meters,
    cmd_prices,
    cmd_requests,
    cmd_token,
    cmd_usage,
    cmd_wallet,
    cmd_webhooks,
)
from addons.cli.limit_flags import add_limit_flags, clearable, positive, usd
from addons.core.settings import load_settings
from addons.services.database import DEFAULT_ACCOUNT, open_ledger
from addons.services.errors import GatewayError
from addons.services.keys import ROLES
from addons.services.usage import GROUPS
from pricing import meters

__all__ = ["_proxy_url", "build_parser", "main"]

# Where the CLI words a service's refusal in terms of its own flags.
FLAG_WORDING = {
    "inactive_secret_key": "--secret-key is not an active Tollgate key",
    "signed_only": "--expires-in, --allow-*, --spend-cap need --signed",
    "autopay_incomplete": "--autopay-threshold and --autopay-amount go together",
}
HINTS = {"provider_not_found": " (see tollgate providers)", "limit_period_missing": " (--period after the limit)"}

# An example for every command's --help (a command with subcommands shows theirs); tests/test_cli_help.py
# checks that every command has one and every option a help line.
EXAMPLES = {
    "": ["tollgate init", "tollgate requests --since 2025-06-01 --status 4xx", "tollgate usage --by key --json"],
    "init": ["tollgate init"],
    "keys create": ["tollgate keys create --name ci --account acme",
                    "tollgate keys create --name app --spend-limit 10 --period month --request-limit 500 --period day "
                    "--rpm 60 --allow-provider openai --expires-in 86400 --spend-key"],
    "keys update": ["tollgate keys update key_0123456789ab --spend-limit 20 --rpm none",
                    "tollgate keys update key_0123456789ab --period week --pause"],
    "keys show": ["tollgate keys show key_0123456789ab --json"],
    "keys list": ["tollgate keys list --json"],
    "keys revoke": ["tollgate keys revoke key_0123456789ab"],
    "keys register-provider-key": ["tollgate keys register-provider-key --account acme --provider openai < key.txt"],
    "keys provider-keys": ["tollgate keys provider-keys"],
    "keys revoke-provider-key": ["tollgate keys revoke-provider-key pkey_0123456789ab"],
    "wallet": ["tollgate wallet", "tollgate wallet topup 10 --account acme --note 'June'"],
    "requests": ["tollgate requests --limit 50 --key ci --status 4xx",
                 "tollgate requests --model 'gpt-4o*' --since 2025-06-01 --until 2025-06-02 --wide",
                 "tollgate requests --provider openai --csv > requests.csv"],
    "usage": ["tollgate usage --by key", "tollgate usage --by day --since 2025-06-01 --customer cus_42",
              "tollgate usage --by model --account acme",
              "tollgate usage --by model --csv > usage.csv"],
    "customers create": ["tollgate customers create cus_42 --balance 5 --autopay-threshold 1 --autopay-amount 10"],
    "customers update": ["tollgate customers update cus_42 --spend-limit 5 --period day --rpm 20 --tpm none"],
    "customers topup": ["tollgate customers topup cus_42 10 --note 'invoice 17'"],
    "customers show": ["tollgate customers show cus_42"],
    "customers list": ["tollgate customers list --csv"],
    "meters create": ["tollgate meters create chat --rate-type fixed --unit requests --tier 0:0.01",
                      "tollgate meters create markup --rate-type percentage --unit tokens_1m --percentage 20"],
    "meters list": ["tollgate meters list"],
    "meters show": ["tollgate meters show chat"],
    "webhooks create": ["tollgate webhooks create --name billing --url https://example.com/hooks/tollgate"],
    "webhooks list": ["tollgate webhooks list --json"],
    "webhooks show": ["tollgate webhooks show wh_0123456789ab"],
    "webhooks update": ["tollgate webhooks update wh_0123456789ab --url https://example.com/hooks/v2"],
    "webhooks delete": ["tollgate webhooks delete wh_0123456789ab"],
    "token": ["tollgate token --secret-key tg_sk_... --customer cus_42 --meter chat",
              "tollgate token --secret-key tg_sk_... --signed --expires-in 3600 --spend-cap 1.00"],
    "events": ["tollgate events --limit 10"],
    "providers": ["tollgate providers"],
    "ca": ['eval "$(tollgate ca --exports)"', "sudo tollgate ca --install"],
    "prices missing": ["tollgate prices missing --since 2025-06-01"],
    "prices reprice": ["tollgate prices reprice --since 2025-06-01 --dry-run"],
    "audit": ["tollgate audit"],
    "capture on": ["sudo tollgate capture on --uid app --port 8080 --dry-run"],
    "capture off": ["sudo tollgate capture off"],
    "capture status": ["sudo tollgate capture status"],
}


def _date(text: str) -> datetime:
    """A date or time; one with a UTC offset is converted, since the ledger keeps naive UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def _status(text: str) -> tuple[int | None, int | None]:
    """An HTTP status (200) or a class of them (4xx): (status, None) or (None, the hundreds digit)."""
    if text.isdigit() and 100 <= int(text) <= 599:
        return int(text), None
    if len(text) == 3 and text[0] in "12345" and text[1:].lower() == "xx":
        return None, int(text[0])
    raise argparse.ArgumentTypeError(f"not a status (e.g. 200 or 4xx): {text!r}")


def refusal(error: GatewayError) -> str:
    """What a service's refusal says, in the CLI's terms."""
    return FLAG_WORDING.get(error.code, error.message) + HINTS.get(error.code, "")


def add_key_scope(parser: argparse.ArgumentParser, update: bool = False) -> None:
    """`keys create|update`: which models and providers a key may use, and when it expires."""
    replaces = "; replaces the list" if update else ""
    models = parser.add_mutually_exclusive_group() if update else parser
    providers = parser.add_mutually_exclusive_group() if update else parser
    models.add_argument("--allow-model", action="append", metavar="PATTERN",
                        help=f"only this model, a trailing * matches a prefix; repeat for more{replaces}")
    providers.add_argument("--allow-provider", action="append", metavar="ID",
                           help=f"only this catalog provider id; repeat for more{replaces}")
    if update:
        models.add_argument("--clear-allowed-models", action="store_true", help="every model again")
        providers.add_argument("--clear-allowed-providers", action="store_true", help="every provider again")
    expiry = parser.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in", type=positive, metavar="SECONDS", help="expire this many seconds from now")
    expiry.add_argument("--expires-at", type=_date, metavar="TIME", help="expire at this ISO 8601 time (UTC unless "
                                                                         "it carries an offset)")
    if update:
        expiry.add_argument("--no-expiry", action="store_true", help="never expire")


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
    create.add_argument("--name", required=True, help="a label for the key, shown in requests and usage --by key")
    create.add_argument("--account", default=DEFAULT_ACCOUNT, help="account to create or use")
    kind = create.add_mutually_exclusive_group()
    kind.add_argument("--role", choices=ROLES, default="account",
                      help="admin: the REST API (coming) lets the key reach every account; account: its own")
    kind.add_argument("--spend-key", action="store_true",
                      help="a spend key: for gateway requests only, never the REST API (it has no role)")
    add_key_scope(create)
    add_limit_flags(create)
    create.set_defaults(fn=cmd_keys_create)
    update = keys.add_parser("update", parents=[common], help="change or clear a key's limits, scope, expiry, status")
    update.add_argument("id", help="the key's id (key_...), of any account, secret or spend")
    update.add_argument("--name", help="a new label")
    status = update.add_mutually_exclusive_group()
    status.add_argument("--pause", action="store_true", help="refuse the key's requests until --resume")
    status.add_argument("--resume", action="store_true", help="let a paused key work again")
    add_key_scope(update, update=True)
    add_limit_flags(update, update=True)
    update.set_defaults(fn=cmd_keys_update)
    show = keys.add_parser("show", parents=[common],
                           help="a key, its limits with this period's use and reset, and its use ever")
    show.add_argument("id", help="the key's id (key_...)")
    show.set_defaults(fn=cmd_keys_show)
    keys.add_parser("list", parents=[common], help="every key, revoked ones too").set_defaults(fn=cmd_keys_list)
    revoke = keys.add_parser("revoke", parents=[common], help="stop a key working, at once")
    revoke.add_argument("id", help="the key's id (key_...)")
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
    revoke_provider = keys.add_parser("revoke-provider-key", parents=[common], help="forget a registered provider key")
    revoke_provider.add_argument("id", help="the registration's id (see keys provider-keys)")
    revoke_provider.set_defaults(fn=cmd_keys_revoke_provider_key)

    wallet = sub.add_parser("wallet", parents=[common], help="show or top up an account's wallet")
    wallet.add_argument("action", nargs="?", choices=["topup"], help="topup: add AMOUNT; none: show the balance")
    wallet.add_argument("amount", nargs="?", help="USD amount for topup, e.g. 10 or 2.50")
    wallet.add_argument("--account", default=DEFAULT_ACCOUNT, help="the account (default: %(default)s)")
    wallet.add_argument("--note", help="a note kept with the top-up's ledger entry")
    wallet.set_defaults(fn=cmd_wallet)

    export = argparse.ArgumentParser(add_help=False)
    export.add_argument("--csv", action="store_true", help="CSV rows for export")
    requests = sub.add_parser("requests", parents=[common, export], help="recent requests, newest first")
    requests.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    requests.add_argument("--customer", help="only this customer's requests")
    requests.add_argument("--key", help="only this key's requests: its id or its name")
    requests.add_argument("--model", help="only this model; a trailing * matches a prefix (gpt-4o*)")
    requests.add_argument("--provider", help="only this provider id, e.g. openai")
    requests.add_argument("--status", type=_status, help="only this HTTP status (200) or class (4xx)")
    requests.add_argument("--since", type=_date, help="from this date or time (UTC, inclusive)")
    requests.add_argument("--until", type=_date, help="up to this date or time (UTC, exclusive)")
    requests.add_argument("--wide", action="store_true", help="every column, one line per request, however wide")
    requests.set_defaults(fn=cmd_requests)
    usage = sub.add_parser("usage", parents=[common, export], help="usage, cost, fees and margin roll-up")
    usage.add_argument("--by", choices=GROUPS, default="provider", help="one row per this (default: provider)")
    usage.add_argument("--account", help="only this account's requests (default: every account's)")
    usage.add_argument("--customer", help="only this customer's requests")
    usage.add_argument("--since", type=_date, help="from this date or time (UTC, inclusive)")
    usage.add_argument("--until", type=_date, help="up to this date or time (UTC, exclusive)")
    usage.set_defaults(fn=cmd_usage)

    account = argparse.ArgumentParser(add_help=False)
    account.add_argument("--account", default=DEFAULT_ACCOUNT, help="the merchant account")
    customers = sub.add_parser("customers", parents=[common], help="customers and their prepaid balances")
    csub = customers.add_subparsers(dest="action", required=True)
    ccreate = csub.add_parser("create", parents=[common, account], help="a new customer with its own balance")
    ccreate.add_argument("id", help="your id for the customer, e.g. cus_42")
    ccreate.add_argument("--balance", help="opening balance, USD")
    ccreate.add_argument("--autopay-threshold", help="top up when the balance falls below this, USD")
    ccreate.add_argument("--autopay-amount", help="the bundle each auto top-up buys, USD")
    ccreate.add_argument("--overdraft-limit", help="how far below zero charges may go, USD (default 0)")
    add_limit_flags(ccreate, customer=True)
    cupdate = csub.add_parser("update", parents=[common, account], help="change or clear a customer's settings")
    cupdate.add_argument("id", help="the customer's id")
    money = clearable(usd)
    for flag, text in (("--autopay-threshold", "top up when the balance falls below this, USD"),
                       ("--autopay-amount", "the bundle each auto top-up buys, USD"),
                       ("--overdraft-limit", "how far below zero charges may go, USD (none: 0)")):
        cupdate.add_argument(flag, type=money, metavar="USD|none", default=argparse.SUPPRESS, help=text)
    add_limit_flags(cupdate, customer=True, update=True)
    ctopup = csub.add_parser("topup", parents=[common, account], help="add to a customer's balance")
    ctopup.add_argument("id", help="the customer's id")
    ctopup.add_argument("amount", help="USD, e.g. 10 or 2.50")
    ctopup.add_argument("--note", help="a note kept with the top-up's ledger entry")
    cshow = csub.add_parser("show", parents=[common, account],
                            help="balance, open holds, this cycle's usage, and limits with this period's use")
    cshow.add_argument("id", help="the customer's id")
    csub.add_parser("list", parents=[common, account, export], help="every customer of the account")
    customers.set_defaults(fn=cmd_customers)

    meter_cmd = sub.add_parser("meters", parents=[common], help="price lists for customers")
    msub = meter_cmd.add_subparsers(dest="action", required=True)
    mcreate = msub.add_parser("create", parents=[common, account], help="a new price list")
    mcreate.add_argument("slug", help="the meter's name in tokens (--meter), lower case, e.g. chat")
    mcreate.add_argument("--rate-type", required=True, choices=meters.RATE_TYPES,
                         help="fixed: tier rates; percentage: a markup on the provider cost; hybrid: both")
    mcreate.add_argument("--unit", required=True, choices=meters.UNITS, help="what a tier rate is per")
    mcreate.add_argument("--tier", action="append", help="START:RATE, START in raw units; repeat for tiers")
    mcreate.add_argument("--percentage", help="markup in percent of the provider cost (percentage, hybrid)")
    mcreate.add_argument("--base-cost-payer", choices=meters.BASE_COST_PAYERS,
                         help="who pays the provider cost (default: merchant for fixed, else customer)")
    mcreate.add_argument("--token-basis", choices=meters.TOKEN_BASES, default="input+output",
                         help="which tokens a token unit counts (default: input+output)")
    msub.add_parser("list", parents=[common, account, export], help="the account's meters")
    mshow = msub.add_parser("show", parents=[common, account], help="one meter and its tiers")
    mshow.add_argument("slug", help="the meter's slug")
    meter_cmd.set_defaults(fn=cmd_meters)

    hook_cmd = sub.add_parser("webhooks", parents=[common], help="where the account's billing events are sent")
    hsub = hook_cmd.add_subparsers(dest="action", required=True)
    hcreate = hsub.add_parser("create", parents=[common, account],
                              help="a new webhook; its signing secret is shown once")
    hcreate.add_argument("--name", required=True, help="a label for the webhook")
    hcreate.add_argument("--url", required=True, help="the http(s) URL that receives every event, signed")
    hsub.add_parser("list", parents=[common, account, export], help="the account's webhooks")
    hshow = hsub.add_parser("show", parents=[common, account], help="one webhook (never its secret)")
    hshow.add_argument("id", help="the webhook's id")
    hupdate = hsub.add_parser("update", parents=[common, account], help="rename or move a webhook; its secret stays")
    hupdate.add_argument("id", help="the webhook's id")
    hupdate.add_argument("--name", help="a new label")
    hupdate.add_argument("--url", help="a new URL: events from then on go there")
    hdelete = hsub.add_parser("delete", parents=[common, account], help="stop sending events to a webhook")
    hdelete.add_argument("id", help="the webhook's id")
    hook_cmd.set_defaults(fn=cmd_webhooks)

    token = sub.add_parser("token", parents=[common], help="print a forward token")
    token.add_argument("--secret-key", required=True, help="the Tollgate secret key the token acts for")
    token.add_argument("--customer", help="bill this customer (needs --meter)")
    token.add_argument("--meter", help="price the requests with this meter")
    token.add_argument("--provider-key", help="bring your own provider key")
    token.add_argument("--disable-billing", action="store_true", help="track the customer's usage, charge no fee")
    token.add_argument("--signed", action="store_true", help="HMAC-signed; does not embed the secret key")
    token.add_argument("--expires-in", type=int, help="seconds (signed tokens)")
    token.add_argument("--allow-provider", action="append", help="restrict to a provider id (signed tokens)")
    token.add_argument("--allow-model", action="append", help="restrict to a model, trailing * allowed (signed)")
    token.add_argument("--spend-cap", help="USD the token may spend in all (signed tokens)")
    token.set_defaults(fn=cmd_token)

    events = sub.add_parser("events", parents=[common, export], help="billing events (top-ups, low balances)")
    events.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
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
    add_capture_parser(sub, common)
    add_examples(parser)
    return parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {name: child for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name, child in action.choices.items()}


def add_examples(parser: argparse.ArgumentParser, path: str = "") -> list[str]:
    """Give `parser` and every command under it an epilog of examples; returns this command's examples."""
    below = [line for name, child in subcommands(parser).items()
             for line in add_examples(child, f"{path} {name}".strip())]
    examples = EXAMPLES.get(path, below)
    if examples:
        parser.epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return examples


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
        open_ledger(getattr(args, "database_url", None) or settings.database_url)
    try:
        args.fn(args)
    except GatewayError as e:
        if args.json:  # the admin API's error shape, for scripts; the line on stderr for people
            print(json.dumps({"error": {"type": e.type, "code": e.code, "message": refusal(e)}}))
        raise SystemExit("tollgate: " + refusal(e)) from None


if __name__ == "__main__":
    sys.exit(main())
