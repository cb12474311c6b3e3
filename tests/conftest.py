"""Fixtures: the mock provider, ledgers on SQLite and PostgreSQL, and a running gateway per ledger."""

from __future__ import annotations

import os

import psycopg2
import pytest

from tests.harness import GatewayProcess
from tests.mock_provider import MockProvider

PG_ADMIN = "dbname=test user=postgres host=127.0.0.1 port=5432"
PG_DATABASE = "tollgate_test"
MOCK_MODEL_PRICE = {"provider": "openai", "model": "mock-*", "input_mtok": "1.00", "output_mtok": "2.00"}


def _postgres_url() -> str:
    """A fresh, empty tollgate_test database; in CI a missing server is a failure, not a skip."""
    try:
        conn = psycopg2.connect(PG_ADMIN, connect_timeout=3)
    except psycopg2.OperationalError as e:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {e}")
        pytest.skip(f"PostgreSQL not reachable: {e}")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")
        cur.execute(f"CREATE DATABASE {PG_DATABASE}")
    conn.close()
    return f"postgresql://postgres@127.0.0.1:5432/{PG_DATABASE}"


@pytest.fixture(scope="session")
def mock():
    with MockProvider() as server:
        yield server


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def gateway(request, mock, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"gateway-{request.param}")
    url = f"sqlite:///{tmp}/ledger.db" if request.param == "sqlite" else _postgres_url()
    upstreams = {p: mock.url for p in ("openai", "anthropic", "gemini", "cohere", "groq")}
    upstreams["mistral"] = "http://127.0.0.1:9"  # nothing listens: the unreachable-provider case
    # The mock's behaviour models (mock-slow, mock-cut) get a price, as an operator's own model would.
    gw = GatewayProcess(tmp, url, upstreams, prices=[MOCK_MODEL_PRICE])
    init = gw.cli_json("init")
    gw.admin_key = init["secret_key"]
    gw.cli("wallet", "topup", "100")
    gw.start()
    yield gw
    gw.stop()
