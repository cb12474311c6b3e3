"""No request served at a silent $0: unpriced models and unmetered endpoints under `pricing.unpriced` /
`pricing.unmetered` (flag, refuse, and the defaults), in track mode and for billed customers, through the real
proxy and the openai SDK; `tollgate prices missing`, `tollgate prices reprice`, and the ledger migration that
adds the price_source column to an older ledger."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import openai
import pytest
import yaml
from playhouse.db_url import connect

from addons.billing import price_guard
from addons.billing.charges import apply_charges
from addons.billing.plan import BillingPlan
from addons.billing.reprice import reprice
from addons.core.settings import BillingSettings, PricingSettings, Settings, load_settings, parse_pricing
from addons.ledger.accounts import (
    CustomerRecord,
    KeyRecord,
    audit_wallets,
    credit_wallet,
    ensure_account,
    wallet_balance,
)
from addons.ledger.models import Account, RequestRow, database, open_database, utcnow
from addons.ledger.writer import UsageRecord, write_batch
from addons.usage.base import UsageReader, price_basis
from addons.usage.readers import for_request
from pricing import meters
from pricing.cost import parse_overrides, price_source
from pricing.usage import MediaUsage
from tests.conftest import MOCK_MODEL_PRICE
from tests.harness import GatewayProcess, fresh_postgres_database

UNPRICED_MODEL = "gpt-unreleased-x"  # in no price list
# The mock's chat usage: 17 prompt tokens (4 cached), 9 completion tokens; at the override below
# (cache reads at the input rate) that is 17 x 1.00 + 9 x 2.00 per million = $0.000035.
UNRELEASED_PRICE = {"provider": "openai", "model": "gpt-unreleased-*", "input_mtok": "1.00", "output_mtok": "2.00"}
UNRELEASED_COST = Decimal("0.000035")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- the decisions, as units ---------------------------------------------------------------

@pytest.mark.parametrize("method, path, upgrade, expected", [
    ("POST", "/v1/chat/completions", False, "metered"),
    ("POST", "/v1/embeddings", False, "metered"),
    ("POST", "/v1/messages", False, "metered"),
    ("POST", "/v1beta/models/gemini-2.0-flash:generateContent", False, "metered"),
    ("POST", "/v1/images/generations", False, "metered"),
    ("POST", "/v1/audio/transcriptions", False, "metered"),
    ("POST", "/v1/audio/speech", False, "metered"),
    ("POST", "/v2/rerank", False, "metered"),
    ("POST", "/v1/batches", False, "unmetered"),
    ("GET", "/v1/realtime", True, "metered"),  # an OpenAI Realtime session, charged per response
    ("GET", "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent", True,
     "unmetered"),  # a Gemini Live session costs money, and Tollgate does not read it
    ("GET", "/v1/models", False, "free"),
    ("POST", "/v1/messages/count_tokens", False, "free"),
    ("POST", "/v1beta/models/gemini-2.0-flash:countTokens", False, "free"),
])
def test_price_basis_says_which_requests_the_reader_reads(method, path, upgrade, expected):
    family = "cohere" if "rerank" in path else "gemini" if "v1beta" in path else (
        "anthropic" if "/messages" in path else "openai")
    reader = for_request(family, method, path, "", b'{"model": "m"}', upgrade=upgrade)
    assert reader.basis == expected
    assert price_basis(method, reader.endpoint, path, upgrade) == expected


def test_pricing_settings_parse_and_default_to_null():
    assert parse_pricing({}) == PricingSettings(None, None)
    assert parse_pricing({"unpriced": "refuse", "unmetered": "flag"}) == PricingSettings("refuse", "flag")
    assert load_settings({}).pricing == PricingSettings(None, None)  # config/gateway.yaml ships the defaults
    with pytest.raises(ValueError, match="pricing.unpriced must be flag, refuse or null"):
        parse_pricing({"unpriced": "allow"})
    with pytest.raises(ValueError, match="unknown field"):
        parse_pricing({"unknown_models": "flag"})


def plan(meter_args: tuple | None = None, *, billed: bool = True, byok: bool = False) -> BillingPlan:
    key = KeyRecord("key_1", "acct_1", "wal_1", False)
    if meter_args is None:
        return BillingPlan(key, provider_key="sk-own" if byok else None)
    spec = meters.make_meter_spec("m", *meter_args)
    return BillingPlan(key, CustomerRecord("cus_1", "wal_2", 0), "mtr_1", spec, billed, "sk-own" if byok else None)


FIXED = ("fixed", "requests", ["0:0.01"])
PERCENTAGE = ("percentage", "tokens_1m", [], "20")
HYBRID = ("hybrid", "tokens_1m", ["0:1"], "5")
FIXED_CUSTOMER_PAYS = ("fixed", "tokens_1m", ["0:1"], None, "customer")


@pytest.mark.parametrize("the_plan, byok_percent, unpriced, unmetered", [
    (plan(), "0", "flag", "flag"),  # track mode
    (plan(PERCENTAGE, billed=False), "0", "flag", "flag"),  # disable_billing: tracked, not billed
    (plan(FIXED), "0", "flag", "refuse"),
    (plan(PERCENTAGE), "0", "refuse", "refuse"),
    (plan(HYBRID), "0", "refuse", "refuse"),
    (plan(FIXED_CUSTOMER_PAYS), "0", "refuse", "refuse"),
    (plan(FIXED, byok=True), "10", "refuse", "refuse"),  # the customer's BYOK fee is a share of the cost
    (plan(byok=True), "10", "flag", "flag"),
])
def test_default_policies(the_plan, byok_percent, unpriced, unmetered):
    settings = Settings("sqlite:///:memory:", billing=BillingSettings(byok_fee_percent=Decimal(byok_percent)))
    assert price_guard.unpriced_policy(the_plan, settings) == unpriced
    assert price_guard.unmetered_policy(the_plan, settings) == unmetered
    explicit = Settings("sqlite:///:memory:", pricing=PricingSettings("flag", "refuse"))
    assert (price_guard.unpriced_policy(the_plan, explicit), price_guard.unmetered_policy(the_plan, explicit)) == (
        "flag", "refuse")


def test_price_sources_of_models():
    overrides = parse_overrides({"models": [MOCK_MODEL_PRICE]})

    def source(model: str) -> str:
        return price_source(model=model, provider_id="openai", pricing_id="openai", overrides=overrides)

    assert (source("gpt-4o-mini"), source("mock-model"), source(UNPRICED_MODEL), source("")) == (
        "catalog", "override", "unpriced", "unpriced")


@pytest.mark.parametrize("basis, status, cost_source, expected", [
    ("metered", 200, "catalog", "catalog"),
    ("metered", 200, "unpriced", "unpriced"),
    ("metered", 429, "unpriced", "unpriced"),  # a provider error is priced as its model
    ("unmetered", 200, "unpriced", "unmetered"),
    ("unmetered", None, "unpriced", "unmetered"),  # cut: the provider may have charged
    ("unmetered", 400, "unpriced", "unpriced"),  # refused by the provider: nothing was generated
    ("free", 200, "unpriced", "free"),
])
def test_row_price_source(basis, status, cost_source, expected):
    assert price_guard.price_source(UsageReader("openai", basis=basis), cost_source, status) == expected


def test_flagged_requests_warn_once_per_model(caplog):
    warnings = price_guard.Warnings()
    for _ in range(3):
        warnings.flagged("unpriced", "openai", "gpt-new")
        warnings.flagged("catalog", "openai", "gpt-4o")
    warnings.flagged("unpriced", "openai", "gpt-newer")
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 2 and "gpt-new'" in lines[0] and "gpt-newer" in lines[1]


# -- an older ledger gets the new columns ---------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request, tmp_path):
    yield (f"sqlite:///{tmp_path}/old.db" if request.param == "sqlite"
           else fresh_postgres_database("tollgate_price_source_migration"))
    if not database.is_closed():
        database.close()
    database.initialize(None)


def test_open_database_adds_price_source_to_an_older_ledger(ledger_url):
    db = open_database(ledger_url)
    account = Account.create(name="default")
    RequestRow.create(id="req_old", created_at=datetime(2026, 1, 1), account=account, provider="openai",
                      endpoint="chat.completions", usage_source="reported", price_source="catalog")
    db.close()
    old = connect(ledger_url)  # make it the previous release's ledger: no price_source, no bill_customer
    old.execute_sql('ALTER TABLE "request" DROP COLUMN "price_source"')
    old.execute_sql('ALTER TABLE "request" DROP COLUMN "bill_customer"')
    old.close()
    for _ in range(2):  # idempotent
        db = open_database(ledger_url)
        columns = {c.name for c in db.get_columns("request")}
        assert {"price_source", "bill_customer"} <= columns
        assert db.execute_sql("SELECT price_source, bill_customer FROM request WHERE id = 'req_old'").fetchone() == (
            None, None)
        db.close()


# -- end to end ----------------------------------------------------------------------------

def start_gateway(tmp, mock, url: str, pricing: dict | None = None) -> GatewayProcess:
    settings = {"pricing": pricing} if pricing is not None else {}
    gw = GatewayProcess(tmp, url, {"openai": mock.url}, prices=[MOCK_MODEL_PRICE], settings=settings)
    gw.fund()
    gw.start()
    return gw


@pytest.fixture(scope="module")
def defaults(mock, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("defaults")
    gw = start_gateway(tmp, mock, f"sqlite:///{tmp}/ledger.db")
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def refusing(mock, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refusing")
    gw = start_gateway(tmp, mock, f"sqlite:///{tmp}/ledger.db", {"unpriced": "refuse", "unmetered": "refuse"})
    yield gw
    gw.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def flagging(request, mock, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"flagging-{request.param}")
    url = (f"sqlite:///{tmp}/ledger.db" if request.param == "sqlite"
           else fresh_postgres_database("tollgate_price_source"))
    gw = start_gateway(tmp, mock, url, {"unpriced": "flag", "unmetered": "flag"})
    yield gw
    gw.stop()


def client(gw, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=api_key, base_url=f"{gw.url}/v1/forward?u=https://api.openai.com/v1/", max_retries=0)


def chat(gw, api_key: str, model: str = UNPRICED_MODEL) -> dict:
    raw = client(gw, api_key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}])
    return gw.request_row(raw.headers["x-tollgate-request-id"])


BATCH = dict(input_file_id="file-mock", endpoint="/v1/chat/completions", completion_window="24h")


def batch(gw, api_key: str) -> dict:
    """A batch created: an endpoint Tollgate does not meter (the batch is billed when it runs)."""
    raw = client(gw, api_key).batches.with_raw_response.create(**BATCH)
    assert raw.parse().status == "validating"
    return gw.request_row(raw.headers["x-tollgate-request-id"])


def refused(gw, mock, call, code: str) -> None:
    """The gateway answers 402 `code`, the provider never sees the request, and the ledger gets no row."""
    seen = len(mock.requests)
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    assert caught.value.status_code == 402
    assert caught.value.body["code"] == code and caught.value.body["type"] == "pricing_error"
    assert len(mock.requests) == seen
    request_id = caught.value.response.headers["x-tollgate-request-id"]
    chat(gw, gw.admin_key, model="mock-model")  # a later request's row is written after any earlier one
    assert request_id not in {r["id"] for r in gw.ledger.requests(limit=200)}


def customer_token(gw, *meter_args: str, balance: str = "1.00") -> tuple[str, str]:
    who, slug = unique("cus"), unique("m")
    gw.cli("customers", "create", who, "--balance", balance)
    gw.cli("meters", "create", slug, *meter_args)
    token = gw.cli_json("token", "--secret-key", gw.admin_key, "--customer", who, "--meter", slug)["token"]
    return who, token


PERCENTAGE_METER = ("--rate-type", "percentage", "--unit", "tokens_1m", "--percentage", "20")
FIXED_METER = ("--rate-type", "fixed", "--unit", "requests", "--tier", "0:0.01")


def test_track_mode_serves_an_unpriced_model_flagged_never_as_zero(defaults):
    row = chat(defaults, defaults.admin_key)
    assert (row["price_source"], row["usage_source"], row["input_tokens"], row["output_tokens"]) == (
        "unpriced", "reported", 17, 9)
    assert row["provider_cost"] is None and row["charged"] == "0.00"
    second = chat(defaults, defaults.admin_key)
    defaults.env["COLUMNS"] = "300"  # the whole table, one line per row
    line = next(line for line in defaults.cli("requests", "--wide").stdout.splitlines() if second["id"] in line)
    assert line.split("│")[9].strip() == "unpriced"  # the provider_cost cell
    by_model = {r["group"]: r for r in defaults.cli_json("usage", "--by", "model")["rows"]}
    assert (by_model[UNPRICED_MODEL]["provider_cost"], by_model[UNPRICED_MODEL]["unpriced_requests"]) == (None, 2)
    usage_table = defaults.cli("usage", "--by", "model").stdout
    assert next(line for line in usage_table.splitlines() if UNPRICED_MODEL in line).split("│")[5].strip() == (
        "2 unpriced")
    warnings = [line for line in defaults.log.read_text().splitlines() if UNPRICED_MODEL in line]
    assert len(warnings) == 1 and "has no price" in warnings[0]


def test_priced_models_say_where_their_price_came_from(defaults):
    assert chat(defaults, defaults.admin_key, model="gpt-4o-mini")["price_source"] == "catalog"
    row = chat(defaults, defaults.admin_key, model="mock-model")
    assert row["price_source"] == "override" and row["provider_cost"] == "0.000035"


def test_unpriced_model_is_refused_by_default_for_a_percentage_customer(defaults, mock):
    who, token = customer_token(defaults, *PERCENTAGE_METER)
    refused(defaults, mock, lambda: client(defaults, token).chat.completions.create(
        model=UNPRICED_MODEL, messages=[{"role": "user", "content": "hi"}]), "model_unpriced")
    shown = defaults.cli_json("customers", "show", who)
    assert (shown["balance"], shown["holds"]["count"]) == ("1.00", 0)


def test_unpriced_model_is_served_by_default_for_a_fixed_meter_customer(defaults):
    who, token = customer_token(defaults, *FIXED_METER)
    row = chat(defaults, token)
    assert (row["price_source"], row["fee"], row["provider_cost"]) == ("unpriced", "0.01", None)


def test_batches_are_unmetered_in_track_mode_and_refused_for_billed_customers(defaults, mock):
    row = batch(defaults, defaults.admin_key)
    assert (row["endpoint"], row["usage_source"], row["price_source"], row["provider_cost"]) == (
        "other", "none", "unmetered", None)
    for meter_args in (PERCENTAGE_METER, FIXED_METER):
        who, token = customer_token(defaults, *meter_args)
        refused(defaults, mock, lambda: client(defaults, token).batches.create(**BATCH), "endpoint_unmetered")
        assert defaults.ledger.balance(who) == "1.00"
    usage = defaults.cli_json("usage")["totals"]
    assert usage["unmetered_requests"] >= 1 and usage["unpriced_requests"] >= 1
    assert "unmetered requests: their provider cost is not known" in defaults.cli("usage").stdout


def test_a_provider_error_on_an_unmetered_endpoint_is_not_flagged_unmetered(defaults, mock):
    mock.next_error = (400, None, None)
    with pytest.raises(openai.BadRequestError) as caught:
        client(defaults, defaults.admin_key).batches.create(**BATCH)
    row = defaults.request_row(caught.value.response.headers["x-tollgate-request-id"])
    assert (row["status"], row["usage_source"]) == (400, "none") and row["price_source"] != "unmetered"


def test_refuse_applies_in_track_mode_too(refusing, mock):
    refused(refusing, mock, lambda: client(refusing, refusing.admin_key).chat.completions.create(
        model=UNPRICED_MODEL, messages=[{"role": "user", "content": "hi"}]), "model_unpriced")
    refused(refusing, mock, lambda: client(refusing, refusing.admin_key).batches.create(**BATCH),
            "endpoint_unmetered")
    assert chat(refusing, refusing.admin_key, model="gpt-4o-mini")["price_source"] == "catalog"


def test_flag_serves_a_billed_customer_then_prices_missing_lists_the_model(flagging):
    who, token = customer_token(flagging, *PERCENTAGE_METER)
    row = chat(flagging, token)
    assert (row["price_source"], row["fee"], row["provider_cost"]) == ("unpriced", "0.00", None)
    assert batch(flagging, token)["price_source"] == "unmetered"
    model = unique("gpt-unlisted")
    for _ in range(2):
        chat(flagging, flagging.admin_key, model=model)
    missing = {r["model"]: r for r in flagging.cli_json("prices", "missing")}
    assert (missing[model]["provider"], missing[model]["requests"], missing[model]["input_tokens"],
            missing[model]["output_tokens"]) == ("openai", 2, 34, 18)
    assert missing[model]["first_seen"] <= missing[model]["last_seen"]
    assert "pricing/overrides.yaml" in flagging.cli("prices", "missing").stdout
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert flagging.cli_json("prices", "missing", "--since", tomorrow) == []


def ledger_entries(gw, request_id: str) -> list[tuple[str, int]]:
    db = connect(gw.database_url)
    try:
        return sorted(db.execute_sql("SELECT wallet_id, amount_nanos FROM ledgerentry WHERE reason = 'reprice' "
                                     "AND request_id = %s" % ("?" if gw.database_url.startswith("sqlite") else "%s"),
                                     (request_id,)).fetchall())
    finally:
        db.close()


def test_reprice_charges_what_unpriced_requests_cost_once(flagging):
    who, token = customer_token(flagging, *PERCENTAGE_METER)
    billed, tracked = chat(flagging, token), chat(flagging, flagging.admin_key)
    merchant_before = Decimal(flagging.ledger.balance())
    since = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()

    dry = flagging.cli_json("prices", "reprice", "--since", since, "--dry-run")
    assert dry["repriced"] == [] and dry["still_unpriced"] >= 2  # no price for it yet

    config = yaml.safe_load(flagging.config.read_text())
    config["prices"].append(UNRELEASED_PRICE)
    flagging.config.write_text(yaml.safe_dump(config))
    dry = flagging.cli_json("prices", "reprice", "--since", since, "--dry-run")
    assert {billed["id"], tracked["id"]} <= {r["request_id"] for r in dry["repriced"]}
    assert ledger_entries(flagging, billed["id"]) == []  # a dry run changes nothing

    result = flagging.cli_json("prices", "reprice", "--since", since)
    done = {r["request_id"]: r for r in result["repriced"]}
    cost = str(UNRELEASED_COST)
    assert (done[tracked["id"]]["provider_cost"], done[tracked["id"]]["merchant"], done[tracked["id"]]["customer"]) == (
        cost, cost, "0.00")
    # The percentage customer pays the cost plus 20%, the merchant the cost.
    assert (done[billed["id"]]["merchant"], done[billed["id"]]["customer"]) == (cost, "0.000042")
    assert flagging.ledger.balance(who) == "0.999958"
    merchant_paid = sum(Decimal(r["merchant"]) for r in result["repriced"])
    assert Decimal(flagging.ledger.balance()) == merchant_before - merchant_paid
    assert len(ledger_entries(flagging, billed["id"])) == 2

    row = flagging.request_row(billed["id"])
    assert (row["price_source"], row["provider_cost"], row["charged"], row["fee"]) == (
        "override", cost, cost, "0.000042")
    assert flagging.cli_json("prices", "reprice", "--since", since)["repriced"] == []  # a second run adds nothing
    assert flagging.ledger.balance(who) == "0.999958"
    assert len(ledger_entries(flagging, billed["id"])) == 2
    assert flagging.ledger.audit_ok() is True
    assert UNPRICED_MODEL not in {r["model"] for r in flagging.cli_json("prices", "missing")}


# -- reprice in-process: media rows and bring-your-own-key rows ----------------------------------


def test_reprice_prices_a_media_row_by_every_quantity_and_leaves_one_recorded_without_them(ledger):
    """An image row is priced again by its images and their quality and size (media_usage), not by its tokens
    alone ($0); an older row whose media were not kept whole stays unpriced rather than priced short."""
    _, wallet = ensure_account()
    credit_wallet(wallet.id, 10**9)
    media = MediaUsage(images=2, image_variant="hd/1024x1024")
    common = dict(created_at=utcnow(), account=wallet.account_id, wallet_id=wallet.id, key=None, provider="openai",
                  endpoint="images.generations", model="img-unreleased-x", status=200, usage_source="reported",
                  price_source="unpriced", images=2)
    write_batch([UsageRecord(id="req_img", media_usage=media.to_json(), **common),
                 UsageRecord(id="req_img_older", **common)], apply_charges)
    overrides = parse_overrides({"models": [{"provider": "openai", "model": "img-unreleased-*",
                                             "per_image": {"standard/1024x1024": "0.04", "hd/1024x1024": "0.08"}}]})
    done, left = reprice(since=datetime(2020, 1, 1), until=None, pricing_ids={"openai": "openai"},
                         overrides=overrides, billing=BillingSettings())
    assert (left, [(r.request_id, r.provider_cost_nanos, r.merchant_nanos) for r in done]) == (
        1, [("req_img", 160_000_000, 160_000_000)])  # 2 x $0.08
    assert wallet_balance(wallet.id) == 10**9 - 160_000_000
    rows = {row.id: row for row in RequestRow.select()}
    assert (rows["req_img"].price_source, rows["req_img_older"].price_source) == ("override", "unpriced")
    assert MediaUsage.from_json(rows["req_img"].media_usage) == media
    assert audit_wallets() == []


def test_media_usage_round_trips_through_its_json_exactly():
    media = MediaUsage(characters=12, audio_seconds=Decimal("61.25"), images=3, image_variant="hd/1024x1792",
                       megapixels=Decimal(4), search_units=2, compute_seconds=Decimal("0.000001"),
                       input_audio_tokens=7, output_audio_tokens=9, cache_audio_read_tokens=1, cache_image_read_tokens=2,
                       input_image_tokens=5, output_image_tokens=6)
    assert MediaUsage.from_json(media.to_json()) == media
    assert MediaUsage.from_json(MediaUsage(images=1).to_json()) == MediaUsage(images=1)
    assert MediaUsage(images=1).to_json() == '{"images":1}'  # only what is set


# -- reprice in-process: bring-your-own-key rows ----------------------------------------------

def test_reprice_of_a_byok_row_charges_only_the_share_of_the_cost(ledger):
    _, wallet = ensure_account()
    credit_wallet(wallet.id, 10_000_000)
    per_request = 1_000_000  # the BYOK fee's per-request part, charged when the request ran
    write_batch([UsageRecord(
        id="req_byok", created_at=utcnow(), account=wallet.account_id, wallet_id=wallet.id, key=None, provider="openai",
        endpoint="chat.completions", model=UNPRICED_MODEL, status=200, input_tokens=17, cache_read_tokens=4,
        output_tokens=9, reasoning_tokens=3, charged_nanos=per_request, usage_source="reported",
        price_source="unpriced", byok=True)], apply_charges)
    billing = BillingSettings(byok_fee_percent=Decimal(10), byok_fee_per_request_nanos=per_request)
    overrides = parse_overrides({"models": [UNRELEASED_PRICE]})
    done, left = reprice(since=datetime(2020, 1, 1), until=None, pricing_ids={"openai": "openai"},
                         overrides=overrides, billing=billing)
    assert (left, [(r.request_id, r.provider_cost_nanos, r.merchant_nanos) for r in done]) == (
        0, [("req_byok", 35_000, 3_500)])  # 10% of $0.000035
    assert wallet_balance(wallet.id) == 10_000_000 - per_request - 3_500
    assert reprice(since=datetime(2020, 1, 1), until=None, pricing_ids={"openai": "openai"}, overrides=overrides,
                   billing=billing) == ([], 0)
    assert audit_wallets() == []
