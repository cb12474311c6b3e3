"""Items of a JSON array arriving in pieces (Gemini's streamGenerateContent without alt=sse).

The incremental counterpart of sse.py for a stream framed as one JSON array: feed() hands out
each complete item as soon as it has arrived; feed(b"", final=True) drains the rest.
"""

from __future__ import annotations

import codecs
import json
from typing import Any

_DECODER = json.JSONDecoder()
_NUMBER_ENDS = frozenset(",]} \t\r\n")


class JSONItems:
    """Buffers at most `max_pending` characters of one unfinished item; past that it gives the item up."""

    def __init__(self, max_pending: int) -> None:
        self._max = max_pending
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._parts: list[str] = []
        self._size = 0
        self._unfinished = 0  # length of the pending text the last parse could not finish

    def feed(self, data: bytes, final: bool = False) -> list[Any]:
        text = self._decoder.decode(data, final)
        self._parts.append(text)
        self._size += len(text)
        if self._size > self._max:  # give up on this item; the reader falls back to estimating
            self._parts, self._size, self._unfinished = [], 0, 0
            return []
        # A parse re-reads the whole pending text: retry an unfinished item only once it has doubled,
        # so an item that keeps arriving with braces inside costs linear time, not quadratic.
        if not final and ("}" not in text and "]" not in text or self._size < 2 * self._unfinished):
            return []
        pending, items = "".join(self._parts), []
        while pending := pending.lstrip(" \t\r\n[,]"):
            try:
                item, end = _DECODER.raw_decode(pending)
            except (ValueError, RecursionError):
                break
            if isinstance(item, (int, float)) and not final and pending[end : end + 1] not in _NUMBER_ENDS:
                break  # "1" or "1e" may be the start of "1e5": wait for what follows
            items.append(item)
            pending = pending[end:]
        self._parts, self._size, self._unfinished = [pending], len(pending), len(pending)
        return items
