"""Customer billing end to end, through the real proxy, on SQLite and PostgreSQL: the token table,
meters with tiers, holds under concurrency, auto top-up, and signed tokens."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from decimal import Decimal

import httpx
import openai
import pytest

from addons.auth.authentication import Caller
from addons.billing.autopay import verify_signature
from addons.billing.plan import BillingPlan, plan_for
from addons.core.errors import BadRequest
from addons.ledger.accounts import CustomerRecord, KeyRecord
from pricing import meters
from pricing.cost import price
from pricing.money import format_usd, to_nanos
from pricing.usage import TokenUsage
from tests.conftest import PAYHOOK_SECRET
from tests.ledger_reads import wait_for

OPENAI_CHAT = TokenUsage(input_tokens=17, cache_read_tokens=4, output_tokens=9, reasoning_tokens=3)
CHAT_COST = price(OPENAI_CHAT, model="gpt-4o-mini", provider_id="openai", pricing_id="openai").total_nanos
PER_REQUEST = "0.01"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def customer(gateway, balance: str, *extra: str) -> str:
    name = unique("cus")
    gateway.cli("customers", "create", name, "--balance", balance, *extra)
    return name


def meter(gateway, *args: str) -> str:
    slug = unique("m")
    gateway.cli("meters", "create", slug, *args)
    return slug


def token(gateway, *args: str) -> str:
    return gateway.cli_json("token", "--secret-key", gateway.admin_key, *args)["token"]


def chat(gateway, api_key: str, **extra):
    client = openai.OpenAI(api_key=api_key, base_url=f"{gateway.url}/v1/forward?u=https://api.openai.com/v1/",
                           max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], **extra)
    return gateway.request_row(raw.headers["x-lava-request-id"])


def balance(gateway, who: str | None = None) -> Decimal:
    return Decimal(gateway.ledger.balance(who))


@pytest.fixture
def per_request_meter(gateway):
    return meter(gateway, "--rate-type", "fixed", "--unit", "requests", "--tier", f"0:{PER_REQUEST}")


# -- the token table ---------------------------------------------------------------------

KEY = KeyRecord("key_1", "acc_1", "wal_1", False)
GOLD = meters.make_meter_spec("gold", "fixed", "requests", ["0:0.01"])
CUSTOMER = CustomerRecord("cus_1", "wal_2", 0)


class PlanCache:
    """The account cache's meter and customer lookups for account acc_1, in-process."""

    async def meter(self, account_id, slug):
        return ("mtr_1", GOLD) if (account_id, slug) == ("acc_1", "gold") else None

    async def customer(self, account_id, customer_id):
        return CUSTOMER if (account_id, customer_id) == ("acc_1", "cus_1") else None


@pytest.mark.parametrize(("fields", "plan"), [
    ({}, BillingPlan(KEY)),
    ({"meter_slug": "gold"}, BillingPlan(KEY, None, "mtr_1", GOLD)),
    ({"customer_id": "cus_1", "meter_slug": "gold"}, BillingPlan(KEY, CUSTOMER, "mtr_1", GOLD, True)),
    ({"customer_id": "cus_1", "meter_slug": "gold", "disable_billing": True},
     BillingPlan(KEY, CUSTOMER, "mtr_1", GOLD, False)),
    ({"provider_key": "sk-own"}, BillingPlan(KEY, provider_key="sk-own")),
])
def test_the_plan_of_an_authenticated_caller(fields, plan):
    assert asyncio.run(plan_for(Caller(KEY, **fields), PlanCache())) == plan


@pytest.mark.parametrize(("fields", "code"), [
    ({"customer_id": "cus_1"}, "contradictory_token"),
    ({"disable_billing": True}, "contradictory_token"),
    ({"meter_slug": "silver"}, "unknown_meter"),
    ({"customer_id": "cus_2", "meter_slug": "gold"}, "unknown_customer"),
    (dict(customer_id="cus_1", meter_slug="gold") | {"key": KeyRecord("key_2", "acc_2", "wal_3", False)},
     "unknown_meter"),  # another account's caller
])
def test_the_plan_refuses_fields_the_keys_account_cannot_bill(fields, code):
    caller = Caller(**({"key": KEY} | fields))
    with pytest.raises(BadRequest) as refused:
        asyncio.run(plan_for(caller, PlanCache()))
    assert refused.value.code == code


def test_meter_only_is_paid_by_the_merchant_and_attributed(gateway, per_request_meter):
    before = balance(gateway)
    row = chat(gateway, token(gateway, "--meter", per_request_meter))
    assert (row["meter_slug"], row["customer_id"], row["fee"]) == (per_request_meter, None, "0.00")
    assert row["charged"] == format_usd(CHAT_COST)
    assert balance(gateway) == before - Decimal(row["charged"])


def test_customer_billing_charges_the_meter_fee_and_the_merchant_the_provider_cost(gateway, per_request_meter):
    who = customer(gateway, "1.00")
    merchant_before = balance(gateway)
    row = chat(gateway, token(gateway, "--customer", who, "--meter", per_request_meter), stream=False)
    assert (row["customer_id"], row["fee"], row["charged"]) == (who, PER_REQUEST, format_usd(CHAT_COST))
    assert balance(gateway, who) == Decimal("1.00") - Decimal(PER_REQUEST)
    assert balance(gateway) == merchant_before - Decimal(row["charged"])


def test_disable_billing_tracks_the_customer_for_free(gateway, per_request_meter):
    who = customer(gateway, "1.00")
    row = chat(gateway, token(gateway, "--customer", who, "--meter", per_request_meter, "--disable-billing"))
    assert (row["customer_id"], row["fee"], row["charged"]) == (who, "0.00", format_usd(CHAT_COST))
    assert balance(gateway, who) == Decimal("1.00")


def test_bring_your_own_key_bills_the_customer_the_service_fee(gateway, mock, per_request_meter):
    who = customer(gateway, "1.00")
    row = chat(gateway, token(gateway, "--customer", who, "--meter", per_request_meter, "--provider-key", "sk-own"))
    assert mock.last.headers["authorization"] == "Bearer sk-own"
    byok_fee = to_nanos(Decimal(CHAT_COST) / 10 / 10**9) + 1_000_000  # 10% of the cost + 0.001
    assert row["charged"] == "0.00"  # the merchant's provider key was not used
    assert row["fee"] == format_usd(to_nanos(Decimal(PER_REQUEST)) + byok_fee)


@pytest.mark.parametrize(("fields", "code"), [
    (("--customer", "nobody"), "contradictory_token"),  # a customer needs a meter
    (("--disable-billing",), "contradictory_token"),
    (("--meter", "no-such-meter"), "unknown_meter"),
])
def test_contradictory_or_unknown_token_fields_are_refused(gateway, fields, code):
    response = httpx.post(f"{gateway.url}/v1/forward?u=https://api.openai.com/v1/chat/completions",
                          headers={"authorization": f"Bearer {token(gateway, *fields)}"},
                          json={"model": "gpt-4o-mini", "messages": []}, trust_env=False)
    assert response.status_code == 400 and response.json()["error"]["code"] == code


def test_a_customer_of_another_account_is_unknown(gateway, per_request_meter):
    other = unique("acct")
    gateway.cli("customers", "create", "shared-name", "--balance", "5", "--account", other)
    response = httpx.post(f"{gateway.url}/v1/forward?u=https://api.openai.com/v1/chat/completions",
                          headers={"authorization": f"Bearer {token(gateway, '--customer', 'shared-name', '--meter', per_request_meter)}"},
                          json={"model": "gpt-4o-mini", "messages": []}, trust_env=False)
    assert response.status_code == 400 and response.json()["error"]["code"] == "unknown_customer"


# -- meters -------------------------------------------------------------------------------

def test_tiered_meter_charges_a_request_that_straddles_a_tier_boundary(gateway):
    """26 tokens a request (17 in + 9 out); tiers 0:2.00 and 30:1.00 per million."""
    slug = meter(gateway, "--rate-type", "fixed", "--unit", "tokens_1m", "--tier", "0:2.00", "--tier", "30:1.00")
    who = customer(gateway, "1.00")
    api_key = token(gateway, "--customer", who, "--meter", slug)
    first, second = chat(gateway, api_key), chat(gateway, api_key)
    assert first["fee"] == "0.000052"  # 26 x 2.00 / 1M
    assert second["fee"] == "0.00003"  # 4 x 2.00 / 1M + 22 x 1.00 / 1M
    assert gateway.cli_json("customers", "show", who)["cycle_usage"] == {slug: "52"}


def test_percentage_meter_charges_cost_plus_markup(gateway):
    slug = meter(gateway, "--rate-type", "percentage", "--unit", "tokens_1m", "--percentage", "20")
    who = customer(gateway, "1.00")
    row = chat(gateway, token(gateway, "--customer", who, "--meter", slug))
    assert row["fee"] == format_usd(to_nanos(Decimal(CHAT_COST) * Decimal("1.2") / 10**9))


# -- holds ------------------------------------------------------------------------------

def test_empty_customer_balance_is_402_with_the_available_amount(gateway, per_request_meter):
    who = customer(gateway, "0")
    response = httpx.post(f"{gateway.url}/v1/forward?u=https://api.openai.com/v1/chat/completions",
                          headers={"authorization": f"Bearer {token(gateway, '--customer', who, '--meter', per_request_meter)}"},
                          json={"model": "gpt-4o-mini", "messages": []}, trust_env=False)
    assert response.status_code == 402
    assert "available is 0.00 USD" in response.json()["error"]["message"]


def test_200_concurrent_streams_never_overspend_a_customer(gateway, per_request_meter):
    who = customer(gateway, "0.50")  # covers 50 requests at 0.01
    api_key = token(gateway, "--customer", who, "--meter", per_request_meter)

    async def one(client):
        async with client.stream("POST", "/v1/forward?u=https://api.openai.com/v1/chat/completions",
                                 json={"model": "gpt-4o-mini", "stream": True,
                                       "messages": [{"role": "user", "content": "hi"}]},
                                 headers={"authorization": f"Bearer {api_key}"}) as response:
            await response.aread()
            return response.status_code

    async def all_at_once():
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=gateway.url, trust_env=False, timeout=60, limits=limits) as client:
            return await asyncio.gather(*(one(client) for _ in range(200)))

    statuses = asyncio.run(all_at_once())
    assert set(statuses) <= {200, 402} and statuses.count(200) >= 1
    rows = wait_for(lambda: gateway.ledger.requests(1000, customer=who), 20, "a row per request served",
                    until=lambda rows: len(rows) >= statuses.count(200))
    charged = sum(Decimal(r["fee"]) for r in rows)
    final = balance(gateway, who)
    assert final >= 0
    assert final == Decimal("0.50") - charged
    assert charged == Decimal(PER_REQUEST) * statuses.count(200)
    assert gateway.ledger.audit_ok() is True


# -- auto top-up ------------------------------------------------------------------------

def test_auto_top_up_fires_once_when_many_requests_cross_the_threshold(gateway, payhook, per_request_meter):
    who = customer(gateway, "0.30", "--autopay-threshold", "0.25", "--autopay-amount", "5")
    api_key = token(gateway, "--customer", who, "--meter", per_request_meter)

    async def burst():
        async with httpx.AsyncClient(base_url=gateway.url, trust_env=False, timeout=60) as client:
            return await asyncio.gather(*(
                client.post("/v1/forward?u=https://api.openai.com/v1/chat/completions",
                            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                            headers={"authorization": f"Bearer {api_key}"}) for _ in range(20)))

    assert all(r.status_code == 200 for r in asyncio.run(burst()))
    wait_for(lambda: payhook.calls_for(who), 20, "the top-up webhook")
    time.sleep(1.0)  # time for a duplicate, were there one
    calls = payhook.calls_for(who)
    assert len(calls) == 1
    headers, body = calls[0]
    payload = json.loads(body)
    assert payload["amount"] == "5.00"
    assert verify_signature(PAYHOOK_SECRET, body, headers["x-tollgate-signature"], payload["timestamp"], time.time())
    wait_for(lambda: balance(gateway, who) >= 5, 10, "the top-up to reach the balance")
    assert balance(gateway, who) == Decimal("0.30") - 20 * Decimal(PER_REQUEST) + 5
    wallet = gateway.cli_json("customers", "show", who)["wallet"]
    names = [e["name"] for e in gateway.cli_json("events", "--limit", "500") if e["wallet"] == wallet]
    assert names.count("topup.succeeded") == 1 and "topup.requested" in names
    assert gateway.ledger.audit_ok() is True


# -- signed tokens ------------------------------------------------------------------------

def test_signed_token_works_and_does_not_carry_the_secret(gateway, per_request_meter):
    who = customer(gateway, "1.00")
    signed = token(gateway, "--signed", "--customer", who, "--meter", per_request_meter)
    assert gateway.admin_key not in signed and gateway.admin_key not in base64.urlsafe_b64decode(
        signed[4:].split(".")[0] + "==").decode()
    row = chat(gateway, signed)
    assert (row["customer_id"], row["fee"]) == (who, PER_REQUEST) and row["token_id"]


def _status(gateway, api_key: str, model: str = "gpt-4o-mini"):
    response = httpx.post(f"{gateway.url}/v1/forward?u=https://api.openai.com/v1/chat/completions",
                          headers={"authorization": f"Bearer {api_key}"},
                          json={"model": model, "messages": [{"role": "user", "content": "hi"}]}, trust_env=False)
    return response.status_code, response.json().get("error", {}).get("code")


def test_tampered_signed_token_is_401(gateway, per_request_meter):
    signed = token(gateway, "--signed", "--meter", per_request_meter)
    claims, signature = signed[4:].split(".")
    data = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    data["met"] = None
    forged = "tgt_" + base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=") + "." + signature
    assert _status(gateway, forged) == (401, "token_signature_invalid")


def test_expired_signed_token_is_401(gateway):
    signed = token(gateway, "--signed", "--expires-in", "4")
    assert _status(gateway, signed)[0] == 200
    claims = signed[4:].split(".")[0]
    expires_at = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["exp"]
    time.sleep(max(0.0, expires_at - time.time()) + 0.1)
    assert _status(gateway, signed) == (401, "token_expired")


def test_signed_token_scope_is_403(gateway):
    signed = token(gateway, "--signed", "--allow-provider", "anthropic")
    assert _status(gateway, signed) == (403, "token_scope")
    signed = token(gateway, "--signed", "--allow-model", "gpt-4o-*")
    assert _status(gateway, signed)[0] == 200 and _status(gateway, signed, model="o3-mini") == (403, "token_scope")


def test_signed_token_spend_cap_is_402_once_spent(gateway, per_request_meter):
    who = customer(gateway, "1.00")
    signed = token(gateway, "--signed", "--customer", who, "--meter", per_request_meter, "--spend-cap", "0.02")
    assert [_status(gateway, signed)[0] for _ in range(2)] == [200, 200]
    time.sleep(0.5)
    assert _status(gateway, signed) == (402, "insufficient_balance")


# -- reports ----------------------------------------------------------------------------

def test_usage_by_customer_reports_fees_and_margin(gateway, per_request_meter):
    who = customer(gateway, "1.00")
    api_key = token(gateway, "--customer", who, "--meter", per_request_meter)
    rows = [chat(gateway, api_key) for _ in range(3)]
    usage = gateway.cli_json("usage", "--by", "customer", "--customer", who)
    assert [r["group"] for r in usage["rows"]] == [who]
    total = usage["totals"]
    assert total["requests"] == 3 and Decimal(total["fee"]) == 3 * Decimal(PER_REQUEST)
    assert Decimal(total["margin"]) == Decimal(total["fee"]) - sum(Decimal(r["charged"]) for r in rows)
    csv_text = gateway.cli("usage", "--by", "customer", "--customer", who, "--csv").stdout
    assert csv_text.splitlines()[0].startswith("group,requests") and who in csv_text
