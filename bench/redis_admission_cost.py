"""What an admission's Redis round trip costs the gateway's process: CPU per call through redis-py, one call at a
time, versus through the hold store's own pipelined connection (addons/billing/redis_wire.py), where the calls of
concurrent requests leave together.

Run by hand (Redis on 127.0.0.1:6379; uses and empties db 9):
    .venv/bin/python bench/redis_admission_cost.py [--clients 32] [--calls 300] [--rounds 3]

Each round runs `--clients` concurrent callers making `--calls` wallet checks each (`fresh_available`, what every
request of a key without limits costs when its glance has run out), first as redis-py script calls, then through
RedisHolds; the figure is process CPU time per call, the best of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from addons.billing.hold_stores import _FRESH_AVAILABLE, RedisHolds  # noqa: E402

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
    await client.flushdb()
    await client.aclose()
    await store.close()
    print(f"{args.clients} concurrent callers: redis-py {best['redis-py'] * 1e6:.1f} us of CPU per call, "
          f"the hold store's connection {best['wire'] * 1e6:.1f} us")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(ap.parse_args()))
