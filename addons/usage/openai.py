"""OpenAI's wire format, and every provider that speaks it (Azure, Groq, DeepSeek, OpenRouter, ...).

Chat completions, completions and embeddings report `usage` in the prompt_/completion_ shape;
their chat streams report it only when asked (include_usage.py). The Responses API streams
typed `response.*` events and reports input_/output_ usage on the terminal one: its own reader.
"""

from __future__ import annotations

from typing import Any

from addons.usage.base import UsageReader
from addons.usage.json_fields import as_dict, as_list, count, text_chars
from pricing.usage import TokenUsage

_CHAT_OUT_KEYS = frozenset(
    {"delta", "message", "text", "content", "reasoning_content", "reasoning", "refusal",
     "tool_calls", "function", "arguments", "function_call"}
)
_RESPONSES_OUT_KEYS = frozenset({"content", "text", "refusal", "arguments", "summary", "input", "code"})
_RESPONSES_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_RESPONSES_PARSED = _RESPONSES_TERMINAL | {"response.created", "error"}


class OpenAIReader(UsageReader):
    """Chat completions, completions and embeddings; picks ResponsesReader for /responses."""

    ENDPOINTS = (
        ("/chat/completions", "chat.completions"),
        ("/completions", "completions"),
        ("/responses", "responses"),
        ("/embeddings", "embeddings"),
    )
    EMBEDDINGS = frozenset({"embeddings"})
    ASKS_FOR_USAGE = frozenset({"chat.completions", "completions"})

    @classmethod
    def endpoint_of(cls, path: str) -> tuple[str, str | None]:
        """Azure names the model (its deployment) in the URL."""
        for suffix, name in cls.ENDPOINTS:
            if path.endswith(suffix):
                deployment = path.partition("/deployments/")[2].partition("/")[0]
                return name, deployment or None
        return "other", None

    @classmethod
    def for_endpoint(cls, endpoint: str) -> type[UsageReader]:
        return ResponsesReader if endpoint == "responses" else cls

    def _read(self, obj: dict[str, Any]) -> None:
        self._model(obj.get("model"))
        choices = obj.get("choices")
        usage = obj.get("usage") or as_dict(obj.get("x_groq")).get("usage") or _choice_usage(choices)
        if not (self._whole and isinstance(usage, dict)):  # the text, for an estimate: none needed past final usage
            self._out_chars += text_chars(choices, _CHAT_OUT_KEYS)
        if isinstance(usage, dict):
            ends = not choices or any(as_dict(c).get("finish_reason") for c in as_list(choices))
            self._report(openai_usage(usage), ends)


class ResponsesReader(UsageReader):
    """The Responses API: a whole response object, or its stream of `response.*` events."""

    def _wanted(self, name: str | None) -> bool:
        if name is None or not name.startswith("response."):
            return True
        return name in _RESPONSES_PARSED or (name.endswith(".delta") and not is_audio(name))

    def _read(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if isinstance(kind, str) and kind.startswith("response."):
            delta = obj.get("delta")
            if isinstance(delta, str) and not is_audio(kind):
                self._out_chars += len(delta)
            response = as_dict(obj.get("response"))
            self._model(response.get("model"))
            usage = response.get("usage")
            if kind in _RESPONSES_TERMINAL and isinstance(usage, dict):
                self._report(openai_usage(usage), True)
            elif kind == "response.failed":
                self._error = True
            return
        self._model(obj.get("model"))
        self._out_chars += text_chars(obj.get("output"), _RESPONSES_OUT_KEYS)
        if isinstance(obj.get("usage"), dict):
            self._report(openai_usage(obj["usage"]), True)


def openai_usage(u: dict[str, Any]) -> TokenUsage:
    """Chat/completions/embeddings (prompt_/completion_) or Responses (input_/output_) shape."""
    if "prompt_tokens" not in u and "input_tokens" in u:
        details_in = as_dict(u.get("input_tokens_details"))
        return TokenUsage(
            count(u.get("input_tokens")),
            count(details_in.get("cached_tokens")),
            count(details_in.get("cache_write_tokens")),
            count(u.get("output_tokens")),
            count(as_dict(u.get("output_tokens_details")).get("reasoning_tokens")),
        )
    details_in = as_dict(u.get("prompt_tokens_details"))
    prompt, completion = count(u.get("prompt_tokens")), count(u.get("completion_tokens"))
    reasoning = count(as_dict(u.get("completion_tokens_details")).get("reasoning_tokens"))
    if reasoning and count(u.get("total_tokens")) == prompt + completion + reasoning:
        completion += reasoning  # some compatible providers count reasoning outside completion
    # DeepSeek reports cache hits as prompt_cache_hit_tokens, Moonshot as a top-level cached_tokens
    cached = (count(details_in.get("cached_tokens")) or count(u.get("prompt_cache_hit_tokens"))
              or count(u.get("cached_tokens")))
    return TokenUsage(prompt, cached, count(details_in.get("cache_write_tokens")), completion, reasoning)


def _choice_usage(choices: Any) -> dict[str, Any] | None:
    """Moonshot's stream puts the usage of its last chunk inside the choice, not beside it."""
    for choice in as_list(choices):
        if isinstance(usage := as_dict(choice).get("usage"), dict):
            return usage
    return None


def is_audio(event: str) -> bool:
    """Audio deltas are base64 sound, not text; their transcripts are text."""
    return "audio" in event and "transcript" not in event
