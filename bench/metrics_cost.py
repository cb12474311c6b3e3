"""What the Prometheus metrics cost a request (addons/proxy/metrics_recorder.py), metrics on vs off.

Run by hand:  .venv/bin/python bench/metrics_cost.py [--requests 100000]

Off, the Gateway records nothing (`--set tollgate_metrics=false`): 0 on every line below but the refusal
counter, which is counted either way. On, a request costs:
  event loop     a refusal: one dict increment (`refused`); a held request: its hold noted and dropped
                 (Cashier.open_holds); a served request without a hold: nothing
  writer thread  its committed row added to the totals (`Recorder.committed`), GIL time the loop shares
  metrics thread one flush a second writes every series once (`Recorder.flush`), whatever the request
                 rate: its cost per request is the flush's time divided by a second's requests
For comparison, the last line is what prometheus_client's own multiprocess metrics would cost per request
(labels().inc() / observe() on the same series, each a locked mmap write), which the recorder avoids.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from addons.ledger.writer import CommitReport, RequestFees, UsageRecord  # noqa: E402
from addons.proxy import metrics_recorder  # noqa: E402
from addons.proxy.metrics_recorder import Recorder, refused  # noqa: E402

MODELS = [("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4"), ("gemini", "gemini-2.5")]


def records(n: int) -> list[UsageRecord]:
    out = []
    for i in range(n):
        provider, model = MODELS[i % len(MODELS)]
        out.append(UsageRecord(
            id=f"req_{i}", created_at=datetime(2026, 1, 1), account="acct", wallet_id="wal", key=None,
            provider=provider, endpoint="chat.completions", model=model, status=200 if i % 50 else 429,
            input_tokens=1200 + i % 7, cache_read_tokens=i % 3 * 100, output_tokens=300 + i % 11,
            reasoning_tokens=i % 5, provider_cost_nanos=1_234_567 + i, charged_nanos=1_234_567 + i,
            latency_ms=400 + i % 900, ttfb_ms=120 + i % 300, error="upstream timed out" if i % 997 == 0 else None))
    return out


def per_call_us(fn, n: int) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=1400.0, help="requests a second per process (for the flush)")
    args = parser.parse_args()
    n = args.requests
    rows = records(n)
    batches = [CommitReport(request_ids=[r.id for r in rows[i:i + 100]], written=rows[i:i + 100],
                            fees={r.id: RequestFees(fee_nanos=10_000_000) for r in rows[i:i + 100:5]})
               for i in range(0, n, 100)]  # the writer commits in batches
    with tempfile.TemporaryDirectory(prefix="tollgate-metrics-bench-") as directory:
        recorder = Recorder(Path(directory), refusals={}, pid=os.getpid())

        def commit_all():
            for batch in batches:
                recorder.committed(batch)

        committed = per_call_us(commit_all, n)
        metrics_recorder.REFUSED.clear()
        refusal = per_call_us(lambda: [refused(401, "invalid_credential") for _ in range(n)], n)
        holds: dict[str, tuple[int, float]] = {}
        ids = [r.id for r in rows]

        def hold_and_release():  # 100 requests in flight, each noted when admitted and dropped when settled
            for i, request_id in enumerate(ids):
                holds[request_id] = (10_000_000, time.monotonic() + 600)
                if i >= 100:
                    holds.pop(ids[i - 100], None)

        hold = per_call_us(hold_and_release, n)
        recorder.flush()  # the first flush creates every series' key
        for batch in batches[:10]:
            recorder.committed(batch)
        flushes = 50
        flush_us = per_call_us(lambda: [(recorder.committed(batches[i]), recorder.flush()) for i in range(flushes)],
                               flushes) - committed * 100
        recorder.files.close()

    with tempfile.TemporaryDirectory(prefix="tollgate-metrics-bench-") as directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        from prometheus_client import Counter, Histogram, values

        values.ValueClass = values.MultiProcessValue()  # prometheus_client's own multiprocess values
        requests = Counter("b_requests", "", ["provider", "model", "status", "outcome"], registry=None)
        tokens = Counter("b_tokens", "", ["provider", "model", "kind"], registry=None)
        money = Counter("b_usd", "", ["provider", "model", "what"], registry=None)
        duration = Histogram("b_duration", "", ["provider"], registry=None, buckets=metrics_recorder.DURATION_BUCKETS)
        ttfb = Histogram("b_ttfb", "", ["provider"], registry=None, buckets=metrics_recorder.TTFB_BUCKETS)

        def classic():
            for r in rows:
                requests.labels(r.provider, r.model, str(r.status), "charged").inc()
                for kind, value in (("input", r.input_tokens), ("cache_read", r.cache_read_tokens),
                                    ("cache_write", r.cache_write_tokens), ("output", r.output_tokens),
                                    ("reasoning", r.reasoning_tokens)):
                    tokens.labels(r.provider, r.model, kind).inc(value)
                for what, value in (("cost", r.provider_cost_nanos), ("charged", r.charged_nanos), ("fee", 0),
                                    ("uncollected", 0)):
                    money.labels(r.provider, r.model, what).inc(value / 1e9)
                duration.labels(r.provider).observe(r.latency_ms / 1000)
                ttfb.labels(r.provider).observe(r.ttfb_ms / 1000)

        prometheus = per_call_us(classic, n)

    print(f"requests measured: {n:,}; Python {sys.version.split()[0]}")
    print(f"event loop, a refusal (refused):                 {refusal:6.3f} us  (counted with metrics off too)")
    print(f"event loop, a held request (hold noted, dropped): {hold:6.3f} us")
    print(f"writer thread, a committed row (committed):      {committed:6.3f} us")
    print(f"metrics thread, one flush a second:            {flush_us:8.1f} us = "
          f"{flush_us / args.rate:6.3f} us a request at {args.rate:g} req/s")
    total = committed + flush_us / args.rate + hold
    print(f"on, in all, per served request:                  {total:6.3f} us  "
          f"({total / 700 * 100:.2f} % of the ~700 us a request costs the gateway's CPU)")
    print(f"off:                                             {0:6.3f} us")
    print(f"prometheus_client's own metrics per request:     {prometheus:6.3f} us  (not used; for comparison)")
    return 0 if math.isfinite(total) else 1


if __name__ == "__main__":
    sys.exit(main())
