"""The metrics recorder in this process: what a commit and a refusal count, what reaches the multiprocess
files and when, how processes add up, the metrics directory of a gateway start, and /metrics' access."""

from __future__ import annotations

import math
import os
import time
from datetime import datetime

import pytest
from peewee import OperationalError
from prometheus_client.mmap_dict import MmapedDict
from starlette.testclient import TestClient

from addons.admin import metrics as admin_metrics
from addons.admin.app import build_app
from addons.billing.charges import apply_charges
from addons.core import metrics_dir
from addons.ledger.accounts import credit_wallet, ensure_account
from addons.ledger.writer import CommitReport, LedgerWriter, RequestFees, UsageRecord, write_batch
from addons.proxy import error_pages, metrics_recorder
from addons.proxy.metrics_recorder import Recorder, error_kind, outcome_of, refused
from tests.admin_api import _client
from tests.inprocess_gateway import api_flow, run, secret_key
from tests.metrics_reads import Scrape


def record(request_id: str, *, provider: str = "openai", model: str | None = "gpt-4o-mini", status: int | None = 200,
           error: str | None = None, tokens=(10, 2, 1, 5, 3), cost: int = 1_000, charged: int = 1_000,
           latency_ms: int | None = 300, ttfb_ms: int | None = 40) -> UsageRecord:
    inp, cache_read, cache_write, out, reasoning = tokens
    return UsageRecord(id=request_id, created_at=datetime(2026, 1, 1), account="acct_1", wallet_id="wal_1", key=None,
                       provider=provider, endpoint="chat.completions", model=model, status=status, error=error,
                       input_tokens=inp, cache_read_tokens=cache_read, cache_write_tokens=cache_write,
                       output_tokens=out, reasoning_tokens=reasoning, provider_cost_nanos=cost, charged_nanos=charged,
                       latency_ms=latency_ms, ttfb_ms=ttfb_ms)


def report(*records: UsageRecord, fees: dict[str, RequestFees] | None = None) -> CommitReport:
    return CommitReport(request_ids=[r.id for r in records], written=list(records), fees=fees or {})


def scrape(directory) -> Scrape:
    return Scrape.parse(admin_metrics.exposition(str(directory)).decode())


@pytest.fixture
def metrics_path(tmp_path):
    """A directory of metrics files alone (the ledger fixture's SQLite file is in tmp_path)."""
    path = tmp_path / "metrics"
    path.mkdir()
    return path


@pytest.fixture
def recorder(metrics_path):
    recorder = Recorder(metrics_path, refusals={}, pid=101)
    yield recorder
    recorder.files.close()


# -- what a commit counts ----------------------------------------------------------------------------

def test_a_commit_counts_each_written_row_by_provider_model_status_and_outcome(recorder, metrics_path):
    recorder.committed(report(
        record("req_1"), record("req_2", charged=0, cost=0),
        record("req_3", status=500, charged=0, cost=0, tokens=(0,) * 5),
        record("req_4", status=None, error="upstream timed out: no response headers within 5 s", charged=0,
               ttfb_ms=None),
        record("req_5", model="claude-x", provider="anthropic", charged=0),
        fees={"req_5": RequestFees(fee_nanos=2_500_000)}))
    recorder.flush()
    metrics = scrape(metrics_path)
    assert metrics.by("tollgate_requests_total", "provider", "model", "status", "outcome") == {
        ("openai", "gpt-4o-mini", "200", "charged"): 1,
        ("openai", "gpt-4o-mini", "200", "not_charged"): 1,
        ("openai", "gpt-4o-mini", "500", "not_charged"): 1,
        ("openai", "gpt-4o-mini", "", "upstream_error"): 1,
        ("anthropic", "claude-x", "200", "charged"): 1,  # its customer's fee
    }
    assert metrics.by("tollgate_upstream_errors_total", "provider", "kind") == {("openai", "timeout"): 1}
    assert metrics.by("tollgate_tokens_total", "provider", "kind") == {
        ("openai", "input"): 30, ("openai", "cache_read"): 6, ("openai", "cache_write"): 3,
        ("openai", "output"): 15, ("openai", "reasoning"): 9,
        ("anthropic", "input"): 10, ("anthropic", "cache_read"): 2, ("anthropic", "cache_write"): 1,
        ("anthropic", "output"): 5, ("anthropic", "reasoning"): 3}
    assert metrics.sum("tollgate_provider_cost_usd_total", provider="openai") == pytest.approx(2e-6)
    assert metrics.sum("tollgate_charged_usd_total", provider="openai") == pytest.approx(1e-6)
    assert metrics.sum("tollgate_fees_usd_total", provider="anthropic") == pytest.approx(0.0025)


def test_durations_and_time_to_first_byte_are_histograms_by_provider(recorder, metrics_path):
    recorder.committed(report(record("req_1", latency_ms=80, ttfb_ms=20), record("req_2", latency_ms=3_000),
                              record("req_3", latency_ms=None, ttfb_ms=None)))
    recorder.flush()
    metrics = scrape(metrics_path)
    assert metrics.sum("tollgate_request_duration_seconds_count", provider="openai") == 2
    assert metrics.sum("tollgate_request_duration_seconds_sum", provider="openai") == pytest.approx(3.08)
    assert metrics.sum("tollgate_request_duration_seconds_bucket", provider="openai", le="0.1") == 1
    assert metrics.sum("tollgate_request_duration_seconds_bucket", provider="openai", le="2.5") == 1
    assert metrics.sum("tollgate_request_duration_seconds_bucket", provider="openai", le="5.0") == 2
    assert metrics.sum("tollgate_request_duration_seconds_bucket", provider="openai", le="+Inf") == 2
    assert metrics.sum("tollgate_ttfb_seconds_count", provider="openai") == 2
    assert metrics.sum("tollgate_ttfb_seconds_bucket", provider="openai", le="0.025") == 1


@pytest.mark.parametrize(("error", "kind", "outcome"), [
    ("upstream connect timed out after 0.5 s", "timeout", "upstream_error"),
    (f"{error_pages.UPSTREAM_REFUSED}: 10.0.0.1", "address_refused", "upstream_error"),
    ("[Errno 111] Connect call failed ('127.0.0.1', 9)", "connect", "upstream_error"),
    ("peer closed connection", "closed", "upstream_error"),
    ("HTTP/1 protocol error: received 10 bytes, expected 20", "other", "upstream_error"),
    ("Client disconnected.", "client_disconnected", "client_disconnected"),
    ("metering_failed", "other", "metering_failed"),
])
def test_an_errors_text_gives_its_kind_and_the_requests_outcome(error, kind, outcome):
    assert error_kind(error) == kind
    assert outcome_of(error, charged=True) == outcome


def test_models_past_the_limit_are_counted_as_other(recorder, metrics_path, monkeypatch):
    monkeypatch.setattr(metrics_recorder, "MAX_MODELS", 2)
    recorder.committed(report(*(record(f"req_{m}", model=m) for m in ("a", "b", "c", "d", "a"))))
    recorder.flush()
    assert scrape(metrics_path).by("tollgate_requests_total", "model") == {("a",): 2, ("b",): 1, ("other",): 2}


# -- refusals ---------------------------------------------------------------------------------------

def test_refusals_are_counted_by_status_and_code(metrics_path, monkeypatch):
    monkeypatch.setattr(metrics_recorder, "REFUSED", {})
    for status, code in [(401, "invalid_api_key"), (401, "invalid_api_key"), (402, "insufficient_balance")]:
        refused(status, code)
    recorder = Recorder(metrics_path, pid=7)
    recorder.flush()
    assert scrape(metrics_path).by("tollgate_refusals_total", "status", "code") == {
        ("401", "invalid_api_key"): 2, ("402", "insufficient_balance"): 1}
    recorder.files.close()


def test_the_gateway_and_the_error_pages_count_what_they_refuse_but_not_a_providers_failure(gw, monkeypatch):
    monkeypatch.setattr(metrics_recorder, "REFUSED", {})
    unknown = run(gw, api_flow([("authorization", "Bearer tg_sk_not_a_key_000000000000000000000000")]))
    broke = run(gw, api_flow([("authorization", f"Bearer {secret_key(balance=0)}")]))
    error_pages.json_error_response(413, "body too large")
    error_pages.json_error_response(502, "upstream timed out: no response headers within 5 s")
    error_pages.json_error_response(502, "[Errno 111] Connect call failed")
    codes = [(flow.response.status_code, flow.response.json()["error"]["code"]) for flow in (unknown, broke)]
    assert codes == [(401, "invalid_credential"), (402, "insufficient_balance")]
    assert metrics_recorder.REFUSED == {**dict.fromkeys(codes, 1), (413, "request_too_large"): 1}


# -- the files: written by the recorder's thread, not per request -----------------------------------

def test_recording_writes_nothing_until_a_flush_and_a_flush_writes_only_what_changed(recorder, metrics_path,
                                                                                    monkeypatch):
    writes = []
    original = MmapedDict.write_value
    monkeypatch.setattr(MmapedDict, "write_value", lambda self, *args: (writes.append(args[0]), original(self, *args)))
    for i in range(200):
        recorder.committed(report(record(f"req_{i}")))
        refused(401, "invalid_api_key")
    assert writes == [] and list(metrics_path.iterdir()) == []
    recorder.flush()
    first = len(writes)
    assert first < 60  # one write per series, whatever the number of requests
    recorder.flush()
    assert len(writes) == first  # nothing changed, nothing written
    recorder.committed(report(record("req_more")))
    recorder.flush()
    assert 0 < len(writes) - first < first


def test_processes_add_up_and_an_exited_ones_gauges_leave_the_sum_but_not_its_counts(metrics_path, monkeypatch):
    monkeypatch.setenv(metrics_dir.DIR_ENV, str(metrics_path))
    workers = [Recorder(metrics_path, refusals={}, pid=pid) for pid in (201, 202)]
    for i, worker in enumerate(workers):
        worker.committed(report(record(f"req_{i}_a"), record(f"req_{i}_b")))
        worker.flush()
    metrics = scrape(metrics_path)
    assert metrics.sum("tollgate_requests_total") == 4
    assert metrics.sum("tollgate_gateway_processes") == 2
    metrics_dir.forget(201)
    metrics = scrape(metrics_path)
    assert metrics.sum("tollgate_requests_total") == 4 and metrics.sum("tollgate_gateway_processes") == 1
    for worker in workers:
        worker.files.close()


def test_a_process_that_reuses_a_pid_counts_on_from_its_files(metrics_path):
    first = Recorder(metrics_path, refusals={}, pid=301)
    first.committed(report(record("req_1")))
    first.flush()
    first.files.close()
    again = Recorder(metrics_path, refusals={}, pid=301)
    again.committed(report(record("req_2")))
    again.flush()
    assert scrape(metrics_path).sum("tollgate_requests_total") == 2
    again.files.close()


def test_the_recorders_thread_flushes_every_interval_and_close_writes_the_last(metrics_path):
    recorder = Recorder(metrics_path, refusals={}, pid=401, interval=0.05)
    recorder.start()
    recorder.committed(report(record("req_1")))
    deadline = time.monotonic() + 5
    while not (metrics_path / "counter_401.db").exists():  # the thread's flush, not close()'s
        assert time.monotonic() < deadline
        time.sleep(0.01)
    recorder.committed(report(record("req_2")))
    recorder.close()
    metrics = scrape(metrics_path)
    assert metrics.sum("tollgate_requests_total") == 2
    assert metrics.sum("tollgate_gateway_processes") == 0  # closed: it holds nothing any more


# -- gauges -----------------------------------------------------------------------------------------

class Keys:
    ledger_down = False


class Cashier:
    keys = Keys()
    redis_fallback = False

    def holds_in_place(self):
        return 3, 1_500_000_000


def test_gauges_read_the_writer_journal_and_cashier(recorder, metrics_path, ledger):
    writer = LedgerWriter(apply_charges)
    cashier = Cashier()
    recorder.sources = lambda: (writer, None, cashier)
    gauges = {family.name: value for family, value in recorder.gauges().items()}
    assert gauges == {"tollgate_holds_open": 3, "tollgate_holds_usd": 1.5, "tollgate_ledger_writer_queue": 0,
                      "tollgate_journal_backlog": 0, "tollgate_ledger_outage": 0, "tollgate_redis_fallback": 0,
                      "tollgate_gateway_processes": 1}
    writer.failing = True
    cashier.redis_fallback = True
    recorder.flush()
    metrics = scrape(metrics_path)
    assert metrics.sum("tollgate_ledger_outage") == 1 and metrics.sum("tollgate_redis_fallback") == 1
    assert metrics.sum("tollgate_holds_usd") == 1.5
    writer.close()


def test_the_writer_says_while_the_database_is_away(ledger, monkeypatch):
    from addons.ledger import writer as writer_module

    failures = iter([True, True, False])
    seen = []

    def flaky(batch, charge):
        seen.append(writer.failing)
        if next(failures):
            raise OperationalError("connection refused")
        return CommitReport(request_ids=[r.id for r in batch])

    monkeypatch.setattr(writer_module, "write_batch", flaky)
    writer = LedgerWriter(apply_charges, retry_delay=0.01)
    writer.submit(record("req_1"))
    assert writer.queued == 1
    assert writer.flush(timeout=10)
    assert seen == [False, True, True] and not writer.failing and writer.queued == 0
    writer.close()


def test_a_commit_reports_only_the_rows_it_inserted(ledger):
    _, wallet = ensure_account()
    credit_wallet(wallet.id, 10**9)
    rows = [record(f"req_{i}", charged=10) for i in range(3)]
    for row in rows:
        row.account, row.wallet_id = wallet.account_id, wallet.id
    assert {r.id for r in write_batch(rows[:2], apply_charges).written} == {"req_0", "req_1"}
    assert [r.id for r in write_batch(rows, apply_charges).written] == ["req_2"]  # a replay counts once


def test_the_cashier_counts_holds_until_released_or_expired(gw):
    cashier = gw.cashier
    cashier.open_holds.update({"req_a": (500, math.inf), "req_b": (700, math.inf), "req_old": (900, 0.0)})
    assert cashier.holds_in_place() == (2, 1_200)
    assert "req_old" not in cashier.open_holds

    cashier.settled(CommitReport(request_ids=["req_a"]))
    assert cashier.holds_in_place() == (1, 700)


# -- the metrics directory of a gateway start --------------------------------------------------------

@pytest.fixture
def no_metrics_env(monkeypatch):
    """Neither variable set, and both put back as they were afterwards (prepare() sets them)."""
    for name in (metrics_dir.DIR_ENV, metrics_dir.PREPARED_ENV):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_a_start_makes_a_directory_of_its_own_that_the_processes_it_starts_keep(no_metrics_env, monkeypatch):
    monkeypatch.setattr("atexit.register", lambda *args, **kwargs: None)
    directory = metrics_dir.prepare()
    try:
        assert directory.is_dir() and directory.name.startswith("tollgate-metrics-")
        assert os.environ[metrics_dir.DIR_ENV] == str(directory)
        (directory / "counter_1.db").write_bytes(b"")
        assert metrics_dir.prepare() == directory  # a worker, or mitmweb reloading the script
        assert (directory / "counter_1.db").exists()
        monkeypatch.delenv(metrics_dir.PREPARED_ENV)
        monkeypatch.delenv(metrics_dir.DIR_ENV)
        assert metrics_dir.prepare() != directory  # the next start: another
    finally:
        for made in {directory, metrics_dir.current()}:
            for path in made.iterdir():
                path.unlink()
            made.rmdir()


def test_a_directory_the_operator_names_is_emptied_of_the_last_runs_files(no_metrics_env, monkeypatch, tmp_path):
    named = tmp_path / "metrics"
    named.mkdir()
    (named / "counter_99.db").write_bytes(b"stale")
    (named / "README").write_text("not ours")
    monkeypatch.setenv(metrics_dir.DIR_ENV, str(named))
    assert metrics_dir.prepare() == named
    assert sorted(p.name for p in named.iterdir()) == ["README"]


# -- /metrics on the admin listener -------------------------------------------------------------------

def test_metrics_need_no_key_from_this_machine_and_an_admin_key_from_another(api, metrics_path, monkeypatch):
    monkeypatch.setenv(metrics_dir.DIR_ENV, str(metrics_path))
    recorder = Recorder(metrics_path, refusals={(429, "too_many_failed_auths"): 4}, pid=501)
    recorder.flush()
    app = build_app(extra_routes=admin_metrics.routes())
    local = TestClient(app, client=("127.0.0.1", 40000))
    answer = local.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    assert Scrape.parse(answer.text).sum("tollgate_refusals_total", code="too_many_failed_auths") == 4
    remote = {name: _client(app, secret) for name, secret in
              (("anonymous", None), ("account", api.merchant_key), ("admin", api.admin_key))}
    assert remote["anonymous"].get("/metrics").status_code == 401
    assert remote["account"].get("/metrics").json()["error"]["code"] == "admin_only"
    assert remote["admin"].get("/metrics").status_code == 200
    monkeypatch.delenv(metrics_dir.DIR_ENV)
    assert local.get("/metrics").json()["error"]["code"] == "metrics_unavailable"
    recorder.files.close()
