"""Anthropic's Messages API: a whole `message`, or its stream of typed events.

Usage arrives in pieces: `message_start` carries the input side, `message_delta` the final
output count. Counts are cumulative and may repeat, so the reader keeps the largest of each.
"""

from __future__ import annotations

from typing import Any

from addons.usage.base import UsageReader
from addons.usage.json_fields import as_dict, count, text_chars
from pricing.usage import TokenUsage

_OUT_KEYS = frozenset({"text", "thinking", "partial_json"})


class AnthropicReader(UsageReader):
    ENDPOINTS = (("/messages", "messages"),)
    SKIP_EVENTS = frozenset({"ping", "content_block_start", "content_block_stop", "message_stop"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seen: dict[str, int] = {}  # the largest of each usage count so far

    def _read(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if kind == "content_block_delta":
            self._out_chars += text_chars(obj.get("delta"), _OUT_KEYS)
        elif kind == "message_start":
            message = as_dict(obj.get("message"))
            self._model(message.get("model"))
            self._usage_seen(message.get("usage"), final=False)
        elif kind == "message_delta":
            self._usage_seen(obj.get("usage"), final=True)
        elif kind == "message":
            self._model(obj.get("model"))
            self._out_chars += text_chars(obj.get("content"), _OUT_KEYS)
            self._usage_seen(obj.get("usage"), final=True)

    def _usage_seen(self, usage: Any, final: bool) -> None:
        """Counts are cumulative and may repeat across events: keep the largest of each."""
        if not isinstance(usage, dict):
            return
        seen = self._seen
        details = as_dict(usage.get("output_tokens_details"))
        for key, value in (*usage.items(), ("thinking_tokens", details.get("thinking_tokens"))):
            if value is not None and not isinstance(value, (dict, list, str)):
                seen[key] = max(seen.get(key, 0), count(value))
        read = seen.get("cache_read_input_tokens", 0)
        write = seen.get("cache_creation_input_tokens", 0)
        total_in = seen.get("input_tokens", 0) + read + write
        self._report(
            TokenUsage(total_in, read, write, seen.get("output_tokens", 0), seen.get("thinking_tokens", 0)),
            final,
        )
