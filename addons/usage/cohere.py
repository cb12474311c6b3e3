"""Cohere's v2 API: chat (a whole message, or a stream of typed events), embed and rerank.

Usage is reported as `billed_units` (what Cohere charges) and raw `tokens`; the stream
reports it on `message-end`, embed under `meta`. Rerank is billed per search unit
(`meta.billed_units.search_units`), which is priced per unit, not per token.
"""

from __future__ import annotations

from typing import Any

from addons.usage.base import UsageReader
from addons.usage.json_fields import as_dict, count, text_chars
from pricing.usage import MediaUsage, TokenUsage

_OUT_KEYS = frozenset({"message", "content", "text", "thinking", "tool_plan", "tool_calls", "function", "arguments"})


class CohereReader(UsageReader):
    ENDPOINTS = (("/v2/chat", "cohere.chat"), ("/v2/embed", "cohere.embed"), ("/v2/rerank", "cohere.rerank"),
                 ("/v1/rerank", "cohere.rerank"))
    EMBEDDINGS = frozenset({"cohere.embed", "cohere.rerank"})
    SKIP_EVENTS = frozenset(
        {"message-start", "content-start", "content-end", "tool-call-start", "tool-call-end",
         "citation-start", "citation-end"}
    )

    def read_request(self, req: dict[str, Any], body: bytes) -> None:
        if self.endpoint == "cohere.rerank":  # a search unit per 100 documents (longer ones count more)
            documents = len(req["documents"]) if isinstance(req.get("documents"), list) else 0
            self.expected_media = MediaUsage(search_units=max(1, -(-documents // 100)))

    def _read(self, obj: dict[str, Any]) -> None:
        if isinstance(obj.get("message"), str):  # v2 errors: {"id": ..., "message": "..."}
            self._error = True
            return
        kind = obj.get("type")
        if isinstance(kind, str):  # a stream event
            delta = as_dict(obj.get("delta"))
            self._out_chars += text_chars(delta.get("message"), _OUT_KEYS)
            if kind == "message-end" and isinstance(delta.get("usage"), dict):
                self._report(cohere_usage(delta["usage"]), True)
            return
        self._out_chars += text_chars(obj.get("message"), _OUT_KEYS)
        usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else as_dict(obj.get("meta"))
        if self.endpoint == "cohere.rerank":
            searches = count(as_dict(usage.get("billed_units")).get("search_units"))
            self.media = MediaUsage(search_units=searches)
            self._report(TokenUsage(), "search_units" in as_dict(usage.get("billed_units")))
            return
        if usage.get("billed_units") or usage.get("tokens"):
            self._report(cohere_usage(usage), True)


def cohere_usage(u: dict[str, Any]) -> TokenUsage:
    """Billed units are what Cohere charges; raw token counts are the fallback."""
    billed = as_dict(u.get("billed_units"))
    has_billed = billed.get("input_tokens") is not None or billed.get("output_tokens") is not None
    counts = billed if has_billed else as_dict(u.get("tokens"))
    prompt, output = count(counts.get("input_tokens")), count(counts.get("output_tokens"))
    return TokenUsage(prompt, min(count(u.get("cached_tokens")), prompt), 0, output, 0)
