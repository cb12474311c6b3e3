"""The objects the gateway holds from its start on are kept out of Python's cyclic garbage collector.

Everything loaded at start (mitmproxy and its addons, the provider catalog, the price data, the ledger's models)
lives as long as the process, yet each full collection walked all of it: in a run of 40,000 requests two of them
held the event loop for 0.1 s each, and every request and stream in flight with it (bench/gc_pauses.py). Once the
gateway runs, those objects are collected once and frozen (gc.freeze): later collections walk only what was made
since, about 12 ms at the longest.
"""

from __future__ import annotations

import gc


class HeapFreeze:
    def running(self) -> None:
        gc.collect()
        gc.freeze()
