"""The human side of `tollgate` (issue 12), in-process on a fresh SQLite ledger: the compact request view fits 100
columns, its filters, --wide, usage by key and day, the margin rule, and no Python reprs or nano-units; and every
option of the parser has a help line and every command an example."""

from __future__ import annotations

import argparse
import json
from datetime import datetime

import pytest
from rich.console import Console

from addons.cli import output
from addons.cli.main import build_parser, main, subcommands
from addons.ledger import accounts
from addons.ledger.models import ApiKey, Event, RequestRow, database, open_database
from addons.services import bootstrap, requests, usage

MODEL = "gpt-4o-mini-2024-07-18-with-a-long-suffix"


@pytest.fixture
def ledger(tmp_path, monkeypatch):
    monkeypatch.setenv("TOLLGATE_DATABASE_URL", f"sqlite:///{tmp_path}/ledger.db")
    monkeypatch.setenv("TOLLGATE_TOKEN_SIGNING_KEY", "k" * 40)
    db = open_database(f"sqlite:///{tmp_path}/ledger.db")
    account = accounts.find_account(bootstrap.init_ledger().account).account_id
    ci = ApiKey.get(ApiKey.name == "admin")
    rows = [  # id, at, provider, model, status, customer, bill_customer, cost, fee, extra columns
        ("req_aaaa1111", datetime(2025, 1, 15, 10), "openai", MODEL, 200, "alice", True, 1000, 3000, {"streamed": True}),
        ("req_bbbb2222", datetime(2025, 1, 16, 11), "anthropic", "claude-3", 429, None, None, 0, 0, {}),
        ("req_cccc3333", datetime(2025, 2, 1), "openai", "gpt-4o", 200, "bob", False, 4000, 0,
         {"usage_source": "estimated"}),
        ("req_dddd4444", datetime(2025, 2, 2), "openai", "o3", 200, None, None, 8000, 0, {"price_source": "unpriced"}),
    ]
    for rid, at, provider, model, status, customer, billed, cost, fee, extra in rows:
        RequestRow.create(id=rid, created_at=at, account=account, key=ci, provider=provider, model=model,
                          endpoint="/v1/chat/completions", status=status, customer_id=customer, bill_customer=billed,
                          input_tokens=1234, output_tokens=56, provider_cost_nanos=cost, charged_nanos=cost,
                          fee_nanos=fee, latency_ms=812, **{"usage_source": "reported", **extra})
    yield db
    db.close()
    database.initialize(None)


@pytest.fixture
def wide_console(monkeypatch):
    """The CLI's console as a 100-column terminal."""
    monkeypatch.setattr(output, "console", Console(width=100, soft_wrap=True))


def run(capsys, *argv: str) -> str:
    main(list(argv))
    return capsys.readouterr().out


def test_requests_compact_view_fits_100_columns_one_line_a_request(ledger, capsys, wide_console):
    out = run(capsys, "requests")
    lines = out.splitlines()
    assert max(map(len, lines)) <= 100
    for short in ("aaaa1111", "bbbb2222", "cccc3333", "dddd4444"):
        assert sum(short in line for line in lines) == 1
    line = next(line for line in lines if "aaaa1111" in line)
    assert "admin" in line and "1234/56" in line and "812" in line and "01-15 10:00:00" in line
    assert "S" in line.split()[-1]  # streamed
    assert next(line for line in lines if "dddd4444" in line).split()[-1] == "U"
    assert next(line for line in lines if "cccc3333" in line).split()[-1] == "E"
    assert "flags: S streamed" in out
    assert "_nanos" not in out and "None" not in out


def test_requests_wide_has_every_column(ledger, capsys):
    header = next(line for line in run(capsys, "requests", "--wide").splitlines() if "┃" in line and "id" in line)
    cells = [c.strip() for c in header.split("┃")[1:-1]]
    assert cells[:3] == ["id", "created_at", "provider"]
    assert set(requests.FIELDS) - {"provider_cost_nanos", "charged_nanos", "fee_nanos", "fee_uncollected_nanos",
                                   "token_spend_nanos"} <= set(cells)
    assert {"key_name", "flags", "provider_cost"} <= set(cells)


@pytest.mark.parametrize(
    "args, ids",
    [
        ([], ["req_dddd4444", "req_cccc3333", "req_bbbb2222", "req_aaaa1111"]),
        (["--key", "admin"], ["req_dddd4444", "req_cccc3333", "req_bbbb2222", "req_aaaa1111"]),
        (["--key", "nobody"], []),
        (["--model", "gpt-4o*"], ["req_cccc3333", "req_aaaa1111"]),
        (["--model", "gpt-4o"], ["req_cccc3333"]),
        (["--provider", "anthropic"], ["req_bbbb2222"]),
        (["--status", "429"], ["req_bbbb2222"]),
        (["--status", "2xx"], ["req_dddd4444", "req_cccc3333", "req_aaaa1111"]),
        (["--since", "2025-02-01"], ["req_dddd4444", "req_cccc3333"]),
        (["--until", "2025-02-01"], ["req_bbbb2222", "req_aaaa1111"]),
        (["--since", "2025-01-16", "--until", "2025-02-01T00:00:01Z", "--provider", "openai"], ["req_cccc3333"]),
    ],
)
def test_requests_filters(ledger, capsys, args, ids):
    rows = json.loads(run(capsys, "requests", "--json", *args))
    assert [r["id"] for r in rows] == ids


def test_requests_json_adds_key_name_and_flags(ledger, capsys):
    rows = {r["id"]: r for r in json.loads(run(capsys, "requests", "--json"))}
    assert rows["req_aaaa1111"]["key_name"] == "admin" and rows["req_aaaa1111"]["flags"] == ["streamed"]
    assert rows["req_dddd4444"]["flags"] == ["unpriced"] and rows["req_dddd4444"]["provider_cost"] is None
    assert rows["req_aaaa1111"]["provider_cost"] == "0.000001"


def test_requests_key_filter_takes_an_id_too(ledger):
    key_id = ApiKey.get(ApiKey.name == "admin").id
    assert len(requests.recent(key=key_id)) == 4 and requests.recent(key="key_nope") == []


@pytest.mark.parametrize("status", ["abc", "6xx", "99", "4x"])
def test_requests_refuses_a_bad_status(ledger, status):
    with pytest.raises(SystemExit):
        main(["requests", "--status", status])


def test_usage_by_key_shows_the_key_name(ledger, capsys, wide_console):
    out = run(capsys, "usage", "--by", "key")
    assert out.splitlines()[2].split("┃")[1].strip() == "key"
    assert [line.split("│")[1].strip() for line in out.splitlines() if "admin" in line] == ["admin"]


def test_usage_by_day_shows_dates(ledger, capsys, wide_console):
    report = usage.usage("day")
    assert sorted(r.group for r in report.rows) == ["2025-01-15", "2025-01-16", "2025-02-01", "2025-02-02"]
    assert "2025-01-15" in run(capsys, "usage", "--by", "day")


def test_margin_is_fees_less_the_cost_of_billed_requests_only(ledger):
    # billed: alice (fee 3000, cost 1000); bob's request was not billed (bill_customer False), and the
    # merchant's own requests (no customer) are no negative margin
    totals = usage.usage("provider").totals
    assert (totals.fee_nanos, totals.charged_nanos, totals.margin_nanos) == (3000, 13000, 2000)
    by_customer = {r.group: r.margin_nanos for r in usage.usage("customer").rows}
    assert by_customer == {"alice": 2000, "bob": 0, None: 0}


def test_margin_counts_an_older_row_with_a_customer_as_billed(ledger):
    RequestRow.update(bill_customer=None).where(RequestRow.id == "req_aaaa1111").execute()
    assert usage.usage("provider").totals.margin_nanos == 2000


def test_meters_show_and_create_are_readable(ledger, capsys):
    created = run(capsys, "meters", "create", "chat", "--rate-type", "hybrid", "--unit", "tokens_1m",
                  "--percentage", "5", "--tier", "0:3.00", "--tier", "1000000:1.50")
    shown = run(capsys, "meters", "show", "chat")
    for out in (created, shown):
        assert "Tier(" not in out and "[" not in out and "{" not in out
        assert "from 0: 3.00 USD per tokens_1m" in out and "from 1000000: 1.50 USD per tokens_1m" in out


def test_customers_show_is_readable(ledger, capsys):
    run(capsys, "customers", "create", "acme", "--balance", "2.5", "--autopay-threshold", "1",
        "--autopay-amount", "10")
    out = run(capsys, "customers", "show", "acme")
    assert "{" not in out and "Decimal(" not in out and "datetime" not in out and "_nanos" not in out
    assert "balance: 2.50" in out and "holds:\n  count: 0\n  amount: 0.00" in out
    assert "autopay_amount: 10.00" in out and "cycle_usage: none" in out and "UTC" in out


def test_events_show_money_in_decimals(ledger, capsys, wide_console):
    Event.create(name="topup.requested", wallet=None, data=json.dumps({"topup_id": "top_1", "amount_nanos": 10**10}))
    out = run(capsys, "events")
    assert "amount=10.00" in out and "10000000000" not in out and "_nanos" not in out
    assert json.loads(run(capsys, "events", "--json"))[0]["data"] == {"topup_id": "top_1", "amount_nanos": 10**10}


def _commands(parser: argparse.ArgumentParser, path: str = "tollgate"):
    yield path, parser
    for name, child in subcommands(parser).items():
        yield from _commands(child, f"{path} {name}")


@pytest.mark.parametrize("path, parser", list(_commands(build_parser())), ids=lambda v: v if isinstance(v, str) else "")
def test_every_option_has_help_and_every_command_an_example(path, parser):
    assert parser.epilog and "examples:" in parser.epilog and "tollgate " in parser.epilog, f"{path}: no example"
    lacking = [a.option_strings or a.dest for a in parser._actions
               if not isinstance(a, argparse._SubParsersAction) and a.help in (None, "")]
    assert not lacking, f"{path}: options without help: {lacking}"
