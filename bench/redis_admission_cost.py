"""What an admission's Redis round trip costs the gateway's process: CPU per call, one call at a time versus the
calls of concurrent requests coalesced (those made while one is in flight go together as one pipeline:
addons/billing/hold_stores.py's _Coalesced).

Run by hand (Redis on 127.0.0.1:6379; uses and empties db 9):
    .venv/bin/python bench/redis_admission_cost.py [--clients 32] [--calls 300] [--rounds 3]

Each round runs `--clients` concurrent callers making `--calls` wallet checks each (`fresh_available`, what every
request of a key without limits costs), first as separate script calls, then through RedisHolds, which coalesces
them; the figure is process CPU time per call, the best of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from addons.billing.hold_stores import RedisHolds  # noqa: E402

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
    await store.redis.flushdb()
    await store.confirm("wallet", 10**12, version=1)
    script = store._fresh_available.script  # the same Lua, called on its own

    def separate():
        return script(args=[store.prefix, store._now(), "wallet", 60_000])

    def coalesced():
        return store.fresh_available("wallet", 60.0)

    best = {"separate": float("inf"), "coalesced": float("inf")}
    for _ in range(args.rounds):
        for name, call in (("separate", separate), ("coalesced", coalesced)):
            best[name] = min(best[name], await per_call(args.clients, args.calls, call))
    await store.redis.flushdb()
    await store.close()
    print(f"{args.clients} concurrent callers: separate calls {best['separate'] * 1e6:.1f} us of CPU per call, "
          f"coalesced {best['coalesced'] * 1e6:.1f} us")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(ap.parse_args()))
