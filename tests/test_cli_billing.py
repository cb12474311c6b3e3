"""The billing side of the operator's CLI, as scripts use it: meters, customers, tokens, usage filters,
CSV export and the audit, each against a throwaway SQLite ledger."""

from __future__ import annotations

import base64
import csv
import io
import json
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timedelta

import pytest

from addons.auth.signed_tokens import verify_signed_token
from addons.billing.charges import apply_charges
from addons.ledger.accounts import ensure_account
from addons.ledger.models import Account, Event, MeterRow, RequestRow, Wallet, database, open_database, utcnow
from addons.ledger.writer import HoldRecord, UsageRecord, write_batch
from tests.harness import clean_env, tollgate_cli

pytestmark = pytest.mark.e2e  # runs the `tollgate` CLI as a process

SIGNING_KEY = "cli-billing-test-signing-key-0123456789"
USAGE_COLUMNS = ["group", "requests", "input_tokens", "output_tokens", "provider_cost", "charged", "fee", "margin",
                 "unpriced_requests", "unmetered_requests"]


@pytest.fixture
def tollgate(tmp_path):
    path = tmp_path / "ledger.db"
    run = tollgate_cli(clean_env(TOLLGATE_DATABASE_URL=f"sqlite:///{path}", TOLLGATE_TOKEN_SIGNING_KEY=SIGNING_KEY))
    run.path = path
    return run


def refused(result) -> bool:
    return result.returncode != 0 and "Traceback" not in result.stderr and "Traceback" not in result.stdout


@contextmanager
def ledger(tollgate):
    """The CLI's SQLite ledger, opened in this process through peewee; the proxy is reset after."""
    db = open_database(f"sqlite:///{tollgate.path}")
    try:
        with db.connection_context():
            yield db
    finally:
        db.close()
        database.initialize(None)


# -- meters ------------------------------------------------------------------------------------------

METERS = {
    "per-req": (["--rate-type", "fixed", "--unit", "requests", "--tier", "0:0.01"],
                {"rate_type": "fixed", "unit": "requests", "percentage": None, "base_cost_payer": "merchant",
                 "token_basis": "input+output", "tiers": [{"start": 0, "rate": "0.01"}]}),
    "markup": (["--rate-type", "percentage", "--unit", "tokens_1m", "--percentage", "12.50"],
               {"rate_type": "percentage", "unit": "tokens_1m", "percentage": "12.50", "base_cost_payer": "customer",
                "token_basis": "input+output", "tiers": []}),
    "hybrid-out": (["--rate-type", "hybrid", "--unit", "tokens_1m", "--percentage", "5", "--tier", "0:3.00",
                    "--tier", "1000000:1.50", "--base-cost-payer", "merchant", "--token-basis", "output"],
                   {"rate_type": "hybrid", "unit": "tokens_1m", "percentage": "5", "base_cost_payer": "merchant",
                    "token_basis": "output", "tiers": [{"start": 0, "rate": "3.00"}, {"start": 1_000_000, "rate": "1.50"}]}),
    "fixed-cust": (["--rate-type", "fixed", "--unit", "characters_1m", "--tier", "0:0", "--tier", "500:2.5",
                    "--base-cost-payer", "customer"],
                   {"rate_type": "fixed", "unit": "characters_1m", "percentage": None, "base_cost_payer": "customer",
                    "token_basis": "input+output", "tiers": [{"start": 0, "rate": "0"}, {"start": 500, "rate": "2.5"}]}),
}


@pytest.mark.parametrize("slug", list(METERS))
def test_meters_create_and_show(tollgate, slug):
    args, expected = METERS[slug]
    created = tollgate.json("meters", "create", slug, *args)
    assert created == {"slug": slug, **expected}
    assert tollgate.json("meters", "show", slug) == created


def test_meters_list_is_sorted_by_slug(tollgate):
    for slug, (args, _) in METERS.items():
        tollgate("meters", "create", slug, *args)
    listed = tollgate.json("meters", "list")
    assert [m["slug"] for m in listed] == sorted(METERS)
    assert listed == [{"slug": slug, **METERS[slug][1]} for slug in sorted(METERS)]


@pytest.mark.parametrize(
    "args",
    [
        ["--rate-type", "fixed", "--unit", "requests", "--tier", "0:abc"],  # bad rate
        ["--rate-type", "fixed", "--unit", "requests", "--tier", "0.01"],  # not START:RATE
        ["--rate-type", "fixed", "--unit", "requests", "--tier", "5:0.01"],  # first tier must start at 0
        ["--rate-type", "fixed", "--unit", "requests", "--tier", "0:1", "--tier", "0:2"],  # starts must increase
        ["--rate-type", "fixed", "--unit", "requests"],  # fixed without a tier
        ["--rate-type", "fixed", "--unit", "requests", "--tier", "0:1", "--percentage", "10"],
        ["--rate-type", "percentage", "--unit", "tokens_1m", "--percentage", "10", "--tier", "0:1"],
        ["--rate-type", "percentage", "--unit", "tokens_1m"],  # no percentage
        ["--rate-type", "percentage", "--unit", "tokens_1m", "--percentage", "-5"],
        ["--rate-type", "hybrid", "--unit", "tokens_1m", "--percentage", "5"],  # hybrid without a tier
        ["--rate-type", "fixed", "--unit", "requests", "--tier", "0:1", "--token-basis", "output"],
        ["--rate-type", "flat", "--unit", "requests", "--tier", "0:1"],
        ["--rate-type", "fixed", "--unit", "seconds", "--tier", "0:1"],
    ],
)
def test_invalid_meters_are_refused(tollgate, args):
    assert refused(tollgate("meters", "create", "m1", *args, check=False))
    assert tollgate.json("meters", "list") == []


@pytest.mark.parametrize("slug", ["Upper", "with space", "x" * 65, ""])
def test_invalid_meter_slugs_are_refused(tollgate, slug):
    assert refused(tollgate("meters", "create", slug, "--rate-type", "fixed", "--unit", "requests", "--tier", "0:1",
                            check=False))
    assert tollgate.json("meters", "list") == []


def test_a_duplicate_meter_slug_is_refused_and_the_first_stands(tollgate):
    tollgate("meters", "create", "chat", "--rate-type", "fixed", "--unit", "requests", "--tier", "0:0.01")
    again = tollgate("meters", "create", "chat", "--rate-type", "percentage", "--unit", "tokens_1m",
                     "--percentage", "20", check=False)
    assert refused(again) and "already exists" in again.stderr
    assert [(m["slug"], m["rate_type"]) for m in tollgate.json("meters", "list")] == [("chat", "fixed")]


def test_showing_an_unknown_meter_is_refused(tollgate):
    assert refused(tollgate("meters", "show", "nope", check=False))


# -- customers ---------------------------------------------------------------------------------------

def this_cycle() -> str:
    return utcnow().replace(day=1, hour=0, minute=0, second=0, microsecond=0).isoformat() + "Z"


def test_customers_create_with_every_option(tollgate):
    created = tollgate.json("customers", "create", "acme-1", "--balance", "5", "--autopay-threshold", "1.5",
                            "--autopay-amount", "10", "--overdraft-limit", "0.25")
    assert created.pop("wallet").startswith("wal_")
    assert created == {
        "customer_id": "acme-1", "balance": "5.00", "holds": {"count": 0, "amount": "0.00"},
        "cycle_start": this_cycle(), "cycle_usage": {}, "cycle_fees": "0.00", "cycle_requests": 0,
        "autopay_threshold": "1.50", "autopay_amount": "10.00", "overdraft_limit": "0.25",
        "limits": {"spend": None, "rpm": None, "tpm": None},
    }
    assert tollgate.json("audit")["ok"] is True  # the opening balance is a ledger entry


@pytest.mark.parametrize(
    "args, balance",
    [
        ([], "0.00"),
        (["--balance", "0"], "0.00"),
        (["--balance", "0.000000001"], "0.000000001"),  # one nano-dollar
        (["--overdraft-limit", "0"], "0.00"),  # the documented default, spelled out
    ],
    ids=["no-balance", "zero-balance", "one-nano", "zero-overdraft"],
)
def test_customers_create_defaults(tollgate, args, balance):
    created = tollgate.json("customers", "create", "c1", *args)
    assert (created["balance"], created["autopay_threshold"], created["autopay_amount"],
            created["overdraft_limit"]) == (balance, None, None, "0.00")


def test_customers_topup_show_and_list(tollgate):
    tollgate("customers", "create", "bob", "--balance", "1")
    tollgate("customers", "create", "alice")
    assert tollgate.json("customers", "topup", "bob", "2.5")["balance"] == "3.50"  # 1 + 2.5
    assert tollgate.json("customers", "topup", "bob", "0.1", "--note", "goodwill")["balance"] == "3.60"
    shown = tollgate.json("customers", "show", "bob")
    assert (shown["customer_id"], shown["balance"]) == ("bob", "3.60")
    listed = tollgate.json("customers", "list")
    assert [(c["customer_id"], c["balance"]) for c in listed] == [("alice", "0.00"), ("bob", "3.60")]
    assert listed[1] == shown
    assert tollgate.json("customers", "list", "--account", "other") == []
    assert tollgate.json("audit")["ok"] is True


def test_customers_show_reports_open_holds_and_this_cycles_usage(tollgate):
    tollgate("init")
    wallet = tollgate.json("customers", "create", "acme", "--balance", "5")["wallet"]
    tollgate("meters", "create", "tok", "--rate-type", "fixed", "--unit", "tokens_1m", "--tier", "0:2.00")
    now = utcnow()
    with ledger(tollgate):
        account = Account.get(Account.name == "default")
        meter = MeterRow.get(MeterRow.slug == "tok")
        merchant = Wallet.get(Wallet.account == account, Wallet.customer_id == "")
        write_batch([
            HoldRecord("req_open", wallet, 250_000_000, now + timedelta(minutes=10)),  # $0.25, open
            HoldRecord("req_stale", wallet, 1_000_000_000, now - timedelta(seconds=1)),  # expired: not shown
            HoldRecord("req_done", wallet, 500_000_000, now + timedelta(minutes=10)),  # settled below
            UsageRecord(id="req_done", created_at=now, account=account.id, wallet_id=merchant.id, key=None,
                        provider="openai", endpoint="chat.completions", customer_id="acme", meter_slug="tok",
                        customer_wallet_id=wallet, meter_id=meter.id, units_micro=1_500 * 1_000_000,
                        bill_customer=True),
        ], apply_charges)
    shown = tollgate.json("customers", "show", "acme")
    assert shown["holds"] == {"count": 1, "amount": "0.25"}
    assert shown["cycle_usage"] == {"tok": "1500"}
    # 1500 tokens at $2 per million = $0.003
    assert (shown["cycle_fees"], shown["cycle_requests"], shown["balance"]) == ("0.003", 1, "4.997")
    assert tollgate.json("audit")["ok"] is True


def test_a_duplicate_customer_is_refused_and_the_first_stands(tollgate):
    tollgate("customers", "create", "acme", "--balance", "5")
    again = tollgate("customers", "create", "acme", "--balance", "100", check=False)
    assert refused(again) and "already exists" in again.stderr
    assert tollgate.json("customers", "show", "acme")["balance"] == "5.00"
    assert len(tollgate.json("customers", "list")) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["--autopay-threshold", "1"],  # a threshold without the amount to buy
        ["--autopay-amount", "10"],
        ["--balance", "-1"],
        ["--balance", "abc"],
        ["--balance", "0.0000000001"],  # finer than a nano-dollar
        ["--overdraft-limit", "-2"],
        ["--autopay-threshold", "0", "--autopay-amount", "10"],
    ],
)
def test_bad_customer_options_are_refused(tollgate, args):
    assert refused(tollgate("customers", "create", "acme", *args, check=False))
    assert tollgate.json("customers", "list") == []


@pytest.mark.parametrize("args", [["show", "ghost"], ["topup", "ghost", "5"]])
def test_an_unknown_customer_is_refused(tollgate, args):
    assert refused(tollgate("customers", *args, check=False))


@pytest.mark.parametrize("amount", ["0", "-1", "abc"])
def test_customers_topup_refuses_bad_amounts(tollgate, amount):
    tollgate("customers", "create", "acme", "--balance", "1")
    assert refused(tollgate("customers", "topup", "acme", amount, check=False))
    assert tollgate.json("customers", "show", "acme")["balance"] == "1.00"


# -- tokens ------------------------------------------------------------------------------------------

@pytest.fixture
def admin(tollgate) -> str:
    return tollgate.json("init")["secret_key"]


def decode(token: str) -> dict:
    return json.loads(base64.b64decode(token))


@pytest.mark.parametrize(
    "args, fields",
    [
        ([], {}),
        (["--customer", "acme", "--meter", "chat"], {"customer_id": "acme", "meter_slug": "chat"}),
        (["--customer", "acme", "--meter", "chat", "--provider-key", "sk-own", "--disable-billing"],
         {"customer_id": "acme", "meter_slug": "chat", "provider_key": "sk-own", "disable_billing": True}),
    ],
)
def test_plain_token_is_base64_of_the_lava_fields(tollgate, admin, args, fields):
    data = tollgate.json("token", "--secret-key", admin, *args)
    assert data["signed"] is False
    assert decode(data["token"]) == {"secret_key": admin, **fields}
    assert tollgate("token", "--secret-key", admin, *args).stdout.strip() == data["token"]  # plain output: the token


def test_signed_token_names_the_key_by_id_and_never_embeds_the_secret(tollgate, admin):
    key_id = tollgate.json("keys", "list")[0]["id"]
    data = tollgate.json("token", "--secret-key", admin, "--signed", "--customer", "acme", "--meter", "chat",
                         "--expires-in", "3600", "--spend-cap", "0.02", "--allow-provider", "openai",
                         "--allow-model", "gpt-4o*")
    token = data["token"]
    assert data["signed"] is True and token.startswith("tgt_")
    assert admin not in token and admin.removeprefix("tg_sk_") not in token
    assert admin not in base64.urlsafe_b64decode(token[4:].split(".")[0] + "==").decode()
    claims = verify_signed_token(token, SIGNING_KEY.encode())
    assert (claims.key_id, claims.customer_id, claims.meter_slug) == (key_id, "acme", "chat")
    assert claims.spend_cap_nanos == 20_000_000 and claims.expires_at - claims.issued_at == 3600
    assert (claims.allow_providers, claims.allow_models) == (("openai",), ("gpt-4o*",))


@pytest.mark.parametrize(
    "args",
    [
        ["--expires-in", "3600"],
        ["--expires-in", "0"],  # still an option only signed tokens take
        ["--spend-cap", "1"],
        ["--allow-provider", "openai"],
        ["--allow-model", "gpt-4o"],
    ],
    ids=["expires-in", "expires-in-0", "spend-cap", "allow-provider", "allow-model"],
)
def test_signed_only_options_without_signed_are_refused(tollgate, admin, args):
    result = tollgate("token", "--secret-key", admin, *args, check=False)
    assert refused(result) and result.stdout == ""


@pytest.mark.parametrize("args", [["--expires-in", "0"], ["--expires-in", "-5"], ["--spend-cap", "0"],
                                  ["--spend-cap", "abc"]])
def test_signed_token_refuses_bad_limits(tollgate, admin, args):
    result = tollgate("token", "--secret-key", admin, "--signed", *args, check=False)
    assert refused(result) and result.stdout == ""


@pytest.mark.parametrize("signed", [[], ["--signed"]], ids=["plain", "signed"])
@pytest.mark.parametrize("which", ["unknown", "revoked"])
def test_token_for_an_unknown_or_revoked_key_is_refused(tollgate, admin, signed, which):
    if which == "unknown":
        secret = admin + "x"
    else:
        key = tollgate.json("keys", "create", "--name", "old")
        tollgate("keys", "revoke", key["id"])
        secret = key["secret_key"]
    result = tollgate("token", "--secret-key", secret, *signed, check=False)
    assert refused(result) and result.stdout == "" and secret not in result.stderr


# -- usage and requests over known rows -----------------------------------------------------------------

ROWS = [  # id, created_at, provider, customer, provider cost (nanos), merchant debit, customer fee
    ("r1", datetime(2025, 1, 15, 10, 0, 0), "openai", "alice", 1_000_000, 1_000_000, 3_000_000),
    ("r2", datetime(2025, 1, 31, 23, 59, 59), "anthropic", "bob", 2_000_000, 2_000_000, 0),
    ("r3", datetime(2025, 2, 1, 0, 0, 0), "openai", "alice", 4_000_000, 4_000_000, 5_000_000),
    ("r4", datetime(2025, 2, 10, 12, 0, 0), "openai", None, 8_000_000, 8_000_000, 0),
]


@pytest.fixture
def requests_ledger(tollgate):
    tollgate("init")
    with ledger(tollgate):
        account = Account.get(Account.name == "default")
        for rid, at, provider, customer, cost, charged, fee in ROWS:
            RequestRow.create(id=rid, created_at=at, account=account, provider=provider, endpoint="chat.completions",
                              customer_id=customer, input_tokens=10, output_tokens=5, provider_cost_nanos=cost,
                              charged_nanos=charged, fee_nanos=fee, usage_source="reported")
    return tollgate


@pytest.mark.parametrize(
    "args, groups, cost, margin",
    [
        # cost: r1 0.001, r2 0.002, r3 0.004, r4 0.008; fees: r1 0.003, r3 0.005; margin = fees - debits of the
        # requests billed to a customer (r1, r2, r3: rows older than bill_customer that name a customer)
        ([], {"openai": 3, "anthropic": 1}, "0.015", "0.001"),  # 0.008 - 0.007; r4 is the merchant's own
        (["--since", "2025-02-01"], {"openai": 2}, "0.012", "0.001"),  # r3 (at exactly 02-01 00:00) + r4
        (["--until", "2025-02-01"], {"openai": 1, "anthropic": 1}, "0.003", "0.00"),  # r1 + r2: until is exclusive
        (["--since", "2025-01-31T23:59:59", "--until", "2025-02-10"], {"openai": 1, "anthropic": 1},
         "0.006", "-0.001"),  # r2 + r3; r4 is later on the 10th
        (["--since", "2025-01-16", "--until", "2025-01-31"], {}, "0.00", "0.00"),
        (["--since", "2025-02-01T00:00:00Z"], {"openai": 2}, "0.012", "0.001"),  # the same instant, UTC written out
        (["--since", "2025-02-01T01:00:00+01:00"], {"openai": 2}, "0.012", "0.001"),  # 00:00 UTC, written in UTC+1
        (["--customer", "alice"], {"openai": 2}, "0.005", "0.003"),  # r1 + r3: 0.008 - 0.005
        (["--customer", "alice", "--since", "2025-02-01"], {"openai": 1}, "0.004", "0.001"),  # r3: 0.005 - 0.004
    ],
    ids=["all", "since", "until", "since-until", "empty-range", "since-utc-z", "since-utc-offset", "customer",
         "customer-since"],
)
def test_usage_filters_by_time_and_customer(requests_ledger, args, groups, cost, margin):
    usage = requests_ledger.json("usage", "--by", "provider", *args)
    assert {row["group"]: row["requests"] for row in usage["rows"]} == groups
    assert usage["totals"]["requests"] == sum(groups.values())
    assert (usage["totals"]["provider_cost"], usage["totals"]["margin"]) == (cost, margin)


def test_usage_of_one_account(requests_ledger):
    with ledger(requests_ledger):
        other, _ = ensure_account("acme")
        RequestRow.create(id="r5", created_at=datetime(2025, 2, 11), account=other, provider="mistral",
                          endpoint="chat.completions", input_tokens=1, output_tokens=1, provider_cost_nanos=16_000_000,
                          charged_nanos=16_000_000, usage_source="reported")
    def groups(*args):
        return {r["group"]: r["requests"] for r in requests_ledger.json("usage", *args)["rows"]}

    assert groups() == {"openai": 3, "anthropic": 1, "mistral": 1}
    assert groups("--account", "acme") == {"mistral": 1}
    assert groups("--account", "default") == {"openai": 3, "anthropic": 1}
    unknown = requests_ledger("usage", "--account", "nobody", check=False)
    assert refused(unknown) and "nobody" in unknown.stderr


def test_usage_margin_by_customer(requests_ledger):
    usage = requests_ledger.json("usage", "--by", "customer")
    rows = {r["group"]: (r["requests"], r["charged"], r["fee"], r["margin"]) for r in usage["rows"]}
    assert rows == {
        "alice": (2, "0.005", "0.008", "0.003"),  # fees 0.003 + 0.005, debits 0.001 + 0.004
        "bob": (1, "0.002", "0.00", "-0.002"),
        None: (1, "0.008", "0.00", "0.00"),  # the merchant's own request: no fee, no margin
    }
    # totals: fees 0.008 - debits of the billed requests 0.007
    assert (usage["totals"]["fee"], usage["totals"]["charged"], usage["totals"]["margin"]) == ("0.008", "0.015", "0.001")


@pytest.mark.parametrize("date", ["yesterday", "2025-13-01", "01/02/2025"])
def test_usage_refuses_a_bad_date(requests_ledger, date):
    assert refused(requests_ledger("usage", "--since", date, check=False))


@pytest.mark.parametrize("customer, ids", [("alice", ["r3", "r1"]), ("bob", ["r2"]), ("nobody", [])])
def test_requests_filters_by_customer(requests_ledger, customer, ids):
    rows = requests_ledger.json("requests", "--customer", customer)
    assert [r["id"] for r in rows] == ids  # newest first
    assert all(r["customer_id"] == customer for r in rows)


def test_requests_shows_money_as_decimal_strings(requests_ledger):
    row = requests_ledger.json("requests", "--customer", "alice", "--limit", "1")[0]
    assert (row["id"], row["provider_cost"], row["charged"], row["fee"], row["fee_uncollected"]) == (
        "r3", "0.004", "0.004", "0.005", "0.00")


# -- CSV ------------------------------------------------------------------------------------------------

def read_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


@pytest.mark.parametrize(
    "args, body",
    [
        ([], [["openai", "3", "30", "15", "0.013", "0.013", "0.008", "0.003", "0", "0"],  # r1 + r3 + r4
              ["anthropic", "1", "10", "5", "0.002", "0.002", "0.00", "-0.002", "0", "0"]]),
        (["--since", "2025-02-01"], [["openai", "2", "20", "10", "0.012", "0.012", "0.005", "0.001", "0", "0"]]),
        (["--since", "2030-01-01"], []),  # nothing in range: still the header
    ],
    ids=["all", "since", "no-rows"],
)
def test_usage_csv_has_a_header_and_one_row_per_group(requests_ledger, args, body):
    out = requests_ledger("usage", "--by", "provider", "--csv", *args).stdout
    assert read_csv(out) == [USAGE_COLUMNS, *body]


def test_requests_csv_has_a_header_and_one_row_per_request(requests_ledger):
    rows = read_csv(requests_ledger("requests", "--csv", "--customer", "alice").stdout)
    header, body = rows[0], rows[1:]
    assert header[:2] == ["id", "created_at"]
    assert {"customer_id", "provider_cost", "charged", "fee", "usage_source"} <= set(header)
    assert [dict(zip(header, r))["id"] for r in body] == ["r3", "r1"]
    assert [dict(zip(header, r))["fee"] for r in body] == ["0.005", "0.003"]


def test_meters_list_csv_keeps_tiers_as_json(tollgate):
    tollgate("meters", "create", "tok", "--rate-type", "fixed", "--unit", "tokens_1m", "--tier", "0:1.00",
             "--tier", "1000:0.50")
    rows = read_csv(tollgate("meters", "list", "--csv").stdout)
    assert rows[0] == ["slug", "rate_type", "unit", "percentage", "base_cost_payer", "token_basis", "tiers"]
    assert len(rows) == 2 and json.loads(rows[1][6]) == [{"start": 0, "rate": "1.00"}, {"start": 1000, "rate": "0.50"}]


# -- events and audit -------------------------------------------------------------------------------------

def test_events_lists_billing_events_newest_first(tollgate):
    tollgate("init")
    assert tollgate.json("events") == []
    wallet = tollgate.json("customers", "create", "acme", "--balance", "1")["wallet"]
    with ledger(tollgate):
        Event.create(name="balance.low", wallet=wallet, data=json.dumps({"balance": "0.10"}))
        Event.create(name="topup.requested", wallet=wallet, data=json.dumps({"amount": "10.00"}))
    events = tollgate.json("events")
    assert [(e["name"], e["wallet"], e["data"]) for e in events] == [
        ("topup.requested", wallet, {"amount": "10.00"}), ("balance.low", wallet, {"balance": "0.10"})]
    assert [e["name"] for e in tollgate.json("events", "--limit", "1")] == ["topup.requested"]


def test_audit_fails_after_a_wallet_balance_is_tampered_with(tollgate):
    tollgate("init")
    tollgate("wallet", "topup", "3")
    wallet = tollgate.json("customers", "create", "acme", "--balance", "2")["wallet"]
    assert tollgate.json("audit") == {"ok": True, "mismatches": []}
    with sqlite3.connect(tollgate.path) as db:
        db.execute("UPDATE wallet SET balance_nanos = balance_nanos + 500000000 WHERE id = ?", (wallet,))
    db.close()
    result = tollgate("audit", "--json", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert json.loads(result.stdout) == {
        "ok": False, "mismatches": [{"wallet": wallet, "balance": "2.50", "entries_sum": "2.00"}]}
    plain = tollgate("audit", check=False)
    assert plain.returncode != 0 and "MISMATCH" in plain.stdout and wallet in plain.stdout
