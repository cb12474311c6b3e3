"""Provider keys (sk-...) that apps send instead of a Tollgate key: registered (BYOK or --swap), unknown
(refused with a hint, or tracked), in captured and in configured traffic, through the CLI and a real gateway."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import subprocess
from decimal import Decimal

import openai
import pytest
import yaml
from mitmproxy import http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from addons.auth.credentials import CallerCredential, ForwardToken, encode_forward_token, read_credential
from addons.billing.plan import byok_fee
from addons.core.errors import BadRequest, Unauthorized
from addons.core.settings import CaptureSettings, parse_capture
from addons.ledger.accounts import (
    DEFAULT_ACCOUNT,
    create_key,
    credit_wallet,
    ensure_account,
    register_provider_key,
    revoke_provider_key,
)
from addons.ledger.models import ProviderKeyRow, database, open_database
from addons.proxy.auth_throttle import credential_digest
from addons.proxy.gateway_addon import Gateway
from pricing.cost import price
from pricing.money import format_usd, to_nanos
from tests.harness import OPENAI_CHAT, PROVIDER_KEYS, clean_env, run_tollgate

MANAGED_KEY = "sk-managed-by-the-gateway"
CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'


def app_key() -> str:
    return f"sk-proj-{secrets.token_urlsafe(24)}"


# -- which credential a request carries -----------------------------------------------------------

@pytest.mark.parametrize("headers, query_key, expected", [
    ({"authorization": "Bearer sk-proj-abc123"}, None, CallerCredential(provider_key="sk-proj-abc123")),
    ({"x-api-key": "sk-ant-api03-abc"}, None, CallerCredential(provider_key="sk-ant-api03-abc")),
    ({}, "AIzaSyAbc123", CallerCredential(provider_key="AIzaSyAbc123")),  # Gemini's ?key=
    ({"authorization": "Bearer bm90IGpzb24="}, None, CallerCredential(provider_key="bm90IGpzb24=")),  # not "eyJ"
    ({"authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2ln"}, None,  # a JWT: some providers' keys are
     CallerCredential(provider_key="eyJhbGciOiJIUzI1NiJ9.e30.c2ln")),
    ({"authorization": "Bearer sk-proj-abc", "x-api-key": "tg_sk_abc"}, None, CallerCredential(secret_key="tg_sk_abc")),
    ({"authorization": "Bearer tgt_a.b"}, None, CallerCredential(signed_token="tgt_a.b")),
])
def test_credentials_are_told_apart(headers, query_key, expected):
    assert read_credential(http.Headers(**headers), query_key) == expected


def test_a_forward_token_is_still_a_forward_token():
    token = ForwardToken("tg_sk_abc", provider_key="sk-own")
    credential = read_credential(http.Headers(authorization=f"Bearer {encode_forward_token(token)}"), None)
    assert credential == CallerCredential(secret_key="tg_sk_abc", token=token)


# '{"not json', not base64, {"secret_key":42}
@pytest.mark.parametrize("value", ["eyJub3QganNvbg", "eyJ%%%", "eyJzZWNyZXRfa2V5Ijo0Mn0="])
def test_a_malformed_forward_token_is_still_400(value):
    with pytest.raises(BadRequest) as e:
        read_credential(http.Headers(authorization=f"Bearer {value}"), None)
    assert (e.value.status, e.value.code) == (400, "invalid_forward_token")


@pytest.mark.parametrize("value", ["Basic dXNlcjpwdw==", "sk-with\x7fdel", "sk-ünïcode"])
def test_a_credential_that_cannot_be_a_key_is_401(value):
    with pytest.raises(Unauthorized) as e:
        read_credential(http.Headers([(b"authorization", value.encode())]), None)
    assert (e.value.status, e.value.code) == (401, "invalid_credential") and value not in e.value.message


def test_a_provider_key_counts_for_the_failed_auth_throttle():
    """Unknown provider keys are looked up too, so guessing them is throttled like guessing Tollgate keys."""
    flow = chat_flow("sk-proj-guess")
    assert credential_digest(flow) == hashlib.sha256(b"sk-proj-guess").hexdigest()


# -- settings --------------------------------------------------------------------------------------

@pytest.mark.parametrize("data, expected", [
    ({}, CaptureSettings("refuse", None)),
    ({"provider_keys": None, "account": None}, CaptureSettings("refuse", None)),
    ({"provider_keys": "track", "account": "legacy"}, CaptureSettings("track", "legacy")),
])
def test_capture_settings(data, expected):
    assert parse_capture(data) == expected


@pytest.mark.parametrize("data, message", [
    ({"provider_keys": "allow"}, "capture.provider_keys must be one of refuse, track"),
    ({"provider_keys": False}, "capture.provider_keys must be one of"),  # YAML's `off`
    ({"account": ""}, "capture.account must be an account name"),
    ({"account": 7}, "capture.account must be an account name"),
    ({"provider_key": "track"}, "capture has no field 'provider_key'"),
    (["track"], "capture must be a mapping"),
])
def test_bad_capture_settings_are_refused(data, message):
    with pytest.raises(ValueError, match=message):
        parse_capture(data)


# -- the gateway's decision, in-process ------------------------------------------------------------

@pytest.fixture
def capture() -> dict:
    """The `capture:` settings of `gw`; a test parametrizes it to change them."""
    return {}


@pytest.fixture
def gw(tmp_path, monkeypatch, capture):
    """A configured Gateway on a fresh SQLite ledger."""
    config = tmp_path / "tollgate.yaml"
    config.write_text(yaml.safe_dump({"capture": capture}))
    monkeypatch.setenv("TOLLGATE_DATABASE_URL", f"sqlite:///{tmp_path}/l.db")
    monkeypatch.setenv("TOLLGATE_CONFIG", str(config))
    monkeypatch.setenv("OPENAI_API_KEY", MANAGED_KEY)
    gateway = Gateway()
    with taddons.context(Proxyserver(), gateway) as tctx:
        tctx.configure(gateway)
        yield gateway
        gateway.done()
    database.close()
    database.initialize(None)


def chat_flow(key: str, mode: str = "regular", host: str = "api.openai.com", header: str = "authorization"):
    value = f"Bearer {key}" if header == "authorization" else key
    req = tutils.treq(host=host, port=443, scheme="https", method="POST", path="/v1/chat/completions",
                      headers=http.Headers([(header.encode(), value.encode())]), content=CHAT)
    flow = tflow.tflow(req=req)
    flow.client_conn.proxy_mode = ProxyMode.parse(mode)
    return flow


def run(gw, flow):
    asyncio.run(gw.request(flow))
    return flow


def refusal(flow) -> tuple[int, str, str]:
    error = json.loads(flow.response.content)["error"]
    return flow.response.status_code, error["code"], error["message"]


def funded(account: str, nanos: int = 10**9) -> str:
    _, wallet = ensure_account(account)
    credit_wallet(wallet.id, nanos)
    return wallet.id


@pytest.mark.parametrize("mode", ["regular", "transparent", "wireguard", "local"])
def test_a_registered_key_passes_as_bring_your_own_key(gw, mode):
    key = app_key()
    row = register_provider_key("legacy", "openai", key)
    flow = run(gw, chat_flow(key, mode))
    assert flow.response is None
    assert flow.request.headers["authorization"] == f"Bearer {key}"  # the app's own key goes on
    plan = gw.pending[flow.id].plan
    assert (plan.byok, plan.key.account_id, plan.key.key_id) == (True, row.account_id, None)
    assert plan.key.wallet_id == ensure_account("legacy")[1].id


def test_a_registered_gemini_key_in_the_query_goes_on_in_gemini_s_header(gw):
    key = "AIzaSy" + secrets.token_urlsafe(24)
    register_provider_key("legacy", "gemini", key)
    req = tutils.treq(host="generativelanguage.googleapis.com", port=443, scheme="https", method="POST",
                      path=f"/v1beta/models/gemini-2.0-flash:generateContent?key={key}", headers=http.Headers(),
                      content=b'{"contents": [{"parts": [{"text": "hi"}]}]}')
    flow = run(gw, tflow.tflow(req=req))
    assert flow.response is None and "key" not in flow.request.query
    assert flow.request.headers["x-goog-api-key"] == key and gw.pending[flow.id].plan.byok


def test_a_registered_key_with_swap_is_replaced_and_billed_as_managed(gw):
    key = app_key()
    wallet = funded("legacy")
    register_provider_key("legacy", "openai", key, swap=True)
    flow = run(gw, chat_flow(key, "transparent"))
    assert flow.response is None
    assert flow.request.headers["authorization"] == f"Bearer {MANAGED_KEY}"
    plan = gw.pending[flow.id].plan
    assert (plan.byok, plan.merchant_pays_provider, plan.key.wallet_id) == (False, True, wallet)


def test_a_swapped_key_needs_a_funded_wallet(gw):
    key = app_key()
    register_provider_key("legacy", "openai", key, swap=True)
    assert refusal(run(gw, chat_flow(key)))[:2] == (402, "insufficient_balance")


@pytest.mark.parametrize("mode, code", [
    ("transparent", "unknown_provider_key"),
    ("wireguard", "unknown_provider_key"),
    ("local", "unknown_provider_key"),
    ("regular", "invalid_credential"),  # HTTPS_PROXY: the app was pointed at the gateway
    ("reverse:https://api.openai.com", "invalid_credential"),
])
def test_an_unknown_key_is_refused_with_a_hint(gw, mode, code):
    key = app_key()
    flow = run(gw, chat_flow(key, mode))
    status, got, message = refusal(flow)
    assert (status, got) == (401, code)
    assert "provider key" in message and "tg_sk_" in message
    assert "tollgate keys register-provider-key --account A --provider openai" in message
    assert key not in flow.response.text and key[8:] not in flow.response.text
    assert flow.id not in gw.pending


def test_a_revoked_registration_is_unknown(gw):
    key = app_key()
    revoke_provider_key(register_provider_key("legacy", "openai", key).id)
    assert refusal(run(gw, chat_flow(key, "transparent")))[:2] == (401, "unknown_provider_key")


def test_a_key_registered_for_another_provider_is_unknown(gw):
    key = app_key()
    register_provider_key("legacy", "anthropic", key)
    assert refusal(run(gw, chat_flow(key)))[:2] == (401, "invalid_credential")


@pytest.mark.parametrize("capture", [{"provider_keys": "track"}])
@pytest.mark.parametrize("mode", ["transparent", "regular"])
def test_track_forwards_unknown_keys_as_byok_to_the_default_account(gw, mode):
    key = app_key()
    account, wallet = ensure_account(DEFAULT_ACCOUNT)
    flow = run(gw, chat_flow(key, mode, header="authorization"))
    assert flow.response is None and flow.request.headers["authorization"] == f"Bearer {key}"
    plan = gw.pending[flow.id].plan
    assert (plan.byok, plan.key.account_id, plan.key.wallet_id) == (True, account.id, wallet.id)


@pytest.mark.parametrize("capture", [{"provider_keys": "track", "account": "legacy-apps"}])
def test_track_meters_to_the_configured_account(gw):
    _, wallet = ensure_account("legacy-apps")
    flow = run(gw, chat_flow(app_key(), "transparent"))
    assert gw.pending[flow.id].plan.key.wallet_id == wallet.id


@pytest.mark.parametrize("capture", [{"provider_keys": "track", "account": "nobody"}])
def test_track_to_an_account_that_does_not_exist_is_503(gw):
    status, code, message = refusal(run(gw, chat_flow(app_key(), "transparent")))
    assert (status, code) == (503, "capture_account_missing") and "'nobody'" in message


@pytest.mark.parametrize("capture", [{"provider_keys": "track"}])
def test_a_registered_key_still_goes_to_its_own_account_under_track(gw):
    key = app_key()
    register_provider_key("legacy", "openai", key, swap=True)
    wallet = funded("legacy")
    flow = run(gw, chat_flow(key, "transparent"))
    assert flow.request.headers["authorization"] == f"Bearer {MANAGED_KEY}"
    assert gw.pending[flow.id].plan.key.wallet_id == wallet


@pytest.mark.parametrize("mode", ["regular", "transparent"])
def test_a_tollgate_key_keeps_todays_behaviour(gw, mode):
    row, secret = create_key("app")
    funded(DEFAULT_ACCOUNT)
    flow = run(gw, chat_flow(secret, mode, header="x-api-key"))
    assert flow.response is None and flow.request.headers["authorization"] == f"Bearer {MANAGED_KEY}"
    assert "x-api-key" not in flow.request.headers
    plan = gw.pending[flow.id].plan
    assert (plan.key.key_id, plan.byok) == (row.id, False)


@pytest.mark.parametrize("value, status, code", [
    ("eyJub3QganNvbg", 400, "invalid_forward_token"),
    ("tg_sk_" + "x" * 43, 401, "invalid_credential"),
])
def test_malformed_and_unknown_tollgate_credentials_are_unchanged(gw, value, status, code):
    assert refusal(run(gw, chat_flow(value, "transparent")))[:2] == (status, code)


# -- the CLI ---------------------------------------------------------------------------------------

@pytest.fixture
def cli(tmp_path):
    """`tollgate` on a fresh SQLite ledger; call(*args, stdin=...) -> CompletedProcess."""
    env = clean_env(TOLLGATE_DATABASE_URL=f"sqlite:///{tmp_path}/ledger.db")

    def call(*args: str, stdin: str = "", check: bool = True) -> subprocess.CompletedProcess:
        result = run_tollgate(list(args), env, input=stdin)
        assert not check or result.returncode == 0, result.stderr
        return result

    call.db_files = lambda: [p for p in tmp_path.iterdir() if p.name.startswith("ledger.db")]
    call("init")
    return call


@pytest.mark.e2e
def test_register_reads_the_key_from_stdin_and_stores_only_its_hash(cli, tmp_path):
    key = app_key()
    result = cli("keys", "register-provider-key", "--account", "legacy", "--provider", "openai", "--json",
                 stdin=f"  {key}\n")
    registered = json.loads(result.stdout)
    assert registered["id"].startswith("pkey_") and registered["prefix"] == "sk-pr…"
    assert (registered["account"], registered["provider"], registered["swap"]) == ("legacy", "openai", False)
    assert key not in result.stdout + result.stderr
    db = open_database(f"sqlite:///{tmp_path}/ledger.db")
    try:
        row = ProviderKeyRow.get_by_id(registered["id"])
        assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
        assert not any(key[6:] in str(value) for value in row.__data__.values())
    finally:
        db.close()
        database.initialize(None)
    assert all(key[6:].encode() not in path.read_bytes() for path in cli.db_files())  # nowhere in the ledger


@pytest.mark.e2e
def test_list_and_revoke(cli):
    first = json.loads(cli("keys", "register-provider-key", "--account", "legacy", "--provider", "openai", "--json",
                           stdin=app_key()).stdout)
    second = json.loads(cli("keys", "register-provider-key", "--account", "legacy", "--provider", "anthropic",
                            "--swap", "--json", stdin=app_key()).stdout)
    listed = json.loads(cli("keys", "provider-keys", "--json").stdout)
    assert [(r["id"], r["provider"], r["swap"], r["revoked_at"]) for r in listed] == [
        (first["id"], "openai", False, None), (second["id"], "anthropic", True, None)]
    assert "Provider key registration" in cli("keys", "revoke-provider-key", first["id"]).stdout
    listed = {r["id"]: r for r in json.loads(cli("keys", "provider-keys", "--json").stdout)}
    assert listed[first["id"]]["revoked_at"] and listed[second["id"]]["revoked_at"] is None
    missing = cli("keys", "revoke-provider-key", "pkey_nope", check=False)
    assert missing.returncode != 0 and "no provider key registration pkey_nope" in missing.stderr


@pytest.mark.e2e
def test_a_revoked_key_can_be_registered_again(cli):
    key = app_key()
    first = json.loads(cli("keys", "register-provider-key", "--account", "a", "--provider", "openai", "--json",
                           stdin=key).stdout)
    cli("keys", "revoke-provider-key", first["id"])
    cli("keys", "register-provider-key", "--account", "b", "--provider", "openai", stdin=key)


@pytest.mark.parametrize("args, stdin, message", [
    (("--provider", "nope"), "sk-proj-abcdef", "no provider 'nope' in the catalog"),
    (("--provider", "openai"), " \n", "no provider key given"),
    (("--provider", "openai"), "tg_sk_abcdefghijklmnop", "this is a Tollgate secret key, not a provider key"),
    (("--provider", "openai"), "sk-two words", "one line of printable ASCII"),
])
@pytest.mark.e2e
def test_bad_registrations_are_refused(cli, args, stdin, message):
    result = cli("keys", "register-provider-key", "--account", "legacy", *args, stdin=stdin, check=False)
    assert result.returncode != 0 and message in result.stderr
    assert json.loads(cli("keys", "provider-keys", "--json").stdout) == []


@pytest.mark.e2e
def test_a_key_registered_twice_is_refused_naming_the_registration(cli):
    key = app_key()
    first = json.loads(cli("keys", "register-provider-key", "--account", "legacy", "--provider", "openai", "--json",
                           stdin=key).stdout)
    again = cli("keys", "register-provider-key", "--account", "other", "--provider", "openai", "--swap", stdin=key,
                check=False)
    assert again.returncode != 0 and f"registered already as {first['id']}" in again.stderr
    scripted = cli("keys", "register-provider-key", "--account", "other", "--provider", "openai", "--json", stdin=key,
                   check=False)
    assert json.loads(scripted.stdout)["error"]["code"] == "provider_key_registered"  # a conflict, not bad input
    assert key not in again.stderr and len(json.loads(cli("keys", "provider-keys", "--json").stdout)) == 1


# -- end to end: the openai SDK through HTTPS_PROXY, a real gateway and ledger ---------------------

def chat(key: str):
    return openai.OpenAI(api_key=key, max_retries=0).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])


def register(gateway, key: str, account: str, *swap: str) -> dict:
    result = run_tollgate(["keys", "register-provider-key", "--account", account, "--provider", "openai", *swap,
                           "--json"], gateway.env, input=key)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def balance(gateway, account: str) -> Decimal:
    return Decimal(gateway.ledger.balance(account=account))


OPENAI_CHAT_COST = price(OPENAI_CHAT, model="gpt-4o-mini", provider_id="openai", pricing_id="openai").total_nanos


def test_e2e_registered_key_is_billed_as_bring_your_own_key(proxied, mock):
    key = app_key()
    register(proxied, key, "legacy-byok")
    before = balance(proxied, "legacy-byok")
    raw = chat(key)
    assert raw.parse().usage.prompt_tokens == 17
    assert mock.last.headers["authorization"] == f"Bearer {key}"
    row = proxied.request_row(raw.headers["x-lava-request-id"])
    # the gateway runs with byok_fee_percent 10 and byok_fee_per_request 0.001 (conftest.BYOK_FEE)
    fee = byok_fee(OPENAI_CHAT_COST, Decimal(10), to_nanos(Decimal("0.001")))
    assert (row["byok"], row["key"], row["provider_cost"], row["charged"]) == (
        True, None, format_usd(OPENAI_CHAT_COST), format_usd(fee))
    assert balance(proxied, "legacy-byok") == before - Decimal(format_usd(fee))


def test_e2e_swapped_key_is_replaced_by_the_managed_key_and_billed_the_provider_cost(proxied, mock):
    key = app_key()
    register(proxied, key, "legacy-swap", "--swap")
    proxied.cli("wallet", "topup", "5", "--account", "legacy-swap")
    before = balance(proxied, "legacy-swap")
    raw = chat(key)
    seen = " ".join(f"{k}: {v}" for k, v in mock.last.headers.items_raw())
    assert mock.last.headers["authorization"] == f"Bearer {PROVIDER_KEYS['OPENAI_API_KEY']}" and key not in seen
    row = proxied.request_row(raw.headers["x-lava-request-id"])
    assert (row["byok"], row["provider_cost"], row["charged"]) == (
        False, format_usd(OPENAI_CHAT_COST), format_usd(OPENAI_CHAT_COST))
    assert balance(proxied, "legacy-swap") == before - Decimal(format_usd(OPENAI_CHAT_COST))
    assert proxied.ledger.audit_ok() is True


def test_e2e_registered_key_works_on_the_forward_endpoint_too(gateway, mock):
    key = app_key()
    register(gateway, key, "legacy-forward")
    client = openai.OpenAI(api_key=key, base_url=f"{gateway.url}/v1/forward?u=https://api.openai.com/v1/",
                           max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert mock.last.headers["authorization"] == f"Bearer {key}"
    assert gateway.request_row(raw.headers["x-lava-request-id"])["byok"] is True


def test_e2e_unknown_key_is_401_invalid_credential_and_never_forwarded(proxied, mock):
    key = app_key()
    forwarded = len(mock.requests)
    with pytest.raises(openai.AuthenticationError) as e:
        chat(key)
    error = e.value.response.json()["error"]
    assert (e.value.status_code, error["code"]) == (401, "invalid_credential")
    assert "register-provider-key" in error["message"] and key not in e.value.response.text
    assert len(mock.requests) == forwarded
