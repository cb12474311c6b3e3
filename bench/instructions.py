"""CPU cost per request as instructions counted by valgrind (callgrind), not as time.

On a shared 2-core machine the CPU time of one request moves by a third from run to run (stock
mitmdump measured 1.77 to 2.47 ms per request in one evening), which hides the differences between
two builds of the gateway. Instructions executed do not depend on what else runs, so this script
counts them: each target runs under `valgrind --tool=callgrind --instr-atstart=no`, is warmed up,
then counting is switched on (`callgrind_control -i on`) for a fixed number of non-streamed
requests from --clients keep-alive connections and off again; its instructions / requests are the figure. The process runs
~50x slower under valgrind, so counts are small; the figure is stable to well under 1%.

Targets (same mock, same request as run_bench.py): stock mitmdump (reverse mode, no addon) and
Tollgate (tollgate-proxy, SQLite, forward endpoint), and with --compare A=ENV,... Tollgate again
with environment overrides (for A/B of options, e.g. `TOLLGATE_X=1`).

Run:  .venv/bin/python bench/instructions.py [--requests 300] [--only mitmdump,tollgate]
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

STARTUP_TIMEOUT = 600.0
PROCESS_TREE = {}  # target name -> valgrind pid


def spawn_under_callgrind(name, argv, env, cpu, cwd=None):
    out = rb.WORK / f"callgrind.{name}.out"
    out.unlink(missing_ok=True)
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                "--trace-children=no", "--dump-instr=no"]
    proc = spawn_plain(name, [*valgrind, *argv], env, cpu, cwd)
    PROCESS_TREE[name] = proc.pid
    return proc


def slow_wait_ready(proc, name, check, timeout):
    return wait_ready_plain(proc, name, check, STARTUP_TIMEOUT)


spawn_plain, wait_ready_plain = rb.spawn, rb.wait_ready


def valgrind_pid(target: rb.Target) -> int:
    """The process valgrind runs (taskset execs it, so it is the spawned pid itself)."""
    return target.proc_pid


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


def measure(target: rb.Target, warmup: int, requests: int, clients: int) -> dict:
    pid = valgrind_pid(target)
    result = asyncio.run(rb.load(target, stream=False, conc=clients, n=warmup, cap=3600))
    if result.ok != warmup:
        raise RuntimeError(f"{target.name}: warm-up failed: {result.sample_error}")
    callgrind(pid, "-z")  # zero what was counted so far
    callgrind(pid, "-i", "on")
    t0 = time.monotonic()
    result = asyncio.run(rb.load(target, stream=False, conc=clients, n=requests, cap=3600))
    time.sleep(1.0)  # trailing work: the ledger writer's batch for these requests
    total = instructions_so_far(pid)
    callgrind(pid, "-i", "off")
    if result.ok != requests:
        raise RuntimeError(f"{target.name}: {result.errors} errors: {result.sample_error}")
    return {"target": target.name, "requests": requests, "instructions": total,
            "per_request": total / requests, "seconds": time.monotonic() - t0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--clients", type=int, default=32, help="concurrent keep-alive connections")
    parser.add_argument("--only", default="mitmdump,tollgate")
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        print("valgrind is not installed (apt-get install valgrind)")
        return 2
    rb.WORK.mkdir(exist_ok=True)
    rb.LOGS.mkdir(parents=True, exist_ok=True)
    rb.spawn, rb.wait_ready = spawn_under_callgrind, slow_wait_ready
    only = set(args.only.split(","))
    rows = []
    try:
        mock, mock_port = rb.start_mock(0.0)
        targets = []
        if "mitmdump" in only:
            targets.append(rb.start_mitmdump("mitmdump", mock_port, stream_bodies=False))
        if "tollgate" in only:
            targets.append(rb.start_tollgate("sqlite", mock_port)[0])
        for target in targets:
            rows.append(measure(target, args.warmup, args.requests, args.clients))
            print(f"{target.name}: {rows[-1]['per_request'] / 1e6:.3f} M instructions per request "
                  f"({args.requests} requests, {args.clients} clients, {rows[-1]['seconds']:.0f} s under valgrind)", flush=True)
    finally:
        rb.stop_all()
    if len(rows) == 2:
        print(f"ratio {rows[1]['target']} / {rows[0]['target']}: {rows[1]['per_request'] / rows[0]['per_request']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
