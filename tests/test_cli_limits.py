"""Limits on keys and customers through `tollgate` (issue 13): set on create, changed and cleared on update, each
--period read against the limit before it, and shown with the current period's use, remaining and reset."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from addons.ledger.models import Account, RequestRow
from tests.harness import clean_env, tollgate_cli
from tests.test_cli_billing import ledger, refused

pytestmark = pytest.mark.e2e  # runs the `tollgate` CLI as a process

EVERY_LIMIT = ["--spend-limit", "10", "--period", "month", "--request-limit", "50", "--period", "day",
               "--rpm", "60", "--burst", "5", "--tpm", "1000"]


@pytest.fixture
def tollgate(tmp_path):
    path = tmp_path / "ledger.db"
    run = tollgate_cli(clean_env(TOLLGATE_DATABASE_URL=f"sqlite:///{path}", COLUMNS="200"))  # a table row a line
    run.path = path
    run("init")
    return run


def configured(limits: dict) -> dict:
    """The limits without their period's use: what was set."""
    return {name: {k: p[k] for k in ("limit", "period")} if isinstance(p, dict) else p for name, p in limits.items()}


def new_key(tollgate, *args: str) -> str:
    return tollgate.json("keys", "create", "--name", "app", *args)["id"]


@pytest.mark.parametrize("kind", ["secret", "spend"])
def test_create_with_every_limit_reads_back(tollgate, kind):
    expires_at = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    created = tollgate.json("keys", "create", "--name", "app", *EVERY_LIMIT, "--allow-model", "gpt-4o*", "--allow-model",
                            "o3", "--allow-provider", "openai", "--expires-at", expires_at.isoformat(),
                            *(["--spend-key"] if kind == "spend" else []))
    key = created["id"]
    shown = tollgate.json("keys", "show", key)
    assert created["secret_key"].startswith("tg_sk_") and created["limits"] == shown["limits"]  # the periods' use too
    assert created["limits"]["requests"]["used"] == 0 and created["limits"]["requests"]["remaining"] == 50
    assert configured(shown["limits"]) == {"spend": {"limit": "10.00", "period": "month"},
                                           "requests": {"limit": 50, "period": "day"},
                                           "rpm": 60, "burst": 5, "tpm": 1000}
    assert (shown["kind"], shown["allowed_models"], shown["allowed_providers"]) == (kind, ["gpt-4o*", "o3"], ["openai"])
    assert shown["expires_at"] == expires_at.replace(tzinfo=None).isoformat() + "Z"
    listed = {k["id"]: k for k in tollgate.json("keys", "list")}
    assert listed[key]["limits"] == configured(shown["limits"])
    assert "10.00 USD/month, 50 requests/day, 60 rpm (burst 5), 1000 tpm" in tollgate("keys", "list").stdout


def test_create_shows_the_limits_set_and_refuses_an_expiry_already_past(tollgate):
    text = tollgate("keys", "create", "--name", "app", "--spend-limit", "10", "--period", "month", "--rpm", "60").stdout
    assert "Secret (shown once)" in text and "10.00 USD" in text and "requests a minute" in text
    spend_row = next(line for line in text.splitlines() if "│ spend" in line)
    assert "0.00" in spend_row and "10.00 " in spend_row.split("│")[5]  # used, remaining: as `keys show` has them
    past = tollgate("keys", "create", "--name", "late", "--expires-at", "2020-01-01T00:00:00Z", check=False)
    assert past.returncode != 0 and "has already passed" in past.stderr
    assert [k["name"] for k in tollgate.json("keys", "list")].count("late") == 0


@pytest.mark.parametrize("args, spend, requests", [
    (["--spend-limit", "10", "--period", "month", "--request-limit", "50", "--period", "day"], "month", "day"),
    (["--request-limit", "50", "--period", "day", "--spend-limit", "10", "--period", "month"], "month", "day"),
    (["--spend-limit", "10", "--rpm", "5", "--period", "week", "--request-limit", "3", "--period", "total"],
     "week", "total"),
    (["--spend-limit", "10", "--request-limit", "50", "--period", "week"], "week", "week"),  # one: every limit
    (["--period", "total", "--spend-limit", "10"], "total", None),
])
def test_each_period_belongs_to_its_limit(tollgate, args, spend, requests):
    limits = tollgate.json("keys", "show", new_key(tollgate, *args))["limits"]
    assert [(p or {}).get("period") for p in (limits["spend"], limits["requests"])] == [spend, requests]


@pytest.mark.parametrize("start, args, expected", [
    (EVERY_LIMIT, ["--spend-limit", "20"], {"spend": {"limit": "20.00", "period": "month"}}),  # keeps its period
    (EVERY_LIMIT, ["--spend-limit", "0.5", "--period", "total"], {"spend": {"limit": "0.50", "period": "total"}}),
    (EVERY_LIMIT, ["--spend-limit", "none"], {"spend": None}),
    (EVERY_LIMIT, ["--request-limit", "7", "--period", "week"], {"requests": {"limit": 7, "period": "week"}}),
    (EVERY_LIMIT, ["--request-limit", "none"], {"requests": None}),
    (EVERY_LIMIT, ["--rpm", "none"], {"rpm": None, "burst": None}),  # a burst is its rpm's
    (EVERY_LIMIT, ["--burst", "none", "--tpm", "none"], {"burst": None, "tpm": None}),
    (EVERY_LIMIT, ["--rpm", "120", "--burst", "2"], {"rpm": 120, "burst": 2}),
    (["--spend-limit", "3", "--period", "day"], ["--period", "week"], {"spend": {"limit": "3.00", "period": "week"}}),
    ([], ["--request-limit", "9", "--period", "month", "--tpm", "5"],
     {"requests": {"limit": 9, "period": "month"}, "tpm": 5}),
])
def test_update_changes_and_clears_each_limit(tollgate, start, args, expected):
    key = new_key(tollgate, *start)
    before = configured(tollgate.json("keys", "show", key)["limits"])
    updated = tollgate.json("keys", "update", key, *args)
    assert configured(updated["limits"]) == {**before, **expected}
    assert tollgate.json("keys", "show", key)["limits"] == updated["limits"]


def test_update_changes_and_clears_the_rest(tollgate):
    key = new_key(tollgate, "--allow-model", "gpt-4o", "--expires-in", "60", "--spend-key")
    shown = tollgate.json("keys", "update", key, "--name", "renamed", "--pause", "--allow-model", "o3",
                          "--allow-provider", "anthropic", "--no-expiry")
    assert [shown[k] for k in ("name", "status", "allowed_models", "allowed_providers", "expires_at")] == [
        "renamed", "paused", ["o3"], ["anthropic"], None]
    shown = tollgate.json("keys", "update", key, "--resume", "--clear-allowed-models", "--clear-allowed-providers",
                          "--expires-in", "3600")
    assert [shown[k] for k in ("status", "allowed_models", "allowed_providers")] == ["active", None, None]
    assert shown["expires_at"] > datetime.now(UTC).replace(tzinfo=None).isoformat()


REFUSED = [  # command, the JSON error's code, or None where argparse refuses it; what stderr says
    (["create", "--spend-limit", "10"], "limit_period_missing", "a spend limit needs its period"),
    (["create", "--period", "day"], "limit_period_unclear", "--period goes with"),
    (["create", "--spend-limit", "1", "--period", "day", "--period", "week"], "limit_period_unclear",
     "--period week follows no"),
    (["create", "--burst", "5"], "limit_burst_alone", "give --rpm too"),
    (["create", "--spend-limit", "-1", "--period", "day"], None, "positive"),
    (["create", "--spend-limit", "0.0000000001", "--period", "day"], None, "more than 9 decimal places"),
    (["create", "--rpm", "1.5"], None, "not a positive whole number"),
    (["create", "--tpm", "none"], None, "not a positive whole number"),  # nothing to clear on create
    (["create", "--spend-limit", "1", "--period", "fortnight"], None, "invalid choice: 'fortnight'"),
    (["create", "--spend-key", "--role", "admin"], None, "not allowed with"),
    (["update", "KEY", "--period", "week"], "limit_period_unclear", "a spend and a request limit"),
    (["update", "KEY", "--rpm", "0"], None, "not a positive whole number"),
    (["update", "KEY"], "nothing_to_change", "at least one change"),
    (["update", "KEY", "--pause", "--resume"], None, "not allowed with"),
    (["update", "key_nope", "--rpm", "5"], "key_not_found", "no Tollgate key"),
    (["show", "key_nope"], "key_not_found", "no Tollgate key"),
]


@pytest.mark.parametrize("args, code, says", REFUSED, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_refusals_say_why_and_change_nothing(tollgate, args, code, says):
    key = new_key(tollgate, *EVERY_LIMIT)
    before = tollgate.json("keys", "list")
    name = ["--name", "x"] if args[0] == "create" else []
    result = tollgate("keys", *[key if a == "KEY" else a for a in args], *name, "--json", check=False)
    assert refused(result) and says in result.stderr
    if code:
        assert json.loads(result.stdout)["error"]["code"] == code
    assert tollgate.json("keys", "list") == before


def test_a_revoked_key_is_not_updated(tollgate):
    key = new_key(tollgate)
    tollgate("keys", "revoke", key)
    result = tollgate("keys", "update", key, "--rpm", "5", "--json", check=False)
    assert refused(result) and json.loads(result.stdout)["error"]["code"] == "key_revoked"


def add_requests(tollgate, rows) -> None:
    """(id, created_at, key, customer, charged nanos, fee nanos) as ledger rows, as the gateway writes them."""
    with ledger(tollgate):
        account = Account.get(Account.name == "default")
        for rid, at, key, customer, charged, fee in rows:
            RequestRow.create(id=rid, created_at=at, account=account, key=key, customer_id=customer, provider="openai",
                              endpoint="chat.completions", charged_nanos=charged, fee_nanos=fee,
                              usage_source="reported")


def next_month(now: datetime) -> str:
    return (now.replace(day=1) + timedelta(days=32)).replace(day=1).strftime("%Y-%m-%dT00:00:00Z")


def test_show_reports_what_this_period_used(tollgate):
    key = new_key(tollgate, *EVERY_LIMIT)
    now = datetime.now(UTC).replace(tzinfo=None)
    add_requests(tollgate, [("r1", now, key, None, 420_000_000, 0),  # 0.42 this month, today
                            ("r2", now - timedelta(days=40), key, None, 10**9, 0)])  # before this month
    shown = tollgate.json("keys", "show", key)
    assert shown["limits"]["spend"] == {"limit": "10.00", "period": "month", "used": "0.42", "remaining": "9.58",
                                        "period_start": now.strftime("%Y-%m-01T00:00:00Z"),
                                        "resets_at": next_month(now)}
    assert [shown["limits"]["requests"][k] for k in ("used", "remaining", "period_start")] == [
        1, 49, now.strftime("%Y-%m-%dT00:00:00Z")]
    assert [shown["usage"][k] for k in ("requests", "spend")] == [2, "1.42"]
    text = tollgate("keys", "show", key).stdout
    assert all(part in text for part in ("10.00 USD", "9.58", "requests a minute", "spend (ever): 1.42 USD"))
    assert "_nanos" not in text and "{" not in text


def test_customers_limits_create_update_and_show(tollgate):
    created = tollgate.json("customers", "create", "cus_1", "--spend-limit", "5", "--period", "week", "--rpm", "10")
    assert configured(created["limits"]) == {"spend": {"limit": "5.00", "period": "week"}, "rpm": 10, "tpm": None}
    updated = tollgate.json("customers", "update", "cus_1", "--period", "month", "--rpm", "none", "--tpm", "100",
                            "--autopay-threshold", "1", "--autopay-amount", "5")
    assert configured(updated["limits"]) == {"spend": {"limit": "5.00", "period": "month"}, "rpm": None, "tpm": 100}
    assert (updated["autopay_threshold"], updated["autopay_amount"]) == ("1.00", "5.00")
    now = datetime.now(UTC).replace(tzinfo=None)
    add_requests(tollgate, [("r1", now, None, "cus_1", 0, 1_250_000_000)])  # a fee of 1.25
    shown = tollgate.json("customers", "show", "cus_1")
    assert [shown["limits"]["spend"][k] for k in ("used", "remaining", "resets_at")] == ["1.25", "3.75",
                                                                                        next_month(now)]
    assert tollgate.json("customers", "list")[0]["limits"] == shown["limits"]
    assert "5.00 USD" in tollgate("customers", "show", "cus_1").stdout
    cleared = tollgate.json("customers", "update", "cus_1", "--spend-limit", "none", "--tpm", "none",
                            "--autopay-threshold", "none", "--autopay-amount", "none")
    assert cleared["limits"] == {"spend": None, "rpm": None, "tpm": None} and cleared["autopay_amount"] is None


@pytest.mark.parametrize("args, says", [
    (["create", "cus_2", "--spend-limit", "5"], "a spend limit needs its period"),
    (["create", "cus_2", "--request-limit", "5", "--period", "day"], "unrecognized arguments"),  # keys only
    (["update", "cus_1", "--period", "day"], "has no limit with a period"),
    (["update", "cus_1", "--spend-limit", "-2"], "positive"),
    (["update", "cus_nope", "--rpm", "5"], "cus_nope"),
])
def test_customer_refusals(tollgate, args, says):
    tollgate("customers", "create", "cus_1")
    result = tollgate("customers", *args, check=False)
    assert refused(result) and says in result.stderr
    assert [c["customer_id"] for c in tollgate.json("customers", "list")] == ["cus_1"]
    assert tollgate.json("customers", "show", "cus_1")["limits"] == {"spend": None, "rpm": None, "tpm": None}
