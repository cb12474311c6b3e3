"""Key limits end to end, exact across workers (issue 13): two gateway workers (the supervisor) sharing Redis and a
PostgreSQL ledger take 200 concurrent requests on a key with a request limit, and waves of them on a key with a
spend limit; `tollgate keys update` reaches both workers within the cache's TTL; and Redis stopped and started
under load costs no request and leaves the limits exact."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from decimal import Decimal

import httpx
import pytest
from peewee import fn

from addons.ledger.models import RequestRow
from tests.conftest import MOCK_MODEL_PRICE
from tests.harness import GatewayProcess, PrivateRedis, fresh_postgres_database, shared_redis
from tests.ledger_reads import wait_for

pytestmark = pytest.mark.e2e

FORWARD = "/v1/forward?u=https://api.openai.com/v1/chat/completions"
REDIS_DB = 8  # bench/run_bench.py uses 9 to 11


class Workers(GatewayProcess):
    """The gateway as `./run_proxy.sh --workers 2` runs it."""

    def launch(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "addons.runtime.workers", "--workers", "2", "--", "--listen-host", "127.0.0.1",
             "--listen-port", str(self.port), "--set", f"confdir={self.confdir}", "--set", "tollgate_cache_ttl_ms=200",
             "--no-admin"],
            env=self.env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, cwd=self.tmp, start_new_session=True)
        wait_for(lambda: self.log.read_text().count(") is listening") == 2 or self.proc.poll() is not None, 60,
                 "two workers listening")
        assert self.proc.poll() is None, self.log.read_text()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)

    def key(self, *flags: str) -> dict:
        return self.cli_json("keys", "create", "--name", "limited", *flags)

    def burst(self, secret: str, count: int, max_tokens: int = 20) -> list[tuple[int, str | None]]:
        """`count` chat completions at once, each on a connection of its own (the kernel spreads them over the
        workers): (status, error code) each."""
        body = {"model": "mock-1", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]}

        async def one(client: httpx.AsyncClient):
            answer = await client.post(self.url + FORWARD, json=body, headers={"authorization": f"Bearer {secret}"})
            return answer.status_code, answer.json().get("error", {}).get("code") if answer.status_code >= 400 else None

        async def all_at_once():
            limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
            async with httpx.AsyncClient(limits=limits, timeout=60, trust_env=False) as client:
                return await asyncio.gather(*(one(client) for _ in range(count)))
        return asyncio.run(all_at_once())

    def key_rows(self, key_id: str) -> tuple[int, int]:
        """(requests, what the account was charged) in the ledger for the key."""
        query = RequestRow.select(fn.COUNT(RequestRow.id), fn.COALESCE(fn.SUM(RequestRow.charged_nanos), 0)).where(
            RequestRow.key == key_id)
        count, spent = self.ledger._read(query.tuples())[0]
        return int(count), int(spent)


@pytest.fixture(scope="module")
def workers(mock, tmp_path_factory):
    shared_redis(REDIS_DB)
    gw = Workers(tmp_path_factory.mktemp("limits"), fresh_postgres_database("tollgate_limits"), {"openai": mock.url},
                 prices=[MOCK_MODEL_PRICE], redis_url=f"redis://127.0.0.1:6379/{REDIS_DB}")
    gw.fund("100")
    gw.launch()
    yield gw
    gw.kill()


def test_two_workers_forward_exactly_the_request_limit_of_200_concurrent_requests(workers, mock):
    key = workers.key("--request-limit", "50", "--period", "day")
    mock.reset()
    answers = Counter(workers.burst(key["secret_key"], 200))
    assert answers == {(200, None): 50, (429, "request_limit_reached"): 150}
    assert len(mock.requests) == 50  # the provider saw exactly the limit
    assert wait_for(lambda: workers.key_rows(key["id"])[0], what="50 ledger rows", until=lambda n: n == 50) == 50
    shown = workers.cli_json("keys", "show", key["id"])
    assert shown["limits"]["requests"]["used"] == 50 and shown["limits"]["requests"]["remaining"] == 0


def test_a_spend_limit_is_never_passed_at_any_concurrency(workers):
    limit = Decimal("0.001")
    key = workers.key("--spend-limit", str(limit), "--period", "month")
    served = 0
    for _ in range(15):  # waves of 200 at once until the limit turns every request away
        answers = Counter(status for status, _ in workers.burst(key["secret_key"], 200))
        served += answers[200]
        assert set(answers) <= {200, 402}
        count, spent = wait_for(lambda: workers.key_rows(key["id"]), what="the wave's rows",
                                until=lambda rows, served=served: rows[0] == served)
        assert Decimal(spent) / 10**9 <= limit
        if answers[200] == 0:
            break
    # a mock answer costs $0.000035 and a request holds at most $0.00013: the limit was spent, not left idle
    assert Decimal(spent) / 10**9 > limit - Decimal("0.00013")
    assert served > 20


def test_keys_update_reaches_every_worker_within_the_cache_ttl(workers):
    key = workers.key("--request-limit", "5", "--period", "day")
    assert Counter(s for s, _ in workers.burst(key["secret_key"], 8)) == {200: 5, 429: 3}
    workers.cli("keys", "update", key["id"], "--request-limit", "8")
    time.sleep(0.4)  # tollgate_cache_ttl_ms=200
    assert Counter(s for s, _ in workers.burst(key["secret_key"], 20)) == {200: 3, 429: 17}
    workers.cli("keys", "update", key["id"], "--pause")
    time.sleep(0.4)
    assert Counter(workers.burst(key["secret_key"], 20)) == {(403, "key_paused"): 20}
    workers.cli("keys", "update", key["id"], "--resume", "--request-limit", "none")
    time.sleep(0.4)
    assert Counter(s for s, _ in workers.burst(key["secret_key"], 20)) == {200: 20}


def test_redis_stopped_and_started_under_load_fails_no_request_and_limits_are_exact_after(mock, tmp_path):
    redis_server = PrivateRedis()
    gw = Workers(tmp_path, f"sqlite:///{tmp_path}/ledger.db", {"openai": mock.url}, prices=[MOCK_MODEL_PRICE],
                 redis_url=redis_server.url)
    gw.fund("100")
    gw.launch()
    failures: list = []
    stop = threading.Event()

    def load():  # steady traffic on an unlimited key the whole time
        with httpx.Client(trust_env=False, timeout=30) as client:
            while not stop.is_set():
                answer = client.post(gw.url + FORWARD, json={"model": "mock-1", "messages": []},
                                     headers={"authorization": f"Bearer {gw.admin_key}"})
                if answer.status_code != 200:
                    failures.append((answer.status_code, answer.text))
    loader = threading.Thread(target=load)
    try:
        loader.start()
        key = gw.key("--request-limit", "60", "--period", "day", "--rpm", "1000")
        assert Counter(s for s, _ in gw.burst(key["secret_key"], 20)) == {200: 20}
        redis_server.stop()
        assert Counter(s for s, _ in gw.burst(key["secret_key"], 20)) == {200: 20}  # each worker's own book
        redis_server.start()  # empty: every pot is confirmed from the ledger again
        wait_for(lambda: gw.key_rows(key["id"])[0] == 40, what="the 40 rows committed")
        time.sleep(1.2)  # FailoverHolds retries Redis after a second
        assert Counter(gw.burst(key["secret_key"], 100)) == {(200, None): 20, (429, "request_limit_reached"): 80}
    finally:
        stop.set()
        loader.join(30)
        gw.kill()
        redis_server.stop()
    assert failures == []
    assert wait_for(lambda: gw.key_rows(key["id"])[0], until=lambda n: n == 60) == 60
    assert json.loads(gw.cli("keys", "show", key["id"], "--json").stdout)["limits"]["requests"]["used"] == 60
