"""What a key's limits cost a request in process (holds in it, or in Redis): CPU per request, every limit versus none.

Run by hand:  .venv/bin/python bench/limits_cost.py [--requests 200] [--rounds 100] [--bytecodes | --instructions]
              .venv/bin/python bench/limits_cost.py --redis [URL]   (holds in Redis: the budget with Redis)

The Gateway addon runs in this process under mitmproxy's test context on a throwaway SQLite ledger (as the
`gw` test fixture does), with mitmproxy patched as tollgate-proxy patches it (the header lookups walk the
limits' header fields); each request goes through its hooks (request, responseheaders, response) on one
event loop with a canned OpenAI answer (OpenAI's headers, its rate headers among them) whose head is then
assembled as mitmproxy sends it, the ledger writer commits in its own thread and its commits settle the holds
on the loop, as in the proxy. Blocks of requests alternate between a key with no limits and a key with every
limit set (spend and request limits per month, rpm, tpm, a model and a provider allow-list), none of them
reached. Each block's CPU time is taken for the event loop's thread (every hook and the settles) and for the
process (the ledger writer's thread too); the figure is the mean of each key's fastest fifth of blocks, so
blocks slowed by other work on the machine are left out. `--bytecodes` counts instead what each request
executes, by function, for telling where the difference goes: the hooks' counts are the same every run, the
settles' and the event loop's move by a few hundred a request with how the writer happens to batch its
commits. `--instructions` runs the same blocks under valgrind (callgrind, counting switched on only around
each block) and gives machine instructions per request, all threads: C work included (formatting,
allocation), within a few per cent run to run.
`--redis` holds in Redis (db 9 of the local redis-server, emptied) as several instances do: requests then run
in waves of `--concurrency` (32) as under load, their Redis calls of one loop turn sharing a write, and besides
the gateway's CPU the figure gives redis-server's own, read from its INFO (microseconds), and the commands it ran
per request (its commandstats, the hold and settle scripts' calls counted), a figure that does not move.
bench/run_bench.py --limits measures the same through real sockets, where a few microseconds drown in the
noise of a whole request.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_bench import fastest_fifth  # noqa: E402  the estimator run_bench --limits takes too

LIMITS = {"spend_limit_nanos": 10**15, "spend_cycle": "month", "request_limit": 10**9, "request_cycle": "month",
          "rpm": 10**9, "tpm": 2 * 10**9}
BODY = json.dumps({"model": "gpt-4o-mini", "max_tokens": 64,
                   "messages": [{"role": "user", "content": "Say hello in one short sentence."}]}).encode()
# the head OpenAI answers a chat completion with: a limited key's x-ratelimit-* replace its own
OPENAI_ANSWER_HEADERS = [(name.encode(), value.encode()) for name, value in (
    ("content-type", "application/json"), ("openai-organization", "org-bench"), ("openai-processing-ms", "412"),
    ("openai-version", "2020-10-01"), ("x-ratelimit-limit-requests", "10000"),
    ("x-ratelimit-limit-tokens", "30000000"), ("x-ratelimit-remaining-requests", "9999"),
    ("x-ratelimit-remaining-tokens", "29999980"), ("x-ratelimit-reset-requests", "6ms"),
    ("x-ratelimit-reset-tokens", "0s"), ("x-request-id", "req_0123456789abcdef0123456789abcdef"))]
ANSWER = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the mock."},
                                  "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 14, "completion_tokens": 6, "total_tokens": 20}}).encode()


def _bytecodes(loop, block, secret: str, n: int) -> collections.Counter:
    """Bytecodes executed per request on the event loop (hooks and settles), by function: on this machine's
    Python, CPU time follows them within a few per cent, and they do not move with the machine's load."""
    counts: collections.Counter = collections.Counter()

    def trace(frame, event, arg):
        frame.f_trace_opcodes = True
        if event == "opcode":
            counts[f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_qualname}"] += 1
        return trace

    sys.settrace(trace)
    try:
        loop.run_until_complete(block(secret, n))
    finally:
        sys.settrace(None)
    return collections.Counter({code: count / n for code, count in counts.items()})


def _callgrind(pid: int, *args: str) -> str:
    return subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, text=True, timeout=300).stdout


def _instructions(args) -> None:
    """This script again under callgrind, counting only while a block runs; instructions per request, per key."""
    child = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--dump-instr=no", "--callgrind-out-file=/dev/null",
         sys.executable, __file__, "--counted", "--requests", str(args.requests),
         *(["--redis", args.redis] if args.redis else [])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    figures = {}
    for line in child.stdout:
        if line.startswith("block "):
            _callgrind(child.pid, "-z")
            _callgrind(child.pid, "-i", "on")
            child.stdin.write("go\n")
            child.stdin.flush()
        elif line.startswith("done "):
            totals = _callgrind(child.pid, "-e", "-b").partition("Totals:")[2].split("\n\n", 1)[0]
            _callgrind(child.pid, "-i", "off")
            threads = {int(th): int(n.replace(",", "")) for th, n in re.findall(r"^\s*Th\s+(\d+)\s+([\d,]+)", totals, re.M)}
            figures[line.split()[1]] = (threads.get(1, 0) / args.requests, sum(threads.values()) / args.requests)
            child.stdin.write("next\n")
            child.stdin.flush()
    if child.wait() != 0 or len(figures) != 2:
        raise SystemExit(f"the counted run failed (exit {child.returncode})")
    for index, what in ((0, "event loop"), (1, "process")):
        plain, limited = figures["plain"][index], figures["limited"][index]
        print(f"{what:>10}: no limits {plain:,.0f}, every limit {limited:,.0f} instructions per request: "
              f"limits cost {limited - plain:+,.0f}")


async def _running(gateway) -> None:
    gateway.running()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200, help="requests per key per block")
    ap.add_argument("--rounds", type=int, default=100, help="blocks per key, alternating")
    ap.add_argument("--bytecodes", action="store_true",
                    help="count, instead of timing, the bytecodes each request executes, by function (deterministic)")
    ap.add_argument("--instructions", action="store_true",
                    help="count, instead of timing, the machine instructions per request under valgrind")
    ap.add_argument("--redis", nargs="?", const="redis://127.0.0.1:6379/9", metavar="URL",
                    help="hold in Redis (default db 9 of the local server, emptied first)")
    ap.add_argument("--concurrency", type=int, default=32, help="with --redis: requests in flight at once")
    ap.add_argument("--counted", action="store_true", help=argparse.SUPPRESS)  # the run --instructions counts
    args = ap.parse_args()
    if args.instructions:
        return _instructions(args)

    tmp = tempfile.mkdtemp(prefix="tollgate-limits-cost-")
    os.environ.update(TOLLGATE_DATABASE_URL=f"sqlite:///{tmp}/ledger.db", TOLLGATE_JOURNAL_DIR=f"{tmp}/journal",
                      OPENAI_API_KEY="sk-bench-provider-key")
    os.environ.pop("TOLLGATE_CONFIG", None)
    redis_server = None
    if args.redis:
        import redis

        redis_server = redis.Redis.from_url(args.redis)
        redis_server.flushdb()
        os.environ["TOLLGATE_REDIS_URL"] = args.redis
    from mitmproxy import http
    from mitmproxy.addons.proxyserver import Proxyserver
    from mitmproxy.net.http.http1 import assemble_response_head
    from mitmproxy.test import taddons, tflow, tutils

    from addons.ledger.accounts import credit_wallet, ensure_account
    from addons.proxy import mitmproxy_internals
    from addons.proxy.gateway_addon import Gateway
    from addons.services import keys

    mitmproxy_internals.install(lean=True)  # as tollgate-proxy runs: the header lookups it patches see the limits' fields
    gateway = Gateway()
    with taddons.context(Proxyserver(), gateway) as tctx:
        tctx.configure(gateway)
        credit_wallet(ensure_account()[1].id, 10**15)
        plain = keys.create_spend_key("plain").secret_key
        limited = keys.create_spend_key("limited", allowed_models=["gpt-*"], allowed_providers=["openai"],
                                        limits=LIMITS).secret_key
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(_running(gateway))  # the writer's commits settle on this loop, as in the proxy
        answer_headers = http.Headers(OPENAI_ANSWER_HEADERS)

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
            assemble_response_head(flow.response)  # the head as mitmproxy writes it to the client: the rate headers too

        def redis_cpu() -> float:
            cpu = redis_server.info("cpu") if redis_server is not None else {}
            return cpu.get("used_cpu_user", 0.0) + cpu.get("used_cpu_sys", 0.0)

        def redis_commands() -> int:
            """Commands redis-server ran, those inside scripts included (the scripts' own calls and INFO not)."""
            stats = redis_server.info("commandstats") if redis_server is not None else {}
            return sum(stat["calls"] for name, stat in stats.items()
                       if name not in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_info"))

        async def block(secret: str, n: int) -> tuple[float, float, float, float]:
            """CPU seconds per request: the event loop's thread alone (every hook, the settles), the whole
            process (the ledger writer's thread too), and redis-server's (with --redis); then Redis commands
            per request."""
            start, start_all, start_redis = time.thread_time(), time.process_time(), redis_cpu()
            start_commands = redis_commands()
            if redis_server is None:
                for i in range(n):
                    await one(secret)
                    if i % 100 == 99:
                        await asyncio.sleep(0)  # the cashier's background settles run, as between requests
            else:
                for i in range(0, n, args.concurrency):
                    await asyncio.gather(*(one(secret) for _ in range(min(args.concurrency, n - i))))
            gateway.writer.flush(timeout=60)
            await asyncio.sleep(0.06)  # the commits' settles and the batched true-ups
            return ((time.thread_time() - start) / n, (time.process_time() - start_all) / n,
                    (redis_cpu() - start_redis) / n, (redis_commands() - start_commands) / n)

        warm = 300 if args.counted else 2000  # under valgrind 50 times slower
        loop.run_until_complete(block(plain, warm))  # warm: caches, pots confirmed, the ledger's pages
        loop.run_until_complete(block(limited, warm))
        if args.counted:  # bench/limits_cost.py --instructions counts each block
            for name, secret in (("plain", plain), ("limited", limited)):
                print(f"block {name}", flush=True)
                sys.stdin.readline()
                loop.run_until_complete(block(secret, args.requests))
                print(f"done {name}", flush=True)
                sys.stdin.readline()
            return
        if args.bytecodes:
            counted = {name: _bytecodes(loop, block, secret, args.requests)
                       for name, secret in (("no limits", plain), ("every limit", limited))}
            plain_counts, limited_counts = counted["no limits"], counted["every limit"]
            print(f"bytecodes per request on the event loop: no limits {sum(plain_counts.values()):.0f}, every limit "
                  f"{sum(limited_counts.values()):.0f}; the difference by function:")
            difference = {code: limited_counts[code] - plain_counts[code] for code in limited_counts | plain_counts}
            for code, extra in sorted(difference.items(), key=lambda item: -abs(item[1]))[:30]:
                print(f"{extra:+8.1f}  {code}")
            return
        samples: dict[str, list[tuple[float, float, float, float]]] = {plain: [], limited: []}
        for r in range(args.rounds):
            for secret in (plain, limited) if r % 2 == 0 else (limited, plain):
                samples[secret].append(loop.run_until_complete(block(secret, args.requests)))
        for index, what in ((0, "event loop"), (1, "process"), (2, "Redis")):
            if index == 2 and redis_server is None:
                break
            low = {secret: fastest_fifth([sample[index] for sample in taken]) for secret, taken in samples.items()}
            print(f"{what:>10}: no limits {low[plain] * 1e6:6.1f} us, every limit {low[limited] * 1e6:6.1f} us of "
                  f"CPU per request: limits cost {(low[limited] - low[plain]) * 1e6:+.1f} us")
        print(f"(each the mean of the fastest fifth of {args.rounds} blocks of {args.requests} requests per key: "
              f"blocks slowed by other work on the machine are left out)")
        if redis_server is not None:  # a count, the same every run: what redis-server's CPU is spent on
            commands = {secret: sum(sample[3] for sample in taken) / len(taken) for secret, taken in samples.items()}
            print(f"Redis commands per request (inside the scripts too): no limits {commands[plain]:.1f}, every limit "
                  f"{commands[limited]:.1f}")
        loop.run_until_complete(gateway.cashier.close())
        gateway.done()


if __name__ == "__main__":
    main()
