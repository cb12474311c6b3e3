"""Time to the first answers after Tollgate starts: what a new process still does in its first requests' time.

Run by hand:  .venv/bin/python bench/first_request.py [--starts 3] [--requests 3] [--tree LABEL=DIR ...]

Each start runs run_bench.py's mock and a fresh Tollgate (`tollgate-proxy`, SQLite, run_bench's config), once
Tollgate answers its health check, and sends `--requests` chat completions to its forward endpoint one after the
other, each on a new connection; printed: each request's wall time in ms. `--tree LABEL=DIR` runs Tollgate from
another source tree too (a `git worktree` of another commit, first on PYTHONPATH, this venv), the trees taking
turns, for an A/B. Stop 32: the first request took 117 and 120 ms while genai-prices read its data on first use,
9 and 13 ms once the gateway read it at start (later requests 2 to 4 ms).
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_bench as rb  # noqa: E402  the same mock, config and Tollgate

BODY = json.dumps({"model": rb.MODEL, "messages": [{"role": "user", "content": "Say hello in one short sentence."}]})


def first_answers(label: str, tree: str | None, requests: int) -> list[float]:
    """Start the mock and Tollgate (from `tree` when given), time `requests` requests, stop both."""
    rb.WORK = rb.BENCH / "work" / f"first-request-{label}"
    rb.LOGS = rb.WORK / "logs"
    rb.LOGS.mkdir(parents=True, exist_ok=True)
    try:
        _, mock_port = rb.start_mock(0.0)
        forward = rb.start_tollgate("sqlite", mock_port, more_env={"PYTHONPATH": tree} if tree else None)[0]
        times = []
        for _ in range(requests):
            connection = http.client.HTTPConnection("127.0.0.1", forward.port, timeout=60)
            start = time.perf_counter()
            connection.request("POST", forward.path, BODY, {**forward.headers, "content-type": "application/json"})
            answer = connection.getresponse()
            answer.read()
            times.append((time.perf_counter() - start) * 1000)
            connection.close()
            if answer.status != 200:
                raise SystemExit(f"{label}: the gateway answered {answer.status}")
        return times
    finally:
        rb.stop_all()
        rb.STARTED.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=3, help="fresh processes per tree")
    parser.add_argument("--requests", type=int, default=3, help="requests timed after each start")
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=DIR",
                        help="also run Tollgate from this source tree (first on PYTHONPATH)")
    args = parser.parse_args()
    trees = [("this", None), *(tuple(spec.split("=", 1)) for spec in args.tree)]
    rb.watch_signals()
    for start in range(args.starts):
        for label, tree in trees:
            times = first_answers(label, tree, args.requests)
            print(f"{label:>10} start {start + 1}: " + ", ".join(f"{ms:.1f}" for ms in times) + " ms", flush=True)


if __name__ == "__main__":
    main()
