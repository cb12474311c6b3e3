"""The gateway's Prometheus metrics, recorded off the event loop; the admin process's /metrics serves them.

What is counted, and where:
- a request forwarded to a provider, once the ledger writer has committed its row (`Recorder.committed`,
  on the writer's thread, from the Gateway's commit callback): tollgate_requests_total by provider, model,
  status and outcome; tokens by kind; provider cost, merchant charge and customer fee; duration and
  time-to-first-byte histograms; upstream errors by kind. Counted from the rows a commit inserted (a
  replayed row already there is not), they equal the ledger's;
- an answer the gateway refuses with itself (401, 402, 403, 429, 413, ...: no ledger row):
  `refused(status, code)`, from the Gateway, the guards (addons.proxy.error_pages.refuse) and the error
  pages mitmproxy answers with (error_pages.json_error_response, upstream failures aside: those have rows);
- gauges, sampled each second: holds in place, the writer's queue, the journal's backlog, the ledger
  outage and the Redis fallback.

The cost: nothing calls prometheus_client per request. The hot path adds to plain dicts (a refusal, on
the event loop: one dict increment; a committed row, on the writer's thread: a few), and the recorder's
thread writes the totals each second into this process's files in prometheus_client's multiprocess format
(`counter_<pid>.db`, ..., in addons.core.metrics_dir's directory), which the admin process merges over
every worker with prometheus_client's MultiProcessCollector. bench/metrics_cost.py measures it. A clean
stop writes everything (the Gateway's `done`); a process killed with SIGKILL loses its last second's counts.

Labels: an unpriced or unknown model is still a label value; past MAX_MODELS (provider, model) pairs in
one process, further models are counted as "other", so a caller cannot grow the series without bound.
An empty label value stands for no value (a request the provider never answered has status "").
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.utils import floatToGoString

from addons.billing.cashier import Cashier
from addons.core import metrics_dir
from addons.ledger.journal import Journal
from addons.ledger.writer import NO_FEES, CommitReport, LedgerWriter

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0
MAX_MODELS = 500
NANOS_PER_USD = 1e9


@dataclass(frozen=True, slots=True)
class Family:
    """A metric: `name` (a counter's without _total), the file kind prometheus_client's collector reads it
    from (counter, histogram, gauge_livesum, gauge_livemax), its labels and help line."""

    name: str
    kind: str
    labels: tuple[str, ...]
    help: str


REQUESTS = Family("tollgate_requests", "counter", ("provider", "model", "status", "outcome"),
                  "Requests forwarded to a provider, one per ledger row; outcome: charged, not_charged, "
                  "upstream_error, client_disconnected, metering_failed")
REFUSALS = Family("tollgate_refusals", "counter", ("status", "code"),
                  "Requests the gateway refused itself (no ledger row), by HTTP status and error code")
TOKENS = Family("tollgate_tokens", "counter", ("provider", "model", "kind"),
                "Tokens of the ledger's requests by kind (input includes cache_read, as the ledger's columns)")
PROVIDER_COST = Family("tollgate_provider_cost_usd", "counter", ("provider", "model"),
                       "What the ledger's requests cost at the providers' prices, in USD")
CHARGED = Family("tollgate_charged_usd", "counter", ("provider", "model"),
                 "Debited from the merchants' wallets (provider cost they pay, BYOK fees), in USD")
FEES = Family("tollgate_fees_usd", "counter", ("provider", "model"),
              "Fees debited from customers' balances, in USD")
FEES_UNCOLLECTED = Family("tollgate_fees_uncollected_usd", "counter", ("provider", "model"),
                          "Customers' fees their balances could not cover, in USD")
UPSTREAM_ERRORS = Family("tollgate_upstream_errors", "counter", ("provider", "kind"),
                         "Requests a provider failed; kind: timeout, connect, closed, address_refused, other")
DURATION = Family("tollgate_request_duration_seconds", "histogram", ("provider",),
                  "From the request to the response's last byte (the ledger's latency)")
TTFB = Family("tollgate_ttfb_seconds", "histogram", ("provider",),
              "From the request to the provider's response headers (the ledger's ttfb)")
HOLDS_OPEN = Family("tollgate_holds_open", "gauge_livesum", (),
                    "Requests holding money until their charge is committed")
HOLDS_USD = Family("tollgate_holds_usd", "gauge_livesum", (), "Money those holds set aside, in USD")
WRITER_QUEUE = Family("tollgate_ledger_writer_queue", "gauge_livesum", (), "Records waiting for the ledger writer")
JOURNAL_BACKLOG = Family("tollgate_journal_backlog", "gauge_livesum", (),
                         "Journaled records not yet in the ledger")
LEDGER_OUTAGE = Family("tollgate_ledger_outage", "gauge_livemax", (),
                       "1 while a gateway process cannot reach the ledger database")
REDIS_FALLBACK = Family("tollgate_redis_fallback", "gauge_livemax", (),
                        "1 while a gateway process holds in its own memory because Redis is away")
PROCESSES = Family("tollgate_gateway_processes", "gauge_livesum", (), "Gateway processes recording metrics")

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, math.inf)
TTFB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, math.inf)
TOKEN_KINDS = ("input", "cache_read", "cache_write", "output", "reasoning")  # a model's totals[0:5]
MONEY = ((PROVIDER_COST, 5), (CHARGED, 6), (FEES, 7), (FEES_UNCOLLECTED, 8))  # and totals[5:9], in nanos

# A request's error text (the ledger's `error`) -> its kind, first match; else "other". The address check's
# text is addons.proxy.error_pages.UPSTREAM_REFUSED (tests/test_metrics_recorder.py holds them together).
ERROR_KINDS = (("timed out", "timeout"), ("refused the upstream address", "address_refused"),
               ("client disconnected", "client_disconnected"), ("closed", "closed"), ("reset", "closed"),
               ("connect", "connect"))
METERING_FAILED = "metering_failed"  # addons.proxy.usage_record.unmetered_record's error

# (status, code) -> refusals this process answered; `refused` adds, the recorder's thread reads.
REFUSED: dict[tuple[int, str], int] = {}


def refused(status: int, code: str) -> None:
    """A refusal the gateway answered itself: one dict increment, safe on the event loop."""
    key = (status, code)
    REFUSED[key] = REFUSED.get(key, 0) + 1


def error_kind(error: str) -> str:
    text = error.lower()
    return next((kind for needle, kind in ERROR_KINDS if needle in text), "other")


def outcome_of(error: str | None, charged: bool) -> str:
    if not error:
        return "charged" if charged else "not_charged"
    if error == METERING_FAILED:
        return METERING_FAILED
    return "client_disconnected" if error_kind(error) == "client_disconnected" else "upstream_error"


class Histogram:
    """Observations counted per bucket (not cumulative, as prometheus_client's files keep them) and summed."""

    __slots__ = ("bounds", "le", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.le = tuple(floatToGoString(bound) for bound in bounds)  # the buckets' labels, as prometheus_client's
        self.counts = [0] * len(bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


class MetricFiles:
    """This process's files in prometheus_client's multiprocess format: one per kind, `<kind>_<pid>.db`,
    each a table (metric, sample, labels, help) -> value, which prometheus_client's MultiProcessCollector
    reads and sums over processes. Values are written whole (a counter's total), only when changed; a
    file this pid already had (a pid the instance reused) is counted on from, as prometheus_client does."""

    def __init__(self, directory: Path, pid: int):
        self.directory, self.pid = directory, pid
        self._files: dict[str, MmapedDict] = {}
        self._keys: dict[tuple, str] = {}
        self._base: dict[str, float] = {}  # what a counter file held when opened
        self._written: dict[str, float] = {}

    def _file(self, kind: str) -> MmapedDict:
        file = self._files.get(kind)
        if file is None:
            file = self._files[kind] = MmapedDict(str(self.directory / f"{kind}_{self.pid}.db"))
            if not kind.startswith("gauge"):
                self._base.update((key, value) for key, value, _ in file.read_all_values())
        return file

    def write(self, family: Family, sample: str, labels: tuple[str, ...], values: tuple[str, ...],
              value: float) -> None:
        key = self._keys.get((sample, values))
        if key is None:
            key = self._keys[sample, values] = mmap_key(family.name, sample, labels, values, family.help)
        file = self._file(family.kind)
        value += self._base.get(key, 0.0)
        if self._written.get(key) != value:
            file.write_value(key, value, 0.0)
            self._written[key] = value

    def close(self) -> None:
        for file in self._files.values():
            file.close()
        self._files.clear()


# What the gauges are read from: the Gateway's writer, journal and cashier of the moment (any may be None).
Sources = Callable[[], tuple[LedgerWriter | None, Journal | None, Cashier | None]]


class Recorder:
    def __init__(self, directory: Path, *, refusals: dict[tuple[int, str], int] | None = None,
                 pid: int | None = None, interval: float = FLUSH_SECONDS):
        self.files = MetricFiles(directory, os.getpid() if pid is None else pid)
        self.refusals = REFUSED if refusals is None else refusals
        self.interval = interval
        self.sources: Sources | None = None
        self.requests: dict[tuple[str, str, str, str], int] = {}
        self.models: dict[tuple[str, str], list[int]] = {}  # (provider, model) -> TOKEN_KINDS, then MONEY, in nanos
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.duration: dict[str, Histogram] = {}
        self.ttfb: dict[str, Histogram] = {}
        self._lock = threading.Lock()  # one flush at a time: the thread's, or close()'s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- recording (the writer's thread) ------------------------------------------------------------

    def committed(self, report: CommitReport) -> None:
        """The rows a ledger commit inserted; on the writer's thread, from the Gateway's commit callback.
        Plain dict and list arithmetic: prometheus_client is not called here (see `flush`)."""
        fees_of, models, requests = report.fees, self.models, self.requests
        for record in report.written:
            fees = fees_of.get(record.id, NO_FEES)
            provider = record.provider
            model = record.model or ""
            totals = models.get((provider, model))
            if totals is None:
                if len(models) >= MAX_MODELS:
                    model = "other"
                totals = models.setdefault((provider, model), [0] * (len(TOKEN_KINDS) + len(MONEY)))
            totals[0] += record.input_tokens
            totals[1] += record.cache_read_tokens
            totals[2] += record.cache_write_tokens
            totals[3] += record.output_tokens
            totals[4] += record.reasoning_tokens
            totals[5] += record.provider_cost_nanos
            totals[6] += record.charged_nanos
            totals[7] += fees.fee_nanos
            totals[8] += fees.fee_uncollected_nanos
            if record.error:
                outcome = outcome_of(record.error, False)
                if outcome == "upstream_error":
                    error = (provider, error_kind(record.error))
                    self.upstream_errors[error] = self.upstream_errors.get(error, 0) + 1
            elif record.charged_nanos or fees.fee_nanos or fees.fee_uncollected_nanos:
                outcome = "charged"
            else:
                outcome = "not_charged"
            key = (provider, model, "" if record.status is None else str(record.status), outcome)
            requests[key] = requests.get(key, 0) + 1
            if record.latency_ms is not None:
                if (duration := self.duration.get(provider)) is None:
                    duration = self.duration[provider] = Histogram(DURATION_BUCKETS)
                duration.observe(record.latency_ms / 1000)
            if record.ttfb_ms is not None:
                if (ttfb := self.ttfb.get(provider)) is None:
                    ttfb = self.ttfb[provider] = Histogram(TTFB_BUCKETS)
                ttfb.observe(record.ttfb_ms / 1000)

    # -- writing the files (the recorder's thread) --------------------------------------------------

    def flush(self, live: bool = True) -> None:
        """Write the totals and the gauges now; `live` False: this process holds nothing any more."""
        with self._lock:
            write = self.files.write
            for values, count in list(self.requests.items()):
                write(REQUESTS, "tollgate_requests_total", REQUESTS.labels, values, count)
            for values, count in list(self.refusals.items()):
                write(REFUSALS, "tollgate_refusals_total", REFUSALS.labels, (str(values[0]), values[1]), count)
            for values, count in list(self.upstream_errors.items()):
                write(UPSTREAM_ERRORS, "tollgate_upstream_errors_total", UPSTREAM_ERRORS.labels, values, count)
            for (provider, model), totals in list(self.models.items()):
                totals = list(totals)
                for kind, count in zip(TOKEN_KINDS, totals):
                    write(TOKENS, "tollgate_tokens_total", TOKENS.labels, (provider, model, kind), count)
                for family, index in MONEY:
                    write(family, family.name + "_total", family.labels, (provider, model),
                          totals[index] / NANOS_PER_USD)
            for family, histograms in ((DURATION, self.duration), (TTFB, self.ttfb)):
                for provider, histogram in list(histograms.items()):
                    self._write_histogram(family, provider, histogram)
            for family, value in self.gauges(live).items():
                write(family, family.name, (), (), value)

    def _write_histogram(self, family: Family, provider: str, histogram: Histogram) -> None:
        labels = (*family.labels, "le")
        for le, count in zip(histogram.le, list(histogram.counts)):
            self.files.write(family, family.name + "_bucket", labels, (provider, le), count)
        self.files.write(family, family.name + "_sum", family.labels, (provider,), histogram.total)

    def gauges(self, live: bool = True) -> dict[Family, float]:
        writer, journal, cashier = self.sources() if self.sources is not None and live else (None, None, None)
        held, held_nanos = cashier.holds_in_place() if cashier is not None else (0, 0)
        outage = bool(writer is not None and writer.failing) or bool(cashier is not None and cashier.keys.ledger_down)
        return {
            HOLDS_OPEN: held,
            HOLDS_USD: held_nanos / NANOS_PER_USD,
            WRITER_QUEUE: writer.queued if writer is not None else 0,
            JOURNAL_BACKLOG: journal.unsettled if journal is not None else 0,
            LEDGER_OUTAGE: float(outage),
            REDIS_FALLBACK: float(cashier is not None and cashier.redis_fallback),
            PROCESSES: float(live),
        }

    # -- the thread ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tollgate-metrics", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except Exception:  # a full disk, a bug: metrics stop updating, requests go on
                log.exception("tollgate: writing metrics failed")

    def close(self) -> None:
        """Stop the thread and write a last time, as a process that holds nothing."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.flush(live=False)
        self.files.close()


_recorder: Recorder | None = None


def process_recorder(sources: Sources) -> Recorder | None:
    """This process's recorder (one, whatever reloads its addon), reading its gauges from `sources`; None
    when no metrics directory was prepared (the Gateway in a test of its own, say)."""
    global _recorder
    directory = metrics_dir.current()
    if directory is None:
        return None
    if _recorder is None or _recorder.files.directory != directory:
        if _recorder is not None:
            _recorder.close()
        _recorder = Recorder(directory)
        _recorder.start()
    _recorder.sources = sources
    return _recorder
