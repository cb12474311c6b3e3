"""The customers resource and the wallet over the admin API (issues 12 and 13), on SQLite and PostgreSQL: Lava's
RestCustomer with Tollgate's balance fields and limits (with the current period's fees), top-ups and their
Idempotency-Key, soft delete, roles and cross-account 404s, 422s naming the field, pagination while customers
are added, and the same answers as `tollgate customers show`."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest

from addons.admin.web import iso
from addons.auth.account_cache import AccountCache
from addons.auth.authentication import Caller
from addons.billing.plan import plan_for
from addons.core.errors import BadRequest
from addons.core.limits import Period, period_of
from addons.core.secret_formats import hash_secret
from addons.core.settings import load_settings
from addons.ledger import accounts
from addons.ledger.models import LedgerEntry, RequestRow, utcnow
from addons.services import audit, customers, meters
from pricing.money import NANOS_PER_USD
from tests.admin_api import _client
from tests.api_checks import cli_json, error, invalid

ACME = {"customer_id": "acme", "reference_id": "crm-17", "email": "ada@example.com", "phone": "+44 20 7946 0000",
        "name": "Ada King Lovelace", "metadata": {"plan": "pro", "seats": 3}}


def create(client, **fields):
    answer = client.post("/v1/customers", json=fields)
    assert answer.status_code == 201, answer.text
    return answer.json()


def entries(customer_id: str, account: str = "default") -> int:
    wallet = accounts.get_customer(account, customer_id).wallet_id
    return LedgerEntry.select().where(LedgerEntry.wallet == wallet).count()


# -- the object ----------------------------------------------------------------------------------------

def test_a_created_customer_is_lavas_rest_customer_with_tollgates_balance(api):
    created = create(api.admin, **ACME, autopay_threshold="1.5", autopay_amount="10", overdraft_limit="0.25")
    assert created.pop("created_at").endswith("Z") and created.pop("wallet_id").startswith("wal_")
    assert created == {
        "customer_id": "acme", "reference_id": "crm-17",
        "contact": {"phone": "+44 20 7946 0000", "email": "ada@example.com", "first_name": "Ada",
                    "last_name": "King Lovelace"},
        "subscription": None, "metadata": {"plan": "pro", "seats": 3}, "name": "Ada King Lovelace",
        "balance": "0.00", "available": "0.25", "holds": {"count": 0, "amount": "0.00"},
        "autopay_threshold": "1.50", "autopay_amount": "10.00", "overdraft_limit": "0.25",
        "spend_limit": None, "current_spend": None, "rate_limit": None, "tpm": None,
    }


def test_tollgate_makes_the_customer_id_and_absent_contact_fields_are_empty_strings(api):
    first, second = create(api.admin), create(api.admin, name="Prince")
    assert first["customer_id"].startswith("cus_") and first["customer_id"] != second["customer_id"]
    assert first["contact"] == {"phone": "", "email": "", "first_name": "", "last_name": ""}
    assert (first["reference_id"], first["metadata"], first["name"]) == (None, None, None)
    assert second["contact"]["first_name"] == "Prince" and second["contact"]["last_name"] == ""
    assert api.admin.get(f"/v1/customers/{first['customer_id']}").json() == first


def test_a_customer_id_taken_is_409_and_the_first_customer_stands(api):
    create(api.admin, customer_id="acme", name="First")
    assert error(api.admin.post("/v1/customers", json={"customer_id": "acme", "name": "Second"}), 409)["code"] == \
        "customer_exists"
    assert api.admin.get("/v1/customers/acme").json()["name"] == "First"
    create(api.merchant, customer_id="acme")  # another account has its own ids


def test_update_changes_what_it_names_and_null_clears(api):
    create(api.admin, **ACME, autopay_threshold="1", autopay_amount="5", overdraft_limit="2")
    updated = api.admin.patch("/v1/customers/acme", json={"name": "Grace Hopper", "email": None,
                                                          "metadata": {"tier": "gold"}, "overdraft_limit": None})
    assert updated.status_code == 200
    body = updated.json()
    assert body["contact"] == {"phone": "+44 20 7946 0000", "email": "", "first_name": "Grace", "last_name": "Hopper"}
    assert (body["name"], body["reference_id"], body["metadata"]) == ("Grace Hopper", "crm-17", {"tier": "gold"})
    assert (body["overdraft_limit"], body["autopay_threshold"]) == ("0.00", "1.00")
    cleared = api.admin.patch("/v1/customers/acme", json={"autopay_threshold": None, "autopay_amount": None,
                                                          "reference_id": None, "metadata": None}).json()
    assert (cleared["autopay_threshold"], cleared["autopay_amount"], cleared["reference_id"], cleared["metadata"]) == \
        (None, None, None, None)
    assert api.admin.get("/v1/customers/acme").json() == cleared


# -- limits --------------------------------------------------------------------------------------------

LIMITS = {"spend_limit": {"amount": "5", "cycle": "daily"}, "rate_limit": {"rpm": 10}, "tpm": 1000}


def today() -> Period:
    return period_of("day", datetime.now(UTC), load_settings().limits.zone)


def test_a_customer_takes_limits_and_answers_them_with_the_periods_use_and_reset(api):
    created = create(api.admin, customer_id="acme", **LIMITS)
    assert created["spend_limit"] == {"amount": "5.00", "cycle": "daily", "resets_at": iso(today().reset)}
    assert (created["current_spend"], created["rate_limit"], created["tpm"]) == ("0.00", {"rpm": 10}, 1000)
    assert api.admin.get("/v1/customers/acme").json() == created
    assert api.admin.get("/v1/customers").json()["data"] == [created]
    held = customers.get("default", "acme").limits  # what the gateway enforces
    assert (held.spend_limit_nanos, held.spend_cycle, held.rpm, held.tpm) == (5 * NANOS_PER_USD, "day", 10, 1000)


@pytest.mark.parametrize("field, value, shown", [
    ("spend_limit", {"amount": "7.25", "cycle": "total"}, {"amount": "7.25", "cycle": "total", "resets_at": None}),
    ("rate_limit", {"rpm": 99, "burst": None}, {"rpm": 99}),
    ("tpm", 5, 5),
])
def test_patch_changes_or_clears_one_limit_and_leaves_the_rest(api, field, value, shown):
    created = create(api.admin, customer_id="acme", name="Ada", **LIMITS)
    others = {name: created[name] for name in LIMITS if name != field}
    changed = api.admin.patch("/v1/customers/acme", json={field: value}).json()
    assert changed[field] == shown and {name: changed[name] for name in others} == others
    cleared = api.admin.patch("/v1/customers/acme", json={field: None}).json()
    assert cleared[field] is None and {name: cleared[name] for name in others} == others
    assert cleared["name"] == "Ada" and api.admin.get("/v1/customers/acme").json() == cleared
    if field == "spend_limit":
        assert cleared["current_spend"] is None  # no spend limit, no period


@pytest.mark.parametrize("body, param", [
    ({"spend_limit": {"amount": "5"}}, "spend_limit.cycle"),
    ({"spend_limit": {"amount": "5", "cycle": "fortnightly"}}, "spend_limit.cycle"),
    ({"spend_limit": {"amount": "0", "cycle": "daily"}}, "spend_limit.amount"),
    ({"spend_limit": 5}, "spend_limit"),
    ({"rate_limit": {"rpm": 0}}, "rate_limit.rpm"),
    ({"rate_limit": {"rpm": 10, "burst": 3}}, "rate_limit.burst"),  # a customer's bucket has no burst
    ({"rate_limit": {}}, "rate_limit.rpm"),
    ({"tpm": -5}, "tpm"),
    ({"request_limit": {"count": 5, "cycle": "daily"}}, "request_limit"),  # keys only
])
def test_a_bad_limit_is_422_naming_the_field(api, body, param):
    assert invalid(api.admin.post("/v1/customers", json={"customer_id": "acme", **body})) == param
    assert customers.list_customers("default") == []
    before = create(api.admin, customer_id="acme", **LIMITS)
    assert invalid(api.admin.patch("/v1/customers/acme", json={"name": "x", **body})) == param
    assert api.admin.get("/v1/customers/acme").json() == before


def test_current_spend_is_the_fees_of_the_current_period(api):
    create(api.admin, customer_id="acme", spend_limit={"amount": "5", "cycle": "daily"})
    account = accounts.find_account("default").account_id
    start, second = today().start, timedelta(seconds=1)
    rows = [(start, 1_000, "acme"), (utcnow() - second, 20_000, "acme"), (start - second, 300_000, "acme"),
            (utcnow() - second, 4_000_000, "bob")]  # before today, and another customer's: not counted
    for n, (at, fee, customer_id) in enumerate(rows):
        RequestRow.create(id=f"req_{n}", created_at=at, account=account, provider="openai", customer_id=customer_id,
                          endpoint="/v1/chat/completions", status=200, fee_nanos=fee, bill_customer=True)
    assert api.admin.get("/v1/customers/acme").json()["current_spend"] == "0.000021"
    total = api.admin.patch("/v1/customers/acme", json={"spend_limit": {"amount": "5", "cycle": "total"}}).json()
    assert total["current_spend"] == "0.000321"


# -- top-ups and the wallet ----------------------------------------------------------------------------

def test_a_top_up_is_one_ledger_entry_and_answers_the_customer(api):
    create(api.admin, customer_id="acme")
    answer = api.admin.post("/v1/customers/acme/topups", json={"amount": "2.50", "note": "invoice 17"})
    assert answer.status_code == 200 and answer.json()["customer_id"] == "acme"
    assert (answer.json()["balance"], answer.json()["available"]) == ("2.50", "2.50")
    assert api.admin.post("/v1/customers/acme/topups", json={"amount": "0.000000001"}).json()["balance"] == \
        "2.500000001"
    assert entries("acme") == 2 and audit.audit().ok


def test_the_wallet_answers_the_acting_accounts_balance_and_only_an_admin_tops_it_up(api):
    wallet = api.merchant.get("/v1/wallet").json()
    assert wallet["account"] == "shop" and wallet["balance"] == "0.00" and wallet["wallet_id"].startswith("wal_")
    assert error(api.merchant.post("/v1/wallet/topups", json={"amount": "5"}), 403)["code"] == "admin_only"
    topped = api.admin.post("/v1/wallet/topups", json={"amount": "5", "account": "shop", "note": "wire"})
    assert topped.status_code == 200 and topped.json() == {**wallet, "balance": "5.00"}
    assert api.merchant.get("/v1/wallet").json()["balance"] == "5.00"
    assert api.admin.get("/v1/wallet").json()["account"] == "default"
    assert api.admin.get("/v1/wallet?account=shop").json()["balance"] == "5.00"
    assert api.admin.post("/v1/wallet/topups", json={"amount": "1"}).json()["account"] == "default"
    assert error(api.admin.post("/v1/wallet/topups", json={"amount": "1", "account": "nobody"}), 404)["code"] == \
        "account_not_found"
    assert audit.audit().ok


def test_a_repeated_idempotency_key_credits_once_and_answers_the_same(api):
    create(api.admin, customer_id="acme")
    headers = {"Idempotency-Key": "pay-42"}
    first = api.admin.post("/v1/customers/acme/topups", json={"amount": "3"}, headers=headers)
    again = api.admin.post("/v1/customers/acme/topups", json={"amount": "3"}, headers=headers)
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    assert first.json()["balance"] == "3.00" and entries("acme") == 1
    other = api.admin.post("/v1/customers/acme/topups", json={"amount": "4"}, headers=headers)
    assert error(other, 409)["code"] == "idempotency_key_reused"
    assert api.admin.get("/v1/customers/acme").json()["balance"] == "3.00" and entries("acme") == 1
    # a wallet top-up's key is its own too
    wallet = {"Idempotency-Key": "wire-9"}
    assert [api.admin.post("/v1/wallet/topups", json={"amount": "7"}, headers=wallet).json()["balance"]
            for _ in range(2)] == ["7.00", "7.00"]


def test_top_ups_racing_with_one_idempotency_key_credit_once(api):
    create(api.admin, customer_id="acme")
    clients = [_client(api.admin.app, api.admin_key) for _ in range(6)]
    start, answers = threading.Barrier(len(clients)), []

    def pay(client):
        start.wait()
        answers.append(client.post("/v1/customers/acme/topups", json={"amount": "5"},
                                   headers={"Idempotency-Key": "race-1"}))

    threads = [threading.Thread(target=pay, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [answer.status_code for answer in answers] == [200] * len(clients)
    assert {answer.json()["balance"] for answer in answers} == {"5.00"}
    assert entries("acme") == 1 and api.admin.get("/v1/customers/acme").json()["balance"] == "5.00"


def test_a_repeated_creation_with_its_key_makes_one_customer(api):
    headers = {"Idempotency-Key": "signup-1"}
    first = api.merchant.post("/v1/customers", json={"name": "Ada"}, headers=headers)
    again = api.merchant.post("/v1/customers", json={"name": "Ada"}, headers=headers)
    assert first.status_code == again.status_code == 201 and first.json() == again.json()
    assert len(api.merchant.get("/v1/customers").json()["data"]) == 1


# -- delete --------------------------------------------------------------------------------------------

def test_a_deleted_customer_is_gone_from_the_api_but_its_wallet_and_entries_stay(api):
    create(api.admin, customer_id="acme")
    create(api.admin, customer_id="bob")
    api.admin.post("/v1/customers/acme/topups", json={"amount": "2"})
    assert api.admin.delete("/v1/customers/acme").json() == {"id": "acme", "deleted": True, "success": True}
    for answer in (api.admin.get("/v1/customers/acme"), api.admin.patch("/v1/customers/acme", json={"name": "x"}),
                   api.admin.post("/v1/customers/acme/topups", json={"amount": "1"}),
                   api.admin.delete("/v1/customers/acme")):
        assert error(answer, 404)["code"] == "customer_not_found"
    assert [c["customer_id"] for c in api.admin.get("/v1/customers").json()["data"]] == ["bob"]
    assert [c.customer_id for c in customers.list_customers("default")] == ["bob"]
    again = api.admin.post("/v1/customers", json={"customer_id": "acme"})
    assert error(again, 409)["code"] == "customer_deleted"
    assert LedgerEntry.select().count() == 1 and audit.audit().ok  # the payment stays on the books


def test_requests_naming_a_deleted_customer_are_refused_as_an_unknown_one(api):
    meters.create("default", "chat", rate_type="fixed", unit="requests", tiers=["0:0.01"])
    create(api.admin, customer_id="acme")
    key = accounts.find_key(hash_secret(api.admin_key))

    async def plan():
        cache = AccountCache(ttl=0)
        try:
            return await plan_for(Caller(key, customer_id="acme", meter_slug="chat"), cache)
        finally:
            cache.close()

    assert asyncio.run(plan()).customer.customer_id == "acme"
    api.admin.delete("/v1/customers/acme")
    with pytest.raises(BadRequest) as refused:
        asyncio.run(plan())
    assert refused.value.code == "unknown_customer"


# -- roles and accounts --------------------------------------------------------------------------------

def test_an_account_key_cannot_reach_another_accounts_customer_by_id(api):
    create(api.admin, customer_id="acme", name="Ada")
    api.admin.post("/v1/customers/acme/topups", json={"amount": "1"})
    for answer in (api.merchant.get("/v1/customers/acme"),
                   api.merchant.patch("/v1/customers/acme", json={"name": "Mallory"}),
                   api.merchant.post("/v1/customers/acme/topups", json={"amount": "100"}),
                   api.merchant.delete("/v1/customers/acme")):
        assert error(answer, 404)["code"] == "customer_not_found"
    # naming the other account is as unknown as the customer
    assert error(api.merchant.get("/v1/customers/acme?account=default"), 404)["code"] == "account_not_found"
    assert error(api.merchant.post("/v1/customers", json={"account": "default"}), 404)["code"] == "account_not_found"
    assert api.merchant.get("/v1/customers").json() == {"data": [], "has_more": False, "next_cursor": None}
    after = api.admin.get("/v1/customers/acme").json()
    assert (after["name"], after["balance"]) == ("Ada", "1.00") and entries("acme") == 1


def test_an_admin_key_acts_on_another_account_it_names(api):
    created = create(api.admin, customer_id="c1", account="shop")
    assert api.merchant.get("/v1/customers/c1").json() == created
    assert api.admin.get("/v1/customers/c1?account=shop").json() == created
    assert error(api.admin.get("/v1/customers/c1"), 404)["code"] == "customer_not_found"  # not in its own account
    assert api.admin.post("/v1/customers/c1/topups?account=shop", json={"amount": "1"}).json()["balance"] == "1.00"


def test_without_a_key_nothing_is_answered(api):
    for answer in (api.anonymous.get("/v1/customers"), api.anonymous.post("/v1/customers", json={}),
                   api.anonymous.get("/v1/wallet")):
        assert error(answer, 401)["code"] == "missing_secret_key"


# -- validation ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, field", [
    ({"amount": "abc"}, "amount"),
    ({"amount": "-1"}, "amount"),
    ({"amount": "0"}, "amount"),
    ({"amount": "0.0000000001"}, "amount"),  # finer than a nano-dollar
    ({"amount": True}, "amount"),
    ({}, "amount"),
    ({"amount": "1", "memo": "x"}, "memo"),
    ({"amount": "1", "note": 5}, "note"),
])
def test_a_bad_top_up_is_422_naming_the_field_and_credits_nothing(api, body, field):
    create(api.admin, customer_id="acme")
    assert invalid(api.admin.post("/v1/customers/acme/topups", json=body)) == field
    assert entries("acme") == 0


@pytest.mark.parametrize("body, field", [
    ({"metadata": ["not", "an", "object"]}, "metadata"),
    ({"metadata": "text"}, "metadata"),
    ({"nickname": "x"}, "nickname"),
    ({"email": 42}, "email"),
    ({"customer_id": "a/b"}, "customer_id"),
    ({"customer_id": ""}, "customer_id"),
    ({"autopay_threshold": "1"}, "autopay_amount"),  # a threshold without the amount to buy
    ({"autopay_threshold": "0", "autopay_amount": "5"}, "autopay_threshold"),
    ({"overdraft_limit": "-1"}, "overdraft_limit"),
    ({"account": 7}, "account"),
])
def test_a_bad_customer_is_422_naming_the_field_and_nothing_is_created(api, body, field):
    assert invalid(api.admin.post("/v1/customers", json=body)) == field
    assert customers.list_customers("default") == []


@pytest.mark.parametrize("body, field", [
    ({"metadata": [1]}, "metadata"),
    ({"customer_id": "other"}, "customer_id"),  # the id is not changed
    ({"autopay_amount": None}, "autopay_amount"),  # would leave the threshold alone
    ({"overdraft_limit": "lots"}, "overdraft_limit"),
])
def test_a_bad_update_is_422_and_changes_nothing(api, body, field):
    before = create(api.admin, customer_id="acme", autopay_threshold="1", autopay_amount="5")
    assert invalid(api.admin.patch("/v1/customers/acme", json=body)) == field
    assert api.admin.get("/v1/customers/acme").json() == before


# -- pagination ----------------------------------------------------------------------------------------

def test_pages_neither_skip_nor_repeat_a_customer_while_customers_are_added(api):
    made = [create(api.merchant, customer_id=f"c{i:02}")["customer_id"] for i in range(25)]
    seen, cursor, pages = [], None, 0
    while True:
        page = api.merchant.get("/v1/customers", params={"limit": 10, **({"cursor": cursor} if cursor else {})}).json()
        seen += [c["customer_id"] for c in page["data"]]
        pages += 1
        if pages == 1:
            create(api.merchant, customer_id="late")  # newer than every page still to come
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert pages == 3 and seen == made[::-1]  # newest first, each once
    assert api.merchant.get("/v1/customers").json()["data"][0]["customer_id"] == "late"
    assert invalid(api.merchant.get("/v1/customers?limit=0")) == "limit"
    assert invalid(api.merchant.get("/v1/customers?cursor=nonsense")) == "cursor"


# -- the CLI answers the same --------------------------------------------------------------------------

def test_the_cli_and_the_api_answer_the_same_for_one_customer(api, ledger, capsys):
    created = create(api.admin, customer_id="acme", autopay_threshold="1", autopay_amount="10", overdraft_limit="0.5")
    api.admin.post("/v1/customers/acme/topups", json={"amount": "3.25"})
    shown = cli_json(ledger, capsys, "customers", "show", "acme")
    answered = api.admin.get("/v1/customers/acme").json()
    for field in ("customer_id", "balance", "autopay_threshold", "autopay_amount", "overdraft_limit", "holds"):
        assert shown[field] == answered[field], field
    assert shown["wallet"] == answered["wallet_id"] == created["wallet_id"]
    cli_json(ledger, capsys, "customers", "topup", "acme", "1")
    assert api.admin.get("/v1/customers/acme").json()["balance"] == "4.25"
    made_by_cli = cli_json(ledger, capsys, "customers", "create", "from-cli", "--balance", "2")
    assert api.admin.get("/v1/customers/from-cli").json()["balance"] == made_by_cli["balance"] == "2.00"
    listed = cli_json(ledger, capsys, "customers", "list")
    assert sorted(c["customer_id"] for c in listed) == sorted(
        c["customer_id"] for c in api.admin.get("/v1/customers").json()["data"])


# -- an older ledger -----------------------------------------------------------------------------------

NEW_COLUMNS = {"customer": ("reference_id", "email", "phone", "name", "metadata", "deleted_at"),
               "meter": ("name", "deleted_at")}


def test_an_older_ledgers_customers_and_meters_get_the_new_columns_and_stay_live(api, ledger, capsys):
    create(api.admin, customer_id="acme")
    meters.create("default", "chat", rate_type="fixed", unit="requests", tiers=["0:0.01"])
    for table, columns in NEW_COLUMNS.items():  # the previous release's ledger
        for column in columns:
            ledger.execute_sql(f'ALTER TABLE "{table}" DROP COLUMN "{column}"')
    cli_json(ledger, capsys, "customers", "list")  # opening the ledger adds what it lacks
    for table, columns in NEW_COLUMNS.items():
        assert set(columns) <= {column.name for column in ledger.get_columns(table)}
    customer = api.admin.get("/v1/customers/acme").json()
    assert (customer["name"], customer["contact"]["email"], customer["metadata"]) == (None, "", None)
    assert api.admin.get("/v1/meters/chat").json()["name"] == "chat"
    assert accounts.find_customer(accounts.find_account("default").account_id, "acme") is not None
