"""GET /v1/usage (Lava's RestUsage): day by day over [start, end), every day listed, the same numbers as
services.usage and `tollgate usage --by day --json` for the same period, with its filters, on SQLite and
PostgreSQL."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from addons.cli.main import main
from addons.services import usage
from pricing.money import format_usd
from tests.test_api_requests import add_meter, add_row, ledger_url

PERIOD = {"start": "2025-01-01T00:00:00Z", "end": "2025-01-05T00:00:00Z"}


@pytest.fixture
def rows(api):
    """The default account's requests over four days, one of them without any, and one outside the period (the
    only requests of the ledger, so `tollgate usage`, which spans every account, counts these alone)."""
    add_meter("default", "chat")
    add_row("default", "r1", datetime(2025, 1, 1, 9), input_tokens=100, output_tokens=20, provider_cost_nanos=3000,
            charged_nanos=3000)
    add_row("default", "r2", datetime(2025, 1, 1, 23, 59), input_tokens=10, output_tokens=5, provider_cost_nanos=500,
            charged_nanos=500, customer_id="alice", meter_slug="chat", bill_customer=True, fee_nanos=9000,
            metadata=json.dumps({"user": "u1"}))
    add_row("default", "r3", datetime(2025, 1, 3), input_tokens=7, output_tokens=1, model="mystery",
            price_source="unpriced", customer_id="bob", bill_customer=False, metadata=json.dumps({"user": "u2"}))
    add_row("default", "r4", datetime(2025, 1, 4, 12), input_tokens=1, output_tokens=1, provider_cost_nanos=40,
            charged_nanos=40, customer_id="alice", meter_slug="chat", bill_customer=True, fee_nanos=100,
            metadata=json.dumps({"user": "u1"}))
    add_row("default", "r5", datetime(2025, 1, 5), input_tokens=999, output_tokens=999, provider_cost_nanos=777)


def test_usage_is_day_by_day_with_empty_days_and_lavas_totals(api, rows):
    answer = api.admin.get("/v1/usage", params=PERIOD)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    lava = ("date", "start", "end", "total_requests", "total_usage_tokens", "total_cost", "total_charge")
    assert [[item[k] for k in lava] for item in body["items"]] == [
        ["2025-01-01", "2025-01-01T00:00:00.000Z", "2025-01-02T00:00:00.000Z", 2, 135, "0.0000035", "0.000012"],
        ["2025-01-02", "2025-01-02T00:00:00.000Z", "2025-01-03T00:00:00.000Z", 0, 0, "0.00", "0.00"],
        ["2025-01-03", "2025-01-03T00:00:00.000Z", "2025-01-04T00:00:00.000Z", 1, 8, "0.00", "0.00"],
        ["2025-01-04", "2025-01-04T00:00:00.000Z", "2025-01-05T00:00:00.000Z", 1, 2, "0.00000004", "0.0000001"],
    ]
    # total_charge: the customer's fee where a request was billed to one (r2, r4), the merchant's debit elsewhere
    assert body["totals"] == {
        "total_requests": 4, "total_usage_tokens": 145, "total_cost": "0.00000354", "total_charge": "0.0000121",
        "input_tokens": 118, "output_tokens": 27, "fees": "0.0000091", "charged": "0.00000354",
        "margin": "0.00000856", "unpriced_requests": 1, "unmetered_requests": 0}
    assert body["items"][2]["unpriced_requests"] == 1


def test_total_charge_is_the_sum_of_the_requests_charges(api, rows):
    listed = api.admin.get("/v1/requests", params={"limit": 100}).json()["data"]
    in_period = [r for r in listed if r["created_at"] < PERIOD["end"]]
    total = sum(int(round(float(r["charge"]["amount"]) * 10**9)) for r in in_period)
    assert format_usd(total) == api.admin.get("/v1/usage", params=PERIOD).json()["totals"]["total_charge"]


def test_usage_equals_the_service_and_the_cli_by_day(api, rows, ledger, capsys):
    body = api.admin.get("/v1/usage", params=PERIOD).json()
    days = {item["date"]: item for item in body["items"] if item["total_requests"]}
    report = usage.usage("day", since=datetime(2025, 1, 1), until=datetime(2025, 1, 5), account="default")
    assert {row.group for row in report.rows} == set(days)
    for row in report.rows:
        item = days[row.group]
        assert (item["total_requests"], item["total_usage_tokens"], item["total_cost"], item["fees"],
                item["charged"], item["margin"], item["unpriced_requests"]) == (
            row.requests, row.input_tokens + row.output_tokens, format_usd(row.provider_cost_nanos),
            format_usd(row.fee_nanos), format_usd(row.charged_nanos), format_usd(row.margin_nanos),
            row.unpriced_requests)
    main(["usage", "--by", "day", "--json", "--since", "2025-01-01", "--until", "2025-01-05",
          "--database-url", ledger_url(ledger)])
    cli = json.loads(capsys.readouterr().out)
    cli_days = {row["group"]: row for row in cli["rows"]}
    assert set(cli_days) == set(days)
    for date, row in cli_days.items():
        item = days[date]
        assert (row["requests"], row["input_tokens"] + row["output_tokens"], row["provider_cost"] or "0.00",
                row["fee"], row["charged"], row["margin"], row["unpriced_requests"]) == (
            item["total_requests"], item["total_usage_tokens"], item["total_cost"], item["fees"], item["charged"],
            item["margin"], item["unpriced_requests"])
    assert cli["totals"]["requests"] == body["totals"]["total_requests"]
    assert cli["totals"]["fee"] == body["totals"]["fees"] and cli["totals"]["margin"] == body["totals"]["margin"]


def test_an_account_sees_its_own_usage_only(api, rows):
    add_row("shop", "s1", datetime(2025, 1, 2), input_tokens=50, output_tokens=50, provider_cost_nanos=10_000)
    assert api.admin.get("/v1/usage", params=PERIOD).json()["totals"]["total_requests"] == 4
    body = api.merchant.get("/v1/usage", params=PERIOD).json()
    assert [item["total_requests"] for item in body["items"]] == [0, 1, 0, 0]
    assert body["totals"]["total_cost"] == "0.00001"
    assert api.admin.get("/v1/usage", params={**PERIOD, "account": "shop"}).json() == body
    assert api.merchant.get("/v1/usage", params={**PERIOD, "account": "default"}).status_code == 404


def test_usage_filters_by_customer_meter_and_metadata(api, rows):
    def totals(**query) -> tuple[int, int]:
        answer = api.admin.get("/v1/usage", params={**PERIOD, **query})
        assert answer.status_code == 200, answer.text
        return answer.json()["totals"]["total_requests"], answer.json()["totals"]["total_usage_tokens"]

    meter_id = api.admin.get("/v1/requests/r2").json()["meter_id"]
    assert totals(customer_id="alice") == (2, 17)
    assert totals(meter_id=meter_id) == totals(meter_id="chat") == (2, 17)
    assert totals(metadata_filters=json.dumps([["user", "u2"]])) == (1, 8)
    assert totals(metadata_filters=json.dumps([["user", "u1"]]), customer_id="bob") == (0, 0)


def test_a_period_that_starts_mid_day_keeps_its_bounds(api, rows):
    body = api.admin.get("/v1/usage", params={"start": "2025-01-01T12:00:00Z", "end": "2025-01-02T06:00:00Z"}).json()
    assert [(i["date"], i["start"], i["end"], i["total_requests"]) for i in body["items"]] == [
        ("2025-01-01", "2025-01-01T12:00:00.000Z", "2025-01-02T00:00:00.000Z", 1),
        ("2025-01-02", "2025-01-02T00:00:00.000Z", "2025-01-02T06:00:00.000Z", 0)]


def test_without_a_start_it_is_the_last_30_days(api):
    body = api.merchant.get("/v1/usage").json()
    assert len(body["items"]) == 30 and body["totals"]["total_requests"] == 0


@pytest.mark.parametrize("query, param", [({"start": "yesterday"}, "start"), ({"end": "2025-13-01"}, "end"),
                                          ({"start": "2025-01-05", "end": "2025-01-05"}, "end"),
                                          ({"start": "2024-01-01", "end": "2025-01-02"}, "start"),
                                          ({**PERIOD, "metadata_filters": "[1]"}, "metadata_filters")])
def test_a_bad_period_or_filter_is_422_naming_it(api, query, param):
    answer = api.merchant.get("/v1/usage", params=query)
    assert answer.status_code == 422 and answer.json()["error"]["param"] == param
