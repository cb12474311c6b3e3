"""The `secret_keys` and `spend_keys` resources (issue 12) on both ledgers: every route, roles and cross-account
404s, secrets only in the answers that make them (never in lists, retrieves or the idempotency store), limits
answered 422 `not_yet_supported`, and rotation."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from playhouse.db_url import connect

from addons.cli.main import main
from addons.core.secret_formats import hash_secret
from addons.ledger import accounts
from addons.ledger.models import ApiKey, IdempotencyRow, RequestRow, database, open_database
from addons.services import keys
from tests.harness import fresh_postgres_database

SPEND_KEY_FIELDS = {"spend_key_id", "key_preview", "name", "status", "request_shape", "wallet_id", "allowed_models",
                    "allowed_providers", "spend_limit", "current_spend", "total_spend", "request_limit",
                    "current_requests", "total_requests", "rate_limit", "expires_at", "last_used_at", "created_at"}


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
    assert SPEND_KEY_FIELDS <= set(created) and created["key"].startswith("tg_sk_")
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


@pytest.mark.parametrize("field, value", [("spend_limit", {"amount": "10.00", "cycle": "monthly"}),
                                          ("request_limit", {"count": 50, "cycle": "daily"}),
                                          ("rate_limit", {"rpm": 60, "burst": None}), ("tpm", 10000)])
def test_limits_are_422_not_yet_supported_naming_the_field(api, field, value):
    answer = api.admin.post("/v1/spend_keys", json={"name": "capped", field: value})
    assert error(answer) == (422, "not_yet_supported") and answer.json()["error"]["param"] == field
    assert field in answer.json()["error"]["message"]
    assert api.admin.get("/v1/spend_keys").json()["data"] == []  # nothing made
    key = spend_key(api, **{field: None})  # null is no limit: accepted
    answer = api.admin.put(f"/v1/spend_keys/{key['spend_key_id']}", json={field: value, "status": "paused"})
    assert error(answer) == (422, "not_yet_supported") and answer.json()["error"]["param"] == field
    assert api.admin.get(f"/v1/spend_keys/{key['spend_key_id']}").json()["status"] == "active"  # unchanged


@pytest.mark.parametrize("body, field", [
    ({}, "name"),
    ({"name": "x", "status": "frozen"}, "status"),
    ({"name": "x", "allowed_models": []}, "allowed_models"),
    ({"name": "x", "allowed_models": "gpt-4o"}, "allowed_models"),
    ({"name": "x", "allowed_models": ["gpt-*-mini"]}, "allowed_models"),
    ({"name": "x", "allowed_providers": ["openai", "nope"]}, "allowed_providers"),
    ({"name": "x", "expires_at": "next tuesday"}, "expires_at"),
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
