"""Hub-shaped samples the format translators' tests share (addons/rewrite/hub.py documents the shapes)."""

from __future__ import annotations

from typing import Any

from addons.rewrite import hub as h


def tool_call_stream(model: str, usage: h.HubUsage) -> list[h.HubChunk]:
    """A hub stream with text, two tool calls whose arguments come in fragments, a finish and `usage`."""
    def c(delta: dict[str, Any] | None = None, finish: str | None = None) -> h.HubChunk:
        return h.chunk("chatcmpl-s", model, 1700000000, delta, finish)
    return [
        c({"role": "assistant", "content": ""}), c({"content": "Checking"}), c({"content": " now."}),
        c({"tool_calls": [{"index": 0, "id": "call_p", "type": "function",
                           "function": {"name": "get_weather", "arguments": ""}}]}),
        c({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        c({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        c({"tool_calls": [{"index": 1, "id": "call_r", "type": "function",
                           "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]}),
        c({}, "tool_calls"),
        h.usage_chunk("chatcmpl-s", model, 1700000000, usage),
    ]
