"""Several gateway instances (separate processes, as on separate machines) on one PostgreSQL ledger
and one Redis: a customer's balance holds across them, and changes made anywhere are seen by all."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx
import pytest

from tests.conftest import MOCK_MODEL_PRICE
from tests.harness import GatewayProcess, fresh_postgres_database, shared_redis
from tests.ledger_reads import wait_for

REDIS_URL = "redis://127.0.0.1:6379/13"
CHAT = "/v1/forward?u=https://api.openai.com/v1/chat/completions"
PER_REQUEST = Decimal("0.01")


@pytest.fixture(scope="module")
def hot_store():
    client = shared_redis(13)
    yield client
    client.flushdb()


@pytest.fixture(scope="module")
def instances(mock, hot_store, tmp_path_factory):
    url = fresh_postgres_database("tollgate_instances")
    pair = [GatewayProcess(tmp_path_factory.mktemp(f"instance{i}"), url, {"openai": mock.url},
                           prices=[MOCK_MODEL_PRICE], redis_url=REDIS_URL) for i in range(2)]
    first = pair[0]
    first.fund("100")
    first.cli("meters", "create", "per-request", "--rate-type", "fixed", "--unit", "requests", "--tier", "0:0.01")
    for gateway in pair:
        gateway.start()
    yield pair
    for gateway in pair:
        gateway.stop()


def customer(gateway, name: str, balance: str) -> str:
    gateway.cli("customers", "create", name, "--balance", balance)
    return gateway.cli_json("token", "--secret-key", gateway.admin_key, "--customer", name,
                            "--meter", "per-request")["token"]


def burst(urls: list[str], api_key: str, count: int) -> list[int]:
    async def one(client, url):
        async with client.stream("POST", url + CHAT, headers={"authorization": f"Bearer {api_key}"},
                                 json={"model": "gpt-4o-mini", "stream": True,
                                       "messages": [{"role": "user", "content": "hi"}]}) as response:
            await response.aread()
            return response.status_code

    async def run():
        limits = httpx.Limits(max_connections=count)
        async with httpx.AsyncClient(trust_env=False, timeout=60, limits=limits) as client:
            return await asyncio.gather(*(one(client, urls[i % len(urls)]) for i in range(count)))

    return asyncio.run(run())


def settled_rows(gateway, who: str, expected: int) -> list[dict]:
    return wait_for(lambda: gateway.ledger.requests(10000, customer=who), 20, f"{expected} rows of {who}",
                    until=lambda rows: len(rows) >= expected)


def test_one_balance_across_instances_is_never_overspent(instances):
    first = instances[0]
    api_key = customer(first, "shared", "0.50")  # 50 requests' worth, 200 asked for across two instances
    statuses = burst([g.url for g in instances], api_key, 200)
    assert set(statuses) <= {200, 402}
    rows = settled_rows(first, "shared", statuses.count(200))
    assert len(rows) == statuses.count(200)
    assert all(r["fee_uncollected"] == "0.00" for r in rows), "an instance admitted what another had held"
    balance = Decimal(first.ledger.balance("shared"))
    assert balance >= 0 and balance == Decimal("0.50") - PER_REQUEST * statuses.count(200)
    assert statuses.count(200) == 50  # every cent was usable, and none twice
    assert first.ledger.audit_ok() is True


def test_top_up_and_revocation_reach_every_instance_within_a_second(instances):
    first, second = instances
    api_key = customer(first, "later", "0")
    assert {burst([g.url], api_key, 1)[0] for g in instances} == {402}
    first.cli("customers", "topup", "later", "1")
    wait_for(lambda: [burst([g.url], api_key, 1)[0] for g in instances] == [200, 200], 1.0,
             "the top-up to reach both instances")
    key = first.cli_json("keys", "create", "--name", "doomed")
    plain = {"authorization": f"Bearer {key['secret_key']}"}
    body = {"model": "gpt-4o-mini", "messages": []}
    assert [httpx.post(g.url + CHAT, json=body, headers=plain, trust_env=False).status_code for g in instances] == [200] * 2
    second.cli("keys", "revoke", key["id"])
    wait_for(lambda: [httpx.post(g.url + CHAT, json=body, headers=plain, trust_env=False).status_code
                      for g in instances] == [403] * 2, 1.0, "the revocation to reach both instances")


def test_hot_state_is_rebuilt_from_the_ledger_after_redis_is_flushed(instances, hot_store):
    first = instances[0]
    api_key = customer(first, "flushed", "0.05")
    assert burst([g.url for g in instances], api_key, 3).count(200) == 3
    settled_rows(first, "flushed", 3)
    hot_store.flushdb()
    statuses = burst([g.url for g in instances], api_key, 10)
    assert statuses.count(200) == 2  # 0.05 - 3 x 0.01 leaves two requests, whatever Redis forgot
    rows = settled_rows(first, "flushed", 5)
    assert Decimal(first.ledger.balance("flushed")) == 0
    assert all(r["fee_uncollected"] == "0.00" for r in rows)
