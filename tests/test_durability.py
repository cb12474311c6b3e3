"""Process-level faults: a gateway killed with SIGKILL loses no usage, and replays none twice."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
from decimal import Decimal

import httpx
import psycopg2
import pytest

from tests.conftest import MOCK_MODEL_PRICE
from tests.harness import GatewayProcess, fresh_postgres_database

CHAT = "/v1/forward?u=https://api.openai.com/v1/chat/completions"


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_gateway(request, mock, tmp_path):
    url = f"sqlite:///{tmp_path}/ledger.db" if request.param == "sqlite" else fresh_postgres_database("tollgate_durable")
    gateway = GatewayProcess(tmp_path, url, {"openai": mock.url}, prices=[MOCK_MODEL_PRICE])
    gateway.admin_key = gateway.cli_json("init")["secret_key"]
    gateway.cli("wallet", "topup", "10")
    gateway.start()
    yield gateway
    gateway.stop()


@contextlib.contextmanager
def ledger_writes_blocked(database_url: str):
    """Another session holds the request table, so the gateway's writer can only wait and retry."""
    if database_url.startswith("sqlite:///"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
    else:
        conn = psycopg2.connect(database_url.replace("postgresql://", "postgres://"))
        conn.cursor().execute("LOCK TABLE request IN ACCESS EXCLUSIVE MODE")
    try:
        yield
    finally:
        conn.rollback()
        conn.close()


def chat(client: httpx.Client, key: str, stream: bool) -> str:
    response = client.post(CHAT, headers={"authorization": f"Bearer {key}"},
                           json={"model": "mock-model", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200
    assert response.read()
    return response.headers["x-lava-request-id"]


def test_sigkill_after_responses_loses_no_usage_and_replay_charges_once(fresh_gateway):
    gateway = fresh_gateway
    opening = Decimal(gateway.cli_json("wallet")["balance"])
    with ledger_writes_blocked(gateway.database_url):
        with httpx.Client(base_url=gateway.url, trust_env=False, timeout=15) as client:
            served = [chat(client, gateway.admin_key, stream=i % 2 == 0) for i in range(12)]
        gateway.proc.send_signal(signal.SIGKILL)  # every response is at the client; no row is written yet
        gateway.proc.wait(10)
    assert not {r["id"] for r in gateway.cli_json("requests", "--limit", "100")} & set(served)

    gateway.start()  # replays the dead process's journal
    rows = {rid: gateway.request_row(rid) for rid in served}
    assert all(row["status"] == 200 and row["usage_source"] == "reported" for row in rows.values())
    gateway.stop()
    gateway.start()  # a second replay of anything left must charge nothing again
    listed = [r["id"] for r in gateway.cli_json("requests", "--limit", "100")]
    assert sorted(listed) == sorted(served)
    charged = sum(Decimal(row["charged"]) for row in rows.values())
    assert charged > 0
    assert Decimal(gateway.cli_json("wallet")["balance"]) == opening - charged
    assert gateway.cli_json("audit")["ok"]
    gateway.stop()
    assert not list((gateway.tmp / "journal").rglob("*.jsonl"))  # all of it is in the ledger now
