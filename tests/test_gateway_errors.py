"""Every refusal is a JSON error of the documented shape, with the request id, and nothing leaks."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from tests.harness import PROVIDER_KEYS
from tests.ledger_reads import wait_for

CHAT = "/v1/forward?u=https://api.openai.com/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def post(gateway, path=CHAT, headers=None, body=BODY):
    with httpx.Client(base_url=gateway.url, trust_env=False, timeout=15) as client:
        return client.post(path, json=body, headers=headers or {})


def assert_error(response, status, code):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["type"] and error["message"]
    assert response.headers["x-lava-request-id"].startswith("req_")
    for secret in PROVIDER_KEYS.values():
        assert secret not in response.text
    assert "Traceback" not in response.text


def bearer(value):
    return {"authorization": f"Bearer {value}"}


@pytest.mark.launchers
def test_missing_credential_is_401(gateway):
    assert_error(post(gateway), 401, "missing_credential")


def test_unknown_secret_key_is_401(gateway):
    assert_error(post(gateway, headers=bearer("tg_sk_" + "x" * 43)), 401, "invalid_credential")


@pytest.mark.parametrize("token", [
    "eyJnot-base64-%%%",  # anything else ("eyJ" is base64 of '{"') is taken for a provider key: 401
    base64.b64encode(b'{"not json').decode(),
    base64.b64encode(b'{"secret_key": ["tg_sk_x"]}').decode(),
    base64.b64encode(b'{"customer_id": "c1"}').decode(),
    base64.b64encode(b'{"secret_key": "tg_sk_x", "surprise": 1}').decode(),
])
@pytest.mark.one_gateway
def test_malformed_forward_token_is_400(gateway, token):
    assert_error(post(gateway, headers=bearer(token)), 400, "invalid_forward_token")


def test_revoked_key_is_403_within_the_cache_ttl(gateway):
    created = gateway.cli_json("keys", "create", "--name", "short-lived")
    assert post(gateway, headers=bearer(created["secret_key"])).status_code == 200
    gateway.cli("keys", "revoke", created["id"])
    # the gateway runs with tollgate_cache_ttl_ms=200
    response = wait_for(lambda: post(gateway, headers=bearer(created["secret_key"])), 1.0, "the revocation to apply",
                        until=lambda response: response.status_code != 200)
    assert_error(response, 403, "key_revoked")


def test_empty_wallet_is_402_and_topup_reopens_it(gateway):
    created = gateway.cli_json("keys", "create", "--name", "broke", "--account", "broke-co")
    assert_error(post(gateway, headers=bearer(created["secret_key"])), 402, "insufficient_balance")
    gateway.cli("wallet", "topup", "0.50", "--account", "broke-co")
    wait_for(lambda: post(gateway, headers=bearer(created["secret_key"])).status_code == 200, 1.0,
             "the top-up to reopen the wallet")


@pytest.mark.parametrize("metadata", [
    "not json", "[]", '{"bad-key": "v"}', '{"k": 1}', '{"k": ""}', json.dumps({"k": "v" * 256}),
    json.dumps({f"k{i}": "v" for i in range(101)}),
])
@pytest.mark.one_gateway
def test_invalid_metadata_is_400(gateway, metadata):
    response = post(gateway, headers={**bearer(gateway.admin_key), "x-lava-metadata": metadata})
    assert_error(response, 400, "invalid_metadata")


@pytest.mark.parametrize("path", [
    "/v1/forward",
    "/v1/forward?u=https://example.com/v1/chat/completions",
    "/v1/forward?u=http://api.openai.com/v1/chat/completions",
    "/v1/forward?u=https://169.254.169.254/latest/meta-data",
    "/v1/forward?u=https://127.0.0.1:5432/",
    "/v1/forward?u=https://user:pw@api.openai.com/v1/chat/completions",
    "/v1/forward?u=https://api.openai.com.evil.net/v1/chat/completions",
    "/v1/forward?u=not a url",
])
@pytest.mark.one_gateway
def test_bad_forward_url_is_400_before_any_connection(gateway, mock, path):
    before = len(mock.requests)
    assert_error(post(gateway, path=path, headers=bearer(gateway.admin_key)), 400, "invalid_forward_url")
    assert len(mock.requests) == before


@pytest.mark.launchers
@pytest.mark.parametrize("status", [429, 500])
def test_provider_error_passes_through_unchanged_and_is_recorded_without_charge(gateway, mock, status):
    response = post(gateway, headers=bearer(gateway.admin_key), body={**BODY, "model": f"mock-error-{status}"})
    assert response.status_code == status
    assert response.content == mock.last.response_body  # the provider's own body, untouched
    assert response.headers["x-request-id"] == mock.last.request_id
    row = gateway.request_row(response.headers["x-lava-request-id"])
    assert (row["status"], row["charged"]) == (status, "0.00")


@pytest.mark.launchers
def test_unreachable_provider_is_502_json(gateway):
    path = "/v1/forward?u=https://api.mistral.ai/v1/chat/completions"
    assert_error(post(gateway, path=path, headers=bearer(gateway.admin_key)), 502, "upstream_unreachable")


@pytest.mark.launchers
def test_healthz(gateway):
    with httpx.Client(trust_env=False) as client:
        response = client.get(f"{gateway.url}/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
