"""Reading untrusted JSON: values of the wrong type count as empty, never raise.

Every usage reader reads provider answers through these, so a missing, null or odd field
(a string count, NaN, a list where an object belongs) reads as zero or nothing.
"""

from __future__ import annotations

import json
import math
from typing import Any

CHARS_PER_TOKEN = 4


def loads(data: bytes | str) -> Any:
    """The parsed JSON, or None for anything that is not JSON (or nests too deep)."""
    try:
        if isinstance(data, bytes) and len(data) > 1 and 0 < data[0] < 0x80 and data[1]:
            # what json.loads decodes such bytes as (its encoding sniffing, in Python, says UTF-8), decoded here
            data = data.decode("utf-8", "surrogatepass")
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def count(value: Any) -> int:
    """A non-negative token count from JSON, 0 for anything else (null, strings, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    if isinstance(value, float) and not math.isfinite(value):
        return 0
    return max(int(value), 0)


def as_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def text_chars(node: Any, keys: frozenset[str]) -> int:
    """Characters of the strings under `keys`; a bare int in a list counts as one token id."""
    total, stack = 0, [node]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, list):
            stack.extend(item)
            total += CHARS_PER_TOKEN * sum(type(x) is int for x in item)
        elif isinstance(item, dict):
            stack.extend(v for k, v in item.items() if k in keys)
    return total


def tokens(chars: int) -> int:
    """The token estimate for `chars` characters of text (rounded up)."""
    return -(-chars // CHARS_PER_TOKEN)
