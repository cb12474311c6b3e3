"""The `webhooks` resource (Lava's RestWebhook): create with the secret shown once and kept sealed, list, retrieve,
update, soft delete, cross-account 404s, field errors, and Idempotency-Key without the secret in the idempotency
table. The delivery of events to them is tests/test_webhook_delivery.py."""

from __future__ import annotations

import json

import pytest

from addons.core import sealed_secrets
from addons.ledger.models import IdempotencyRow, WebhookRow

HOOK = {"name": "billing alerts", "url": "https://merchant.example/hooks/tollgate"}


@pytest.fixture(autouse=True)
def sealed_key(tmp_path, monkeypatch):
    """The key that seals webhook secrets, in the test's own directory."""
    monkeypatch.delenv(sealed_secrets.KEY_ENV, raising=False)
    monkeypatch.setattr(sealed_secrets, "KEY_FILE", tmp_path / "sealed-secrets.key")
    return tmp_path / "sealed-secrets.key"


def create(client, **fields) -> dict:
    answer = client.post("/v1/webhooks", json={**HOOK, **fields})
    assert answer.status_code == 201, answer.text
    return answer.json()


def test_create_answers_a_rest_webhook_with_its_secret_once(api):
    created = create(api.merchant)
    assert set(created) == {"webhook_id", "name", "url", "created_at", "webhook_secret"}
    assert created["webhook_id"].startswith("wh_") and created["webhook_secret"].startswith("whsec_")
    assert (created["name"], created["url"]) == (HOOK["name"], HOOK["url"])
    assert created["created_at"].endswith("Z")
    shown = {k: v for k, v in created.items() if k != "webhook_secret"}
    assert api.merchant.get(f"/v1/webhooks/{created['webhook_id']}").json() == shown
    assert api.merchant.get("/v1/webhooks").json()["data"] == [shown]
    assert create(api.merchant)["webhook_secret"] != created["webhook_secret"]  # each its own


def test_the_ledger_keeps_the_secret_sealed_under_a_key_outside_it(api, sealed_key, monkeypatch):
    created = create(api.merchant)
    row = WebhookRow.get_by_id(created["webhook_id"])
    secret = created["webhook_secret"]
    assert secret not in json.dumps(list(WebhookRow.select().dicts().first().values()), default=str)
    assert sealed_key.exists() and (sealed_key.stat().st_mode & 0o777) == 0o600
    assert sealed_secrets.unseal(row.sealed_secret) == secret
    monkeypatch.setattr(sealed_secrets, "KEY_FILE", sealed_key.with_name("another.key"))
    with pytest.raises(sealed_secrets.UnsealError):
        sealed_secrets.unseal(row.sealed_secret)


@pytest.mark.parametrize(("body", "field"), [
    ({"url": HOOK["url"]}, "name"),
    ({"name": "x"}, "url"),
    ({**HOOK, "name": "  "}, "name"),
    ({**HOOK, "name": 7}, "name"),
    ({**HOOK, "url": "ftp://merchant.example/hook"}, "url"),
    ({**HOOK, "url": "merchant.example/hook"}, "url"),
    ({**HOOK, "url": "https://"}, "url"),
    ({**HOOK, "url": "https://user:pw@merchant.example/hook"}, "url"),
    ({**HOOK, "url": "https://merchant.example/a b"}, "url"),
    ({**HOOK, "url": "https://merchant.example:99999/hook"}, "url"),
    ({**HOOK, "url": "https://merchant.example/" + "a" * 2048}, "url"),
    ({**HOOK, "events": ["balance.low"]}, "events"),
])
def test_a_bad_field_is_422_naming_it_and_creates_nothing(api, body, field):
    answer = api.merchant.post("/v1/webhooks", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["param"] == field
    assert WebhookRow.select().count() == 0


def test_update_changes_name_or_url_and_keeps_the_rest(api):
    created = create(api.merchant)
    path = f"/v1/webhooks/{created['webhook_id']}"
    renamed = api.merchant.patch(path, json={"name": "ops"}).json()
    assert (renamed["name"], renamed["url"]) == ("ops", HOOK["url"])
    moved = api.merchant.patch(path, json={"url": "http://127.0.0.1:9000/hook"}).json()
    assert (moved["name"], moved["url"]) == ("ops", "http://127.0.0.1:9000/hook")
    assert "webhook_secret" not in moved
    assert api.merchant.get(path).json() == moved
    bad = api.merchant.patch(path, json={"url": "javascript:alert(1)"})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "url"
    assert api.merchant.patch(path, json={"name": None}).status_code == 422
    assert api.merchant.get(path).json() == moved


def test_delete_answers_deleted_and_the_webhook_is_gone(api):
    kept, deleted = create(api.merchant, name="kept"), create(api.merchant, name="deleted")
    path = f"/v1/webhooks/{deleted['webhook_id']}"
    assert api.merchant.delete(path).json() == {"id": deleted["webhook_id"], "deleted": True}
    for answer in (api.merchant.get(path), api.merchant.patch(path, json={"name": "x"}), api.merchant.delete(path)):
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "webhook_not_found"
    assert [w["webhook_id"] for w in api.merchant.get("/v1/webhooks").json()["data"]] == [kept["webhook_id"]]
    assert WebhookRow.get_by_id(deleted["webhook_id"]).deleted_at is not None  # soft: the row stays


def test_another_accounts_webhook_is_404_and_never_listed(api):
    theirs = create(api.merchant)
    path = f"/v1/webhooks/{theirs['webhook_id']}"
    for answer in (api.admin.get(path), api.admin.patch(path, json={"name": "mine"}), api.admin.delete(path)):
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "webhook_not_found"
    assert api.admin.get("/v1/webhooks").json()["data"] == []
    ours = create(api.admin)
    assert api.merchant.get(f"/v1/webhooks/{ours['webhook_id']}").status_code == 404
    assert [w["webhook_id"] for w in api.merchant.get("/v1/webhooks").json()["data"]] == [theirs["webhook_id"]]
    assert api.merchant.get(path).json()["name"] == HOOK["name"]  # the failed calls changed nothing
    # an admin key reaches another account by naming it; an account key naming another is 404
    assert api.admin.get(path, params={"account": "shop"}).status_code == 200
    assert api.merchant.get(f"/v1/webhooks/{ours['webhook_id']}", params={"account": "default"}).status_code == 404


def test_the_list_pages_newest_first_without_skipping_or_repeating(api):
    ids = [create(api.merchant, name=f"hook {n}")["webhook_id"] for n in range(5)]
    seen, cursor = [], None
    while True:
        page = api.merchant.get("/v1/webhooks", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        seen += [w["webhook_id"] for w in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
        create(api.merchant, name="added while paging")  # newer than the cursor: not on a later page
    assert seen == ids[::-1]


def test_idempotency_key_returns_the_first_webhook_and_secret_but_stores_no_secret(api):
    headers = {"Idempotency-Key": "create-hook-1"}
    first = api.merchant.post("/v1/webhooks", json=HOOK, headers=headers)
    again = api.merchant.post("/v1/webhooks", json=HOOK, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert WebhookRow.select().count() == 1
    stored = IdempotencyRow.get(IdempotencyRow.key == "create-hook-1").response
    assert first.json()["webhook_secret"] not in stored
    reused = api.merchant.post("/v1/webhooks", json={**HOOK, "name": "other"}, headers=headers)
    assert reused.status_code == 409 and reused.json()["error"]["code"] == "idempotency_key_reused"
    # the same key from another account is its own
    assert api.admin.post("/v1/webhooks", json=HOOK, headers=headers).json()["webhook_id"] != first.json()["webhook_id"]
    assert WebhookRow.select().count() == 2
