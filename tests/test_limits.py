"""Limits on keys and customers as the gateway enforces them (issue 13), in-process on one event loop with the
clock injected: request and spend limits per calendar period, requests and tokens per minute with OpenAI's
headers, customers' limits, on the in-process hold book and on Redis (two cashiers sharing it stand for two
instances)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from mitmproxy import http
from mitmproxy.test import tutils

from addons.auth.credentials import ForwardToken, encode_forward_token
from addons.billing.cashier import Cashier
from addons.billing.hold_stores import FailoverHolds, RedisHolds
from addons.billing.limits import RequestLimits
from addons.billing.plan import byok_fee
from addons.core.limits import Limits, PeriodClock, go_duration, period_of
from addons.core.settings import parse_limits
from addons.ledger.accounts import credit_wallet, ensure_account
from addons.ledger.models import RequestRow
from addons.proxy import metrics_recorder
from addons.proxy.flow_keys import RETRIES_KEY
from addons.proxy.stamped_headers import stamped
from addons.services import customers, keys, meters, tokens
from tests.harness import shared_redis
from tests.inprocess_gateway import api_flow

REDIS_DB = 7  # of the machine's Redis, flushed by each test that uses it (bench/run_bench.py uses 9 to 11)
# Noon (UTC) of the day the test runs: the ledger stamps rows with the real time, which must fall in the
# injected clock's day, and Redis expires a period's pot at its real reset, which must not have passed.
TODAY = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
START = TODAY.timestamp()
TOMORROW = (TODAY + timedelta(days=1)).date()


def chat(max_tokens: int | None = None) -> bytes:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    if max_tokens:
        body["max_tokens"] = max_tokens
    return json.dumps(body).encode()


class Driver:
    """Requests through the Gateway's hooks on one event loop, with every clock of the limits set by hand."""

    def __init__(self, gw, now: float = START, zone: str = "UTC", redis_url: str | None = None):
        self.gw, self.now = gw, now
        if redis_url:
            gw.cashier = Cashier(gw.settings.billing, gw.keys, gw.writer, freshness=1.0, redis_url=redis_url)
        gw.cashier.limits = RequestLimits(ZoneInfo(zone), clock=lambda: self.now)
        self._clock_holds(gw.cashier.holds)
        self.loop = asyncio.new_event_loop()
        gw.loop = self.loop
        credit_wallet(ensure_account()[1].id, 10**12)

    def _clock_holds(self, holds) -> None:
        if isinstance(holds, FailoverHolds):
            holds.remote.clock = lambda: self.now
            holds = holds.local
        if isinstance(holds, RedisHolds):
            holds.clock = lambda: self.now
        else:
            holds.book._clock = lambda: self.now

    def send(self, secret: str, content: bytes = b"", usage: tuple[int, int] = (10, 5), headers=()):
        """One request, answered by the provider with `usage` if forwarded; returns the flow."""
        flow = api_flow([("authorization", f"Bearer {secret}"), *headers], content=content or chat())

        async def go():
            await self.gw.request(flow)
            if flow.response is None:
                body = {"model": "gpt-4o-mini", "choices": [],
                        "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1]}}
                flow.response = tutils.tresp(headers=http.Headers(content_type="application/json"),
                                             content=json.dumps(body).encode())
                self.gw.responseheaders(flow)
                self.gw.response(flow)
        self.loop.run_until_complete(go())
        return flow

    def settle(self) -> None:
        """The writer commits what it was given; the cashier takes the commit on the loop."""
        assert self.gw.writer.flush(timeout=10)
        self.loop.run_until_complete(asyncio.sleep(0.05))

    def close(self) -> None:
        self.loop.run_until_complete(asyncio.sleep(0.01))
        self.loop.run_until_complete(self.gw.cashier.close())
        self.loop.close()


@pytest.fixture(params=["in-process", "redis"])
def drive(gw, request):
    """Drivers whose holds are the gateway's own book, or Redis (a private server, flushed with it)."""
    drivers = []
    redis_url = None
    if request.param == "redis":
        shared_redis(REDIS_DB)
        redis_url = f"redis://127.0.0.1:6379/{REDIS_DB}"

    def make(**kwargs) -> Driver:
        drivers.append(Driver(gw, redis_url=redis_url, **kwargs))
        return drivers[-1]
    yield make
    for driver in drivers:
        driver.close()


def outcome(flow) -> int:
    return flow.response.status_code


def error(flow) -> dict:
    return json.loads(flow.response.content)["error"]


def key_with(**limits) -> str:
    return keys.create_spend_key("team", limits=limits).secret_key


# -- request limits -----------------------------------------------------------------------------

def test_a_request_limit_admits_exactly_its_count_in_the_period(drive):
    d = drive()
    secret = key_with(request_limit=3, request_cycle="day")
    assert [outcome(d.send(secret)) for _ in range(3)] == [200, 200, 200]
    refused = d.send(secret)
    assert outcome(refused) == 429
    assert error(refused) | {"message": ""} == {
        "type": "rate_limit_error", "code": "request_limit_reached", "message": "", "limit": 3, "used": 3,
        "limit_period": "daily", "resets_at": f"{TOMORROW}T00:00:00Z"}
    assert error(refused)["message"] == f"this key's request limit of 3 per day is reached; it resets at {TOMORROW}T00:00:00Z"
    assert refused.response.headers["retry-after"] == str(12 * 3600 + 1)
    d.settle()
    assert RequestRow.select().count() == 3  # the refusal wrote nothing
    assert outcome(d.send(secret)) == 429  # committed, the count stays
    d.now += 12 * 3600  # midnight UTC: a new day
    assert outcome(d.send(secret)) == 200


def test_a_request_limit_counts_what_the_ledger_holds_when_the_gateway_starts(drive, gw):
    d = drive()
    key = keys.create_spend_key("team", limits={"request_limit": 2, "request_cycle": "month"})
    d.send(key.secret_key)
    d.settle()
    gw.cashier.limits.forget()  # as a fresh process, on a fresh Redis: read from the ledger again
    holds = gw.cashier.holds
    if isinstance(holds, FailoverHolds):
        async def flush():
            await holds.remote.wire.call("FLUSHDB")

        d.loop.run_until_complete(flush())
    else:
        holds.book._pots.clear()
    assert [outcome(d.send(key.secret_key)) for _ in range(2)] == [200, 429]


def test_limit_refusals_are_counted_for_metrics(drive):
    d = drive()
    secret = key_with(request_limit=1, request_cycle="day")
    before = metrics_recorder.REFUSED.get((429, "request_limit_reached"), 0)
    d.send(secret), d.send(secret), d.send(secret)
    assert metrics_recorder.REFUSED[(429, "request_limit_reached")] == before + 2


# -- spend limits -------------------------------------------------------------------------------

def test_a_spend_limit_holds_each_requests_worst_case_so_concurrent_requests_cannot_pass_it(drive):
    d = drive()
    # gpt-4o-mini: $0.15 / $0.60 per million tokens; max_tokens 1000 holds about $0.0006 a request
    secret = key_with(spend_limit_nanos=1_500_000, spend_cycle="total")  # $0.0015: room for two worst cases
    first, second, third = (d.send(secret, chat(1000), usage=(100, 900)) for _ in range(3))
    assert (outcome(first), outcome(second), outcome(third)) == (200, 200, 402)
    assert error(third)["code"] == "spend_limit_reached" and error(third)["limit"] == "0.0015"
    assert error(third)["resets_at"] is None and error(third)["limit_period"] == "total"
    assert "spend limit of 0.0015 USD in total is reached" in error(third)["message"]
    d.settle()  # each really cost $0.000555: the room left is $0.00039, less than a worst case
    assert outcome(d.send(secret, chat(1000))) == 402
    assert outcome(d.send(secret, chat(100))) == 200  # a smaller worst case fits
    d.settle()
    spent = sum(row.charged_nanos for row in RequestRow.select())
    assert spent <= 1_500_000


def test_a_spend_limit_on_requests_that_bring_their_own_provider_key_holds_and_counts_the_byok_fee(drive, gw):
    """With the caller's own provider key the merchant pays the BYOK fee, not the provider: that fee is what the
    key's spend limit holds (the worst case's) and counts, so the limit admits requests the provider's price
    would not fit, and never more than it allows."""
    d = drive()
    gw.cashier.settings = replace(gw.cashier.settings, byok_fee_percent=Decimal(10), byok_fee_per_request_nanos=1_000)
    key = keys.create_spend_key("team", limits={"spend_limit_nanos": 500_000, "spend_cycle": "total"})
    # gpt-4o-mini's worst case with max_tokens 1000 is about $0.0006: over the $0.0005 limit when the operator pays
    assert outcome(d.send(key.secret_key, chat(1000), usage=(100, 900))) == 402
    own_key = encode_forward_token(ForwardToken(key.secret_key, provider_key="sk-own-provider-key"))
    admitted = 0
    while outcome(flow := d.send(own_key, chat(1000), usage=(100, 900))) == 200 and admitted < 20:
        admitted += 1
        d.settle()
    assert error(flow)["code"] == "spend_limit_reached"
    fees = {row.charged_nanos for row in RequestRow.select()}
    assert len(fees) == 1 and RequestRow.select().count() == admitted  # each charged the same BYOK fee
    fee = fees.pop()
    assert fee == byok_fee(555_000, Decimal(10), 1_000)  # 10 % of its real $0.000555, and $0.000001
    assert admitted * fee <= 500_000 < (admitted + 1.2) * fee  # up to the limit, less than a worst case's fee left


def test_changing_a_limit_takes_effect_once_the_key_cache_lets_go(drive, gw):
    d = drive()
    key = keys.create_spend_key("team", limits={"request_limit": 1, "request_cycle": "day"})
    assert [outcome(d.send(key.secret_key)) for _ in range(2)] == [200, 429]
    keys.update_key("default", key.id, "spend", request_limit=3)
    gw.keys._cache.clear()  # the cache's TTL has passed
    assert [outcome(d.send(key.secret_key)) for _ in range(3)] == [200, 200, 429]
    keys.update_key("default", key.id, "spend", request_limit=None)
    gw.keys._cache.clear()
    assert outcome(d.send(key.secret_key)) == 200


# -- requests and tokens per minute ----------------------------------------------------------------

def test_requests_per_minute_with_openais_headers_over_a_minute(drive):
    d = drive()
    secret = key_with(rpm=3)
    flows = [d.send(secret) for _ in range(3)]
    assert [f.response.headers["x-ratelimit-remaining-requests"] for f in flows] == ["2", "1", "0"]
    assert flows[0].response.headers["x-ratelimit-limit-requests"] == "3"
    assert flows[2].response.headers["x-ratelimit-reset-requests"] == "1m0s"  # empty: a whole minute to refill
    refused = d.send(secret)
    assert outcome(refused) == 429 and error(refused)["code"] == "rate_limited"
    assert refused.response.headers["retry-after"] == "20"  # one request comes back every 20 s
    assert refused.response.headers["x-ratelimit-remaining-requests"] == "0"
    d.now += 19
    assert outcome(d.send(secret)) == 429
    d.now += 1
    passed = d.send(secret)
    assert outcome(passed) == 200 and passed.response.headers["x-ratelimit-remaining-requests"] == "0"
    d.now += 60
    assert [outcome(d.send(secret)) for _ in range(4)] == [200, 200, 200, 429]


def test_a_burst_lets_that_many_through_at_once_then_the_rate_holds(drive):
    d = drive()
    secret = key_with(rpm=60, rpm_burst=2)
    assert [outcome(d.send(secret)) for _ in range(3)] == [200, 200, 429]
    d.now += 1
    assert outcome(d.send(secret)) == 200


def test_tokens_per_minute_reserve_input_and_max_tokens_then_true_up_to_the_usage(drive):
    d = drive()
    secret = key_with(tpm=10_000)
    first = d.send(secret, chat(4000), usage=(20, 30))
    assert first.response.headers["x-ratelimit-limit-tokens"] == "10000"
    reserved = 10_000 - int(first.response.headers["x-ratelimit-remaining-tokens"])
    assert 4000 < reserved < 4100  # max_tokens plus the input's estimate
    d.loop.run_until_complete(asyncio.sleep(0.1))  # the true-up (Redis: batched): it used 50 tokens, not ~4000
    as_reserved = (reserved - 4000, 4000)  # nothing to true up
    # 10,000 less 50 holds two more reservations, not a third; without the true-up, 10,000 less ~4,000 held one
    assert [outcome(d.send(secret, chat(4000), usage=as_reserved)) for _ in range(3)] == [200, 200, 429]


def test_the_true_ups_of_concurrent_requests_go_to_redis_netted_per_bucket(drive, monkeypatch):
    """Redis gets a tokens-per-minute bucket's true-ups of one linger as one net change, not one per request; the
    bucket ends where it would have (in process each is applied at once)."""
    d = drive()
    secret = key_with(tpm=100_000)
    sent = []
    holds = d.gw.cashier.holds
    real = holds.true_up
    monkeypatch.setattr(holds, "true_up", lambda *changes: sent.append(changes) or real(*changes))

    async def three():
        flows = [api_flow([("authorization", f"Bearer {secret}")], content=chat(100)) for _ in range(3)]
        await asyncio.gather(*(d.gw.request(flow) for flow in flows))
        for flow, used in zip(flows, (10, 20, 30), strict=True):
            body = {"model": "gpt-4o-mini", "choices": [], "usage": {"prompt_tokens": used, "completion_tokens": 0}}
            flow.response = tutils.tresp(headers=http.Headers(content_type="application/json"),
                                         content=json.dumps(body).encode())
            d.gw.responseheaders(flow)
            d.gw.response(flow)
        await asyncio.sleep(0.1)
        return flows

    flows = d.loop.run_until_complete(three())
    reserved = 100_000 - int(flows[0].response.headers["x-ratelimit-remaining-tokens"])
    after = d.send(secret, chat(100), usage=(1, 0))  # its own reservation, as large as each of the three
    assert int(after.response.headers["x-ratelimit-remaining-tokens"]) == 100_000 - 60 - reserved
    if isinstance(holds, FailoverHolds):
        assert [[delta for _, delta in changes] for changes in sent] == [[60 - 3 * reserved]]
    else:
        assert sent == []  # applied at once, in the process's book


def test_a_limited_keys_rate_headers_replace_the_providers_and_the_request_id_is_always_the_gateways():
    provider = ((b"Content-Type", b"application/json"), (b"X-RateLimit-Remaining-Requests", b"9"),
                (b"X-Lava-Request-Id", b"the provider's"))
    ids = ((b"x-lava-request-id", b"req_1"), (b"x-tollgate-request-id", b"req_1"))
    ours = ((b"x-ratelimit-remaining-requests", b"59"),)
    assert stamped(provider, "req_1", ours) == ((b"Content-Type", b"application/json"), *ids, *ours)
    assert stamped(provider, "req_1", ()) == (*provider[:2], *ids)  # a key without limits: the provider's pass on


def test_a_streamed_answer_has_the_keys_headers_in_its_head(drive):
    d = drive()
    body = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    flow = api_flow([("authorization", f"Bearer {key_with(rpm=60)}")], content=body.encode())

    async def head():
        await d.gw.request(flow)
        flow.response = tutils.tresp(headers=http.Headers(content_type="text/event-stream"), content=b"")
        d.gw.responseheaders(flow)  # a stream's head goes to the client now, before any event
    d.loop.run_until_complete(head())
    headers = flow.response.headers
    assert flow.response.stream and headers["x-ratelimit-remaining-requests"] == "59"
    assert headers["x-lava-request-id"].startswith("req_")
    d.gw.response(flow)


def test_an_answer_the_retries_put_in_place_carries_the_keys_headers_and_is_metered(drive):
    """addons.proxy.upstream_retries, before the Gateway in the chain, swaps in the resent request's answer
    between the Gateway's responseheaders and response hooks: the Gateway puts its headers on that answer, and
    reads it as what it is (JSON here, where the first answer said SSE)."""
    d = drive()
    flow = api_flow([("authorization", f"Bearer {key_with(rpm=60)}")], content=chat())
    answer = {"model": "gpt-4o-mini", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}

    async def go():
        await d.gw.request(flow)
        flow.response = tutils.tresp(status_code=503, headers=http.Headers(content_type="text/event-stream"),
                                     content=b"data: busy\n\n")
        d.gw.responseheaders(flow)
        flow.response = tutils.tresp(headers=http.Headers(content_type="application/json"),
                                     content=json.dumps(answer).encode())
        flow.metadata[RETRIES_KEY] = 1
        d.gw.response(flow)
    d.loop.run_until_complete(go())
    headers = flow.response.headers
    assert headers["x-lava-request-id"].startswith("req_") and headers["x-ratelimit-limit-requests"] == "60"
    assert headers["x-ratelimit-remaining-requests"] == "59"
    d.settle()
    [row] = RequestRow.select()
    assert (row.status, row.input_tokens, row.output_tokens) == (200, 7, 3)


def test_a_request_larger_than_a_minutes_tokens_is_refused_with_its_size(drive):
    d = drive()
    refused = d.send(key_with(tpm=1000), chat(4000))
    assert outcome(refused) == 429 and "lower max_tokens" in error(refused)["message"]


def test_rate_limit_refusals_do_not_use_a_request_limit(drive):
    d = drive()
    secret = key_with(rpm=1, request_limit=5, request_cycle="day")
    assert [outcome(d.send(secret)) for _ in range(3)] == [200, 429, 429]
    d.now += 60
    assert outcome(d.send(secret)) == 200
    d.settle()
    assert RequestRow.select().count() == 2


# -- calendar periods in the operator's time zone --------------------------------------------------

@pytest.mark.parametrize("cycle, last_moment, next_start", [  # in the future: Redis expires a pot at its real reset
    ("day", "2093-12-05T23:59:59", "2093-12-06T00:00:00"),
    ("week", "2093-12-06T23:59:59", "2093-12-07T00:00:00"),  # Sunday, then Monday
    ("month", "2093-12-31T23:59:59", "2094-01-01T00:00:00"),
])
def test_periods_reset_at_midnight_in_the_configured_zone(drive, cycle, last_moment, next_start):
    zone = ZoneInfo("America/New_York")  # UTC-5 in December
    at = lambda text: datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()  # noqa: E731
    d = drive(now=at(last_moment) - 1, zone="America/New_York")
    secret = key_with(request_limit=1, request_cycle=cycle)
    assert outcome(d.send(secret)) == 200
    refused = d.send(secret)
    reset = datetime.fromisoformat(next_start).replace(tzinfo=zone).astimezone(UTC)
    assert error(refused)["resets_at"] == reset.isoformat().replace("+00:00", "Z")
    d.now = at(last_moment)
    assert outcome(d.send(secret)) == 429
    d.now = at(next_start)
    assert outcome(d.send(secret)) == 200


def test_period_arithmetic_across_a_dst_change_and_a_year():
    zone = ZoneInfo("Europe/Berlin")
    march = period_of("day", datetime(2026, 3, 29, 12, tzinfo=UTC), zone)  # the day clocks go forward
    assert (march.start, march.reset) == (datetime(2026, 3, 28, 23), datetime(2026, 3, 29, 22))
    week = period_of("week", datetime(2027, 1, 1, 12, tzinfo=UTC), zone)
    assert week.id == "2026-W53" and week.start == datetime(2026, 12, 27, 23)
    assert period_of("total", datetime.now(UTC), zone).reset is None
    clock = PeriodClock(zone)
    assert clock.period("day", START).id == TODAY.date().isoformat()
    assert clock.period("day", START + 86400).id == TOMORROW.isoformat()
    assert clock.period("day", START).id == TODAY.date().isoformat()  # a clock set back is answered right too


def test_timezone_setting_is_checked():
    assert parse_limits({"timezone": "Asia/Tokyo"}).zone == ZoneInfo("Asia/Tokyo")
    with pytest.raises(ValueError, match="not a time zone name"):
        parse_limits({"timezone": "Mars/Olympus"})


@pytest.mark.parametrize("ms, text", [(20, "20ms"), (1000, "1s"), (1500, "1.5s"), (60000, "1m0s"), (361000, "6m1s")])
def test_reset_durations_are_written_as_openai_writes_them(ms, text):
    assert go_duration(ms) == text


# -- customers ----------------------------------------------------------------------------------

def customer_token(customer_id: str) -> str:
    meters.create("default", "per-call", rate_type="fixed", unit="requests", tiers=["0:0.01"])
    return tokens.issue_token(keys.create_key("app").secret_key, customer=customer_id, meter="per-call").token


def test_a_customers_spend_limit_and_rpm_come_on_top_of_its_balance(drive, gw):
    d = drive()
    customers.create("default", "cus_a", balance_nanos=10**9,
                     limit_changes={"spend_limit_nanos": 20_000_000, "spend_cycle": "day", "rpm": 5})
    token = customer_token("cus_a")
    assert [outcome(d.send(token)) for _ in range(2)] == [200, 200]  # $0.01 a call: the limit is $0.02
    refused = d.send(token)
    assert outcome(refused) == 402 and error(refused)["code"] == "spend_limit_reached"
    assert "customer's spend limit" in error(refused)["message"]
    d.now += 86400
    assert outcome(d.send(token)) == 200


def test_a_key_and_its_customer_both_limit_a_request_and_the_first_limit_of_each_kind_answers(drive):
    d = drive()
    meters.create("default", "per-call", rate_type="fixed", unit="requests", tiers=["0:0.01"])
    customers.create("default", "cus_b", balance_nanos=10**9, limit_changes={"rpm": 2, "tpm": 100_000})
    secret = key_with(rpm=10, request_limit=3, request_cycle="day")
    token = tokens.issue_token(secret, customer="cus_b", meter="per-call").token
    flows = [d.send(token) for _ in range(3)]
    assert [outcome(flow) for flow in flows] == [200, 200, 429]
    assert error(flows[2])["message"].startswith("this customer's limit of 2 requests per minute is reached")
    answered = flows[1].response.headers
    assert answered["x-ratelimit-limit-requests"] == "10"  # the key's requests per minute come first
    assert answered["x-ratelimit-remaining-requests"] == "8"
    assert answered["x-ratelimit-limit-tokens"] == "100000"  # the customer's: the key has none
    assert len(answered.get_all("x-ratelimit-limit-requests")) == 1  # the customer's rpm adds none of its own
    d.now += 60
    assert outcome(d.send(token)) == 200  # the third the key's request limit admits (the refusal took none)
    d.now += 60
    refused = d.send(token)
    assert outcome(refused) == 429 and error(refused)["code"] == "request_limit_reached"


# -- shared through Redis ---------------------------------------------------------------------------

@pytest.fixture
def redis_url():
    shared_redis(REDIS_DB)
    return f"redis://127.0.0.1:6379/{REDIS_DB}"


def test_limits_are_shared_by_every_instance_on_redis(gw, redis_url):
    """Two cashiers on one Redis (two instances): the request limit and the rpm hold across both."""
    d = Driver(gw)
    other = Cashier(gw.settings.billing, gw.keys, gw.writer, freshness=1.0, redis_url=redis_url,
                    limits=RequestLimits(ZoneInfo("UTC"), clock=lambda: d.now))
    mine = Cashier(gw.settings.billing, gw.keys, gw.writer, freshness=1.0, redis_url=redis_url,
                   limits=RequestLimits(ZoneInfo("UTC"), clock=lambda: d.now))
    for cashier in (other, mine):
        d._clock_holds(cashier.holds)
    secret = key_with(request_limit=4, request_cycle="day", rpm=100)
    results = []
    try:
        for i in range(6):
            gw.cashier = (mine, other)[i % 2]
            results.append(outcome(d.send(secret)))
    finally:
        for cashier in (mine, other):
            d.loop.run_until_complete(cashier.close())
        d.close()
    assert results == [200, 200, 200, 200, 429, 429]


def test_limits_setting_reaches_the_gateway(gw):
    assert isinstance(gw.cashier.limits, RequestLimits) and gw.cashier.limits.periods.zone == ZoneInfo("UTC")
    assert Limits(rpm=1).any and not Limits().any
