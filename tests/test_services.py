"""The service layer (addons/services/) on a fresh SQLite ledger: typed results, and the documented refusals."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from addons.auth.credentials import ForwardToken, decode_forward_token
from addons.billing.events import record_event
from addons.ledger import accounts
from addons.ledger.models import Hold, RequestRow, database, open_database
from addons.services import audit, bootstrap, customers, events, keys, meters, prices, requests, tokens, usage, wallets
from addons.services.errors import BadRequest, Conflict, NotFound, Unauthorized

USD = 10**9


@pytest.fixture
def ledger(tmp_path, monkeypatch):
    monkeypatch.setenv("TOLLGATE_TOKEN_SIGNING_KEY", "k" * 40)
    db = open_database(f"sqlite:///{tmp_path}/ledger.db")
    yield db
    db.close()
    database.initialize(None)


def _request(request_id: str, provider: str, cost_nanos: int, price_source: str = "catalog", **columns) -> None:
    """A request row as the gateway's writer leaves it (the services only read them)."""
    account = accounts.find_account(bootstrap.init_ledger().account).account_id
    RequestRow.create(id=request_id, created_at=columns.pop("created_at", datetime(2025, 1, 2)),
                      account=account, provider=provider, model="m",
                      endpoint="/v1/chat/completions", status=200, input_tokens=10, output_tokens=5,
                      provider_cost_nanos=cost_nanos, charged_nanos=cost_nanos, usage_source="reported",
                      price_source=price_source, **columns)


def test_init_makes_the_admin_key_once(ledger):
    first = bootstrap.init_ledger()
    assert first.account == "default" and first.balance_nanos == 0 and first.secret_key.startswith("tg_sk_")
    assert bootstrap.init_ledger().secret_key is None
    assert [k.name for k in keys.list_keys()] == ["admin"]
    with pytest.raises(FrozenInstanceError):
        first.secret_key = "x"


def test_keys_create_list_revoke(ledger):
    key = keys.create_key("ci", "acme")
    assert (key.name, key.account) == ("ci", "acme") and key.secret_key.startswith("tg_sk_")
    [listed] = keys.list_keys()
    assert (listed.id, listed.account, listed.revoked_at) == (key.id, "acme", None)
    assert key.secret_key not in repr(listed) and key.secret_key.startswith(listed.prefix.rstrip("…."))
    revoked = keys.revoke_key(key.id)
    assert revoked.id == key.id and isinstance(revoked.revoked_at, datetime)
    assert keys.revoke_key(key.id).revoked_at == revoked.revoked_at  # once
    with pytest.raises(NotFound) as refused:
        keys.revoke_key("key_nope")
    assert refused.value.code == "key_not_found" and refused.value.status == 404


def test_provider_keys_register_list_revoke(ledger):
    row = keys.register_provider_key("acme", "openai", "sk-proj-abcdefghijkl\n", swap=True)
    assert (row.account, row.provider, row.swap, row.revoked_at) == ("acme", "openai", True, None)
    assert keys.list_provider_keys() == [row]
    with pytest.raises(Conflict, match="registered already") as refused:
        keys.register_provider_key("other", "openai", "sk-proj-abcdefghijkl")
    assert (refused.value.code, refused.value.status) == ("provider_key_registered", 409)
    with pytest.raises(NotFound, match="no provider 'nope' in the catalog"):
        keys.register_provider_key("acme", "nope", "sk-proj-abcdefghijkl")
    assert keys.revoke_provider_key(row.id).revoked_at is not None
    with pytest.raises(NotFound):
        keys.revoke_provider_key("pkey_nope")


def test_wallet_topup_is_exact_and_audited(ledger):
    bootstrap.init_ledger()
    assert wallets.wallet().balance_nanos == 0
    view = wallets.topup("default", 2_500_000_001, note="first")
    assert view.balance_nanos == 2_500_000_001 and view.account == "default" and view.wallet.startswith("wal_")
    assert wallets.topup("default", 1).balance_nanos == wallets.wallet("default").balance_nanos == 2_500_000_002
    assert audit.audit().ok and audit.audit().mismatches == []
    with pytest.raises(NotFound, match="no account named 'nope'"):
        wallets.wallet("nope")
    with pytest.raises(BadRequest):
        wallets.topup("default", 0)


def test_audit_names_a_wallet_whose_balance_drifted(ledger):
    view = wallets.topup(bootstrap.init_ledger().account, 5 * USD)
    database.execute_sql('UPDATE "wallet" SET "balance_nanos" = 7 WHERE "id" = ?', (view.wallet,))
    report = audit.audit()
    assert not report.ok and report.mismatches == [audit.Mismatch(view.wallet, 7, 5 * USD)]


def test_customers(ledger):
    created = customers.create("acme", "c1", balance_nanos=5 * USD, autopay_threshold_nanos=USD,
                               autopay_amount_nanos=3 * USD)
    assert (created.customer_id, created.balance_nanos, created.autopay_amount_nanos) == ("c1", 5 * USD, 3 * USD)
    assert created.holds == customers.Holds(0, 0) and created.cycle_usage == {} and created.cycle_requests == 0
    assert customers.topup("acme", "c1", USD // 2).balance_nanos == 5 * USD + USD // 2
    customers.create("acme", "a0")
    assert [c.customer_id for c in customers.list_customers("acme")] == ["a0", "c1"]
    assert customers.list_customers("other") == []
    with pytest.raises(Conflict, match="customer 'c1' already exists"):
        customers.create("acme", "c1")
    with pytest.raises(BadRequest) as refused:
        customers.create("acme", "c2", autopay_threshold_nanos=USD)
    assert refused.value.code == "autopay_incomplete"
    with pytest.raises(NotFound, match="no customer 'zz' in account 'acme'"):
        customers.get("acme", "zz")


def test_a_list_of_customers_reads_the_ledger_a_fixed_number_of_times(ledger, monkeypatch):
    """Each customer's holds, cycle fees and requests are right, and fifty cost the queries one does."""
    now = datetime.now(UTC).replace(tzinfo=None)
    account = accounts.ensure_account("acme")[0]

    def add(customer_id: str, n: int) -> None:
        view = customers.create("acme", customer_id, balance_nanos=n * USD)
        for i in range(n % 3):
            Hold.create(request_id=f"h-{customer_id}-{i}", wallet=view.wallet, amount_nanos=(i + 1) * 1000,
                        expires_at=now + timedelta(minutes=5))
            RequestRow.create(id=f"r-{customer_id}-{i}", created_at=now, account=account, provider="openai",
                              endpoint="chat.completions", customer_id=customer_id, fee_nanos=(i + 1) * 7)

    def listed_with_queries() -> tuple[list, int]:
        executed = []
        real = database.obj.execute_sql
        monkeypatch.setattr(database.obj, "execute_sql", lambda *a, **k: executed.append(a[0]) or real(*a, **k))
        try:
            return customers.list_customers("acme"), len(executed)
        finally:
            monkeypatch.undo()

    add("c00", 1)
    _, one = listed_with_queries()
    for n in range(1, 50):
        add(f"c{n:02d}", n)
    listed, fifty = listed_with_queries()
    assert fifty == one and len(listed) == 50
    assert listed == [customers.get("acme", c.customer_id) for c in listed]  # as each customer's own view
    c05 = next(c for c in listed if c.customer_id == "c05")  # 5 % 3 = 2 holds and requests
    assert (c05.balance_nanos, c05.holds, c05.cycle_requests, c05.cycle_fees_nanos) == (
        5 * USD, customers.Holds(2, 3000), 2, 21)


def test_meters(ledger):
    meter = meters.create("acme", "chat", rate_type="fixed", unit="tokens_1m", tiers=["0:2.5", "1000000:1.25"])
    assert meter.tiers == [meters.Tier(0, "2.5"), meters.Tier(1_000_000, "1.25")] and meter.percentage is None
    pct = meters.create("acme", "pct", rate_type="percentage", unit="requests", percentage="20",
                        base_cost_payer="customer")
    assert pct.percentage == "20" and Decimal(pct.percentage) == 20
    assert [m.slug for m in meters.list_meters("acme")] == ["chat", "pct"] and meters.get("acme", "chat") == meter
    with pytest.raises(Conflict):
        meters.create("acme", "chat", rate_type="fixed", unit="requests", tiers=["0:1"])
    with pytest.raises(BadRequest, match="slug must be"):
        meters.create("acme", "Bad Slug", rate_type="fixed", unit="requests", tiers=["0:1"])
    with pytest.raises(NotFound, match="no meter 'zz'"):
        meters.get("acme", "zz")


def test_tokens(ledger):
    secret = bootstrap.init_ledger().secret_key
    plain = tokens.issue_token(secret, customer="c1", meter="chat")
    assert plain.signed is False
    assert decode_forward_token(plain.token) == ForwardToken(secret, "c1", "chat", None, False)
    signed = tokens.issue_token(secret, signed=True, spend_cap_nanos=USD, allow_providers=["openai"], expires_in=60)
    assert signed.signed is True and signed.token.startswith("tgt_") and secret not in signed.token
    with pytest.raises(BadRequest) as refused:
        tokens.issue_token(secret, expires_in=60)
    assert refused.value.code == "signed_only"
    with pytest.raises(BadRequest, match="spend cap must be positive"):
        tokens.issue_token(secret, signed=True, spend_cap_nanos=-1)
    keys.revoke_key(keys.list_keys()[0].id)
    with pytest.raises(Unauthorized) as refused:
        tokens.issue_token(secret)
    assert refused.value.code == "inactive_secret_key" and secret not in refused.value.message


def test_request_record_has_every_column_of_the_request_table_in_order(ledger):
    assert requests.FIELDS == tuple(field.name for field in RequestRow._meta.sorted_fields)


def test_requests_usage_and_missing_prices(ledger):
    _request("r1", "openai", 3 * USD, customer_id="c1", metadata=json.dumps({"a": 1}))
    _request("r2", "anthropic", USD, created_at=datetime(2025, 1, 3))
    _request("r3", "openai", 0, price_source="unpriced", created_at=datetime(2025, 1, 4))
    recent = requests.recent(2)
    assert [r.id for r in recent] == ["r3", "r2"] and isinstance(recent[0], requests.RequestRecord)
    assert [r.id for r in requests.recent(customer="c1")] == ["r1"]
    report = usage.usage("provider")
    assert [(r.group, r.requests, r.provider_cost_nanos, r.unpriced_requests) for r in report.rows] == [
        ("openai", 2, 3 * USD, 1), ("anthropic", 1, USD, 0)]
    # margin: of r1 only, billed to c1 (an older row naming a customer); r2 and r3 are the merchant's own
    assert report.totals == usage.UsageTotals(3, 30, 15, 4 * USD, 4 * USD, 0, 1, 0, -3 * USD)
    assert usage.usage("day", since=datetime(2025, 1, 3)).totals.requests == 2
    with pytest.raises(BadRequest):
        usage.usage("nope")
    [missing] = prices.missing()
    assert (missing.provider, missing.model, missing.requests) == ("openai", "m", 1)
    assert missing.first_seen == datetime(2025, 1, 4)


def test_reprice_dry_run_changes_nothing(ledger):
    _request("r3", "openai", 0, price_source="unpriced")
    report = prices.reprice_unpriced(since=datetime(2025, 1, 1), dry_run=True)
    assert report.dry_run and report.repriced == [] and report.still_unpriced == 1  # model "m" has no price
    assert prices.missing()[0].requests == 1


def test_events_newest_first(ledger):
    wallet = wallets.wallet(bootstrap.init_ledger().account).wallet
    record_event("balance.low", wallet, balance_nanos=5)
    record_event("topup.requested", wallet, amount_nanos=USD)
    recent = events.recent()
    assert [e.name for e in recent] == ["topup.requested", "balance.low"]
    assert recent[0].data == {"amount_nanos": USD} and recent[0].wallet == wallet
    assert len(events.recent(1)) == 1


def test_keys_have_roles_and_init_makes_the_admin_one(ledger):
    bootstrap.init_ledger()
    assert keys.create_key("app").role == "account"  # the default: its own account only
    assert keys.create_key("ops", "acme", role="admin").role == "admin"
    assert [(k.name, k.role) for k in keys.list_keys()] == [("admin", "admin"), ("app", "account"), ("ops", "admin")]


@pytest.mark.parametrize("role", ["owner", "Admin", ""])
def test_keys_refuse_an_unknown_role(ledger, role):
    with pytest.raises(BadRequest) as refused:
        keys.create_key("app", role=role)
    assert refused.value.code == "invalid_role" and refused.value.status == 400
    assert keys.list_keys() == []
