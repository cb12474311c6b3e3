"""CPU cost per request as instructions counted by valgrind (callgrind), not as time.

On a shared 2-core machine the CPU time of one request moves by a third from run to run (stock
mitmdump measured 1.5 to 2.5 ms per request in one evening), which hides the differences between
two builds of the gateway. Instructions executed do not depend on what else runs, so this script
counts them: each target runs under `valgrind --tool=callgrind --instr-atstart=no`, is warmed up,
then counting is switched on (`callgrind_control -i on`) for a fixed number of non-streamed
requests from --clients keep-alive connections and read back; instructions / requests (all
threads) is the figure.

Targets (the mock, request and client of run_bench.py): stock mitmdump (reverse mode, no addon)
and Tollgate (tollgate-proxy, SQLite, forward endpoint) from this checkout; `--tree LABEL=DIR`
adds Tollgate run from another source tree (a `git worktree` of another commit, first on
PYTHONPATH, same venv), for an A/B of two builds.

Not counted: the kernel's share (system calls, fsync). Timers run in wall time while the process
runs ~50x slower, so the ledger writer's batches are smaller than at full speed and its share is
overstated. See bench/README.md.

`--limits` also counts, on the same Tollgate, requests with a key that has every limit set (run_bench.py's
LIMITED_KEY, none reached), before and after the plain key's: issue 13's budgets are a difference of a few
tens of microseconds, which run_bench.py's timings cannot resolve, and instructions can. Each block's counts
are kept as a callgrind dump, for callgrind_annotate to say where the difference goes.

Run:  .venv/bin/python bench/instructions.py [--requests 640] [--clients 32] [--only mitmdump,tollgate]
      .venv/bin/python bench/instructions.py --only tollgate --tree before=/tmp/tollgate-before
      .venv/bin/python bench/instructions.py --only tollgate --limits [--kind pg]
      .venv/bin/python bench/instructions.py --only tollgate --proxy   (then callgrind_annotate each way's dump)
Needs valgrind (Debian package `valgrind`).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_bench as rb  # noqa: E402  the same mock, targets and client

STARTUP_TIMEOUT = 600.0  # valgrind starts mitmproxy in about a minute
spawn_plain, wait_ready_plain = rb.spawn, rb.wait_ready


def spawn_under_callgrind(name, argv, env, cpu, cwd=None):
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--dump-instr=no",
                f"--callgrind-out-file={rb.WORK / f'callgrind.{name}.out'}"]
    return spawn_plain(name, [*valgrind, *argv], env, cpu, cwd)  # taskset execs valgrind: the same pid


def slow_wait_ready(proc, name, check, timeout):
    return wait_ready_plain(proc, name, check, STARTUP_TIMEOUT)


def callgrind(pid: int, *args: str) -> str:
    return subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, text=True,
                          timeout=300).stdout


def instructions_so_far(pid: int) -> int:
    """Instructions counted since the last zeroing, all threads (the "Totals" of callgrind_control -e -b)."""
    status = callgrind(pid, "-e", "-b")
    totals = status.partition("Totals:")[2].split("\n\n", 1)[0]
    per_thread = re.findall(r"^\s*Th\s+\d+\s+([\d,]+)", totals, re.M)
    if not per_thread:
        raise RuntimeError(f"no totals from callgrind_control -e -b: {status[-500:]}")
    return sum(int(n.replace(",", "")) for n in per_thread)


def measure(target: rb.Target, warmup: int, requests: int, clients: int) -> float:
    """Instructions per request."""
    pid = target.proc_pid
    result = asyncio.run(rb.load(target, stream=False, conc=clients, n=warmup, cap=3600))
    if result.ok != warmup:
        raise RuntimeError(f"{target.name}: warm-up failed: {result.sample_error}")
    callgrind(pid, "-z")  # zero what was counted so far
    callgrind(pid, "-i", "on")
    result = asyncio.run(rb.load(target, stream=False, conc=clients, n=requests, cap=3600))
    time.sleep(1.0)  # trailing work: the ledger writer's batch for these requests
    total = instructions_so_far(pid)
    callgrind(pid, "-i", "off")
    if result.ok != requests:
        raise RuntimeError(f"{target.name}: {result.errors} errors: {result.sample_error}")
    return total / requests


def start_tollgate_from(label: str, tree: str | None, mock_port: int,
                        kind: str = "sqlite") -> tuple[rb.Target, ...]:
    """Tollgate (`kind`: sqlite, or pg for PostgreSQL + Redis) with its own work directory, from `tree` when given
    (first on PYTHONPATH): its forward endpoint, its HTTPS_PROXY way in, and with rb.LIMITS_TOO its limited key's
    (the last)."""
    base = rb.WORK
    rb.WORK = base / f"instructions-{label}"
    try:
        return rb.start_tollgate(kind, mock_port, more_env={"PYTHONPATH": tree} if tree else None)
    finally:
        rb.WORK = base


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=640)
    parser.add_argument("--warmup", type=int, default=64)
    parser.add_argument("--clients", type=int, default=32, help="concurrent keep-alive connections")
    parser.add_argument("--only", default="mitmdump,tollgate", help="of mitmdump, tollgate (this checkout)")
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=DIR",
                        help="also Tollgate from the source tree DIR (repeatable)")
    parser.add_argument("--kind", choices=("sqlite", "pg"), default="sqlite",
                        help="Tollgate's ledger and hold store: SQLite, or PostgreSQL + Redis (the kernel's share of "
                             "its Redis round trips is not counted)")
    parser.add_argument("--limits", action="store_true",
                        help="also a key with every limit set, on the same Tollgate (the difference: issue 13's cost)")
    parser.add_argument("--proxy", action="store_true",
                        help="also Tollgate's HTTPS_PROXY way in (CONNECT + TLS), on the same Tollgate: the tunnel's "
                             "cost over the forward endpoint; each way's counts kept as a callgrind dump")
    args = parser.parse_args()
    rb.LIMITS_TOO = args.limits
    if not shutil.which("valgrind"):
        print("valgrind is not installed (apt-get install valgrind)")
        return 2
    rb.LOGS.mkdir(parents=True, exist_ok=True)
    rb.spawn, rb.wait_ready = spawn_under_callgrind, slow_wait_ready
    only = set(args.only.split(","))
    trees = ([("tollgate", None)] if "tollgate" in only else []) + [tuple(t.split("=", 1)) for t in args.tree]
    try:
        _, mock_port = rb.start_mock(0.0)
        if "mitmdump" in only:
            target = rb.start_mitmdump("mitmdump", mock_port, stream_bodies=False)
            print(f"mitmdump: {measure(target, args.warmup, args.requests, args.clients) / 1e6:.3f} M instructions "
                  f"per request ({args.requests} requests, {args.clients} clients)", flush=True)
        for label, tree in trees:
            target, proxy, *limited = start_tollgate_from(label, tree, mock_port, args.kind)
            if args.proxy:
                for way in (target, proxy) * 2:  # each twice, alternating
                    counted = measure(way, args.warmup, args.requests, args.clients)
                    dump = callgrind(way.proc_pid, "-d", way.name)  # callgrind_annotate reads it
                    print(f"{label} {way.name}: {counted / 1e6:.3f} M instructions per request ({args.requests} "
                          f"requests, {args.clients} clients); {dump.strip() or 'dumped'}", flush=True)
                continue
            if not args.limits:
                print(f"{label}: {measure(target, args.warmup, args.requests, args.clients) / 1e6:.3f} M "
                      f"instructions per request ({args.requests} requests, {args.clients} clients)", flush=True)
                continue
            counts: dict[str, list[float]] = {"no limits": [], "every limit": []}
            for key, keyed in (("no limits", target), ("every limit", limited[-1])) * 2:  # each twice, alternating
                counts[key].append(measure(keyed, args.warmup, args.requests, args.clients))
                dump = callgrind(keyed.proc_pid, "-d", key.replace(" ", "-"))  # callgrind_annotate reads it
                print(f"{label} {key}: {counts[key][-1] / 1e6:.3f} M instructions per request; "
                      f"{dump.strip() or 'dumped'}", flush=True)
            plain, every = (sum(counts[key]) / 2 for key in ("no limits", "every limit"))
            print(f"{label}: no limits {plain / 1e6:.3f} M, every limit {every / 1e6:.3f} M instructions per request "
                  f"(each the mean of two blocks of {args.requests} requests, {args.clients} clients): limits cost "
                  f"{every - plain:+,.0f}", flush=True)
    finally:
        rb.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
