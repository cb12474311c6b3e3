"""Python function calls per request, by function, through Tollgate's two ways in: where the HTTPS_PROXY way's
extra work goes, in counts that do not move with the machine.

Run by hand:  .venv/bin/python bench/call_counts.py [--requests 2000] [--top 30]

Tollgate (SQLite, `tollgate-proxy`) runs under cProfile, switched on around each block of requests only (by a
real-time signal: mitmproxy keeps SIGUSR1 and SIGUSR2 for itself); run_bench's mock and client drive the
forward endpoint, then HTTPS_PROXY, on 32 kept-alive connections. Printed: each function's calls per request
each way and the profiled time the difference costs, largest first. Profiled time inflates Python calls
against C work, so it ranks, it does not measure: instructions.py and run_bench.py do.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_bench as rb  # noqa: E402  the same mock, targets and client

START, DUMP = signal.SIGRTMIN + 3, signal.SIGRTMIN + 4
PROFILED = f"""
import cProfile, os, signal, sys
profile, dumps = None, 0
def start(*_):
    global profile
    profile = cProfile.Profile()
    profile.enable()
def dump(*_):
    global dumps
    profile.disable()
    profile.dump_stats(os.environ["CALL_COUNTS_OUT"] + "." + str(dumps))
    dumps += 1
signal.signal({START}, start)
signal.signal({DUMP}, dump)
sys.argv[0] = "tollgate-proxy"
from addons.runtime.launcher import main
sys.exit(main())
"""


def counted(target: rb.Target, requests: int, dumped: Path) -> dict[str, tuple[float, float]]:
    """function -> (calls, profiled seconds) over `requests` requests through `target`, dumped to `dumped`."""
    asyncio.run(rb.load(target, stream=False, conc=32, n=200, cap=600))  # warm-up
    os.kill(target.proc_pid, START)
    time.sleep(0.5)
    result = asyncio.run(rb.load(target, stream=False, conc=32, n=requests, cap=600))
    time.sleep(1.0)  # trailing work: the ledger writer's batch
    os.kill(target.proc_pid, DUMP)
    while not dumped.exists():
        time.sleep(0.1)
    time.sleep(0.5)  # written whole
    if result.ok != requests:
        raise RuntimeError(f"{target.name}: {result.errors} errors: {result.sample_error}")
    stats = pstats.Stats(str(dumped)).stats
    return {f"{path.split('site-packages/')[-1].replace(str(rb.PROJECT) + '/', '')}:{line}:{name}": (calls, own)
            for (path, line, name), (_, calls, own, _, _) in stats.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    out = rb.WORK / "call_counts"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink()
    spawn = rb.spawn

    def profiled(name, argv, env, cpu, cwd=None):
        if argv[0].endswith("tollgate-proxy"):
            argv = [str(rb.VENV_BIN / "python"), "-c", PROFILED, *argv[1:]]
            env = {**env, "CALL_COUNTS_OUT": str(out / "profile")}
        return spawn(name, argv, env, cpu, cwd)

    rb.spawn = profiled
    rb.LOGS.mkdir(parents=True, exist_ok=True)
    try:
        _, mock_port = rb.start_mock(0.0)
        forward, proxy, *_ = rb.start_tollgate("sqlite", mock_port)
        ways = [counted(way, args.requests, out / f"profile.{i}") for i, way in enumerate((forward, proxy))]
    finally:
        rb.stop_all()
    n = args.requests
    fwd, tun = ways
    print(f"calls per request: forward endpoint {sum(c for c, _ in fwd.values()) / n:.0f}, "
          f"HTTPS_PROXY {sum(c for c, _ in tun.values()) / n:.0f}")
    rows = sorted(((tun.get(k, (0, 0))[1] - fwd.get(k, (0, 0))[1], k) for k in fwd.keys() | tun.keys()), reverse=True)
    print(f"{'profiled us':>12} {'forward':>8} {'proxy':>8}  function (calls per request)")
    for extra, key in rows[:args.top]:
        print(f"{extra / n * 1e6:12.1f} {fwd.get(key, (0, 0))[0] / n:8.2f} {tun.get(key, (0, 0))[0] / n:8.2f}  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
