"""The operator's CLI as scripts use it: --json everywhere, money as decimal strings."""

from __future__ import annotations

import json
import subprocess

import pytest
from mitmproxy.certs import CertStore

from tests.harness import BIN, clean_env, tollgate_cli

pytestmark = pytest.mark.e2e  # runs the `tollgate` CLI as a process


@pytest.fixture
def tollgate(tmp_path):
    return tollgate_cli(clean_env(TOLLGATE_DATABASE_URL=f"sqlite:///{tmp_path}/ledger.db", OPENAI_API_KEY="sk-x",
                                  TOLLGATE_RUNTIME_FILE=str(tmp_path / "no-gateway.json"),
                                  TOLLGATE_CA_BUNDLE=str(tmp_path / "ca-bundle.pem")))


def test_the_installed_script_answers_as_the_suites_forked_runs_do(tmp_path, tollgate):
    """The suite runs `tollgate` forked from tests/cli_forkserver.py; the console script itself, the same."""
    env = clean_env(TOLLGATE_DATABASE_URL=f"sqlite:///{tmp_path}/ledger.db", COLUMNS="120")
    tollgate("init")
    for args in (["keys", "list", "--json"], ["wallet", "topup", "-5"], ["keys", "list"], ["nonsense"]):
        script = subprocess.run([str(BIN / "tollgate"), *args], env=env, capture_output=True, text=True, timeout=60)
        forked = tollgate_cli(env)(*args, check=False)
        assert (script.returncode, script.stdout, script.stderr) == (forked.returncode, forked.stdout, forked.stderr)
        assert "Traceback" not in script.stderr


def test_init_creates_the_admin_key_once(tollgate):
    first = tollgate.json("init")
    assert first["secret_key"].startswith("tg_sk_") and first["balance"] == "0.00"
    assert tollgate.json("init")["secret_key"] is None
    keys = tollgate.json("keys", "list")
    assert [k["name"] for k in keys] == ["admin"]
    assert first["secret_key"] not in json.dumps(keys)  # only a display prefix is kept


def test_keys_lifecycle(tollgate):
    tollgate("init")
    key = tollgate.json("keys", "create", "--name", "ci", "--account", "acme")
    assert key["account"] == "acme" and key["secret_key"].startswith("tg_sk_")
    revoked = tollgate.json("keys", "revoke", key["id"])
    assert revoked["revoked_at"]
    listed = {k["id"]: k for k in tollgate.json("keys", "list")}
    assert listed[key["id"]]["revoked_at"] and listed[key["id"]]["account"] == "acme"
    assert tollgate("keys", "revoke", "key_nope", check=False).returncode != 0


def test_wallet_topups_are_exact_decimals(tollgate):
    tollgate("init")
    tollgate("wallet", "topup", "0.1")
    assert tollgate.json("wallet", "topup", "0.2")["balance"] == "0.30"
    assert tollgate.json("audit") == {"ok": True, "mismatches": []}


@pytest.mark.parametrize("amount", ["-5", "0", "abc", "0.0000000001", "NaN"])
def test_wallet_topup_refuses_bad_amounts(tollgate, amount):
    tollgate("init")
    result = tollgate("wallet", "topup", amount, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert tollgate.json("wallet")["balance"] == "0.00"


def test_providers_lists_the_catalog_and_configured_keys(tollgate):
    providers = {p["id"]: p for p in tollgate.json("providers")}
    assert len(providers) >= 20
    assert providers["openai"]["configured"] is True and providers["anthropic"]["configured"] is False
    assert len(providers["bedrock"]["hosts"]) > 30  # --json lists every region's host
    assert {"openai", "anthropic"} <= set(providers["anthropic"]["format"]) and providers["cohere"]["format"] == []


def test_providers_table_shortens_a_regional_clouds_dozens_of_hosts(tmp_path):
    wide = tollgate_cli(clean_env(TOLLGATE_DATABASE_URL=f"sqlite:///{tmp_path}/ledger.db", COLUMNS="250",
                                  TOLLGATE_RUNTIME_FILE=str(tmp_path / "no-gateway.json")))
    shown = wide("providers").stdout
    assert "bedrock-runtime.us-east-1.amazonaws.com" not in shown and "more (--json lists them)" in shown
    assert "api.cohere.com, api.cohere.ai" in shown  # a provider's two hosts are both shown


def test_ca_prints_the_client_exports(tollgate, tmp_path):
    CertStore.from_store(tmp_path, "mitmproxy", 2048)  # the CA a gateway creates on its first start
    data = tollgate.json("ca", "--confdir", str(tmp_path))
    cert, bundle = str(tmp_path / "mitmproxy-ca-cert.pem"), str(tmp_path / "ca-bundle.pem")
    assert data["ca_cert"] == cert and data["bundle"] == bundle
    assert [data["exports"][k] for k in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")] == [
        bundle, bundle, cert]


def test_empty_ledger_reports(tollgate):
    tollgate("init")
    assert tollgate.json("requests") == []
    for by in ("provider", "model", "key", "customer", "meter", "day"):
        usage = tollgate.json("usage", "--by", by)
        assert usage["rows"] == [] and usage["totals"]["requests"] == 0 and usage["totals"]["margin"] == "0.00"


def test_webhooks_lifecycle(tollgate):
    """`tollgate webhooks`: the secret once at creation, never after; update keeps it; delete stops the webhook."""
    tollgate("init")
    created = tollgate.json("webhooks", "create", "--name", "billing", "--url", "https://example.com/hooks")
    assert created["id"].startswith("wh") and created["secret"].startswith("whsec_")
    listed = tollgate.json("webhooks", "list")
    assert [(w["id"], w["name"], w["url"]) for w in listed] == [(created["id"], "billing", "https://example.com/hooks")]
    moved = tollgate.json("webhooks", "update", created["id"], "--url", "https://example.com/v2")
    assert (moved["url"], moved["name"]) == ("https://example.com/v2", "billing")
    shown = tollgate("webhooks", "show", created["id"]).stdout
    assert "https://example.com/v2" in shown and created["secret"] not in shown + json.dumps(listed)
    assert "not shown again" in tollgate("webhooks", "create", "--name", "b", "--url", "http://127.0.0.1:9/x").stdout
    assert tollgate.json("webhooks", "delete", created["id"])["deleted"] is True
    assert created["id"] not in [w["id"] for w in tollgate.json("webhooks", "list")]
    for args, says in ((["show", created["id"]], "no webhook"),
                       (["create", "--name", "x", "--url", "ftp://example.com"], "http:// or https://"),
                       (["create", "--name", "x", "--url", "https://user:pw@example.com"], "credentials"),
                       (["update", created["id"]], "--name or --url")):
        refused = tollgate("webhooks", *args, check=False)
        assert refused.returncode != 0 and says in refused.stderr and "Traceback" not in refused.stderr, args
