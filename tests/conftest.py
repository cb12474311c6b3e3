"""Fixtures: the mock provider, ledgers on SQLite and PostgreSQL, and a running gateway per ledger."""

from __future__ import annotations

import pytest

from addons.ledger.models import database, open_database
from tests.harness import GatewayProcess, PaymentHook, fresh_postgres_database
from tests.harness import private_postgres, private_redis  # noqa: F401 - fixtures for every test module
from tests.mock_provider import MockProvider

MOCK_MODEL_PRICE = {"provider": "openai", "model": "mock-*", "input_mtok": "1.00", "output_mtok": "2.00"}


@pytest.fixture(autouse=True)
def _journal_in_tmp(tmp_path, monkeypatch):
    """Gateways built in this process journal under the test's own directory, not the project's data/."""
    monkeypatch.setenv("TOLLGATE_JOURNAL_DIR", str(tmp_path / "journal"))


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request, tmp_path):
    """A fresh, empty ledger opened in this process; each test module gets its own PostgreSQL database."""
    name = "tollgate_" + request.module.__name__.rpartition(".")[2].removeprefix("test_")
    url = f"sqlite:///{tmp_path}/ledger.db" if request.param == "sqlite" else fresh_postgres_database(name)
    db = open_database(url)
    yield db
    db.close()
    database.initialize(None)


@pytest.fixture(scope="session")
def mock():
    with MockProvider() as server:
        yield server


PAYHOOK_SECRET = "whsec_test_0123456789abcdef"
BYOK_FEE = {"byok_fee_percent": "10", "byok_fee_per_request": "0.001"}


@pytest.fixture(scope="session")
def payhook():
    hook = PaymentHook(PAYHOOK_SECRET)
    yield hook
    hook.close()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def gateway(request, mock, payhook, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"gateway-{request.param}")
    url = f"sqlite:///{tmp}/ledger.db" if request.param == "sqlite" else fresh_postgres_database("tollgate_test")
    upstreams = {p: mock.url for p in ("openai", "anthropic", "gemini", "cohere", "groq")}
    upstreams["mistral"] = "http://127.0.0.1:9"  # nothing listens: the unreachable-provider case
    # The mock's behaviour models (mock-slow, mock-cut) get a price, as an operator's own model would.
    billing = {**BYOK_FEE, "autopay": {"webhook_url": payhook.url, "webhook_secret": PAYHOOK_SECRET,
                                       "retry_base_seconds": "0.05"}}
    # Both ways to run the gateway go through the whole suite: the lean launcher (./run_proxy.sh) on
    # SQLite, and the addon as a mitmproxy script (as ./run_proxy.sh --web loads it) on PostgreSQL.
    launcher = "tollgate-proxy" if request.param == "sqlite" else "mitmdump"
    gw = GatewayProcess(tmp, url, upstreams, prices=[MOCK_MODEL_PRICE], billing=billing, launcher=launcher)
    init = gw.cli_json("init")
    gw.admin_key = init["secret_key"]
    gw.cli("wallet", "topup", "100")
    gw.start()
    yield gw
    gw.stop()
