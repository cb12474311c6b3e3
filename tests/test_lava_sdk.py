"""Lava's own Node SDK (@lavapayments/nodejs 11.x) pointed at Tollgate by its baseUrl: every resource method,
`gateway()` with and without customer billing, `generateForwardToken` with OpenAI's Node SDK on
`lava.providers.openai`, and a spend key with every limit paying for requests there, its answers' use equal
to the ledger's, on SQLite and PostgreSQL. The SDKs are installed from npm into tests/node/ on first
use (Node and npm from the machine's packages); tests/node/lava_sdk_scenario.mjs makes the calls."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).parent / "node"
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def node_sdks() -> Path:
    """tests/node/node_modules with the SDKs of tests/node/package.json; in CI their absence fails."""
    if not (shutil.which("node") and shutil.which("npm")):
        if os.environ.get("CI"):
            pytest.fail("Node and npm are needed for the Lava SDK tests (apt-get install nodejs npm)")
        pytest.skip("Node and npm are not installed")
    if not (NODE_DIR / "node_modules" / "@lavapayments" / "nodejs").exists():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR, check=True,
                       timeout=300)
    return NODE_DIR


@pytest.fixture
def scenario(gateway, node_sdks) -> dict:
    run = secrets.token_hex(4)
    result = subprocess.run(["node", "lava_sdk_scenario.mjs"], cwd=node_sdks, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "BASE_URL": f"{gateway.url}/v1/",
                                              "SECRET_KEY": gateway.admin_key, "RUN_ID": run})
    assert result.returncode == 0, result.stderr
    steps = json.loads(result.stdout.strip().splitlines()[-1])
    steps["run"] = run
    return steps


def ok(steps: dict, name: str):
    assert steps[name]["ok"], f"{name}: {steps[name].get('error')}"
    return steps[name]["value"]


def refused(steps: dict, name: str, status: int, code: str) -> dict:
    """The error the SDK threw, checked for its status and code."""
    assert not steps[name]["ok"], f"{name} succeeded: {steps[name]['value']}"
    error = steps[name]["error"]
    assert error.startswith(f"Lava API Error: {status} "), error
    body = json.loads(error.partition(" - ")[2])
    assert body["code"] == code, error
    return body


def test_every_lava_sdk_method_works_against_tollgate(gateway, scenario):
    steps, run = scenario, scenario["run"]
    customer = ok(steps, "customers.create")
    assert customer["customer_id"] and customer["reference_id"] == f"ref-{run}"
    assert customer["contact"] == {"phone": "+15550100", "email": "ada@example.com", "first_name": "Ada",
                                   "last_name": "Lovelace"}
    assert ok(steps, "customers.retrieve")["customer_id"] == customer["customer_id"]
    updated = ok(steps, "customers.update")
    assert updated["contact"]["last_name"] == "King" and updated["metadata"] == {"plan": "team"}
    assert customer["customer_id"] in [c["customer_id"] for c in ok(steps, "customers.list")["data"]]
    refused(steps, "customers.getSubscription", 501, "not_supported")

    meter = ok(steps, "meters.create")
    assert meter["meter_slug"] == f"chat-{run}" and meter["rate_type"] == "fixed"
    assert [(t["start"], Decimal(t["rate"]), t["type"]) for t in meter["tiers"]] == [
        (0, Decimal(20), "tokens_1m"), (1_000_000, Decimal(10), "tokens_1m")]
    assert ok(steps, "meters.retrieve") == ok(steps, "meters.retrieve_by_slug")
    assert ok(steps, "meters.update")["name"] == f"Chat v2 {run}"
    assert meter["meter_id"] in [m["meter_id"] for m in ok(steps, "meters.list")["data"]]

    for name in ("gateway.merchant", "gateway.customer", "openai.chat", "openai.tracking_token"):
        assert ok(steps, name)["choices"][0]["message"]["content"], name
    streamed = ok(steps, "openai.stream")
    assert streamed["text"] and streamed["usage"]["total_tokens"] > 0

    reported = ok(steps, "requests.create")
    assert reported["request_id"] == f"reported-{run}" and reported["customer_id"] == customer["customer_id"]
    assert ok(steps, "requests.create_again")["charge"] == reported["charge"]  # the same request, charged once
    assert Decimal(reported["charge"]["amount"]) == Decimal("0.03")  # 1,500 tokens at $20 per million
    listed = ok(steps, "requests.list")["data"]
    assert {r["request_id"] for r in listed} >= {f"reported-{run}"} and len(listed) == 4  # 3 proxied + reported
    assert all(r["customer_id"] == customer["customer_id"] for r in listed)
    assert f"reported-{run}" in [r["request_id"] for r in ok(steps, "requests.list_by_metadata")["data"]]
    assert ok(steps, "requests.retrieve")["metadata"] == {"source": "batch"}
    usage = ok(steps, "usage.retrieve")
    assert usage["totals"]["total_requests"] == 4
    assert Decimal(usage["totals"]["total_charge"]) == sum(Decimal(r["charge"]["amount"]) for r in listed)

    # the ledger agrees: the customer's balance is the top-up less every charge, as the API showed it
    fees = sum(Decimal(r["charge"]["amount"]) for r in listed)
    balance = Decimal(gateway.ledger.balance(customer["customer_id"]))
    assert balance == Decimal("5.00") - fees == Decimal(ok(steps, "customers.retrieve_before_delete")["balance"])
    assert gateway.ledger.audit_ok()

    secret = ok(steps, "secretKeys.create")
    assert secret["secret_key"].startswith("tg_sk_") and secret["secret_key"] not in json.dumps(
        ok(steps, "secretKeys.list"))
    assert ok(steps, "secretKeys.new_key_works")["object"] == "list"
    assert ok(steps, "secretKeys.delete") == {"id": secret["secret_key_id"], "deleted": True}
    refused(steps, "secretKeys.deleted_key_refused", 401, "invalid_secret_key")

    spend = ok(steps, "spendKeys.create")
    assert spend["key"] and spend["allowed_models"] == ["mock-*"] and spend["status"] == "active"
    assert (spend["allowed_providers"], spend["expires_at"]) == (["openai"], "2099-01-01T00:00:00.000Z")
    assert {k: v for k, v in spend["spend_limit"].items() if k != "resets_at"} == {"amount": "50.00",
                                                                                   "cycle": "monthly"}
    assert spend["request_limit"]["count"] == 1000 and spend["request_limit"]["cycle"] == "daily"
    assert (spend["rate_limit"], spend["tpm"]) == ({"rpm": 600, "burst": 100}, 1_000_000)
    assert spend["spend_key_id"] in [k["spend_key_id"] for k in ok(steps, "spendKeys.list")["data"]]
    for name in ("spendKeys.chat", "spendKeys.chat_again"):  # the gateway serves the key, its limits allowing
        assert ok(steps, name)["choices"][0]["message"]["content"], name
    used = ok(steps, "spendKeys.retrieve")
    assert used["spend_key_id"] == spend["spend_key_id"] and used["current_requests"] == 2
    assert Decimal(used["current_spend"]) > 0 and used["current_spend"] == used["total_spend"]
    assert used["last_used_at"] and used["spend_limit"] == spend["spend_limit"]
    updated = ok(steps, "spendKeys.update")
    assert (updated["spend_limit"]["amount"], updated["spend_limit"]["cycle"]) == ("75.50", "weekly")
    assert (updated["request_limit"]["count"], updated["request_limit"]["cycle"]) == (500, "weekly")
    assert updated["rate_limit"] is None and updated["tpm"] == spend["tpm"]  # null cleared it; left out, kept
    assert refused(steps, "spendKeys.invalid_limit", 422, "invalid_field")["param"] == "spend_limit.cycle"
    assert ok(steps, "spendKeys.pause")["status"] == "paused"
    assert ok(steps, "spendKeys.paused_refused") == {"status": 403, "code": "key_paused"}
    assert ok(steps, "spendKeys.rotate")["key"] != spend["key"]
    assert ok(steps, "spendKeys.revoke")["success"] is True
    # what the key's answer says its periods used (this week's, for both limits) is what the ledger holds for it
    final = ok(steps, "spendKeys.retrieve_revoked")
    served = ok(steps, "spendKeys.served")  # 2, and any the gateway served before its cache saw the pause
    assert final["revoked_at"] and final["current_requests"] == final["total_requests"] == served
    assert gateway.ledger.key_use(spend["spend_key_id"]) == (final["current_spend"], final["current_requests"])

    hook = ok(steps, "webhooks.create")
    assert hook["webhook_secret"] and hook["url"] == "https://example.com/hook"
    assert ok(steps, "webhooks.retrieve")["webhook_id"] == hook["webhook_id"]
    assert ok(steps, "webhooks.update")["url"] == "https://example.com/hook2"
    assert ok(steps, "webhooks.delete") == {"id": hook["webhook_id"], "deleted": True}

    models = ok(steps, "models.list")
    assert models["object"] == "list" and {"gpt-4o", "claude-3-5-haiku-latest"} & {m["id"] for m in models["data"]}

    refused(steps, "checkoutSessions.create", 501, "not_supported")
    refused(steps, "subscriptions.listPlans", 501, "not_supported")
    refused(steps, "creditBundles.list", 501, "not_supported")
    refused(steps, "customers.retrieve_missing", 404, "customer_not_found")
    assert "tier_type" in json.loads(steps["meters.create_invalid"]["error"].partition(" - ")[2])["message"]
    ok(steps, "customers.delete")
    refused(steps, "customers.retrieve_deleted", 404, "customer_not_found")
