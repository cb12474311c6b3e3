"""GET /metrics end to end: two gateway workers (the supervisor, Redis for their holds) under a known mix of
requests, then the admin process merging what both wrote: the counters equal the ledger's rows and the
refusals sent, a hold shows while its stream is in flight, and a metrics directory the operator names is
emptied of the previous run's files at start."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter

import httpx
import pytest
from peewee import fn

from addons.ledger.models import Hold, RequestRow
from tests.conftest import MOCK_MODEL_PRICE
from tests.harness import GatewayProcess, free_port
from tests.ledger_reads import wait_for
from tests.metrics_reads import Scrape

pytestmark = pytest.mark.e2e

REDIS = "redis://127.0.0.1:6379/13"  # the workers share their holds through it
OPENAI = "/v1/forward?u=https://api.openai.com/v1/chat/completions"
MISTRAL = "/v1/forward?u=https://api.mistral.ai/v1/chat/completions"  # its upstream: nothing listens
PER_REQUEST_FEE = "0.01"


class Instance(GatewayProcess):
    """The gateway as `./run_proxy.sh --workers 2` runs it, and its admin process, on one metrics directory."""

    def launch_workers(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "addons.runtime.workers", "--workers", "2", "--", "--listen-host", "127.0.0.1",
             "--listen-port", str(self.port), "--set", f"confdir={self.confdir}", "--set", "tollgate_cache_ttl_ms=200"],
            env=self.env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, cwd=self.tmp, start_new_session=True)
        wait_for(lambda: self.log.read_text().count(") is listening") == 2 or self.proc.poll() is not None, 60,
                 "two workers listening")
        assert self.proc.poll() is None, self.log.read_text()

    def launch_admin(self) -> None:
        self.admin_port = free_port()
        self.admin = subprocess.Popen(
            [sys.executable, "-m", "addons.admin", "--port", str(self.admin_port), "--database-url", self.database_url],
            env=self.env, stdout=(self.tmp / "admin.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def scrape(self) -> Scrape:
        answer = httpx.get(f"http://127.0.0.1:{self.admin_port}/metrics", trust_env=False, timeout=10)
        assert answer.status_code == 200, answer.text
        return Scrape.parse(answer.text)

    def post(self, path: str, secret: str, model: str = "mock-1", **body) -> tuple[int, dict, str]:
        """One request on a connection of its own, so the kernel spreads them over the workers."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("POST", path, body=json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}],
                                                    **body}),
                     headers={"authorization": f"Bearer {secret}", "content-type": "application/json",
                              "connection": "close"})
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, json.loads(data) if data.startswith(b"{") else {}, response.getheader(
            "x-tollgate-request-id", "")

    def rows(self) -> list[RequestRow]:
        return self.ledger._read(RequestRow.select())

    def kill(self) -> None:
        for proc in (self.proc, getattr(self, "admin", None)):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
def instance(tmp_path, mock):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "counter_1.db").write_bytes(b"a previous run's file, unreadable as one")
    gw = Instance(tmp_path, f"sqlite:///{tmp_path}/ledger.db", {"openai": mock.url, "mistral": "http://127.0.0.1:9"},
                  prices=[MOCK_MODEL_PRICE, {**MOCK_MODEL_PRICE, "provider": "mistral"}], redis_url=REDIS)
    gw.env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    gw.metrics = metrics
    gw.fund("100")
    yield gw
    mock.release_stream.set()
    gw.kill()


def customer_token(gw: Instance, balance: str, meter: str) -> str:
    name = f"cus-{balance}"
    gw.cli("customers", "create", name, "--balance", balance)
    return gw.cli_json("token", "--secret-key", gw.admin_key, "--customer", name, "--meter", meter)["token"]


def test_metrics_over_two_workers_equal_the_ledgers_rows_and_the_refusals_sent(instance, mock):
    gw = instance
    gw.cli("meters", "create", "per-request", "--rate-type", "fixed", "--unit", "requests", "--tier",
           f"0:{PER_REQUEST_FEE}")
    rich, broke = customer_token(gw, "5", "per-request"), customer_token(gw, "0", "per-request")
    gw.launch_workers()
    assert not (gw.metrics / "counter_1.db").exists()  # emptied before any worker started

    sent = Counter()
    for path, secret, model, times in [
        (OPENAI, gw.admin_key, "mock-1", 12),  # the merchant pays the provider cost
        (OPENAI, rich, "mock-1", 4),  # its customer pays the meter's fee
        (OPENAI, gw.admin_key, "mock-error-500", 2),  # the provider fails it: a row, nothing charged
        (MISTRAL, gw.admin_key, "mock-1", 2),  # the provider cannot be reached: a row with the error
        (OPENAI, "tg_sk_" + "0" * 40, "mock-1", 3),  # an unknown key: 401
        (OPENAI, broke, "mock-1", 2),  # an empty customer balance: 402
    ]:
        for _ in range(times):
            status, body, _ = gw.post(path, secret, model)
            sent[status, body.get("error", {}).get("code", "")] += 1
    refusals = {key: n for key, n in sent.items() if key[0] in (401, 402)}
    assert sorted(refusals.values()) == [2, 3] and sent[200, ""] == 16, sent

    # a stream in flight holds its customer's worst case until its charge is committed
    mock.release_stream.clear()
    mock.slow_stream_started.clear()
    slow = threading.Thread(target=gw.post, args=(OPENAI, rich, "mock-slow"), kwargs={"stream": True})
    slow.start()
    assert mock.slow_stream_started.wait(10)
    gw.launch_admin()
    held = wait_for(lambda: gw.ledger._read(Hold.select(fn.COUNT(Hold.request_id), fn.SUM(Hold.amount_nanos))
                                            .tuples())[0], 10, "the hold's ledger mirror", lambda h: h[0] == 1)
    during = wait_for(lambda: _scrape_or_none(gw), 20, "a scrape showing the hold",
                      lambda s: s is not None and s.sum("tollgate_holds_open") == 1)
    assert round(during.sum("tollgate_holds_usd") * 1e9) == held[1] > 0
    mock.release_stream.set()
    slow.join(30)

    rows = wait_for(gw.rows, 20, "every forwarded request's row", lambda rows: len(rows) == 21)
    metrics = wait_for(gw.scrape, 20, "the workers' last counts",
                       lambda s: s.sum("tollgate_requests_total") == 21 and s.sum("tollgate_refusals_total") == 5
                       and s.sum("tollgate_holds_open") == 0)

    assert metrics.by("tollgate_requests_total", "provider", "model", "status", "outcome") == {
        ("openai", "mock-1", "200", "charged"): 16, ("openai", "mock-slow", "200", "charged"): 1,
        ("openai", "mock-error-500", "500", "not_charged"): 2, ("mistral", "mock-1", "", "upstream_error"): 2}
    by_row = Counter((r.provider, r.model or "", "" if r.status is None else str(r.status)) for r in rows)
    assert metrics.by("tollgate_requests_total", "provider", "model", "status") == by_row
    assert metrics.by("tollgate_refusals_total", "status", "code") == {(str(s), c): n for (s, c), n in refusals.items()}
    assert metrics.by("tollgate_upstream_errors_total", "provider", "kind") == {("mistral", "connect"): 2}

    for kind in ("input", "cache_read", "cache_write", "output", "reasoning"):
        assert metrics.sum("tollgate_tokens_total", kind=kind) == sum(getattr(r, f"{kind}_tokens") for r in rows), kind
    assert metrics.sum("tollgate_tokens_total", kind="output") > 0
    for metric, column in [("tollgate_provider_cost_usd_total", "provider_cost_nanos"),
                           ("tollgate_charged_usd_total", "charged_nanos"), ("tollgate_fees_usd_total", "fee_nanos")]:
        nanos = sum(getattr(r, column) for r in rows)
        assert nanos > 0 and round(metrics.sum(metric) * 1e9) == nanos, metric  # to the nano, so to the cent
    assert round(metrics.sum("tollgate_fees_usd_total") * 100) == 5 * round(float(PER_REQUEST_FEE) * 100)
    assert metrics.sum("tollgate_request_duration_seconds_count") == sum(r.latency_ms is not None for r in rows)
    assert metrics.sum("tollgate_ttfb_seconds_count") == sum(r.ttfb_ms is not None for r in rows) >= 19

    # the instance's: both workers recorded, and the gauges add up over them
    assert len(list(gw.metrics.glob("counter_*.db"))) == 2
    assert metrics.sum("tollgate_gateway_processes") == 2
    assert {name: metrics.sum(name) for name in ("tollgate_ledger_writer_queue", "tollgate_journal_backlog",
                                                 "tollgate_ledger_outage", "tollgate_redis_fallback")} == dict.fromkeys(
        ("tollgate_ledger_writer_queue", "tollgate_journal_backlog", "tollgate_ledger_outage",
         "tollgate_redis_fallback"), 0)


def _scrape_or_none(gw: Instance) -> Scrape | None:
    try:
        return gw.scrape()
    except httpx.HTTPError:  # the admin process is still starting
        return None
