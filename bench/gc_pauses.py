"""Python's cyclic garbage collections in the gateway under load: how often, how long the longest held the event
loop, and what they cost a request; with the requests' slowest latencies beside them.

Run by hand:  .venv/bin/python bench/gc_pauses.py [--requests 40000] [--tree DIR]

Tollgate (SQLite, `tollgate-proxy`, forward endpoint) runs with run_bench's mock and client (32 kept-alive
connections); a sitecustomize put first on its PYTHONPATH times every collection (gc.callbacks) and writes them
out as the load runs. Only the collections during the load are counted, not those of the start. `--tree DIR` runs
the gateway from another checkout (a `git worktree` of an earlier commit, same venv) for an A/B; the collections
are the same in every run to within a few, their times move with the machine.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_bench as rb  # noqa: E402  the same mock, target and client

SITECUSTOMIZE = """
import gc, os, threading, time
_out, _started, _rows = f"{os.environ['GC_PAUSES_OUT']}.{os.getpid()}", [0.0], []  # the admin process writes its own
def _timed(phase, info):
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        _rows.append((time.time(), info["generation"], time.perf_counter() - _started[0]))
gc.callbacks.append(_timed)
def _write():
    while True:
        time.sleep(0.5)
        with open(_out + ".tmp", "w") as f:
            f.write(repr(list(_rows)))
        os.replace(_out + ".tmp", _out)
threading.Thread(target=_write, daemon=True).start()
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40000)
    parser.add_argument("--tree", help="run the gateway from this source tree (first on PYTHONPATH)")
    args = parser.parse_args()
    os.sched_setaffinity(0, {rb.CLIENT_CPU})
    rb.WORK.mkdir(exist_ok=True)
    rb.LOGS.mkdir(parents=True, exist_ok=True)
    site = Path(tempfile.mkdtemp(prefix="gc-pauses-"))
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    out = site / "collections"
    path = os.pathsep.join([str(site), *([args.tree] if args.tree else [])])
    try:
        _, mock_port = rb.start_mock(0.0)
        target, *_ = rb.start_tollgate("sqlite", mock_port, more_env={"PYTHONPATH": path, "GC_PAUSES_OUT": str(out)})
        asyncio.run(rb.load(target, stream=False, conc=32, n=2000, cap=3600))  # warm
        started, cpu = time.time(), rb.tree_cpu(target.proc_pid)
        result = asyncio.run(rb.load(target, stream=False, conc=32, n=args.requests, cap=3600))
        ended, cpu = time.time(), rb.tree_cpu(target.proc_pid) - cpu
        time.sleep(1.0)  # the last write of the collections
        written = ast.literal_eval(Path(f"{out}.{target.proc_pid}").read_text())
        rows = [(gen, took) for at, gen, took in written if started <= at <= ended]
    finally:
        rb.stop_all()
    if result.ok != args.requests:
        print(f"{result.errors} requests failed: {result.sample_error}")
        return 1
    lat = sorted(result.lat)
    print(f"{args.tree or 'this tree'}: {args.requests} requests, {cpu / args.requests * 1e6:.0f} us of CPU each; "
          f"latency p99 {lat[int(len(lat) * 0.99)] * 1000:.1f} ms, p99.9 {lat[int(len(lat) * 0.999)] * 1000:.1f} ms, "
          f"max {lat[-1] * 1000:.1f} ms")
    for gen in (0, 1, 2):
        took = [t for g, t in rows if g == gen]
        if took:
            print(f"  generation {gen}: {len(took)} collections, longest {max(took) * 1000:.1f} ms, "
                  f"{sum(took) / args.requests * 1e6:.1f} us a request")
        else:
            print(f"  generation {gen}: none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
