"""What an admission's Redis round trip costs the gateway's process: CPU per call through redis-py, one call at a
time, versus through the hold store's own pipelined connection (addons/billing/redis_wire.py), where the calls of
concurrent requests leave together.

Run by hand (Redis on 127.0.0.1:6379; uses and empties db 9):
    .venv/bin/python bench/redis_admission_cost.py [--clients 32] [--calls 300] [--rounds 3]

Each round runs `--clients` concurrent callers making `--calls` wallet checks each (`fresh_available`, what every
request of a key without limits costs when its glance has run out), first as redis-py script calls, then through
RedisHolds; the figure is process CPU time per call, the best of the rounds. Then what Redis itself does for one
admission of a key with every limit (a spend and a request limit, requests and tokens per minute, the merchant's
wallet checked) and for its release at commit: commands run (INFO commandstats, exact) and Redis's CPU per call
(INFO cpu: noisy where Redis shares the machine), which every instance sharing that Redis pays for.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import NamedTuple

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from addons.billing.hold_stores import _FRESH_AVAILABLE, RedisHolds  # noqa: E402
from addons.billing.holds import MERCHANT, REQUEST, TOKENS, Bucket  # noqa: E402

URL = "redis://127.0.0.1:6379/9"


async def per_call(clients: int, calls: int, call) -> float:
    async def client() -> None:
        for _ in range(calls):
            await call()

    start = time.process_time()
    await asyncio.gather(*(client() for _ in range(clients)))
    return (time.process_time() - start) / (clients * calls)


async def main(args: argparse.Namespace) -> None:
    store = RedisHolds(URL, hold_ttl=60, prefix="bench")
    client = aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(URL, max_connections=64))
    await client.flushdb()
    await store.confirm("wallet", 10**12, version=1)
    script = client.register_script(_FRESH_AVAILABLE.text)  # the same Lua, called through redis-py

    def redis_py():
        return script(args=[store.prefix, store._now(), "wallet", 60_000])

    def wire():
        return store.fresh_available("wallet", 60.0)

    best = {"redis-py": float("inf"), "wire": float("inf")}
    for _ in range(args.rounds):
        for name, call in (("redis-py", redis_py), ("wire", wire)):
            best[name] = min(best[name], await per_call(args.clients, args.calls, call))
    print(f"{args.clients} concurrent callers: redis-py {best['redis-py'] * 1e6:.1f} us of CPU per call, "
          f"the hold store's connection {best['wire'] * 1e6:.1f} us")
    await redis_side(store, client, args.calls * args.clients)
    await client.flushdb()
    await client.aclose()
    await store.close()


class Owner(NamedTuple):
    holds: tuple
    buckets: tuple


EVERY_LIMIT = Owner((("lim:req", REQUEST), ("lim:spend", MERCHANT)),
                    (Bucket("rpm:k", 10**9, 10**9, 1), Bucket("tpm:k", 10**9, 10**9, TOKENS)))


async def redis_side(store: RedisHolds, client: aioredis.Redis, calls: int) -> None:
    for pot in ("lim:req", "lim:spend"):
        await store.confirm_new(pot, 10**15, 0, limit=10**15)

    async def counters() -> tuple[int, float]:
        stats, cpu = await client.info("commandstats"), await client.info("cpu")
        commands = sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_evalsha"))
        return commands, cpu["used_cpu_user"] + cpu["used_cpu_sys"]

    for name, call in (
            ("admission", lambda i: store.hold(f"req_{i}", {}, [EVERY_LIMIT], (1, 1000, None, 100), None,
                                               ("wallet", 60.0, True))),
            ("release at commit", lambda i: store.settle((("wallet", 10**12, 2 + i),), (("lim:req", 1),), [f"req_{i}"]))):
        commands, cpu = await counters()
        for i in range(calls):
            await call(i)
        after_commands, after_cpu = await counters()
        print(f"a key with every limit, {name}: {(after_commands - commands) / calls:.0f} Redis commands, "
              f"{(after_cpu - cpu) / calls * 1e6:.0f} us of Redis CPU per call (one at a time)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(ap.parse_args()))
