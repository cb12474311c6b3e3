"""Runs tests/mock_provider.MockProvider in its own process for the benchmark.

Prints the port on stdout, then serves until stdin closes or SIGTERM. Only the last few recorded
requests are kept (the mock records every request; a bench sends tens of thousands).
"""

from __future__ import annotations

import argparse
import collections
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import mock_provider  # noqa: E402
from tests.mock_provider import MockProvider  # noqa: E402

# socketserver's default listen backlog is 5: 32 clients (or a gateway opening 32 upstream connections at
# once) would overflow it and see SYN retransmits (1 s stalls) that are the mock's, not the gateway's.
mock_provider._Server.request_queue_size = 256


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunk-delay", type=float, default=0.0)
    args = ap.parse_args()
    mock = MockProvider().start()
    mock.chunk_delay = args.chunk_delay
    mock.requests = collections.deque(maxlen=64)  # bounded: append/clear/[-1] are all the mock uses
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(mock.port, flush=True)
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    stop.wait()
    mock.stop()


if __name__ == "__main__":
    main()
