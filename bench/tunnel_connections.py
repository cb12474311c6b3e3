"""HTTPS_PROXY with a new connection per request, as a legacy app without keep-alive makes them: gateway CPU per
request, where the tunnel's set-up (CONNECT, the next-layer decisions, the TLS handshake the gateway signs) is paid
every time. run_bench.py's phases keep about 30 requests on a connection and hide most of it.

Run by hand:  .venv/bin/python bench/tunnel_connections.py [--baseline DIR] [--rounds 16]
              (--baseline: a checkout of another commit with a .venv, as run_bench.py --baseline takes it; the two
              gateways are measured in alternation and the per-pair difference is printed)

The mock, gateway and client are run_bench.py's (gateway on CPU 1, client and mock on CPU 0). Each round is 20
waves of 16 new connections, one request each; the figure is the median over rounds of the gateway's CPU (its
process tree, to the nanosecond) per request.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_bench as rb  # noqa: E402  the same mock, targets and client

WAVES, CONNECTIONS = 20, 16


def round_cpu(target: rb.Target) -> float:
    """ms of gateway CPU per request over WAVES waves of CONNECTIONS new connections."""
    start, done = rb.tree_cpu(target.proc_pid), 0
    for _ in range(WAVES):
        result = asyncio.run(rb.load(target, stream=False, conc=CONNECTIONS, n=CONNECTIONS, cap=60))
        if result.errors:
            raise RuntimeError(f"{target.name}: {result.errors} errors: {result.sample_error}")
        done += result.ok
    return (rb.tree_cpu(target.proc_pid) - start) / done * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="another checkout, with its own .venv")
    parser.add_argument("--rounds", type=int, default=16)
    args = parser.parse_args()
    rb.WORK.mkdir(exist_ok=True)
    rb.LOGS.mkdir(parents=True, exist_ok=True)
    try:
        _, mock_port = rb.start_mock(0.0)
        targets = [rb.start_tollgate("sqlite", mock_port)[1]]
        if args.baseline:
            targets.append(rb.start_tollgate("sqlite", mock_port, baseline=args.baseline)[1])
        for target in targets:  # warm: the certificate for the host made, caches filled
            asyncio.run(rb.load(target, stream=False, conc=CONNECTIONS, n=4 * CONNECTIONS, cap=60))
        cpu: dict[str, list[float]] = {target.name: [] for target in targets}
        for r in range(args.rounds):
            for target in targets if r % 2 == 0 else targets[::-1]:
                cpu[target.name].append(round_cpu(target))
        for name, figures in cpu.items():
            print(f"{name}: {statistics.median(figures):.3f} ms of CPU per request, a new connection each "
                  f"({min(figures):.3f}..{max(figures):.3f}, {args.rounds} rounds)")
        if args.baseline:
            ours, theirs = cpu[targets[0].name], cpu[targets[1].name]
            differences = [b - a for a, b in zip(ours, theirs, strict=True)]
            print(f"the baseline costs {statistics.median(differences):+.3f} ms more per request "
                  f"({min(differences):+.3f}..{max(differences):+.3f}, per pair of rounds)")
    finally:
        rb.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
