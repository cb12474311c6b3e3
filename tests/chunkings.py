"""Ways to cut a byte stream into the chunks a proxy might hand on, shared by the SSE and metering tests."""

import random

SPLITS = ["whole", "bytes", "random0", "random1", "random2"]


def split(payload: bytes, how: str) -> list[bytes]:
    """`payload` in one piece, byte by byte, or cut at up to 12 places seeded by `how`."""
    if how == "whole":
        return [payload]
    if how == "bytes":
        return [payload[i : i + 1] for i in range(len(payload))]
    rnd = random.Random(how)
    cuts = sorted(rnd.sample(range(1, len(payload)), min(12, len(payload) - 1)))
    return [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)])]
