"""What a key's limits cost a request without Redis, in process: CPU per request, every limit set versus none.

Run by hand:  .venv/bin/python bench/limits_cost.py [--requests 200] [--rounds 100] [--profile]

The Gateway addon runs in this process under mitmproxy's test context on a throwaway SQLite ledger (as the
`gw` test fixture does); each request goes through its hooks (request, responseheaders, response) on one
event loop with a canned OpenAI answer, and the ledger writer commits in its own thread as it does in the
proxy. Blocks of requests alternate between a key with no limits and a key with every limit set (spend and
request limits per month, rpm, tpm, a model and a provider allow-list), none of them reached. Each block's
CPU time is taken for the event loop's thread (every hook and the cashier's settles) and for the process
(the ledger writer's thread too); the figure is the mean of each key's fastest fifth of blocks, so blocks
slowed by other work on the machine are left out. bench/run_bench.py --limits measures the same through
real sockets, where a few microseconds drown in the noise of a whole request.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LIMITS = {"spend_limit_nanos": 10**15, "spend_cycle": "month", "request_limit": 10**9, "request_cycle": "month",
          "rpm": 10**9, "tpm": 2 * 10**9}
BODY = json.dumps({"model": "gpt-4o-mini", "max_tokens": 64,
                   "messages": [{"role": "user", "content": "Say hello in one short sentence."}]}).encode()
ANSWER = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the mock."},
                                  "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 14, "completion_tokens": 6, "total_tokens": 20}}).encode()


def _low(per_request: list[float]) -> float:
    fastest = sorted(per_request)[:max(len(per_request) // 5, 1)]
    return sum(fastest) / len(fastest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200, help="requests per key per block")
    ap.add_argument("--rounds", type=int, default=100, help="blocks per key, alternating")
    ap.add_argument("--profile", action="store_true", help="print where a limited request's time goes")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="tollgate-limits-cost-")
    os.environ.update(TOLLGATE_DATABASE_URL=f"sqlite:///{tmp}/ledger.db", TOLLGATE_JOURNAL_DIR=f"{tmp}/journal",
                      OPENAI_API_KEY="sk-bench-provider-key")
    os.environ.pop("TOLLGATE_CONFIG", None)
    from mitmproxy import http
    from mitmproxy.addons.proxyserver import Proxyserver
    from mitmproxy.test import taddons, tflow, tutils

    from addons.ledger.accounts import credit_wallet, ensure_account
    from addons.proxy.gateway_addon import Gateway
    from addons.services import keys

    gateway = Gateway()
    with taddons.context(Proxyserver(), gateway) as tctx:
        tctx.configure(gateway)
        credit_wallet(ensure_account()[1].id, 10**15)
        plain = keys.create_spend_key("plain").secret_key
        limited = keys.create_spend_key("limited", allowed_models=["gpt-*"], allowed_providers=["openai"],
                                        limits=LIMITS).secret_key
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        answer_headers = http.Headers(content_type="application/json")

        async def one(secret: str) -> None:
            request = tutils.treq(host="api.openai.com", port=443, scheme="https", method="POST",
                                  path="/v1/chat/completions", content=BODY,
                                  headers=http.Headers(authorization=f"Bearer {secret}",
                                                       content_type="application/json"))
            flow = tflow.tflow(req=request)
            await gateway.request(flow)
            if flow.response is not None:
                raise SystemExit(f"refused: {flow.response.status_code} {flow.response.content[:200]!r}")
            flow.response = tutils.tresp(headers=answer_headers.copy(), content=ANSWER)
            gateway.responseheaders(flow)
            gateway.response(flow)

        async def block(secret: str, n: int) -> tuple[float, float]:
            """CPU seconds per request: the event loop's thread alone (every hook, the settles), and the whole
            process (the ledger writer's thread too)."""
            start, start_all = time.thread_time(), time.process_time()
            for i in range(n):
                await one(secret)
                if i % 100 == 99:
                    await asyncio.sleep(0)  # the cashier's background settles run, as they would between requests
            gateway.writer.flush(timeout=60)
            await asyncio.sleep(0.06)  # the commits' settles and the batched true-ups
            return (time.thread_time() - start) / n, (time.process_time() - start_all) / n

        loop.run_until_complete(block(plain, 2000))  # warm: caches, pots confirmed, the ledger's pages
        loop.run_until_complete(block(limited, 2000))
        if args.profile:
            for name, secret in (("no limits", plain), ("every limit", limited)):
                profiler = cProfile.Profile()
                profiler.enable()
                loop.run_until_complete(block(secret, args.requests))
                profiler.disable()
                print(f"--- {name}")
                pstats.Stats(profiler).sort_stats("cumtime").print_stats(
                    r"addons/(billing|proxy|auth|usage|core|ledger|pricing)|pricing/")
        samples: dict[str, list[tuple[float, float]]] = {plain: [], limited: []}
        for r in range(args.rounds):
            for secret in (plain, limited) if r % 2 == 0 else (limited, plain):
                samples[secret].append(loop.run_until_complete(block(secret, args.requests)))
        for index, what in ((0, "event loop"), (1, "process")):
            low = {secret: _low([sample[index] for sample in taken]) for secret, taken in samples.items()}
            print(f"{what:>10}: no limits {low[plain] * 1e6:6.1f} us, every limit {low[limited] * 1e6:6.1f} us of "
                  f"CPU per request: limits cost {(low[limited] - low[plain]) * 1e6:+.1f} us")
        print(f"(each the mean of the fastest fifth of {args.rounds} blocks of {args.requests} requests per key: "
              f"blocks slowed by other work on the machine are left out)")
        loop.run_until_complete(gateway.cashier.close())
        gateway.done()


if __name__ == "__main__":
    main()
