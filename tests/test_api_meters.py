"""The meters resource over the admin API (issue 12), on SQLite and PostgreSQL: Lava's meter (tiers as strings,
fixed or percentage) mapped exactly onto Tollgate's, Tollgate's extras, lookup by id or slug, soft delete,
cross-account 404s, 422s naming the field, pagination, and the same meter as `tollgate meters show`."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from addons.auth.account_cache import AccountCache
from addons.auth.authentication import Caller
from addons.billing.plan import plan_for
from addons.core.errors import BadRequest
from addons.core.secret_formats import hash_secret
from addons.ledger import accounts
from addons.ledger.models import MeterRow
from addons.services import meters
from pricing import meters as pricing
from tests.api_checks import cli_json, error, invalid

TIERED = {"name": "GPT-4o chat", "rate_type": "fixed", "tier_type": "tokens_1m",
          "tiers": [{"start": "0", "rate": "3.00"}, {"start": "1000000", "rate": "1.50"}]}


def create(client, **fields):
    answer = client.post("/v1/meters", json=fields)
    assert answer.status_code == 201, answer.text
    return answer.json()


def spec(slug: str, account: str = "default") -> pricing.MeterSpec:
    """The meter as billing prices with it."""
    return pricing.spec_from_row(accounts.find_meter(accounts.find_account(account).account_id, slug))


def test_a_lava_fixed_meter_is_tollgates_tiered_meter(api):
    created = create(api.admin, **TIERED)
    assert created.pop("meter_id").startswith("mtr_") and created.pop("created_at").endswith("Z")
    assert created == {
        "meter_slug": "gpt-4o-chat", "name": "GPT-4o chat", "rate_type": "fixed",
        "tiers": [{"start": 0, "rate": "3.00", "type": "tokens_1m"},
                  {"start": 1_000_000, "rate": "1.50", "type": "tokens_1m"}],
        "percentage": None, "token_basis": "input+output", "base_cost_payer": "merchant", "unit": "tokens_1m",
    }
    assert spec("gpt-4o-chat") == pricing.make_meter_spec("gpt-4o-chat", "fixed", "tokens_1m",
                                                          ["0:3.00", "1000000:1.50"])


def test_a_lava_percentage_meter_is_one_markup_on_the_provider_cost(api):
    created = create(api.admin, name="Markup", meter_slug="markup", rate_type="percentage", tier_type="tokens_1m",
                     tiers=[{"start": "0", "rate": "20"}])
    assert created["tiers"] == [{"start": 0, "rate": "20", "type": "tokens_1m"}]
    assert (created["percentage"], created["base_cost_payer"]) == ("20", "customer")
    assert spec("markup") == pricing.make_meter_spec("markup", "percentage", "tokens_1m", [], "20")
    # Tollgate's own spelling, `percentage` without tiers, is the same meter
    other = create(api.admin, name="Markup", meter_slug="markup-2", rate_type="percentage", tier_type="tokens_1m",
                   percentage="20")
    assert other["tiers"] == created["tiers"]


def test_tollgates_extras_ride_along(api):
    created = create(api.admin, name="Hybrid", rate_type="hybrid", tier_type="tokens_1m", percentage="5",
                     tiers=[{"start": 0, "rate": "3"}], token_basis="output", base_cost_payer="merchant")
    assert (created["rate_type"], created["percentage"], created["token_basis"], created["base_cost_payer"]) == \
        ("hybrid", "5", "output", "merchant")
    assert spec("hybrid") == pricing.make_meter_spec("hybrid", "hybrid", "tokens_1m", ["0:3"], "5", "merchant",
                                                     "output")
    assert spec("hybrid").percentage == Decimal(5)


def test_a_slug_is_made_from_the_name_and_never_collides(api):
    slugs = [create(api.admin, **{**TIERED, "name": name})["meter_slug"] for name in
             ("Über Chat!", "Über Chat!", "***")]
    assert slugs == ["uber-chat", "uber-chat-2", "meter"]
    taken = api.admin.post("/v1/meters", json={**TIERED, "meter_slug": "uber-chat"})
    assert error(taken, 409)["code"] == "meter_exists"


def test_a_meter_is_found_by_its_id_or_its_slug(api):
    created = create(api.admin, **TIERED)
    assert api.admin.get(f"/v1/meters/{created['meter_id']}").json() == created
    assert api.admin.get("/v1/meters/gpt-4o-chat").json() == created
    assert error(api.admin.get("/v1/meters/nope"), 404)["code"] == "meter_not_found"


def test_update_renames_and_reprices(api):
    created = create(api.admin, **TIERED)
    renamed = api.admin.patch(f"/v1/meters/{created['meter_id']}", json={"name": "Chat"}).json()
    assert renamed == {**created, "name": "Chat"}
    repriced = api.admin.patch("/v1/meters/gpt-4o-chat", json={"tiers": [{"start": "0", "rate": "2.5"}]}).json()
    assert repriced["tiers"] == [{"start": 0, "rate": "2.5", "type": "tokens_1m"}] and repriced["name"] == "Chat"
    assert spec("gpt-4o-chat").tiers == (pricing.Tier(Decimal(0), Decimal("2.5")),)
    create(api.admin, name="Markup", rate_type="percentage", tier_type="requests", tiers=[{"start": "0", "rate": "10"}])
    marked_up = api.admin.patch("/v1/meters/markup", json={"tiers": [{"start": "0", "rate": "12.5"}]}).json()
    assert (marked_up["percentage"], marked_up["tiers"][0]["rate"]) == ("12.5", "12.5")
    assert spec("markup").percentage == Decimal("12.5")
    unnamed = api.admin.patch("/v1/meters/markup", json={"name": None}).json()
    assert unnamed["name"] == "markup"  # an unnamed meter is called by its slug


def test_a_meter_made_by_the_cli_is_named_by_its_slug(api):
    meters.create("default", "cli-made", rate_type="fixed", unit="requests", tiers=["0:0.01"])
    answered = api.admin.get("/v1/meters/cli-made").json()
    assert (answered["name"], answered["tiers"]) == ("cli-made", [{"start": 0, "rate": "0.01", "type": "requests"}])


# -- delete --------------------------------------------------------------------------------------------

def test_a_deleted_meter_is_gone_its_slug_reserved_and_tokens_naming_it_are_refused(api):
    created = create(api.admin, **TIERED)
    key = accounts.find_key(hash_secret(api.admin_key))

    async def plan():
        cache = AccountCache(ttl=0)
        try:
            return await plan_for(Caller(key, meter_slug="gpt-4o-chat"), cache)
        finally:
            cache.close()

    assert asyncio.run(plan()).meter_id == created["meter_id"]
    assert api.admin.delete("/v1/meters/gpt-4o-chat").json() == {"id": created["meter_id"], "deleted": True}
    with pytest.raises(BadRequest) as refused:
        asyncio.run(plan())
    assert refused.value.code == "unknown_meter"
    for answer in (api.admin.get(f"/v1/meters/{created['meter_id']}"), api.admin.get("/v1/meters/gpt-4o-chat"),
                   api.admin.patch("/v1/meters/gpt-4o-chat", json={"name": "x"}),
                   api.admin.delete("/v1/meters/gpt-4o-chat")):
        assert error(answer, 404)["code"] == "meter_not_found"
    assert api.admin.get("/v1/meters").json()["data"] == [] and meters.list_meters("default") == []
    again = api.admin.post("/v1/meters", json={**TIERED, "meter_slug": "gpt-4o-chat"})
    assert error(again, 409)["code"] == "meter_deleted" and "deleted" in again.json()["error"]["message"]
    assert create(api.admin, **TIERED)["meter_slug"] == "gpt-4o-chat-2"  # a made slug steps around it
    assert MeterRow.get_by_id(created["meter_id"]).slug == "gpt-4o-chat"  # the row stays for its requests


# -- roles and accounts --------------------------------------------------------------------------------

def test_an_account_key_cannot_reach_another_accounts_meter(api):
    created = create(api.admin, **TIERED)
    for path in (f"/v1/meters/{created['meter_id']}", "/v1/meters/gpt-4o-chat"):
        assert error(api.merchant.get(path), 404)["code"] == "meter_not_found"
        assert error(api.merchant.patch(path, json={"name": "Mine"}), 404)["code"] == "meter_not_found"
        assert error(api.merchant.delete(path), 404)["code"] == "meter_not_found"
    assert api.merchant.get("/v1/meters").json()["data"] == []
    assert api.admin.get("/v1/meters/gpt-4o-chat").json() == created
    mine = create(api.merchant, **TIERED)  # the slug is per account
    assert mine["meter_slug"] == "gpt-4o-chat" and mine["meter_id"] != created["meter_id"]
    assert api.admin.get("/v1/meters/gpt-4o-chat?account=shop").json() == mine


# -- validation ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, field", [
    ({"rate_type": "flat"}, "rate_type"),
    ({"rate_type": None}, "rate_type"),
    ({"tier_type": "seconds"}, "tier_type"),
    ({"name": None}, "name"),
    ({"meter_slug": "Bad Slug"}, "meter_slug"),
    ({"tiers": "0:3"}, "tiers"),
    ({"tiers": [{"start": "5", "rate": "1"}]}, "tiers"),  # the first tier starts at 0
    ({"tiers": [{"start": "0", "rate": "1"}, {"start": "0", "rate": "2"}]}, "tiers"),
    ({"tiers": []}, "tiers"),  # a fixed meter needs a tier
    ({"tiers": [{"start": "0", "rate": "-1"}]}, "tiers[0].rate"),
    ({"tiers": [{"start": "0", "rate": "abc"}]}, "tiers[0].rate"),
    ({"tiers": [{"start": "0", "rate": 0.1}]}, "tiers[0].rate"),  # money is never a float
    ({"tiers": [{"start": "-3", "rate": "1"}]}, "tiers[0].start"),
    ({"tiers": [{"rate": "1"}]}, "tiers[0].start"),
    ({"tiers": [{"start": "0"}]}, "tiers[0].rate"),
    ({"tiers": [{"start": "0", "rate": "1", "cap": "2"}]}, "tiers[0].cap"),
    ({"percentage": "10"}, "percentage"),  # a fixed meter takes none
    ({"token_basis": "output", "tier_type": "requests"}, "token_basis"),
    ({"base_cost_payer": "nobody"}, "base_cost_payer"),
    ({"colour": "red"}, "colour"),
])
def test_a_bad_meter_is_422_naming_the_field_and_nothing_is_created(api, change, field):
    assert invalid(api.admin.post("/v1/meters", json={**TIERED, **change})) == field
    assert meters.list_meters("default") == []


@pytest.mark.parametrize("body, field", [
    ({"rate_type": "percentage", "tier_type": "tokens_1m", "tiers": [{"start": "0", "rate": "10"},
                                                                      {"start": "100", "rate": "5"}]}, "tiers"),
    ({"rate_type": "percentage", "tier_type": "tokens_1m", "tiers": [{"start": "0", "rate": "10"}],
      "percentage": "10"}, "percentage"),
    ({"rate_type": "percentage", "tier_type": "tokens_1m"}, "percentage"),
    ({"rate_type": "hybrid", "tier_type": "tokens_1m", "tiers": [{"start": "0", "rate": "1"}]}, "percentage"),
])
def test_a_percentage_meter_takes_one_markup(api, body, field):
    assert invalid(api.admin.post("/v1/meters", json={"name": "m", **body})) == field


@pytest.mark.parametrize("body, field", [
    ({"tiers": [{"start": "1", "rate": "1"}]}, "tiers"),
    ({"meter_slug": "other"}, "meter_slug"),  # a slug is for good: tokens name it
    ({"rate_type": "percentage"}, "rate_type"),
    ({"name": 3}, "name"),
])
def test_a_bad_meter_update_is_422_and_changes_nothing(api, body, field):
    before = create(api.admin, **TIERED)
    assert invalid(api.admin.patch("/v1/meters/gpt-4o-chat", json=body)) == field
    assert api.admin.get("/v1/meters/gpt-4o-chat").json() == before


# -- pagination and the CLI ----------------------------------------------------------------------------

def test_pages_of_meters_neither_skip_nor_repeat(api):
    made = [create(api.merchant, **{**TIERED, "meter_slug": f"m{i:02}"})["meter_slug"] for i in range(13)]
    first = api.merchant.get("/v1/meters?limit=5").json()
    create(api.merchant, **{**TIERED, "meter_slug": "late"})
    second = api.merchant.get("/v1/meters", params={"limit": 5, "cursor": first["next_cursor"]}).json()
    third = api.merchant.get("/v1/meters", params={"limit": 5, "cursor": second["next_cursor"]}).json()
    seen = [m["meter_slug"] for page in (first, second, third) for m in page["data"]]
    assert seen == made[::-1] and third["has_more"] is False


def test_the_cli_and_the_api_answer_the_same_meter(api, ledger, capsys):
    created = create(api.admin, **{**TIERED, "meter_slug": "chat"})
    shown = cli_json(ledger, capsys, "meters", "show", "chat")
    assert shown["slug"] == created["meter_slug"] and shown["rate_type"] == created["rate_type"]
    assert shown["unit"] == created["unit"] and shown["percentage"] == created["percentage"]
    assert [{"start": t["start"], "rate": t["rate"], "type": shown["unit"]} for t in shown["tiers"]] == created["tiers"]
    cli_json(ledger, capsys, "meters", "create", "from-cli", "--rate-type", "percentage", "--unit", "tokens_1m",
             "--percentage", "15")
    answered = api.admin.get("/v1/meters/from-cli").json()
    assert (answered["rate_type"], answered["percentage"], answered["tiers"]) == \
        ("percentage", "15", [{"start": 0, "rate": "15", "type": "tokens_1m"}])
    listed = cli_json(ledger, capsys, "meters", "list")
    answered = api.admin.get("/v1/meters").json()["data"]
    assert sorted(m["slug"] for m in listed) == sorted(m["meter_slug"] for m in answered)
