"""Process-level faults: a gateway killed with SIGKILL loses no usage, and replays none twice."""

from __future__ import annotations

import contextlib
import signal
import socket
import sqlite3
import threading
import time
from decimal import Decimal

import httpx
import psycopg2
import pytest

from tests.conftest import MOCK_MODEL_PRICE
from tests.harness import GatewayProcess, fresh_postgres_database
from tests.ledger_reads import wait_for

CHAT = "/v1/forward?u=https://api.openai.com/v1/chat/completions"


def funded_gateway(tmp_path, url: str, mock, **kw) -> GatewayProcess:
    """A started gateway with an admin key and $10 in its wallet (`opening`)."""
    gateway = GatewayProcess(tmp_path, url, {"openai": mock.url}, prices=[MOCK_MODEL_PRICE], **kw)
    gateway.fund()
    gateway.opening = Decimal(gateway.ledger.balance())
    gateway.start()
    return gateway


def assert_ledger_holds_exactly(gateway: GatewayProcess, request_ids: set[str]) -> list[dict]:
    """Each request once and nothing else, the wallet down by exactly what they were charged, audit ok."""
    rows = {r["id"]: r for r in gateway.ledger.requests(limit=100000)}
    assert set(rows) == request_ids  # the id is the primary key: once at most, so exactly once
    charged = sum(Decimal(row["charged"]) for row in rows.values())
    assert charged > 0 and Decimal(gateway.ledger.balance()) == gateway.opening - charged
    assert gateway.ledger.audit_ok()
    return list(rows.values())


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_gateway(request, mock, tmp_path):
    url = f"sqlite:///{tmp_path}/ledger.db" if request.param == "sqlite" else fresh_postgres_database("tollgate_durable")
    gateway = funded_gateway(tmp_path, url, mock)
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


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


def chat(client: httpx.Client, key: str, stream: bool) -> str:
    response = client.post(CHAT, headers={"authorization": f"Bearer {key}"},
                           json={"model": "mock-model", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200
    assert response.read()
    return response.headers["x-lava-request-id"]


def test_sigkill_after_responses_loses_no_usage_and_replay_charges_once(fresh_gateway):
    gateway = fresh_gateway
    with ledger_writes_blocked(gateway.database_url):
        with httpx.Client(base_url=gateway.url, trust_env=False, timeout=15) as client:
            served = [chat(client, gateway.admin_key, stream=i % 2 == 0) for i in range(12)]
        gateway.proc.send_signal(signal.SIGKILL)  # every response is at the client; no row is written yet
        gateway.proc.wait(10)
    assert not {r["id"] for r in gateway.ledger.requests(limit=100)} & set(served)

    gateway.start()  # replays the dead process's journal
    rows = {rid: gateway.request_row(rid) for rid in served}
    assert all(row["status"] == 200 and row["usage_source"] == "reported" for row in rows.values())
    gateway.stop()
    gateway.start()  # a second replay of anything left must charge nothing again
    assert_ledger_holds_exactly(gateway, set(served))
    gateway.stop()
    assert not list((gateway.tmp / "journal").rglob("*.jsonl"))  # all of it is in the ledger now


class Load:
    """Clients sending streamed and plain requests until stopped; what each got back is kept."""

    def __init__(self, gateway: GatewayProcess, clients: int = 4):
        self.gateway, self.results, self.stopping = gateway, [], threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]
        for thread in self.threads:
            thread.start()

    def _client(self, i: int) -> None:
        with httpx.Client(base_url=self.gateway.url, trust_env=False, timeout=15) as client:
            n = 0
            while not self.stopping.is_set():
                n += 1
                response = client.post(CHAT, headers={"authorization": f"Bearer {self.gateway.admin_key}"},
                                       json={"model": "mock-model", "stream": (i + n) % 2 == 0,
                                             "messages": [{"role": "user", "content": "hi"}]})
                response.read()
                self.results.append((response.status_code, response.headers.get("x-lava-request-id"),
                                     response.json()["error"]["code"] if response.status_code >= 400 else None))
                time.sleep(0.01)

    def wait_for_results(self, count: int, what: str) -> None:
        """Until `count` more answers than now have come back."""
        wanted = len(self.results) + count
        wait_for(lambda: len(self.results) >= wanted, 15, what)

    def stop(self) -> list[tuple[int, str, str | None]]:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)
        return self.results


@pytest.mark.parametrize("policy", ["serve", "refuse"])
def test_postgres_stopped_under_load_loses_and_duplicates_nothing(private_postgres, mock, tmp_path, policy):
    gateway = funded_gateway(tmp_path, private_postgres.url, mock, options={"tollgate_ledger_outage": policy})
    try:
        load = Load(gateway)
        load.wait_for_results(20, "requests served before the outage")
        served_before = len(load.results)
        private_postgres.stop()
        time.sleep(3.0)  # the outage: the writer retries each second meanwhile
        during = load.results[served_before:]
        private_postgres.start()
        back = len(load.results)
        # the probe sees it back within 0.5 s
        wait_for(lambda: any(status == 200 for status, _, _ in load.results[back:]), 10, "a request served again")
        results = load.stop()
    finally:
        gateway.stop()  # a clean stop flushes everything the writer still holds
    served = {rid for status, rid, _ in results if status == 200}
    refused = [code for status, _, code in during if status != 200]
    if policy == "serve":
        assert during and all(status == 200 for status, _, _ in during)  # cached key and balance
    else:
        assert refused and set(refused) == {"ledger_unavailable"}
    assert_ledger_holds_exactly(gateway, served)
    assert results[-1][0] == 200  # served again once the database was back


def test_sigterm_lets_a_stream_in_flight_finish_and_flushes_everything(fresh_gateway, mock):
    gateway = fresh_gateway
    mock.release_stream.clear()
    auth = {"authorization": f"Bearer {gateway.admin_key}"}
    idle = httpx.Client(base_url=gateway.url, trust_env=False, timeout=15)
    assert idle.post(CHAT, headers=auth, json={"model": "mock-model", "messages": []}).status_code == 200
    with httpx.Client(base_url=gateway.url, trust_env=False, timeout=15) as client:
        with client.stream("POST", CHAT, headers={"authorization": f"Bearer {gateway.admin_key}"},
                           json={"model": "mock-slow", "stream": True,
                                 "messages": [{"role": "user", "content": "hi"}]}) as response:
            chunks, received = response.iter_raw(), b""
            while b"Hello" not in received:
                received += next(chunks)
            gateway.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: not port_open(gateway.port), 10, "the listener to close")
            with pytest.raises(httpx.ConnectError):  # the listener is closed: new clients go elsewhere
                httpx.post(gateway.url + CHAT, trust_env=False, timeout=2)
            drained = idle.post(CHAT, headers=auth, json={"model": "mock-model", "messages": []})  # kept alive
            assert (drained.status_code, drained.json()["error"]["code"]) == (503, "shutting_down")
            idle.close()
            assert gateway.proc.poll() is None  # still running: the stream is in flight
            mock.release_stream.set()
            received += b"".join(chunks)
    assert b"data: [DONE]" in received
    assert gateway.proc.wait(20) == 0
    request_id = response.headers["x-lava-request-id"]
    rows = {r["id"]: r for r in gateway.ledger.requests(limit=10)}
    assert rows[request_id]["usage_source"] == "reported" and rows[request_id]["status"] == 200
    assert not list((gateway.tmp / "journal").rglob("*.jsonl"))


def test_redis_stopped_under_load_falls_back_to_local_holds_and_corrupts_nothing(private_redis, mock, tmp_path):
    gateway = funded_gateway(tmp_path, fresh_postgres_database("tollgate_redis_outage"), mock,
                             redis_url=private_redis.url)
    try:
        load = Load(gateway)
        load.wait_for_results(20, "requests served before the outage")
        private_redis.stop()
        wait_for(lambda: "Redis is unreachable" in gateway.log.read_text(), 15, "the gateway to miss Redis")
        load.wait_for_results(20, "requests served while Redis is down")
        private_redis.start()  # empty: the hot state is rebuilt from the ledger
        wait_for(lambda: "Redis answers again" in gateway.log.read_text(), 15, "the gateway to see Redis again")
        load.wait_for_results(20, "requests served after Redis is back")
        results = load.stop()
    finally:
        gateway.stop()
    assert len(results) > 50 and all(status == 200 for status, _, _ in results)
    assert_ledger_holds_exactly(gateway, {rid for _, rid, _ in results})
    log = gateway.log.read_text()
    assert "Redis is unreachable" in log and "Redis answers again" in log


def test_sigterm_answers_a_request_whose_body_is_still_arriving(fresh_gateway):
    """In flight counts from the request's headers: a request not yet authenticated is answered, not cut."""
    gateway = fresh_gateway
    body = b'{"model": "mock-model", "messages": []}'
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as conn:
        conn.sendall(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1:" + str(gateway.port).encode() + b"\r\n"
                     b"Authorization: Bearer " + gateway.admin_key.encode() + b"\r\n"
                     b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        time.sleep(0.3)  # the headers reach the gateway
        gateway.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: not port_open(gateway.port), 10, "the listener to close")
        conn.sendall(body)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 503") and b'"shutting_down"' in answer
    assert gateway.proc.wait(20) == 0
