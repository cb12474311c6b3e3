"""The API's requests (Lava's RestRequest: list with its filters, retrieve, and reported usage charged like a
proxied request), models, and Tollgate's events, audit, providers and tokens, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest

from addons.auth.credentials import decode_forward_token
from addons.billing.autopay import AutoTopUp
from addons.billing.events import record_event
from addons.cli.main import main
from addons.core.settings import AutopaySettings
from addons.ledger import accounts
from addons.ledger.models import Customer, Event, LedgerEntry, MeterRow, RequestRow, TopUp, database, utcnow
from addons.services import autopay as autopay_service
from pricing import meters
from pricing.cost import price, shipped_overrides
from pricing.money import format_usd
from pricing.usage import TokenUsage
from tests.conftest import MOCK_MODEL_PRICE

USD = 10**9
# The meter reported requests are priced by: 2.00 USD per million tokens up to 1000 tokens, 5.00 beyond.
TIERS = ((0, Fraction("2.00")), (1000, Fraction("5.00")))


@pytest.fixture(autouse=True)
def _settings(monkeypatch):
    """The shipped settings, signed tokens possible, and a known environment for the providers' keys."""
    monkeypatch.delenv("TOLLGATE_CONFIG", raising=False)
    monkeypatch.setenv("TOLLGATE_TOKEN_SIGNING_KEY", "k" * 40)


def account_id(name: str) -> str:
    return accounts.find_account(name).account_id


def add_meter(account: str, slug: str, tiers=("0:2.00", "1000:5.00"), rate_type="fixed", unit="tokens_1m",
              percentage=None) -> MeterRow:
    spec = meters.make_meter_spec(slug, rate_type, unit, list(tiers), percentage)
    owner, _ = accounts.ensure_account(account)
    return MeterRow.create(account=owner, slug=slug, rate_type=spec.rate_type, unit=spec.unit,
                           percentage=None if spec.percentage is None else str(spec.percentage),
                           base_cost_payer=spec.base_cost_payer, token_basis=spec.token_basis,
                           tiers=meters.tiers_json(spec))


def add_customer(account: str, customer_id: str, balance_usd: int = 10, **kw) -> Customer:
    return accounts.create_customer(account, customer_id, balance_nanos=balance_usd * USD, **kw)


def add_row(account: str, request_id: str, at: datetime, **columns) -> None:
    """A request row as the gateway's writer leaves it."""
    RequestRow.create(**{"id": request_id, "created_at": at, "account": account_id(account), "provider": "openai",
                         "model": "gpt-4o-mini", "endpoint": "/v1/chat/completions", "status": 200,
                         "usage_source": "reported", "price_source": "catalog", **columns})


def tiered_fee_nanos(running_before: int, tokens: int) -> int:
    """The fee of `tokens` at TIERS after `running_before` tokens this cycle, worked out here, not by pricing/."""
    total = Fraction(0)
    for i, (start, rate) in enumerate(TIERS):
        end = TIERS[i + 1][0] if i + 1 < len(TIERS) else None
        lo = max(start, running_before)
        hi = running_before + tokens if end is None else min(end, running_before + tokens)
        if hi > lo:
            total += (hi - lo) * rate / 1_000_000
    return int(total * USD)  # whole nano-dollars at these rates


def balance(account: str, customer_id: str) -> int:
    return accounts.get_customer(account, customer_id).wallet.balance_nanos


def report(client, request_id: str, tokens=(1000, 500), customer="cus_1", meter="chat", **extra):
    return client.post("/v1/requests", json={"request_id": request_id, "customer_id": customer, "meter_slug": meter,
                                             "input_tokens": tokens[0], "output_tokens": tokens[1], **extra})


def ledger_url(db) -> str:
    return f"sqlite:///{db.database}" if db.__class__.__name__.startswith("Sqlite") else \
        f"postgresql://postgres@127.0.0.1:5432/{db.database}"


# -- list and retrieve ---------------------------------------------------------------------------------------

def test_a_request_is_lavas_rest_request_with_tollgates_facts(api):
    usage = TokenUsage(input_tokens=1000, cache_read_tokens=200, output_tokens=500)
    at = datetime(2025, 3, 1, 12)
    cost = price(usage, model="gpt-4o-mini", provider_id="openai", pricing_id="openai", overrides=shipped_overrides(),
                 at=at.replace(tzinfo=UTC))
    meter = add_meter("default", "chat")
    add_customer("default", "alice")
    add_row("default", "req_1", at, customer_id="alice", meter_slug="chat", bill_customer=True, input_tokens=1000,
            cache_read_tokens=200, output_tokens=500, provider_cost_nanos=cost.total_nanos,
            charged_nanos=cost.total_nanos, fee_nanos=4_500_000, latency_ms=812, ttfb_ms=90, streamed=True,
            metadata=json.dumps({"user": "u_1"}))
    answer = api.admin.get("/v1/requests/req_1")
    assert answer.status_code == 200
    got = answer.json()
    assert {k: got[k] for k in ("request_id", "status", "customer_id", "meter_id", "provider", "provider_key_type",
                                "model", "endpoint", "metadata", "created_at")} == {
        "request_id": "req_1", "status": "completed", "customer_id": "alice", "meter_id": meter.id,
        "provider": "openai", "provider_key_type": "managed", "model": "gpt-4o-mini",
        "endpoint": "/v1/chat/completions", "metadata": {"user": "u_1"}, "created_at": "2025-03-01T12:00:00.000Z"}
    usage_out = got["model_usage"]
    assert (usage_out["input_tokens"], usage_out["output_tokens"], usage_out["total_tokens"]) == (1000, 500, 1500)
    assert usage_out["total_cost"] == got["cost"] == format_usd(cost.total_nanos)
    assert usage_out["input_cost"] == format_usd(cost.input_nanos)
    assert usage_out["output_cost"] == format_usd(cost.total_nanos - cost.input_nanos)
    assert cost.input_nanos > 0 and cost.total_nanos > cost.input_nanos
    # the customer was charged the fee; the breakdown is not known for a meter of two tiers
    assert got["charge"] == {"amount": "0.0045", "rate_type": "fixed", "breakdown": []}
    assert (got["latency_ms"], got["ttfb_ms"], got["streamed"], got["fee"], got["charged"]) == (
        812, 90, True, "0.0045", format_usd(cost.total_nanos))


def test_status_key_type_unknown_cost_and_a_one_tier_breakdown(api):
    add_meter("default", "flat", tiers=("0:3.00",))
    at = datetime(2025, 3, 1)
    add_row("default", "req_err", at, status=429, byok=True)
    add_row("default", "req_unpriced", at, model="mystery", price_source="unpriced", input_tokens=10)
    add_row("default", "req_flat", at, customer_id="bob", meter_slug="flat", bill_customer=True,
            input_tokens=300, output_tokens=200, fee_nanos=1_500_000, charged_nanos=7, provider_cost_nanos=7,
            price_source="override", model="mock-1")
    err = api.admin.get("/v1/requests/req_err").json()
    assert (err["status"], err["status_code"], err["provider_key_type"]) == ("error", 429, "unmanaged")
    unpriced = api.admin.get("/v1/requests/req_unpriced").json()
    assert unpriced["cost"] is None and unpriced["model_usage"]["total_cost"] is None  # not known, not $0
    assert unpriced["charge"] == {"amount": "0.00", "rate_type": None, "breakdown": []}
    flat = api.admin.get("/v1/requests/req_flat").json()
    assert flat["charge"]["breakdown"] == [{"tier": {"start": 0, "rate": "3.00", "type": "tokens_1m"}, "tokens": 500,
                                            "characters": 0, "seconds": 0, "cost": "0.0015"}]
    # a cost today's price lists do not reproduce (an override since changed, say) is not split
    assert flat["cost"] == "0.000000007" and flat["model_usage"]["input_cost"] is None


def test_another_accounts_request_is_404_and_never_listed(api):
    add_row("default", "req_mine", datetime(2025, 3, 1))
    add_row("shop", "req_shop", datetime(2025, 3, 1))
    answer = api.merchant.get("/v1/requests/req_mine")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "request_not_found"
    assert [r["request_id"] for r in api.merchant.get("/v1/requests").json()["data"]] == ["req_shop"]
    assert [r["request_id"] for r in api.admin.get("/v1/requests").json()["data"]] == ["req_mine"]
    # an admin names the account it acts on; an account key naming another is 404
    assert [r["request_id"] for r in api.admin.get("/v1/requests?account=shop").json()["data"]] == ["req_shop"]
    assert api.merchant.get("/v1/requests?account=default").status_code == 404


def test_filters_by_customer_meter_id_or_slug_and_metadata(api):
    meter = add_meter("shop", "chat")
    at = datetime(2025, 3, 1)
    add_row("shop", "req_a", at, customer_id="alice", meter_slug="chat", metadata=json.dumps({"user": "u1", "env": "prod"}))
    add_row("shop", "req_b", at + timedelta(seconds=1), customer_id="bob", meter_slug="chat",
            metadata=json.dumps({"user": "u2", "env": "prod", "note": 'say "hi" ü'}))
    add_row("shop", "req_c", at + timedelta(seconds=2), customer_id="alice", metadata=json.dumps({"user": "u1"}))
    add_row("shop", "req_d", at + timedelta(seconds=3))

    def ids(query: str) -> list[str]:
        answer = api.merchant.get("/v1/requests", params={"limit": 100, **query})
        assert answer.status_code == 200, answer.text
        return [r["request_id"] for r in answer.json()["data"]]

    assert ids({}) == ["req_d", "req_c", "req_b", "req_a"]
    assert ids({"customer_id": "alice"}) == ["req_c", "req_a"]
    assert ids({"meter_id": meter.id}) == ids({"meter_id": "chat"}) == ["req_b", "req_a"]
    assert ids({"metadata_filters": json.dumps([["user", "u1"]])}) == ["req_c", "req_a"]
    assert ids({"metadata_filters": json.dumps([["user", "u1"], ["env", "prod"]])}) == ["req_a"]
    assert ids({"metadata_filters": json.dumps([["note", 'say "hi" ü']])}) == ["req_b"]
    assert ids({"metadata_filters": json.dumps({"env": "prod"}), "customer_id": "bob"}) == ["req_b"]
    assert ids({"metadata_filters": json.dumps([["user", "u1"], ["user", "u2"]])}) == []


@pytest.mark.parametrize("raw", ["not json", '{"a": 1}', '[["a"]]', '[["a", 1]]', '"x"'])
def test_bad_metadata_filters_are_422_naming_the_parameter(api, raw):
    answer = api.merchant.get("/v1/requests", params={"metadata_filters": raw})
    assert answer.status_code == 422 and answer.json()["error"]["param"] == "metadata_filters"


def test_paging_while_requests_are_written_neither_skips_nor_repeats_a_row(api):
    start = datetime(2025, 3, 1)
    existing = {f"req_{i:03d}" for i in range(23)}
    for i, request_id in enumerate(sorted(existing)):  # some share a created_at: the id breaks the tie
        add_row("shop", request_id, start + timedelta(seconds=i // 3))
    seen, cursor, n = [], None, 0
    while True:
        page = api.merchant.get("/v1/requests", params={"limit": 5, **({"cursor": cursor} if cursor else {})}).json()
        seen += [r["request_id"] for r in page["data"]]
        # new requests arrive between pages: newer ones, and one at the very time of rows already listed
        add_row("shop", f"req_new_{n}", utcnow())
        add_row("shop", f"req_tie_{n}", start + timedelta(seconds=3))
        n += 1
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    old = [r for r in seen if r in existing]
    assert len(old) == len(set(old)) == len(existing) and len(seen) == len(set(seen))
    assert old == sorted(existing, key=lambda r: (int(r[4:]) // 3, r), reverse=True)


def test_a_bad_cursor_or_limit_is_422(api):
    assert api.merchant.get("/v1/requests?cursor=zzz").json()["error"]["param"] == "cursor"
    assert api.merchant.get("/v1/requests?limit=0").json()["error"]["param"] == "limit"


# -- reported requests ---------------------------------------------------------------------------------------

def test_a_reported_request_charges_the_customer_the_meters_fee_once(api):
    add_meter("shop", "chat")
    add_customer("shop", "cus_1", 10)
    merchant_before = accounts.wallet_balance(accounts.find_account("shop").wallet_id)
    first = report(api.merchant, "ext_1", metadata={"user": "u_1"})
    assert first.status_code == 201, first.text
    fee = tiered_fee_nanos(0, 1500)
    assert fee == 4_500_000  # 1000 tokens at 2.00 and 500 at 5.00 per million
    body = first.json()
    assert (body["request_id"], body["status"], body["customer_id"], body["provider"], body["usage_source"]) == (
        "ext_1", "completed", "cus_1", "reported", "reported")
    assert body["charge"]["amount"] == body["fee"] == format_usd(fee) and body["cost"] == "0.00"
    assert body["metadata"] == {"user": "u_1"} and body["meter_id"] == MeterRow.get(MeterRow.slug == "chat").id
    assert balance("shop", "cus_1") == 10 * USD - fee
    # the running total moved: the next report is priced past the first tier
    second = report(api.merchant, "ext_2", tokens=(300, 0))
    assert second.json()["fee"] == format_usd(tiered_fee_nanos(1500, 300)) == "0.0015"
    # a repeat changes nothing and answers the recorded request
    repeat = report(api.merchant, "ext_1", metadata={"user": "u_1"})
    assert repeat.status_code == 200 and repeat.json() == body
    assert balance("shop", "cus_1") == 10 * USD - fee - 1_500_000
    entries = LedgerEntry.select().where(LedgerEntry.request_id == "ext_1")
    assert [(e.amount_nanos, e.reason) for e in entries] == [(-fee, "usage")]
    assert accounts.wallet_balance(accounts.find_account("shop").wallet_id) == merchant_before  # provider not paid here
    assert api.admin.get("/v1/audit").json() == {"ok": True, "mismatches": []}


def test_a_reported_request_shows_in_the_cli_customer_view(api, ledger, capsys):
    add_meter("shop", "chat")
    add_customer("shop", "cus_1", 10)
    assert report(api.merchant, "ext_1").status_code == 201
    main(["customers", "show", "cus_1", "--account", "shop", "--json", "--database-url", ledger_url(ledger)])
    shown = json.loads(capsys.readouterr().out)
    assert shown["balance"] == format_usd(10 * USD - 4_500_000)
    assert (shown["cycle_fees"], shown["cycle_requests"], shown["cycle_usage"]) == ("0.0045", 1, {"chat": "1500"})


def test_characters_and_seconds_are_kept_and_priced_by_their_meters(api):
    add_meter("shop", "chars", tiers=("0:10.00",), unit="characters_1m")
    add_meter("shop", "audio", tiers=("0:0.60",), unit="minutes")
    add_customer("shop", "cus_1", 10)
    chars = api.merchant.post("/v1/requests", json={"request_id": "c1", "customer_id": "cus_1", "meter_slug": "chars",
                                                    "input_characters": 4000, "output_characters": 1000}).json()
    assert chars["model_usage"]["total_characters"] == 5000 and chars["fee"] == "0.05"  # 5000 x 10.00 / 1M
    audio = api.merchant.post("/v1/requests", json={"request_id": "a1", "customer_id": "cus_1", "meter_slug": "audio",
                                                    "input_seconds": 90.5, "output_seconds": "29.5"}).json()
    assert (audio["model_usage"]["input_seconds"], audio["model_usage"]["total_seconds"]) == (90.5, 120)
    assert audio["fee"] == "1.20"  # two minutes at 0.60
    assert audio["charge"]["breakdown"][0]["seconds"] == 120
    assert balance("shop", "cus_1") == 10 * USD - 50_000_000 - 1_200_000_000


@pytest.mark.parametrize("field, value", [("input_tokens", -1), ("output_tokens", 1.5), ("input_tokens", "many"),
                                          ("input_seconds", -2), ("output_seconds", 0.0001), ("input_seconds", "x"),
                                          ("input_characters", 2**31), ("metadata", {"user": 5}),
                                          ("metadata", {"bad key": "v"}), ("request_id", "has/slash"),
                                          ("request_id", ""), ("bogus", 1)])
def test_bad_fields_are_422_naming_the_field_and_charge_nothing(api, field, value):
    add_meter("shop", "chat")
    add_customer("shop", "cus_1", 10)
    body = {"request_id": "ext_1", "customer_id": "cus_1", "meter_slug": "chat", "input_tokens": 10, field: value}
    answer = api.merchant.post("/v1/requests", json=body)
    assert answer.status_code == 422 and answer.json()["error"]["param"] == field
    assert balance("shop", "cus_1") == 10 * USD and RequestRow.select().count() == 0


def test_unknown_customer_or_meter_is_404_naming_it(api):
    add_meter("shop", "chat")
    add_customer("shop", "cus_1")
    add_customer("default", "cus_default")
    answer = report(api.merchant, "ext_1", customer="cus_nobody")
    assert answer.status_code == 404 and "cus_nobody" in answer.json()["error"]["message"]
    assert report(api.merchant, "ext_1", customer="cus_default").status_code == 404  # another account's customer
    answer = report(api.merchant, "ext_1", meter="nometer")
    assert answer.status_code == 404 and "nometer" in answer.json()["error"]["message"]
    assert RequestRow.select().count() == 0


def test_a_request_id_used_otherwise_is_409(api):
    add_meter("shop", "chat")
    add_customer("shop", "cus_1")
    add_row("default", "req_default", datetime(2025, 3, 1))
    taken = report(api.merchant, "req_default")
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "request_id_taken"
    assert report(api.merchant, "ext_1").status_code == 201
    changed = report(api.merchant, "ext_1", tokens=(1, 1))
    assert changed.status_code == 409 and changed.json()["error"]["code"] == "request_id_reused"


def test_a_percentage_meter_cannot_price_a_reported_request(api):
    add_meter("shop", "markup", tiers=(), rate_type="percentage", percentage="20")
    add_customer("shop", "cus_1")
    answer = report(api.merchant, "ext_1", meter="markup")
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "meter_prices_provider_cost"


def test_racing_repeats_charge_once(api):
    add_meter("shop", "chat")
    add_customer("shop", "cus_1", 10)
    barrier, statuses = threading.Barrier(6), []

    def race():
        client = api.client(api.merchant_key)
        barrier.wait()
        statuses.append(report(client, "ext_race").status_code)
        database.close()

    threads = [threading.Thread(target=race) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] * 5 + [201]
    assert balance("shop", "cus_1") == 10 * USD - 4_500_000
    assert LedgerEntry.select().where(LedgerEntry.request_id == "ext_race").count() == 1


def test_an_idempotency_key_repeat_returns_the_first_answer(api):
    add_meter("shop", "chat")
    add_customer("shop", "cus_1", 10)
    headers = {"idempotency-key": "k-1"}
    first = api.merchant.post("/v1/requests", headers=headers, json={"request_id": "ext_1", "customer_id": "cus_1",
                                                                     "meter_slug": "chat", "input_tokens": 10})
    again = api.merchant.post("/v1/requests", headers=headers, json={"request_id": "ext_1", "customer_id": "cus_1",
                                                                     "meter_slug": "chat", "input_tokens": 10})
    assert first.status_code == again.status_code == 201 and first.json() == again.json()
    assert balance("shop", "cus_1") == 10 * USD - 20_000


def test_a_reported_charge_asks_the_auto_top_up_like_a_proxied_one(api):
    add_meter("shop", "chat", tiers=("0:1000.00",))
    add_customer("shop", "cus_low", 2, autopay_threshold_nanos=1 * USD, autopay_amount_nanos=5 * USD)
    paid = []
    worker = AutoTopUp(AutopaySettings(webhook_url="http://hook.invalid/pay", webhook_secret="s", max_attempts=1),
                       post=lambda url, body, headers: paid.append(json.loads(body)) or 200)
    api.merchant.app.state.autopay = worker
    try:
        assert report(api.merchant, "ext_1", tokens=(1500, 0), customer="cus_low").json()["fee"] == "1.50"  # 2 -> 0.50
        assert worker.flush(10)
    finally:
        worker.close()
        del api.merchant.app.state.autopay
    assert [p["customer_id"] for p in paid] == ["cus_low"] and paid[0]["amount"] == "5.00"
    assert balance("shop", "cus_low") == 5_500_000_000
    assert TopUp.get().status == "succeeded"
    types = [e["type"] for e in api.merchant.get("/v1/events").json()["data"]]
    assert types == ["topup.succeeded", "topup.requested", "balance.low"]


def test_the_admin_processs_auto_top_up_comes_from_the_settings():
    worker = autopay_service.start_autopay()
    try:
        assert isinstance(worker, AutoTopUp) and not worker.enabled  # the shipped settings name no webhook
    finally:
        assert worker.close(5)


# -- models, providers, tokens, events, audit ----------------------------------------------------------------

def test_models_lists_the_catalog_price_list_and_the_overrides(api, monkeypatch, tmp_path):
    config = tmp_path / "tollgate.yaml"
    config.write_text(json.dumps({"prices": [MOCK_MODEL_PRICE, {**MOCK_MODEL_PRICE, "model": "my-private-model"}]}))
    monkeypatch.setenv("TOLLGATE_CONFIG", str(config))
    answer = api.merchant.get("/v1/models").json()
    assert answer["object"] == "list"
    by_id = {(m["owned_by"], m["id"]): m for m in answer["data"]}
    private = by_id["openai", "my-private-model"]
    assert private == {"id": "my-private-model", "object": "model", "created": 0, "owned_by": "openai",
                       "price_source": "override", "pattern": False, "format": private["format"]}
    assert {"anthropic", "openai"} <= set(private["format"])  # the client formats the rewrite endpoint translates
    assert by_id["anthropic", "claude-2"]["format"] == private["format"]
    assert next(m for m in answer["data"] if m["owned_by"] == "cohere")["format"] == []
    assert by_id["openai", "mock-*"]["pattern"] is True
    assert by_id["openai", "gpt-4o-mini"]["price_source"] == "catalog"
    assert by_id["anthropic", "claude-2"]["price_source"] == "catalog"
    assert {m["owned_by"] for m in answer["data"]} <= {p["id"] for p in api.merchant.get("/v1/providers").json()["data"]}
    assert by_id["sambanova", "meta-llama-3.3-70b-instruct"]["price_source"] == "override"  # pricing/overrides.yaml
    assert len(by_id) == len(answer["data"])


def test_providers_say_whether_the_key_is_set_never_the_key(api, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value-123")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    answer = api.merchant.get("/v1/providers")
    providers = {p["id"]: p for p in answer.json()["data"]}
    assert providers["openai"]["credential_set"] is True and providers["anthropic"]["credential_set"] is False
    assert providers["openai"]["credential_env"] == "OPENAI_API_KEY" and "sk-secret-value-123" not in answer.text
    assert "openai" in providers["anthropic"]["format"] and providers["cohere"]["format"] == []


def test_tokens_for_the_calling_key_or_another_of_its_account(api):
    add_meter("shop", "chat")
    add_customer("shop", "cus_1")
    plain = api.merchant.post("/v1/tokens", json={"customer_id": "cus_1", "meter_slug": "chat"})
    assert plain.status_code == 201 and plain.json()["signed"] is False
    decoded = decode_forward_token(plain.json()["token"])
    assert (decoded.secret_key, decoded.customer_id, decoded.meter_slug) == (api.merchant_key, "cus_1", "chat")
    signed = api.merchant.post("/v1/tokens", json={"signed": True, "expires_in": 600, "spend_cap": "1.50",
                                                   "allowed_models": ["gpt-4o*"]}).json()
    assert signed["signed"] is True and api.merchant_key not in signed["token"]
    other = api.client(api.merchant_key).post("/v1/tokens", json={"secret_key": api.admin_key})
    assert other.status_code == 404 and other.json()["error"]["code"] == "secret_key_not_found"
    assert api.merchant.post("/v1/tokens", json={"customer_id": "cus_nobody"}).status_code == 404
    assert api.merchant.post("/v1/tokens", json={"expires_in": 60}).json()["error"]["code"] == "signed_only"
    assert api.merchant.post("/v1/tokens", json={"signed": "yes"}).json()["error"]["param"] == "signed"


def test_events_are_the_accounts_own_and_paged(api):
    add_customer("shop", "cus_1")
    add_customer("default", "cus_d")
    shop_wallet = Customer.get(Customer.customer_id == "cus_1").wallet_id
    default_wallet = Customer.get(Customer.customer_id == "cus_d").wallet_id
    for n in range(5):
        record_event("balance.low", shop_wallet, customer_id="cus_1", balance_nanos=n * USD)
    record_event("balance.depleted", default_wallet, customer_id="cus_d", balance_nanos=0)
    first = api.merchant.get("/v1/events?limit=3").json()
    assert [e["type"] for e in first["data"]] == ["balance.low"] * 3 and first["has_more"]
    assert first["data"][0]["data"]["balance"] == "4.00" and first["data"][0]["customer_id"] == "cus_1"
    rest = api.merchant.get(f"/v1/events?limit=3&cursor={first['next_cursor']}").json()
    assert len(rest["data"]) == 2 and not rest["has_more"]
    assert len({e["id"] for e in first["data"] + rest["data"]}) == 5
    everything = api.admin.get("/v1/events?limit=100").json()["data"]
    assert len(everything) == 6 and everything[0]["type"] == "balance.depleted"
    assert [e["type"] for e in api.admin.get("/v1/events?type=balance.depleted&account=shop").json()["data"]] == []
    assert Event.select().count() == 6


def test_the_audit_is_admin_only(api):
    answer = api.merchant.get("/v1/audit")
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "admin_only"
    assert api.admin.get("/v1/audit").json() == {"ok": True, "mismatches": []}
