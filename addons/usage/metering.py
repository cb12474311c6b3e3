"""Token metering of one AI exchange, for every API family the gateway speaks.

A Meter is made from the request, then watches the response: as a stream (`feed`, `finish`)
or whole (`observe_body`). It reads usage where the provider reports it and otherwise
estimates from characters (4 per token), so a cut stream is still billed for what it carried.

OpenAI-style chat streams report usage only when asked (`stream_options.include_usage`). The
meter asks on the client's behalf and hides the answer again: it drops the usage-only chunk
and removes the `"usage":null` member every other chunk then carries, byte-exactly, so the
client gets the stream it asked for. (A chunk is left as is when that member cannot be
located unambiguously, or when a provider puts the usage in a content chunk.)
"""

from __future__ import annotations

import codecs
import json
import math
import re
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import parse_qs, unquote

from addons.usage.sse import SSEDecoder, SSEEvent
from pricing.usage import TokenUsage

Source = Literal["reported", "estimated", "none"]

CHARS_PER_TOKEN = 4
MAX_PENDING = 16 * 1024 * 1024  # bytes of one unfinished event/item kept to parse it

_OPENAI_PATHS = (
    ("/chat/completions", "chat.completions"),
    ("/completions", "completions"),
    ("/responses", "responses"),
    ("/embeddings", "embeddings"),
)
_GEMINI_VERBS = {
    "generateContent": "generateContent",
    "streamGenerateContent": "streamGenerateContent",
    "embedContent": "embedContent",
    "batchEmbedContents": "embedContent",
}
_COHERE_PATHS = (("/v2/chat", "cohere.chat"), ("/v2/embed", "cohere.embed"))
_EMBEDDINGS = frozenset({"embeddings", "embedContent", "cohere.embed"})

PriceBasis = Literal["metered", "free", "unmetered"]
# Requests that cost nothing at the provider although no usage is read from them: reading, listing
# and deleting (GET /v1/models, a stored response or file), and counting tokens. Everything else
# the meter cannot read is unmetered: images, audio, rerank, batches, and websocket upgrades (a GET
# that opens a paid OpenAI Realtime or Gemini Live session).
_FREE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
_FREE_PATH_ENDS = ("/messages/count_tokens", ":countTokens")

# Keys under which requests and responses carry text worth estimating tokens from
# (never image/audio/file payloads, ids or parameters).
_PROMPT_KEYS = frozenset(
    {"messages", "content", "text", "input", "prompt", "system", "instructions", "contents",
     "parts", "systemInstruction", "system_instruction", "requests", "texts", "inputs",
     "documents", "tool_calls", "function", "arguments", "function_call", "thinking", "output"}
)
_CHAT_OUT_KEYS = frozenset(
    {"delta", "message", "text", "content", "reasoning_content", "reasoning", "refusal",
     "tool_calls", "function", "arguments", "function_call"}
)
_RESPONSES_OUT_KEYS = frozenset({"content", "text", "refusal", "arguments", "summary", "input", "code"})
_ANTHROPIC_OUT_KEYS = frozenset({"text", "thinking", "partial_json"})
_GEMINI_OUT_KEYS = frozenset({"content", "parts", "text"})
_COHERE_OUT_KEYS = frozenset(
    {"message", "content", "text", "thinking", "tool_plan", "tool_calls", "function", "arguments"}
)

# Stream events that never carry usage or output text: skipped before JSON parsing.
_SKIP_EVENTS = {
    "anthropic": frozenset({"ping", "content_block_start", "content_block_stop", "message_stop"}),
    "cohere": frozenset(
        {"message-start", "content-start", "content-end", "tool-call-start", "tool-call-end",
         "citation-start", "citation-end"}
    ),
}
_RESPONSES_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_RESPONSES_PARSED = _RESPONSES_TERMINAL | {"response.created", "error"}

_USAGE_KEY = b'"usage"'
_NULL_LAST = re.compile(rb'"usage"[ \t]*:[ \t]*null(?=[ \t]*[,}])')  # after a comma
_NULL_FIRST = re.compile(rb'"usage"[ \t]*:[ \t]*null[ \t]*,[ \t]*')  # right after "{"


@dataclass(frozen=True, slots=True)
class MeterResult:
    model: str | None  # as the response reported it, else as requested
    usage: TokenUsage
    source: Source


def price_basis(method: str, endpoint: str, path: str, upgrade: bool = False) -> PriceBasis:
    """Whether Tollgate reads this request's usage ("metered"), the request costs nothing ("free"),
    or neither ("unmetered": the provider may charge for it, and the ledger cannot say how much).

    `endpoint` is what _endpoint() named it: every endpoint but "other" has its usage read.
    """
    if endpoint != "other":
        return "metered"
    if upgrade:
        return "unmetered"
    if method.upper() in _FREE_METHODS or unquote(path).rstrip("/").endswith(_FREE_PATH_ENDS):
        return "free"
    return "unmetered"


class Meter:
    """Usage of one request; build with for_request()."""

    def __init__(
        self,
        family: str,
        endpoint: str = "other",
        model: str | None = None,
        stream_requested: bool = False,
        request_body: bytes | None = None,
        *,
        prompt_chars: int = 0,
        max_output_tokens: int | None = None,
        gemini_sse: bool = True,
        basis: PriceBasis | None = None,
    ) -> None:
        self.family = family
        self.endpoint = endpoint
        self.basis: PriceBasis = basis or ("metered" if endpoint != "other" else "unmetered")
        self.model = model
        self.stream_requested = stream_requested
        self.request_body = request_body
        self.prompt_chars = prompt_chars  # text characters of the request: estimates and character meters
        self.max_output_tokens = max_output_tokens  # what the caller allows, for worst-case holds
        self.audio_seconds: Decimal | None = None  # audio duration the provider reported, for minute meters
        self._injected = request_body is not None
        json_array = endpoint == "streamGenerateContent" and not gemini_sse
        self._items = _JSONItems() if json_array else None
        self._sse = SSEDecoder(MAX_PENDING)
        self._usage: TokenUsage | None = None
        self._anthropic: dict[str, int] = {}
        self._final = False  # the usage seen is the provider's last word
        self._resp_model: str | None = None
        self._out_chars = 0
        self._responded = False
        self._error = False
        self._fed = False
        self._finished = False

    @classmethod
    def for_request(
        cls, family: str, method: str, path: str, query: str, body: bytes, *, inject_usage: bool = True,
        upgrade: bool = False,
    ) -> Meter:
        """Never raises: an unreadable request meters nothing (and is unmetered), or only estimates.

        upgrade: the request asks for a protocol upgrade (a websocket session).
        """
        try:
            return cls._for_request(family, method, path, query, body, inject_usage, upgrade)
        except Exception:  # a bad request must not break the proxy
            return cls(family)

    @classmethod
    def _for_request(
        cls, family: str, method: str, path: str, query: str, body: bytes, inject_usage: bool, upgrade: bool
    ) -> Meter:
        endpoint, path_model = _endpoint(family, method, path)
        parsed = _loads(body)
        req = parsed if isinstance(parsed, dict) else {}
        model = path_model or _str(req.get("model"))
        if family == "gemini":
            stream = endpoint == "streamGenerateContent"
        else:
            stream = req.get("stream") is True
        rewritten = None
        if inject_usage and stream and endpoint in ("chat.completions", "completions"):
            rewritten = _with_include_usage(req)
        return cls(
            family,
            endpoint,
            model,
            stream,
            rewritten,
            prompt_chars=_text_chars(req, _PROMPT_KEYS),
            max_output_tokens=_max_output_tokens(req),
            gemini_sse=parse_qs(query or "").get("alt") == ["sse"],
            basis=price_basis(method, endpoint, path, upgrade),
        )

    # -- response side ---------------------------------------------------------------------

    def feed(self, chunk: bytes) -> bytes:
        """The stream callable: returns what to forward. feed(b"") is finish()."""
        if not chunk:
            return self.finish()
        self._fed = True
        if self._items is not None:
            for item in self._items.feed(chunk):
                self._absorb(item)
            return chunk
        events = self._sse.feed(chunk)
        if not self._injected:
            for event in events:
                self._on_event(event)
            return chunk
        return b"".join(self._filter(event) for event in events)

    def finish(self) -> bytes:
        """End of a complete stream: flush what was held back."""
        if self._finished:
            return b""
        self._finished = True
        out = b""
        if self._items is not None:
            for item in self._items.feed(b"", final=True):
                self._absorb(item)
        elif self._injected:
            out = b"".join(self._filter(event) for event in self._sse.flush())
        else:
            for event in self._sse.flush():
                self._on_event(event)
        self._final = self._usage is not None
        return out

    def observe_body(self, body: bytes, content_type: str | None) -> None:
        """A whole response: JSON, a JSON array of stream items, or a buffered SSE stream."""
        if "event-stream" in (content_type or "").lower() or _looks_like_sse(body):
            decoder = SSEDecoder()
            for event in decoder.feed(body) + decoder.flush():
                self._on_event(event)
        else:
            parsed = _loads(body)
            for item in parsed if isinstance(parsed, list) else [parsed]:
                self._absorb(item)
            self.audio_seconds = _audio_seconds(parsed)
        self._final = self._usage is not None

    def result(self) -> MeterResult:
        model = self._resp_model or self.model
        prompt = _tokens(self.prompt_chars)
        output = 0 if self.endpoint in _EMBEDDINGS else _tokens(self._out_chars)
        if self._usage is not None and self._final:
            return MeterResult(model, self._usage, "reported")
        if self._usage is not None:  # cut before the final count: trust what was reported so far
            usage = replace(
                self._usage,
                input_tokens=self._usage.input_tokens or prompt,
                output_tokens=max(self._usage.output_tokens, output),
            )
            return MeterResult(model, usage, "estimated")
        cut = self._fed and not self._finished
        if self.endpoint == "other" or not (self._responded or cut) or (self._error and not self._out_chars):
            return MeterResult(model, TokenUsage(), "none")
        return MeterResult(model, TokenUsage(input_tokens=prompt, output_tokens=output), "estimated")

    # -- per event -------------------------------------------------------------------------

    def _filter(self, event: SSEEvent) -> bytes:
        """Forwarded bytes of one event when usage was injected into the request."""
        obj = self._on_event(event)
        if obj is None or "usage" not in obj:
            return event.raw
        if obj["usage"] is None:
            return _strip_null_usage(event.raw)
        if obj.get("choices") == [] and isinstance(obj["usage"], dict):
            return b""
        return event.raw

    def _on_event(self, event: SSEEvent) -> dict[str, Any] | None:
        if not event.data:
            return None
        self._responded = True
        if event.data == "[DONE]" or not self._wanted(event.event):
            return None
        obj = _loads(event.data)
        if not isinstance(obj, dict):
            return None
        self._absorb(obj)
        return obj

    def _wanted(self, name: str | None) -> bool:
        if name is None:
            return True
        if self.endpoint == "responses" and name.startswith("response."):
            return name in _RESPONSES_PARSED or (name.endswith(".delta") and not _is_audio(name))
        return name not in _SKIP_EVENTS.get(self.family, ())

    def _absorb(self, obj: Any) -> None:
        if not isinstance(obj, dict) or self.endpoint == "other":
            return
        self._responded = True
        if obj.get("error") or obj.get("type") == "error":
            self._error = True
        if self.family == "openai" and self.endpoint == "responses":
            self._responses(obj)
        elif self.family == "openai":
            self._openai(obj)
        elif self.family == "anthropic":
            self._anthropic_event(obj)
        elif self.family == "gemini":
            self._gemini(obj)
        elif self.family == "cohere":
            self._cohere(obj)

    def _report(self, usage: TokenUsage, final: bool) -> None:
        self._usage = usage
        self._final = self._final or final

    def _model(self, value: Any) -> None:
        if isinstance(value, str) and value:
            self._resp_model = value

    def _openai(self, obj: dict[str, Any]) -> None:
        self._model(obj.get("model"))
        choices = obj.get("choices")
        self._out_chars += _text_chars(choices, _CHAT_OUT_KEYS)
        usage = obj.get("usage") or _dict(obj.get("x_groq")).get("usage")
        if isinstance(usage, dict):
            ends = not choices or any(_dict(c).get("finish_reason") for c in _list(choices))
            self._report(_openai_usage(usage), ends)

    def _responses(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if isinstance(kind, str) and kind.startswith("response."):
            delta = obj.get("delta")
            if isinstance(delta, str) and not _is_audio(kind):
                self._out_chars += len(delta)
            response = _dict(obj.get("response"))
            self._model(response.get("model"))
            usage = response.get("usage")
            if kind in _RESPONSES_TERMINAL and isinstance(usage, dict):
                self._report(_openai_usage(usage), True)
            elif kind == "response.failed":
                self._error = True
            return
        self._model(obj.get("model"))
        self._out_chars += _text_chars(obj.get("output"), _RESPONSES_OUT_KEYS)
        if isinstance(obj.get("usage"), dict):
            self._report(_openai_usage(obj["usage"]), True)

    def _anthropic_event(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if kind == "content_block_delta":
            self._out_chars += _text_chars(obj.get("delta"), _ANTHROPIC_OUT_KEYS)
        elif kind == "message_start":
            message = _dict(obj.get("message"))
            self._model(message.get("model"))
            self._anthropic_usage(message.get("usage"), final=False)
        elif kind == "message_delta":
            self._anthropic_usage(obj.get("usage"), final=True)
        elif kind == "message":
            self._model(obj.get("model"))
            self._out_chars += _text_chars(obj.get("content"), _ANTHROPIC_OUT_KEYS)
            self._anthropic_usage(obj.get("usage"), final=True)

    def _anthropic_usage(self, usage: Any, final: bool) -> None:
        """Counts are cumulative and may repeat across events: keep the largest of each."""
        if not isinstance(usage, dict):
            return
        seen = self._anthropic
        details = _dict(usage.get("output_tokens_details"))
        for key, value in (*usage.items(), ("thinking_tokens", details.get("thinking_tokens"))):
            if value is not None and not isinstance(value, (dict, list, str)):
                seen[key] = max(seen.get(key, 0), _int(value))
        read = seen.get("cache_read_input_tokens", 0)
        write = seen.get("cache_creation_input_tokens", 0)
        total_in = seen.get("input_tokens", 0) + read + write
        self._report(
            TokenUsage(total_in, read, write, seen.get("output_tokens", 0), seen.get("thinking_tokens", 0)),
            final,
        )

    def _gemini(self, obj: dict[str, Any]) -> None:
        self._model(obj.get("modelVersion"))
        candidates = obj.get("candidates")
        self._out_chars += _text_chars(candidates, _GEMINI_OUT_KEYS)
        meta = obj.get("usageMetadata")
        if isinstance(meta, dict):
            ends = any(_dict(c).get("finishReason") for c in _list(candidates))
            self._report(_gemini_usage(meta), ends)

    def _cohere(self, obj: dict[str, Any]) -> None:
        if isinstance(obj.get("message"), str):  # v2 errors: {"id": ..., "message": "..."}
            self._error = True
            return
        kind = obj.get("type")
        if isinstance(kind, str):  # a stream event
            delta = _dict(obj.get("delta"))
            self._out_chars += _text_chars(delta.get("message"), _COHERE_OUT_KEYS)
            if kind == "message-end" and isinstance(delta.get("usage"), dict):
                self._report(_cohere_usage(delta["usage"]), True)
            return
        self._out_chars += _text_chars(obj.get("message"), _COHERE_OUT_KEYS)
        usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else _dict(obj.get("meta"))
        if usage.get("billed_units") or usage.get("tokens"):
            self._report(_cohere_usage(usage), True)


# -- usage shapes ------------------------------------------------------------------------------


def _openai_usage(u: dict[str, Any]) -> TokenUsage:
    """Chat/completions/embeddings (prompt_/completion_) or Responses (input_/output_) shape."""
    if "prompt_tokens" not in u and "input_tokens" in u:
        details_in = _dict(u.get("input_tokens_details"))
        return TokenUsage(
            _int(u.get("input_tokens")),
            _int(details_in.get("cached_tokens")),
            _int(details_in.get("cache_write_tokens")),
            _int(u.get("output_tokens")),
            _int(_dict(u.get("output_tokens_details")).get("reasoning_tokens")),
        )
    details_in = _dict(u.get("prompt_tokens_details"))
    prompt, completion = _int(u.get("prompt_tokens")), _int(u.get("completion_tokens"))
    reasoning = _int(_dict(u.get("completion_tokens_details")).get("reasoning_tokens"))
    if reasoning and _int(u.get("total_tokens")) == prompt + completion + reasoning:
        completion += reasoning  # some compatible providers count reasoning outside completion
    cached = _int(details_in.get("cached_tokens")) or _int(u.get("prompt_cache_hit_tokens"))
    return TokenUsage(prompt, cached, _int(details_in.get("cache_write_tokens")), completion, reasoning)


def _gemini_usage(m: dict[str, Any]) -> TokenUsage:
    """promptTokenCount includes the cache; candidatesTokenCount excludes thoughts."""
    thoughts = _int(m.get("thoughtsTokenCount"))
    return TokenUsage(
        _int(m.get("promptTokenCount")) + _int(m.get("toolUsePromptTokenCount")),
        _int(m.get("cachedContentTokenCount")),
        0,
        _int(m.get("candidatesTokenCount")) + thoughts,
        thoughts,
    )


def _cohere_usage(u: dict[str, Any]) -> TokenUsage:
    """Billed units are what Cohere charges; raw token counts are the fallback."""
    billed = _dict(u.get("billed_units"))
    has_billed = billed.get("input_tokens") is not None or billed.get("output_tokens") is not None
    counts = billed if has_billed else _dict(u.get("tokens"))
    prompt, output = _int(counts.get("input_tokens")), _int(counts.get("output_tokens"))
    return TokenUsage(prompt, min(_int(u.get("cached_tokens")), prompt), 0, output, 0)


# -- request side ------------------------------------------------------------------------------


def _endpoint(family: str, method: str, path: str) -> tuple[str, str | None]:
    """(endpoint name, model named by the URL)."""
    if method.upper() != "POST":
        return "other", None
    path = path.rstrip("/")
    if family == "openai":
        for suffix, name in _OPENAI_PATHS:
            if path.endswith(suffix):
                deployment = path.partition("/deployments/")[2].partition("/")[0]  # Azure
                return name, deployment or None
    elif family == "anthropic" and path.endswith("/messages"):
        return "messages", None
    elif family == "gemini":
        resource, _, verb = unquote(path.rpartition("/")[2]).partition(":")
        if verb in _GEMINI_VERBS:
            return _GEMINI_VERBS[verb], resource or None
    elif family == "cohere":
        for suffix, name in _COHERE_PATHS:
            if path.endswith(suffix):
                return name, None
    return "other", None


def _with_include_usage(req: dict[str, Any]) -> bytes | None:
    options = req.get("stream_options")
    if options is None:
        options = {}
    if not isinstance(options, dict) or options.get("include_usage") is True:
        return None
    rewritten = {**req, "stream_options": {**options, "include_usage": True}}
    try:
        return json.dumps(rewritten, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:  # lone surrogates survive only as \u escapes
        return json.dumps(rewritten, separators=(",", ":")).encode()


def _strip_null_usage(raw: bytes) -> bytes:
    """Remove the one `"usage":null` member include_usage added; leave ambiguous events alone.

    Outside strings JSON has no unescaped quote, so `"usage"` followed by a colon is a key.
    """
    spans, at = [], raw.find(_USAGE_KEY)
    while at >= 0:
        before = at - 1
        while before >= 0 and raw[before] in b" \t":
            before -= 1
        if raw[before : before + 1] == b"," and (m := _NULL_LAST.match(raw, at)):
            spans.append((before, m.end()))
        elif raw[before : before + 1] == b"{" and (m := _NULL_FIRST.match(raw, at)):
            spans.append((at, m.end()))
        at = raw.find(_USAGE_KEY, at + 1)
    if len(spans) != 1:
        return raw
    (start, end), = spans
    return raw[:start] + raw[end:]


# -- helpers -----------------------------------------------------------------------------------


class _JSONItems:
    """Items of a JSON array arriving in pieces (Gemini streamGenerateContent without alt=sse)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._parts: list[str] = []
        self._size = 0
        self._unfinished = 0  # length of the pending text the last parse could not finish

    def feed(self, data: bytes, final: bool = False) -> list[Any]:
        text = self._decoder.decode(data, final)
        self._parts.append(text)
        self._size += len(text)
        if self._size > MAX_PENDING:  # give up on this item; the meter falls back to estimating
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


_DECODER = json.JSONDecoder()
_NUMBER_ENDS = frozenset(",]} \t\r\n")


def _loads(data: bytes | str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _is_audio(event: str) -> bool:
    """Audio deltas are base64 sound, not text; their transcripts are text."""
    return "audio" in event and "transcript" not in event


def _looks_like_sse(body: bytes) -> bool:
    return body.lstrip()[:6].startswith((b"data:", b"event:", b":", b"id:", b"retry:"))


def _text_chars(node: Any, keys: frozenset[str]) -> int:
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


def _max_output_tokens(req: dict[str, Any]) -> int | None:
    """OpenAI chat / Responses, Anthropic, Gemini's generationConfig: the first positive cap named."""
    config = _dict(req.get("generationConfig") or req.get("generation_config"))
    for value in (req.get("max_completion_tokens"), req.get("max_tokens"), req.get("max_output_tokens"),
                  config.get("maxOutputTokens"), config.get("max_output_tokens")):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _audio_seconds(body: Any) -> Decimal | None:
    """Transcriptions report their audio length: `duration` (verbose_json) or usage {type: duration, seconds}."""
    if not isinstance(body, dict):
        return None
    usage = _dict(body.get("usage"))
    for value in (usage.get("seconds") if usage.get("type") == "duration" else None, body.get("duration")):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 10**7:
            return Decimal(str(value))
    return None


def _tokens(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN)


def _int(value: Any) -> int:
    """A non-negative token count from JSON, 0 for anything else (null, strings, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    if isinstance(value, float) and not math.isfinite(value):
        return 0
    return max(int(value), 0)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
