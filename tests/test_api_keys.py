"""The `secret_keys` and `spend_keys` resources (issues 12 and 13) on both ledgers: every route, roles and
cross-account 404s, secrets only in the answers that make them (never in lists, retrieves or the idempotency
store), rotation, and limits: set, changed, cleared, refused naming the field, and the current period's use."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from playhouse.db_url import connect

from addons.admin import openapi
from addons.admin.web import iso
from addons.cli.main import main
from addons.core.limits import Period, period_of
from addons.core.secret_formats import hash_secret
from addons.core.settings import load_settings
from addons.ledger import accounts
from addons.ledger.models import ApiKey, IdempotencyRow, RequestRow, database, open_database, utcnow
from addons.services import keys
from pricing.money import NANOS_PER_USD, format_usd
from tests.api_checks import invalid
from tests.harness import fresh_postgres_database

SPEND_KEY_FIELDS = {"spend_key_id", "key_preview", "name", "status", "request_shape", "wallet_id", "allowed_models",
                    "allowed_providers", "spend_limit", "current_spend", "total_spend", "request_limit",
                    "current_requests", "total_requests", "rate_limit", "expires_at", "last_used_at", "created_at",
                    "tpm", "revoked_at"}


def error(answer) -> tuple[int, str]:
    return answer.status_code, answer.json()["error"]["code"]


def spend_key(api, client=None, **fields) -> dict:
    answer = (client or api.admin).post("/v1/spend_keys", json={"name": "team-a", **fields})
    assert answer.status_code == 201, answer.text
    return answer.json()


# -- secret keys ----------------------------------------------------------------------------

def test_secret_keys_list_the_acting_accounts_keys_with_hints_never_secrets(api):
    listed = api.merchant.get("/v1/secret_keys")
    assert listed.status_code == 200
    [key] = listed.json()["data"]
    assert (key["name"], key["role"], key["revoked_at"]) == ("shop-backend", "account", None)
    assert api.merchant_key.startswith(key["secret_key_hint"].rstrip("…")) and len(key["secret_key_hint"]) < 12
    assert api.merchant_key not in listed.text and "secret_key" not in key
    assert [k["name"] for k in api.admin.get("/v1/secret_keys").json()["data"]] == ["admin"]
    assert [k["name"] for k in api.admin.get("/v1/secret_keys?account=shop").json()["data"]] == ["shop-backend"]


def test_a_created_secret_key_is_in_the_answer_only_and_works(api):
    answer = api.merchant.post("/v1/secret_keys", json={"name": "ci"})
    assert answer.status_code == 201
    created = answer.json()
    assert set(created) == {"secret_key_id", "name", "secret_key_hint", "created_at", "role", "revoked_at",
                            "secret_key"}
    assert created["role"] == "account" and created["created_at"].endswith("Z")
    secret = created["secret_key"]
    assert secret.startswith(created["secret_key_hint"].rstrip("…"))
    listed = api.client(secret).get("/v1/secret_keys")  # it works, on its own account
    assert listed.status_code == 200 and secret not in listed.text
    assert {k["secret_key_id"] for k in listed.json()["data"]} == {created["secret_key_id"],
                                                                   keys.owner_of(api.merchant_key).key_id}


def test_only_an_admin_key_creates_an_admin_key(api):
    assert error(api.merchant.post("/v1/secret_keys", json={"name": "ops", "role": "admin"})) == (403, "admin_only")
    made = api.admin.post("/v1/secret_keys", json={"name": "ops", "role": "admin", "account": "shop"}).json()
    assert made["role"] == "admin" and keys.owner_of(made["secret_key"]).account == "shop"


@pytest.mark.parametrize("body, field", [({}, "name"), ({"name": ""}, "name"), ({"name": "x", "role": "owner"}, "role"),
                                         ({"name": "x", "scope": "all"}, "scope")])
def test_a_bad_secret_key_request_is_422_naming_the_field(api, body, field):
    answer = api.merchant.post("/v1/secret_keys", json=body)
    assert error(answer) == (422, "invalid_field") and answer.json()["error"]["param"] == field
    assert len(keys.list_keys()) == 2  # nothing made


def test_deleting_a_secret_key_revokes_it_and_another_accounts_key_is_404(api):
    admin_key_id = keys.owner_of(api.admin_key).key_id
    assert error(api.merchant.delete(f"/v1/secret_keys/{admin_key_id}")) == (404, "key_not_found")
    secret = api.merchant.post("/v1/secret_keys", json={"name": "ci"}).json()
    answer = api.merchant.delete(f"/v1/secret_keys/{secret['secret_key_id']}")
    assert answer.status_code == 200 and answer.json() == {"id": secret["secret_key_id"], "deleted": True}
    assert error(api.client(secret["secret_key"]).get("/v1/secret_keys")) == (401, "invalid_secret_key")
    listed = {k["secret_key_id"]: k for k in api.merchant.get("/v1/secret_keys").json()["data"]}
    assert listed[secret["secret_key_id"]]["revoked_at"].endswith("Z")
    assert api.admin.get("/v1/secret_keys").status_code == 200  # the admin key is untouched


def test_an_account_key_cannot_revoke_its_accounts_admin_key(api):
    app = keys.create_key("app")  # an account key in the admin key's own account
    admin_key_id = keys.owner_of(api.admin_key).key_id
    assert error(api.client(app.secret_key).delete(f"/v1/secret_keys/{admin_key_id}")) == (403, "admin_only")
    assert api.admin.get("/v1/secret_keys").status_code == 200


def test_idempotent_creation_never_stores_the_secret_and_a_repeat_is_409(api):
    headers = {"Idempotency-Key": "create-ci-1"}
    first = api.merchant.post("/v1/secret_keys", json={"name": "ci"}, headers=headers)
    assert first.status_code == 201 and first.json()["secret_key"].startswith("tg_sk_")
    repeat = api.merchant.post("/v1/secret_keys", json={"name": "ci"}, headers=headers)
    assert error(repeat) == (409, "secret_shown_once")
    assert first.json()["secret_key_id"] in repeat.json()["error"]["message"]
    assert first.json()["secret_key"] not in repeat.text
    assert [k.name for k in keys.list_keys()].count("ci") == 1
    [stored] = IdempotencyRow.select()
    assert first.json()["secret_key"] not in stored.response and "secret_key_id" in stored.response
    other = api.merchant.post("/v1/secret_keys", json={"name": "other"}, headers=headers)
    assert error(other) == (409, "idempotency_key_reused")


# -- spend keys -----------------------------------------------------------------------------

def test_a_spend_key_is_lavas_shape_and_its_key_is_in_the_create_answer_only(api):
    created = spend_key(api, allowed_models=["gpt-4o*"], allowed_providers=["openai"],
                        expires_at="2099-01-01T00:00:00Z", spend_limit=None, request_shape="openai")
    assert set(created) == SPEND_KEY_FIELDS | {"key"} and created["key"].startswith("tg_sk_")
    assert created["key"].startswith(created["key_preview"].rstrip("…"))
    assert (created["status"], created["request_shape"], created["allowed_models"], created["allowed_providers"]) == (
        "active", "openai", ["gpt-4o*"], ["openai"])
    assert (created["spend_limit"], created["request_limit"], created["rate_limit"]) == (None, None, None)
    assert (created["current_spend"], created["total_spend"], created["total_requests"]) == ("0.00", "0.00", 0)
    assert created["expires_at"] == "2099-01-01T00:00:00.000Z" and created["last_used_at"] is None
    assert created["wallet_id"].startswith("wal_")
    retrieved = api.admin.get(f"/v1/spend_keys/{created['spend_key_id']}")
    listed = api.admin.get("/v1/spend_keys")
    for answer in (retrieved, listed):
        assert answer.status_code == 200 and created["key"] not in answer.text and '"key"' not in answer.text
    assert retrieved.json() == {k: v for k, v in created.items() if k != "key"}
    assert [k["spend_key_id"] for k in listed.json()["data"]] == [created["spend_key_id"]]


def test_spend_keys_and_secret_keys_are_apart(api):
    spend = spend_key(api)
    assert [k["name"] for k in api.admin.get("/v1/secret_keys").json()["data"]] == ["admin"]
    assert error(api.admin.delete(f"/v1/secret_keys/{spend['spend_key_id']}")) == (404, "key_not_found")
    admin_key_id = keys.owner_of(api.admin_key).key_id
    assert error(api.admin.get(f"/v1/spend_keys/{admin_key_id}")) == (404, "key_not_found")
    # a spend key pays for gateway requests; it cannot call this API (and mint itself an unrestricted key)
    assert error(api.client(spend["key"]).post("/v1/secret_keys", json={"name": "x"})) == (403, "secret_key_required")


# -- limits -------------------------------------------------------------------------------

EVERY_LIMIT = {"spend_limit": {"amount": "10", "cycle": "monthly"}, "request_limit": {"count": 50, "cycle": "daily"},
               "rate_limit": {"rpm": 60, "burst": 5}, "tpm": 10000}


def period(cycle: str) -> Period:
    """The current period of `cycle`, as the API reads it."""
    return period_of(cycle, datetime.now(UTC), load_settings().limits.zone)


def test_a_spend_key_takes_every_limit_and_answers_each_with_its_reset(api):
    created = spend_key(api, **EVERY_LIMIT)
    month, day = period("month"), period("day")
    assert created["spend_limit"] == {"amount": "10.00", "cycle": "monthly", "resets_at": iso(month.reset)}
    assert created["request_limit"] == {"count": 50, "cycle": "daily", "resets_at": iso(day.reset)}
    assert (created["rate_limit"], created["tpm"]) == ({"rpm": 60, "burst": 5}, 10000)
    assert (created["current_spend"], created["current_requests"]) == ("0.00", 0)
    path = f"/v1/spend_keys/{created['spend_key_id']}"
    assert api.admin.get(path).json() == {k: v for k, v in created.items() if k != "key"}
    assert api.admin.get("/v1/spend_keys").json()["data"][0]["spend_limit"] == created["spend_limit"]
    held = keys.account_key("default", created["spend_key_id"], "spend").limits  # what the gateway enforces
    assert (held.spend_limit_nanos, held.spend_cycle, held.request_limit, held.request_cycle) == (
        10 * NANOS_PER_USD, "month", 50, "day")
    assert (held.rpm, held.burst, held.tpm) == (60, 5, 10000)


@pytest.mark.parametrize("field, value, shown", [
    ("spend_limit", {"amount": "2.5", "cycle": "week"}, {"amount": "2.50", "cycle": "weekly"}),
    ("request_limit", {"count": 7, "cycle": "total"}, {"count": 7, "cycle": "total", "resets_at": None}),
    ("rate_limit", {"rpm": 30}, {"rpm": 30, "burst": None}),
    ("tpm", 500, 500),
])
def test_update_changes_or_clears_one_limit_and_leaves_the_others(api, field, value, shown):
    created = spend_key(api, **EVERY_LIMIT)
    path = f"/v1/spend_keys/{created['spend_key_id']}"
    others = {name: created[name] for name in EVERY_LIMIT if name != field}
    changed = api.admin.put(path, json={field: value}).json()
    if field == "spend_limit":  # Tollgate's name for the cycle is taken, and answered in Lava's
        assert changed[field].pop("resets_at") == iso(period("week").reset)
    assert changed[field] == shown and {name: changed[name] for name in others} == others
    cleared = api.admin.put(path, json={field: None, "name": "renamed"}).json()
    assert cleared[field] is None and cleared["name"] == "renamed"
    assert {name: cleared[name] for name in others} == others
    assert api.admin.get(path).json() == cleared
    assert api.admin.put(path, json={}).json() == cleared  # what is left out stays


@pytest.mark.parametrize("body, param", [
    ({"spend_limit": {"amount": "10"}}, "spend_limit.cycle"),
    ({"spend_limit": {"amount": "10", "cycle": "hourly"}}, "spend_limit.cycle"),
    ({"spend_limit": {"cycle": "daily"}}, "spend_limit.amount"),
    ({"spend_limit": {"amount": "0", "cycle": "daily"}}, "spend_limit.amount"),
    ({"spend_limit": {"amount": "-1", "cycle": "daily"}}, "spend_limit.amount"),
    ({"spend_limit": {"amount": "ten", "cycle": "daily"}}, "spend_limit.amount"),
    ({"spend_limit": {"amount": "1", "cycle": "daily", "currency": "EUR"}}, "spend_limit.currency"),
    ({"spend_limit": "10"}, "spend_limit"),
    ({"request_limit": {"count": 0, "cycle": "daily"}}, "request_limit.count"),
    ({"request_limit": {"count": 1.5, "cycle": "daily"}}, "request_limit.count"),
    ({"request_limit": {"count": "5", "cycle": "daily"}}, "request_limit.count"),
    ({"request_limit": {"count": 5}}, "request_limit.cycle"),
    ({"request_limit": [5, "daily"]}, "request_limit"),
    ({"rate_limit": {"burst": 5}}, "rate_limit.rpm"),
    ({"rate_limit": {"rpm": -1}}, "rate_limit.rpm"),
    ({"rate_limit": {"rpm": 60, "burst": 0}}, "rate_limit.burst"),
    ({"rate_limit": {"rpm": 2**31}}, "rate_limit.rpm"),
    ({"tpm": 0}, "tpm"),
    ({"tpm": True}, "tpm"),
    ({"tpm": "1000"}, "tpm"),
])
def test_a_bad_limit_is_422_naming_the_field_and_changes_nothing(api, body, param):
    answer = api.admin.post("/v1/spend_keys", json={"name": "capped", **body})
    assert invalid(answer) == param
    assert api.admin.get("/v1/spend_keys").json()["data"] == []  # nothing made
    key = spend_key(api, **EVERY_LIMIT)
    path = f"/v1/spend_keys/{key['spend_key_id']}"
    assert invalid(api.admin.put(path, json={**body, "status": "paused"})) == param
    assert api.admin.get(path).json() == {k: v for k, v in key.items() if k != "key"}  # unchanged


def add_request(key_id: str, n: int, at: datetime, charged: int) -> None:
    row = ApiKey.get_by_id(key_id)
    RequestRow.create(id=f"req_{key_id}_{n}", created_at=at, account=row.account_id, key=row, provider="openai",
                      endpoint="/v1/chat/completions", status=200, charged_nanos=charged)


def test_current_figures_are_the_limits_periods_and_without_a_limit_the_keys_life(api):
    key = spend_key(api, spend_limit={"amount": "100", "cycle": "daily"},
                    request_limit={"count": 99, "cycle": "monthly"})
    path = f"/v1/spend_keys/{key['spend_key_id']}"
    day, month = period("day").start, period("month").start
    second = timedelta(seconds=1)
    rows = [(day, 1_000_000), (day - second, 20_000_000), (month - second, 300_000_000), (datetime(2020, 1, 1), 4),
            (utcnow() - second, 5_000)]
    for n, (at, charged) in enumerate(rows):
        add_request(key["spend_key_id"], n, at, charged)
    got = api.admin.get(path).json()
    in_day = [charged for at, charged in rows if at >= day]
    assert got["current_spend"] == format_usd(sum(in_day)) == "0.001005"  # the period's start is in it
    assert got["current_requests"] == len([at for at, _ in rows if at >= month]) >= 2
    assert (got["total_spend"], got["total_requests"]) == (format_usd(sum(c for _, c in rows)), len(rows))
    assert api.admin.get("/v1/spend_keys").json()["data"][0]["current_spend"] == got["current_spend"]
    total = api.admin.put(path, json={"spend_limit": {"amount": "100", "cycle": "total"}}).json()
    assert total["current_spend"] == total["total_spend"] and total["spend_limit"]["resets_at"] is None
    lifetime = api.admin.put(path, json={"spend_limit": None, "request_limit": None}).json()
    assert (lifetime["current_spend"], lifetime["current_requests"]) == (got["total_spend"], len(rows))


def test_the_openapi_document_describes_the_limit_objects(api):
    body = openapi.document()["paths"]["/v1/spend_keys/{spend_key_id}"]["put"]["requestBody"]
    fields = body["content"]["application/json"]["schema"]["properties"]
    assert set(fields["spend_limit"]["properties"]) == {"amount", "cycle"}
    assert "monthly" in fields["request_limit"]["properties"]["cycle"]["enum"]
    assert set(fields["rate_limit"]["properties"]) == {"rpm", "burst"} and "null" in fields["tpm"]["type"]


@pytest.mark.parametrize("body, field", [
    ({}, "name"),
    ({"name": "x", "status": "frozen"}, "status"),
    ({"name": "x", "allowed_models": []}, "allowed_models"),
    ({"name": "x", "allowed_models": "gpt-4o"}, "allowed_models"),
    ({"name": "x", "allowed_models": ["gpt-*-mini"]}, "allowed_models"),
    ({"name": "x", "allowed_providers": ["openai", "nope"]}, "allowed_providers"),
    ({"name": "x", "expires_at": "next tuesday"}, "expires_at"),
    ({"name": "x", "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),  # already passed
    ({"name": "x", "request_shape": "anthropic"}, "request_shape"),
    ({"name": "x", "budget": 3}, "budget"),
])
def test_a_bad_spend_key_request_is_422_naming_the_field(api, body, field):
    answer = api.admin.post("/v1/spend_keys", json=body)
    assert error(answer) == (422, "invalid_field") and answer.json()["error"]["param"] == field


def test_update_pauses_scopes_and_clears(api):
    key = spend_key(api, allowed_models=["gpt-4o"])
    path = f"/v1/spend_keys/{key['spend_key_id']}"
    updated = api.admin.put(path, json={"name": "team-b", "status": "paused", "allowed_providers": ["openai"],
                                        "expires_at": "2030-06-01T12:00:00+02:00"}).json()
    assert (updated["name"], updated["status"], updated["allowed_models"], updated["allowed_providers"]) == (
        "team-b", "paused", ["gpt-4o"], ["openai"])
    assert updated["expires_at"] == "2030-06-01T10:00:00.000Z"
    cleared = api.admin.put(path, json={"status": "active", "allowed_models": None, "expires_at": None}).json()
    assert (cleared["status"], cleared["allowed_models"], cleared["allowed_providers"], cleared["expires_at"]) == (
        "active", None, ["openai"], None)
    assert api.admin.get(path).json() == cleared


def test_revoke_then_the_key_cannot_be_changed_or_rotated(api):
    key = spend_key(api)
    path = f"/v1/spend_keys/{key['spend_key_id']}"
    answer = api.admin.delete(path)
    assert answer.status_code == 200 and answer.json() == {"success": True, "id": key["spend_key_id"], "deleted": True}
    assert api.admin.delete(path).json()["deleted"] is True  # once is enough; again changes nothing
    assert api.admin.get(path).json()["revoked_at"].endswith("Z")
    assert error(api.admin.put(path, json={"status": "active"})) == (409, "key_revoked")
    assert error(api.admin.post(path + "/rotate")) == (409, "key_revoked")


def test_rotate_gives_a_new_secret_and_the_old_one_stops_working(api):
    key = spend_key(api)
    rotated = api.admin.post(f"/v1/spend_keys/{key['spend_key_id']}/rotate")
    assert rotated.status_code == 200
    new = rotated.json()
    assert new["spend_key_id"] == key["spend_key_id"] and new["key"] != key["key"]
    assert new["key"].startswith(new["key_preview"].rstrip("…"))
    assert error(api.client(key["key"]).get("/v1/spend_keys")) == (401, "invalid_secret_key")  # unknown now
    assert error(api.client(new["key"]).get("/v1/spend_keys")) == (403, "secret_key_required")  # known: a spend key
    assert new["key"] not in api.admin.get("/v1/spend_keys").text


def test_another_accounts_spend_key_is_404_on_every_route(api):
    key = spend_key(api)  # the default account's
    path = f"/v1/spend_keys/{key['spend_key_id']}"
    for answer in (api.merchant.get(path), api.merchant.put(path, json={"status": "paused"}),
                   api.merchant.delete(path), api.merchant.post(path + "/rotate")):
        assert error(answer) == (404, "key_not_found")
    assert error(api.merchant.get(path + "?account=default")) == (404, "account_not_found")
    assert api.merchant.get("/v1/spend_keys").json()["data"] == []
    assert api.admin.get(path).json()["status"] == "active"  # untouched
    mine = spend_key(api, api.merchant)
    assert api.admin.get(f"/v1/spend_keys/{mine['spend_key_id']}?account=shop").status_code == 200


def test_spend_totals_are_the_keys_requests_in_the_ledger(api):
    key = spend_key(api)
    row = ApiKey.get_by_id(key["spend_key_id"])
    for n, (charged, at) in enumerate([(1_500_000, datetime(2026, 1, 2)), (250_000_000, datetime(2026, 1, 3))]):
        RequestRow.create(id=f"req_{n}", created_at=at, account=row.account_id, key=row, provider="openai",
                          endpoint="/v1/chat/completions", status=200, charged_nanos=charged)
    got = api.admin.get(f"/v1/spend_keys/{key['spend_key_id']}").json()
    assert (got["total_spend"], got["current_spend"]) == ("0.2515", "0.2515")
    assert (got["total_requests"], got["current_requests"]) == (2, 2)
    assert got["last_used_at"] == "2026-01-03T00:00:00.000Z"
    assert api.admin.get("/v1/spend_keys").json()["data"][0]["total_spend"] == "0.2515"


def test_spend_keys_page_newest_first(api):
    made = [spend_key(api, name=f"k{n}")["spend_key_id"] for n in range(3)]
    first = api.admin.get("/v1/spend_keys?limit=2").json()
    assert first["has_more"] is True and len(first["data"]) == 2
    rest = api.admin.get(f"/v1/spend_keys?limit=2&cursor={first['next_cursor']}").json()
    assert rest["has_more"] is False
    assert [k["spend_key_id"] for k in first["data"] + rest["data"]] == made[::-1]


def test_idempotent_spend_key_creation_keeps_no_key(api):
    headers = {"Idempotency-Key": "sk-1"}
    first = api.admin.post("/v1/spend_keys", json={"name": "team"}, headers=headers)
    assert first.status_code == 201
    assert error(api.admin.post("/v1/spend_keys", json={"name": "team"}, headers=headers)) == (409, "secret_shown_once")
    assert len(api.admin.get("/v1/spend_keys").json()["data"]) == 1
    assert all(first.json()["key"] not in row.response for row in IdempotencyRow.select())


# -- the ledger and the CLI -----------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def old_ledger_url(request, tmp_path):
    yield (f"sqlite:///{tmp_path}/old.db" if request.param == "sqlite"
           else fresh_postgres_database("tollgate_key_columns_migration"))
    if not database.is_closed():
        database.close()
    database.initialize(None)


def test_an_older_ledger_gets_the_key_columns_and_its_keys_stay_plain_secret_keys(old_ledger_url):
    db = open_database(old_ledger_url)
    row, secret = accounts.create_key("ci")
    db.close()
    old = connect(old_ledger_url)  # the previous release's ledger
    for column in ("kind", "status", "allowed_models", "allowed_providers", "expires_at"):
        old.execute_sql(f'ALTER TABLE "apikey" DROP COLUMN "{column}"')
    old.close()
    db = open_database(old_ledger_url)
    record = accounts.find_key(hash_secret(secret))
    assert (record.key_id, record.kind, record.status, record.expires_at) == (row.id, "secret", "active", None)
    assert (record.allowed_models, record.allowed_providers) == ((), ())
    # a process of the previous release, still running, inserts keys without them: plain active secret keys
    db.execute_sql("INSERT INTO apikey (id, account_id, name, key_hash, prefix, created_at) "
                   f"VALUES ('key_old', '{row.account_id}', 'legacy', 'h', 'p', '2026-01-01')")
    assert (ApiKey.get_by_id("key_old").kind, ApiKey.get_by_id("key_old").status) == ("secret", "active")
    db.close()


def test_cli_keys_list_shows_status_only_where_a_key_is_not_active(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("TOLLGATE_DATABASE_URL", url)
    open_database(url)
    app = keys.create_key("app")
    main(["keys", "list"])
    plain = capsys.readouterr().out
    assert "app" in plain and "status" not in plain and "paused" not in plain
    keys.create_spend_key("team", status="paused")
    keys.update_key("default", app.id, "secret", expires_at=datetime(2020, 1, 1))
    main(["keys", "list"])
    lines = capsys.readouterr().out.splitlines()
    assert "status" in next(line for line in lines if "prefix" in line)
    assert "expired" in next(line for line in lines if " app " in line)
    team = next(line for line in lines if " team " in line)
    assert "paused" in team and "spend" in team
    main(["keys", "list", "--json"])
    listed = {k["name"]: k for k in json.loads(capsys.readouterr().out)}
    assert (listed["team"]["kind"], listed["team"]["status"], listed["app"]["kind"]) == ("spend", "paused", "secret")
    database.close()
    database.initialize(None)
