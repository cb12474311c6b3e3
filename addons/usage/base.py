"""The usage reader's shared machinery: what every API family's reader does the same way.

A reader is made from the request, then watches the response: as a stream (`feed`, `finish`)
or whole (`observe_body`). It reads usage where the provider reports it and otherwise
estimates from characters (4 per token), so a cut stream is still billed for what it carried.

This module frames the response (SSE events through sse.py, or the items of a JSON array
through json_items.py), hides usage the reader asked for on the client's behalf
(include_usage.py), and turns what was read into a UsageReading. What a family's JSON means
lives in its subclass (`_read`, `endpoint_of`, the class constants); readers.py holds the table
of them. UsageReader itself is the reader of a family Tollgate does not read: nothing is metered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import unquote

from addons.usage.include_usage import ask_for_usage, strip_null_usage
from addons.usage.json_fields import as_dict, as_str, loads, text_chars, tokens
from addons.usage.json_items import JSONItems
from addons.usage.sse import SSEDecoder, SSEEvent
from pricing.usage import Measured, MediaUsage, TokenUsage

Source = Literal["reported", "estimated", "none"]
PriceBasis = Literal["metered", "free", "unmetered"]

MAX_PENDING = 16 * 1024 * 1024  # bytes of one unfinished event/item kept to parse it

# Requests that cost nothing at the provider although no usage is read from them: reading, listing
# and deleting (GET /v1/models, a stored response or file), and counting tokens. Everything else
# the reader cannot read is unmetered: batches, files, fine-tuning, and websocket upgrades other than
# OpenAI Realtime's (a GET that opens a paid Gemini Live session; Realtime is read per response, realtime.py).
_FREE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
_FREE_PATH_ENDS = ("/messages/count_tokens", ":countTokens")

# Keys under which requests carry text worth estimating tokens from, in every family
# (never image/audio/file payloads, ids or parameters).
_PROMPT_KEYS = frozenset(
    {"messages", "content", "text", "input", "prompt", "system", "instructions", "contents",
     "parts", "systemInstruction", "system_instruction", "requests", "texts", "inputs",
     "documents", "tool_calls", "function", "arguments", "function_call", "thinking", "output"}
)


@dataclass(frozen=True, slots=True)
class UsageReading:
    model: str | None  # as the response reported it, else as requested
    usage: TokenUsage
    source: Source
    media: MediaUsage | None = None  # images, audio, characters, searches: what media prices count


_JSON_START = re.compile(rb"\s*[\[{]")  # matched in place: a multipart upload is never decoded whole


def price_basis(method: str, endpoint: str, path: str, upgrade: bool = False) -> PriceBasis:
    """Whether Tollgate reads this request's usage ("metered"), the request costs nothing ("free"),
    or neither ("unmetered": the provider may charge for it, and the ledger cannot say how much).

    `endpoint` is what the family's reader named it: every endpoint but "other" has its usage read.
    """
    if endpoint != "other":
        return "metered"
    if upgrade:
        return "unmetered"
    if method.upper() in _FREE_METHODS or unquote(path).rstrip("/").endswith(_FREE_PATH_ENDS):
        return "free"
    return "unmetered"


class UsageReader:
    """Usage of one request; build with readers.for_request(), which picks the family's subclass."""

    ENDPOINTS: tuple[tuple[str, str], ...] = ()  # (path suffix, endpoint name) of the POSTs read
    EMBEDDINGS: frozenset[str] = frozenset()  # endpoints that answer with no output tokens
    ASKS_FOR_USAGE: frozenset[str] = frozenset()  # endpoints whose streams report usage only when asked
    SKIP_EVENTS: frozenset[str] = frozenset()  # stream events that never carry usage or output text

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
        json_array: bool = False,
        basis: PriceBasis | None = None,
    ) -> None:
        self.family = family
        self.endpoint = endpoint
        self.basis: PriceBasis = basis or ("metered" if endpoint != "other" else "unmetered")
        self.model = model
        self.stream_requested = stream_requested
        self.request_body = request_body  # the rewritten request (usage asked for), else None
        self.prompt_chars = prompt_chars  # text characters of the request: estimates and character meters
        self.max_output_tokens = max_output_tokens  # what the caller allows, for worst-case holds
        # Quantities beyond tokens that a meter unit may count, by their pricing.usage.Measured names
        # (audio_seconds: the duration the provider reported); a reader adds what its family reports.
        self.measures: dict[str, Any] = {}
        self.media: MediaUsage | None = None  # a media reader's quantities (readers of images, audio, rerank)
        # what the request asks for (images, characters, audio, searches), for holds before the answer
        self.expected_media: MediaUsage | None = None
        self._injected = request_body is not None
        self._items = JSONItems(MAX_PENDING) if json_array else None
        self._sse = SSEDecoder(MAX_PENDING)
        self._usage: TokenUsage | None = None
        self._final = False  # the usage seen is the provider's last word
        self._resp_model: str | None = None
        self._out_chars = 0
        self._responded = False
        self._error = False
        self._fed = False
        self._finished = False
        self._whole = False  # reading a whole JSON answer: any usage in it is the provider's last word

    # -- request side: the family's wire format, as class methods --------------------------

    @classmethod
    def from_request(
        cls, family: str, method: str, path: str, query: str, body: bytes, inject_usage: bool, upgrade: bool
    ) -> UsageReader:
        """May raise on a malformed request: readers.for_request() falls back to reading nothing."""
        endpoint, path_model = cls.endpoint_of(path.rstrip("/")) if method.upper() == "POST" else ("other", None)
        kind = cls.for_endpoint(endpoint)
        req = kind.request_fields(endpoint, body)
        stream = kind.streams(endpoint, req)
        rewritten = None
        if inject_usage and stream and endpoint in cls.ASKS_FOR_USAGE:
            rewritten = ask_for_usage(req, body)
        reader = kind(
            family,
            endpoint,
            path_model or as_str(req.get("model")),
            stream,
            rewritten,
            prompt_chars=text_chars(req, _PROMPT_KEYS),
            max_output_tokens=_max_output_tokens(req),
            json_array=kind.json_array(endpoint, query),
            basis=price_basis(method, endpoint, path, upgrade),
        )
        reader.read_request(req, body)
        return reader

    def read_request(self, req: dict[str, Any], body: bytes) -> None:
        """What a media reader takes from the request besides the model: sizes, counts, the text to speak."""

    @classmethod
    def endpoint_of(cls, path: str) -> tuple[str, str | None]:
        """(endpoint name, model named by the URL) of a POST to `path` (no trailing slash)."""
        for suffix, name in cls.ENDPOINTS:
            if path.endswith(suffix):
                return name, None
        return "other", None

    @classmethod
    def request_fields(cls, endpoint: str, body: bytes) -> dict[str, Any]:
        """The request's JSON object ({} for anything else); media readers also read multipart uploads."""
        parsed = loads(body) if _JSON_START.match(body) else None
        return parsed if isinstance(parsed, dict) else {}

    def streams_response(self, content_type: str) -> bool:
        """Whether a successful answer of this content type passes through as it comes (audio), though
        it is no event stream and no stream was asked for."""
        return False

    @classmethod
    def streams(cls, endpoint: str, req: dict[str, Any]) -> bool:
        """Whether the request asks for a streamed answer."""
        return req.get("stream") is True

    @classmethod
    def json_array(cls, endpoint: str, query: str) -> bool:
        """Whether the stream comes as one JSON array rather than server-sent events."""
        return False

    @classmethod
    def for_endpoint(cls, endpoint: str) -> type[UsageReader]:
        """The reader class of one endpoint, where a family's endpoints differ in wire format."""
        return cls

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

    def observe_headers(self, headers) -> None:
        """The response's headers, before its body: where a family reports usage there (Bedrock), it reads it."""

    def observe_body(self, body: bytes, content_type: str | None) -> None:
        """A whole response: JSON, a JSON array of stream items, or a buffered SSE stream."""
        if "event-stream" in (content_type or "").lower() or _looks_like_sse(body):
            decoder = SSEDecoder()
            for event in decoder.feed(body) + decoder.flush():
                self._on_event(event)
        else:
            parsed = loads(body)
            self._whole = True
            for item in parsed if isinstance(parsed, list) else [parsed]:
                self._absorb(item)
            if (seconds := _audio_seconds(parsed)) is not None:
                self.measures["audio_seconds"] = seconds
        self._final = self._usage is not None

    def measured(self, usage: TokenUsage) -> Measured:
        """`usage` with the other quantities this reader measured, for a customer's meter."""
        measures = dict(self.measures)
        if (media := self.media or self.expected_media) is not None:
            measures.update(images=media.images, search_units=media.search_units)
            if media.audio_seconds is not None:
                measures.setdefault("audio_seconds", media.audio_seconds)
        return Measured(usage, self.prompt_chars, **measures)

    def result(self) -> UsageReading:
        model = self._resp_model or self.model
        prompt = tokens(self.prompt_chars)
        output = 0 if self.endpoint in self.EMBEDDINGS else tokens(self._out_chars)
        if self._usage is not None and self._final:
            return UsageReading(model, self._usage, "reported", self.media)
        if self._usage is not None:  # cut before the final count: trust what was reported so far
            usage = replace(
                self._usage,
                input_tokens=self._usage.input_tokens or prompt,
                output_tokens=max(self._usage.output_tokens, output),
            )
            return UsageReading(model, usage, "estimated", self.media)
        cut = self._fed and not self._finished
        if self.endpoint == "other" or not (self._responded or cut) or (self._error and not self._out_chars):
            return UsageReading(model, TokenUsage(), "none")
        return UsageReading(model, TokenUsage(input_tokens=prompt, output_tokens=output), "estimated")

    # -- per event -------------------------------------------------------------------------

    def _filter(self, event: SSEEvent) -> bytes:
        """Forwarded bytes of one event when usage was asked for in the request (include_usage.py)."""
        obj = self._on_event(event)
        if obj is None or "usage" not in obj:
            return event.raw
        if obj["usage"] is None:
            return strip_null_usage(event.raw)
        if obj.get("choices") == [] and isinstance(obj["usage"], dict):
            return b""
        return event.raw

    def _on_event(self, event: SSEEvent) -> dict[str, Any] | None:
        if not event.data:
            return None
        self._responded = True
        if event.data == "[DONE]" or not self._wanted(event.event):
            return None
        obj = loads(event.data)
        if not isinstance(obj, dict):
            return None
        self._absorb(obj)
        return obj

    def _wanted(self, name: str | None) -> bool:
        """Whether an event named `name` is worth parsing."""
        return name is None or name not in self.SKIP_EVENTS

    def _absorb(self, obj: Any) -> None:
        if not isinstance(obj, dict) or self.endpoint == "other":
            return
        self._responded = True
        if obj.get("error") or obj.get("type") == "error":
            self._error = True
        self._read(obj)

    def _read(self, obj: dict[str, Any]) -> None:
        """One JSON object of the answer (a stream event, an array item or the whole body)."""

    def _report(self, usage: TokenUsage, final: bool) -> None:
        self._usage = usage
        self._final = self._final or final

    def _model(self, value: Any) -> None:
        if isinstance(value, str) and value:
            self._resp_model = value


# -- helpers -----------------------------------------------------------------------------------


def _looks_like_sse(body: bytes) -> bool:
    return body.lstrip()[:6].startswith((b"data:", b"event:", b":", b"id:", b"retry:"))


def _max_output_tokens(req: dict[str, Any]) -> int | None:
    """OpenAI chat / Responses, Anthropic, Gemini's generationConfig: the first positive cap named."""
    config = as_dict(req.get("generationConfig") or req.get("generation_config"))
    for value in (req.get("max_completion_tokens"), req.get("max_tokens"), req.get("max_output_tokens"),
                  config.get("maxOutputTokens"), config.get("max_output_tokens")):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _audio_seconds(body: Any) -> Decimal | None:
    """Transcriptions report their audio length: `duration` (verbose_json) or usage {type: duration, seconds}."""
    if not isinstance(body, dict):
        return None
    usage = as_dict(body.get("usage"))
    for value in (usage.get("seconds") if usage.get("type") == "duration" else None, body.get("duration")):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 10**7:
            return Decimal(str(value))
    return None
