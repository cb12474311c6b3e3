"""AWS Bedrock runtime: InvokeModel and Converse, whole or streamed as AWS's binary event stream.

`POST /model/{modelId}/invoke` carries the model's own wire format; for Anthropic models that is
the Messages API, read as AnthropicReader reads it. Its stream (`invoke-with-response-stream`)
wraps each Anthropic event in a `chunk` event whose payload is `{"bytes": base64 of the event}`;
Bedrock adds `amazon-bedrock-invocationMetrics` (input and output token counts) to the last chunk,
which is what other models' streams are read by; their whole answers by the `x-amzn-bedrock-input-token-count`
and `-output-token-count` headers. `converse` answers `usage {inputTokens,
outputTokens, cacheReadInputTokens, cacheWriteInputTokens, totalTokens}`; `converse-stream` sends it
in its `metadata` event. Bedrock's inputTokens leave out cached tokens, Tollgate's input counts them.

The event stream (application/vnd.amazon.eventstream: a prelude with lengths and CRC, headers, the
payload, a message CRC) is framed by botocore's EventStreamBuffer as the bytes pass; every chunk goes
on to the client unchanged. A frame that fails its checks stops the reading (the stream still
passes), and the request is then estimated. The model is the one the URL names (a Bedrock model id,
inference profile or ARN), which is what genai-prices' `aws` prices are matched on.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any
from urllib.parse import unquote

from botocore.eventstream import EventStreamBuffer, EventStreamMessage, ParserError

from addons.usage.anthropic import AnthropicReader
from addons.usage.base import UsageReader
from addons.usage.json_fields import as_dict, count, loads, text_chars
from pricing.usage import TokenUsage

_PATH = re.compile(r"/model/(?P<model>[^/]+)/(?P<op>invoke|invoke-with-response-stream|converse|converse-stream)")
ENDPOINTS = {"invoke": "invoke_model", "invoke-with-response-stream": "invoke_model_stream",
             "converse": "converse", "converse-stream": "converse_stream"}
STREAMS = frozenset({"invoke_model_stream", "converse_stream"})
EVENT_STREAM = "application/vnd.amazon.eventstream"
_METRICS = "amazon-bedrock-invocationMetrics"
_COUNT = re.compile(r"[0-9]{1,12}")
_OUT_TEXT = frozenset({"text", "reasoningContent", "reasoningText"})  # Converse's output text and reasoning


class BedrockReader(AnthropicReader):
    """InvokeModel (Anthropic's wire format in the body), and the event-stream framing of both APIs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._frames: EventStreamBuffer | None = EventStreamBuffer()
        self._header_usage: TokenUsage | None = None

    @classmethod
    def from_request(cls, family, method, path, query, body, inject_usage, upgrade) -> UsageReader:
        reader = super().from_request(family, method, path, query, body, False, upgrade)  # nothing to inject
        if reader.max_output_tokens is None:  # Converse: inferenceConfig.maxTokens
            req = loads(body)
            cap = as_dict(as_dict(req).get("inferenceConfig")).get("maxTokens")
            if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0:
                reader.max_output_tokens = cap
        return reader

    @classmethod
    def endpoint_of(cls, path: str) -> tuple[str, str | None]:
        m = _PATH.fullmatch(path)
        return ("other", None) if m is None else (ENDPOINTS[m["op"]], unquote(m["model"]))

    @classmethod
    def streams(cls, endpoint: str, req: dict[str, Any]) -> bool:
        return endpoint in STREAMS

    @classmethod
    def for_endpoint(cls, endpoint: str) -> type[UsageReader]:
        return ConverseReader if endpoint.startswith("converse") else BedrockReader

    # -- the binary event stream -------------------------------------------------------------

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return self.finish()
        self._fed = self._responded = True  # bytes of a 200 answer: billed, estimated at worst
        self._frame(chunk)
        return chunk

    def finish(self) -> bytes:
        self._finished = True
        self._final = self._final or self._usage is not None
        return b""

    def observe_headers(self, headers) -> None:
        """InvokeModel answers every model's token counts in headers; read when its body reports none."""
        counts = [headers.get(f"x-amzn-bedrock-{side}-token-count", "") for side in ("input", "output")]
        if all(_COUNT.fullmatch(c) for c in counts):
            self._header_usage = TokenUsage(input_tokens=int(counts[0]), output_tokens=int(counts[1]))

    def observe_body(self, body: bytes, content_type: str | None) -> None:
        if EVENT_STREAM in (content_type or "").lower():
            self._frame(body)
            self.finish()
        else:
            super().observe_body(body, content_type)
        if self._usage is None and self._header_usage is not None:
            self._report(self._header_usage, final=True)

    def _frame(self, data: bytes) -> None:
        if self._frames is None or self.endpoint == "other":
            return
        try:
            self._frames.add_data(data)
            for message in self._frames:
                self._on_message(message)
        except ParserError:  # a broken frame: the rest cannot be framed; the bytes still pass
            self._frames = None

    def _on_message(self, message: EventStreamMessage) -> None:
        self._responded = True
        headers = message.headers
        if headers.get(":message-type") != "event":  # an exception (throttling, validation) mid-stream
            self._error = True
            return
        payload = loads(message.payload)
        if isinstance(payload, dict):
            self._on_event_payload(headers.get(":event-type"), payload)

    def _on_event_payload(self, event_type: str | None, payload: dict[str, Any]) -> None:
        """InvokeModel's stream: `chunk` events, each the model's own event in base64."""
        if event_type != "chunk" or not isinstance(payload.get("bytes"), str):
            return
        try:
            inner = loads(base64.b64decode(payload["bytes"], validate=True))
        except (binascii.Error, ValueError):
            return
        self._absorb(inner)

    # -- the model's own JSON (an Anthropic message or event) ----------------------------------

    def _read(self, obj: dict[str, Any]) -> None:
        super()._read(obj)
        metrics = as_dict(obj.get(_METRICS))
        if metrics and not self._seen:  # a model whose own events carry no usage Tollgate reads
            self._report(TokenUsage(count(metrics.get("inputTokenCount")), 0, 0,
                                    count(metrics.get("outputTokenCount"))), final=True)

    def _model(self, value: Any) -> None:
        """The URL's model id stays: the answer's own name (`claude-…`) is not a Bedrock id."""


class ConverseReader(BedrockReader):
    """Converse and ConverseStream: one wire format for every model."""

    def _on_event_payload(self, event_type: str | None, payload: dict[str, Any]) -> None:
        if event_type == "contentBlockDelta":
            self._out_chars += text_chars(payload.get("delta"), _OUT_TEXT)
        elif event_type == "metadata":
            self._converse_usage(payload.get("usage"))

    def _read(self, obj: dict[str, Any]) -> None:
        message = as_dict(as_dict(obj.get("output")).get("message"))
        self._out_chars += text_chars(message.get("content"), _OUT_TEXT)
        self._converse_usage(obj.get("usage"))

    def _converse_usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        read, write = count(usage.get("cacheReadInputTokens")), count(usage.get("cacheWriteInputTokens"))
        self._report(TokenUsage(count(usage.get("inputTokens")) + read + write, read, write,
                                count(usage.get("outputTokens"))), final=True)
