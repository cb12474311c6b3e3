"""A local fake of the AI providers, speaking each provider's real wire format.

``MockProvider`` is a threaded HTTP/1.1 server on 127.0.0.1 (OS-assigned port).
One instance serves every API family by path, so it can be the configured
upstream of every provider at once::

    with MockProvider() as mock:
        client = openai.OpenAI(base_url=mock.url + "/v1", api_key="sk-test")
        ...
        assert mock.requests[-1].headers["authorization"] == "Bearer sk-test"

or, in pytest, ``from tests.mock_provider import mock_provider`` (a fixture
that yields a started mock and stops it afterwards).

Routes (POST unless noted; the query string is ignored except Gemini's ``alt``)
-------------------------------------------------------------------------------
OpenAI-compatible, routed by path *suffix*, so any prefix works
(``/v1/...``, ``/openai/v1/...`` Groq, ``/api/v1/...`` OpenRouter,
``/v1/openai/...`` DeepInfra, ``/inference/v1/...``,
``/openai/deployments/<dep>/...`` Azure (model = deployment if the body has none)):

* ``.../chat/completions``  family ``openai.chat``
* ``.../completions``       family ``openai.completions`` (legacy text completions)
* ``.../responses``         family ``openai.responses``  (Responses API)
* ``.../embeddings``        family ``openai.embeddings``
* ``.../images/generations`` family ``openai.images`` (dall-e style images, no usage)
* ``.../batches``           family ``openai.batches`` (a batch object: an endpoint Tollgate does not meter)

Anthropic:  ``/v1/messages`` (family ``anthropic.messages``),
            ``/v1/messages/count_tokens`` (family ``anthropic.count_tokens``).
Gemini:     ``/v1beta/models/{model}:generateContent``, ``:streamGenerateContent``
            (``?alt=sse`` -> SSE, otherwise Google's streamed JSON array),
            ``:embedContent``, ``:batchEmbedContents``; any version prefix
            works (``/v1/models/...`` is what google-genai 3.x sends by default).
Cohere v2:  ``/v2/chat`` (family ``cohere.chat``).
``GET /health`` -> ``{"ok": true}``.  Anything else -> 404 (OpenAI error format).

Streams are sent with ``Transfer-Encoding: chunked``, one HTTP chunk per SSE
event, each written to the socket immediately.  Non-stream answers carry a
``Content-Length``.  Connections are kept alive.

Scenario table (deterministic, independent of the prompt)
---------------------------------------------------------
Token counts come from ``USAGE`` (module constant; every instance works on its
own deep copy, ``mock.usage``, which a test may edit).  ``wire_usage(family)``
returns the exact usage object the mock puts on the wire.

====================  =====================================================
family                usage on the wire
====================  =====================================================
openai.chat           prompt_tokens 17 (cached_tokens 4), completion_tokens 9
                      (reasoning_tokens 3), total_tokens 26
openai.completions    prompt_tokens 12, completion_tokens 5, total_tokens 17
openai.responses      input_tokens 19 (cached_tokens 6), output_tokens 11
                      (reasoning_tokens 5), total_tokens 30
openai.embeddings     prompt_tokens 8, total_tokens 8
anthropic.messages    input_tokens 23, cache_creation_input_tokens 7,
                      cache_read_input_tokens 5, output_tokens 13
                      (stream: message_start says output_tokens 1, the
                      cumulative final 13 comes in message_delta, which
                      carries ONLY output_tokens)
gemini.generate       promptTokenCount 29, cachedContentTokenCount 8,
                      candidatesTokenCount 15, thoughtsTokenCount 6,
                      totalTokenCount 50 (= 29 + 15 + 6).  Stream: every chunk
                      carries usageMetadata, CUMULATIVE; chunk i (1-based) of n
                      says candidatesTokenCount i, the last one the final 15.
gemini.embed          no usage (Gemini embedContent reports none)
cohere.chat           billed_units input_tokens 31 / output_tokens 17,
                      tokens input_tokens 95 / output_tokens 17
====================  =====================================================

Tools: a request that forces a tool call (OpenAI ``tool_choice`` "required" or a function; Anthropic
``tool_choice`` any or tool; Gemini ``functionCallingConfig`` mode ANY) gets one call of the forced (else the first) tool with ``TOOL_ARGUMENTS``
(streams: ``TOOL_ARGUMENT_PIECES`` as argument deltas; Gemini: the whole call in one chunk), finish reason
``tool_calls`` / ``tool_use`` / ``STOP``.

Text: streams send ``STREAM_TEXT`` = ["Hello", " from", " the", " mock", "."],
one content event per element; non-stream bodies carry ``FULL_TEXT``
("Hello from the mock.").  The model is echoed from the request body
(Gemini: from the URL).  Embeddings are ``EMBEDDING`` (8 floats) per input
(OpenAI: base64 of little-endian float32 when ``encoding_format`` is base64,
as the SDK asks by default).

Special model names (matched as substrings of the model)
--------------------------------------------------------
* ``mock-error-<NNN>`` (e.g. mock-error-429, mock-error-500, mock-error-401):
  answer status NNN with the family's own error body; 429 adds
  ``retry-after: RETRY_AFTER``.
* ``mock-slow``: a stream sends its preamble and the FIRST content event (setting
  ``mock.slow_stream_started`` just before writing that event), then blocks on ``mock.release_stream`` (an
  ``Event``; at most ``SLOW_TIMEOUT`` s) before sending the rest.  If the peer closes the
  connection meanwhile, the mock stops there and sets ``peer_closed_at``.
  Non-stream requests are not delayed.
* ``mock-hang``: sends nothing at all (no status line) until ``mock.release_stream`` is set (at
  most ``SLOW_TIMEOUT`` s; then it answers normally) or the peer closes the connection
  (``peer_closed_at`` is set and nothing is sent).
* ``mock-cut``: a stream sends its preamble and 2 content events, then closes
  the connection abruptly (no usage, no terminator, no final 0-length chunk).
  A non-stream answer sends its headers and half its body, then closes.
* ``mock-reset``: as ``mock-cut``, but the connection is reset (TCP RST) instead of closed.
* ``mock-garbage``: a stream carries junk after its first event (a line that is no SSE field, a
  ``data:`` line of broken JSON, bytes that are not UTF-8, a comment), and every event that
  carries a usage object has its JSON broken there, so no usage can be read; it ends normally.
* ``mock-truncated``: a non-stream answer whose JSON body is cut in half, sent as a complete
  HTTP message (its ``Content-Length`` is that of the half).

Controls (thread-safe)
----------------------
* ``mock.requests``: list of ``RecordedRequest`` (method, path, query, params,
  headers (case-insensitive), body, json, family, model, stream, seq,
  request_id, status, received_at, first_chunk_at, finished_at, complete,
  response_body, response_headers).  ``mock.last`` is the latest one;
  ``mock.wait_for_requests(n)`` waits until n were received.  Times are ``time.monotonic()``.  ``finished_at`` is taken
  right BEFORE the last bytes of the response are written, so a client that has
  read the whole response always sees it set, and ``finished_at`` <= the time
  the client received the end of the response.
* ``mock.next_error = (status, json_body_or_None, headers_or_None)``: the next
  request answers with that error (body None -> the family's default body).
* ``mock.chunk_delay``: seconds to sleep between stream events (default 0).
* ``rec.peer_closed_at``: when the mock saw the peer close the connection (or a write fail)
  before the response was complete; None otherwise.
* ``mock.reset()``: clears requests, next_error, the stream events and usage.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import re
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator, Mapping
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "MockProvider",
    "RecordedRequest",
    "Headers",
    "USAGE",
    "STREAM_TEXT",
    "FULL_TEXT",
    "EMBEDDING",
    "TOOL_ARGUMENTS",
    "TOOL_ARGUMENT_PIECES",
    "RETRY_AFTER",
    "SLOW_TIMEOUT",
    "GARBAGE_EVENTS",
    "ANTHROPIC_START_OUTPUT_TOKENS",
    "wire_usage",
    "mock_provider",
]

# --------------------------------------------------------------------------
# Scenario table
# --------------------------------------------------------------------------

STREAM_TEXT: list[str] = ["Hello", " from", " the", " mock", "."]
FULL_TEXT: str = "".join(STREAM_TEXT)
# A request that forces a tool (OpenAI tool_choice "required" or a named function; Anthropic tool_choice
# "any" or "tool") is answered with one call of it (the named tool, else the first), with these arguments; a
# stream sends them in TOOL_ARGUMENT_PIECES.
TOOL_ARGUMENTS: dict[str, Any] = {"city": "Paris", "days": 3}
TOOL_ARGUMENT_PIECES: list[str] = ['{"city": "Par', 'is", "days"', ': 3}']
EMBEDDING: list[float] = [0.125, -0.25, 0.5, -0.75, 1.0, 0.0625, -0.03125, 0.375]
RETRY_AFTER = "1"
SLOW_TIMEOUT = 10.0
# What mock-garbage puts among the events of a stream.
GARBAGE_EVENTS: list[bytes] = [
    b"this line is no SSE field\n\n",
    b'data: {"choices": [{"delta": {"content": "broken\n\n',
    b"data: \xff\xfe not utf-8\n\n",
    b": a comment line\n\n",
]
ANTHROPIC_START_OUTPUT_TOKENS = 1

USAGE: dict[str, dict[str, int]] = {
    "openai.chat": {"prompt_tokens": 17, "completion_tokens": 9, "cached_tokens": 4, "reasoning_tokens": 3},
    "openai.completions": {"prompt_tokens": 12, "completion_tokens": 5},
    "openai.responses": {"input_tokens": 19, "output_tokens": 11, "cached_tokens": 6, "reasoning_tokens": 5},
    "openai.embeddings": {"prompt_tokens": 8},
    "anthropic.messages": {
        "input_tokens": 23,
        "output_tokens": 13,
        "cache_creation_input_tokens": 7,
        "cache_read_input_tokens": 5,
    },
    "gemini.generate": {
        "promptTokenCount": 29,
        "candidatesTokenCount": 15,
        "cachedContentTokenCount": 8,
        "thoughtsTokenCount": 6,
    },
    "cohere.chat": {
        "billed_input_tokens": 31,
        "billed_output_tokens": 17,
        "input_tokens": 95,
        "output_tokens": 17,
    },
}


def wire_usage(family: str, usage: Mapping[str, Mapping[str, int]] | None = None) -> dict[str, Any]:
    """The exact final usage object the mock sends for ``family``."""
    u = dict((usage or USAGE)[family])
    if family == "openai.chat":
        return {
            "prompt_tokens": u["prompt_tokens"],
            "completion_tokens": u["completion_tokens"],
            "total_tokens": u["prompt_tokens"] + u["completion_tokens"],
            "prompt_tokens_details": {"cached_tokens": u["cached_tokens"], "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": u["reasoning_tokens"],
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
    if family == "openai.completions":
        return {
            "prompt_tokens": u["prompt_tokens"],
            "completion_tokens": u["completion_tokens"],
            "total_tokens": u["prompt_tokens"] + u["completion_tokens"],
        }
    if family == "openai.responses":
        return {
            "input_tokens": u["input_tokens"],
            "input_tokens_details": {"cached_tokens": u["cached_tokens"], "cache_write_tokens": 0},
            "output_tokens": u["output_tokens"],
            "output_tokens_details": {"reasoning_tokens": u["reasoning_tokens"]},
            "total_tokens": u["input_tokens"] + u["output_tokens"],
        }
    if family == "openai.embeddings":
        return {"prompt_tokens": u["prompt_tokens"], "total_tokens": u["prompt_tokens"]}
    if family == "anthropic.messages":
        return {
            "input_tokens": u["input_tokens"],
            "cache_creation_input_tokens": u["cache_creation_input_tokens"],
            "cache_read_input_tokens": u["cache_read_input_tokens"],
            "cache_creation": {
                "ephemeral_5m_input_tokens": u["cache_creation_input_tokens"],
                "ephemeral_1h_input_tokens": 0,
            },
            "output_tokens": u["output_tokens"],
            "service_tier": "standard",
        }
    if family == "gemini.generate":
        return _gemini_usage(u, u["candidatesTokenCount"])
    if family == "cohere.chat":
        return {
            "billed_units": {"input_tokens": u["billed_input_tokens"], "output_tokens": u["billed_output_tokens"]},
            "tokens": {"input_tokens": u["input_tokens"], "output_tokens": u["output_tokens"]},
        }
    raise KeyError(family)


def _gemini_usage(u: Mapping[str, int], candidates: int) -> dict[str, Any]:
    prompt = u["promptTokenCount"]
    out: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates + u.get("thoughtsTokenCount", 0),
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
    if u.get("cachedContentTokenCount"):
        out["cachedContentTokenCount"] = u["cachedContentTokenCount"]
        out["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": u["cachedContentTokenCount"]}]
    if u.get("thoughtsTokenCount"):
        out["thoughtsTokenCount"] = u["thoughtsTokenCount"]
    return out


# --------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only header mapping (repeated headers joined by ', ')."""

    def __init__(self, items: list[tuple[str, str]]):
        self._items = list(items)
        self._d: dict[str, str] = {}
        for k, v in items:
            lk = k.lower()
            self._d[lk] = f"{self._d[lk]}, {v}" if lk in self._d else v

    def __getitem__(self, key: str) -> str:
        return self._d[key.lower()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._d

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def items_raw(self) -> list[tuple[str, str]]:
        """Headers as received, original case and order."""
        return list(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: Headers
    body: bytes
    seq: int
    received_at: float
    family: str = "unknown"
    model: str | None = None
    stream: bool = False
    request_id: str | None = None
    status: int | None = None
    first_chunk_at: float | None = None
    finished_at: float | None = None
    complete: bool = False  # False when the mock cut the response (or never finished it)
    peer_closed_at: float | None = None  # the peer closed the connection before the response was complete
    response_body: bytes = b""  # body bytes sent (chunk framing removed)
    response_headers: Headers = field(default_factory=lambda: Headers([]))  # case-insensitive

    @property
    def params(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.query, keep_blank_values=True).items()}

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


# --------------------------------------------------------------------------
# Response plans
# --------------------------------------------------------------------------

# Stream items are (kind, bytes) with kind "pre" | "content" | "post".
StreamItems = Iterator[tuple[str, bytes]]


@dataclass
class _Json:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Stream:
    items: StreamItems
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _sse(data: Any, event: str | None = None, eol: str = "\n") -> bytes:
    payload = data if isinstance(data, str) else _dumps(data)
    head = f"event: {event}{eol}" if event else ""
    return f"{head}data: {payload}{eol}{eol}".encode()


_ERROR_RE = re.compile(r"mock-error-(\d{3})")

_OPENAI_ERRORS = {
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _forced_tool(body: dict, family: str) -> str | None:
    """The tool a request forces the model to call (the named one, else its first), or None."""
    tools, choice = body.get("tools") or [], body.get("tool_choice")
    if not tools or not isinstance(tools, list):
        return None
    if family == "gemini":  # toolConfig.functionCallingConfig mode ANY, optionally naming the allowed functions
        config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
        declared = [d.get("name") for t in tools for d in t.get("functionDeclarations") or []]
        if config.get("mode") != "ANY" or not declared:
            return None
        return (config.get("allowedFunctionNames") or declared)[0]
    if family == "openai":
        first = (tools[0].get("function") or {}).get("name")
        if choice == "required":
            return first
        return (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    kind = choice.get("type") if isinstance(choice, dict) else None
    return tools[0].get("name") if kind == "any" else choice.get("name") if kind == "tool" else None


def _error_body(family: str, status: int, seq: int) -> Any:
    msg = f"Mock error {status}"
    if status == 429:
        msg = "Rate limit reached (mock). Please try again later."
    elif status >= 500:
        msg = "The server had an error while processing your request (mock)."
    if family.startswith("anthropic"):
        etype = _ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": etype, "message": msg}, "request_id": f"req_mock_{seq}"}
    if family.startswith("gemini"):
        gstatus = _GOOGLE_STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
        return {"error": {"code": status, "message": msg, "status": gstatus}}
    if family.startswith("cohere"):
        return {"id": f"mock-error-{seq:08d}", "message": msg}
    etype, code = _OPENAI_ERRORS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": msg, "type": etype, "param": None, "code": code}}


# --------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # a burst of hundreds of connections must queue, not be refused
    daemon_threads = True
    allow_reuse_address = True
    mock: "MockProvider"


class _CutConnection(Exception):
    def __init__(self, reset: bool = False):
        super().__init__()
        self.reset = reset


class _PeerClosed(Exception):
    pass


def _garble(event: bytes) -> bytes:
    """An event carrying a usage object with its JSON broken there, so the usage cannot be read."""
    for key in (b'"usageMetadata":{', b'"usage":{'):
        if key in event:
            return event.replace(key, key.replace(b'":', b":"), 1)
    return event


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "MockProvider/1.0"
    sys_version = ""
    timeout = 120  # idle keep-alive connections
    server: _Server

    # -- plumbing ----------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.mock._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.mock._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    # -- main --------------------------------------------------------------

    def _handle(self) -> None:
        mock = self.server.mock
        body = self._read_body()
        split = urlsplit(self.path)
        rec = mock._record(
            method=self.command,
            path=split.path,
            query=split.query,
            headers=Headers(list(self.headers.items())),
            body=body,
        )
        try:
            plan = mock._plan(rec)
        except Exception as exc:  # a bug in the mock: answer 500 rather than hang
            plan = _Json(500, {"error": {"message": f"mock failure: {exc!r}", "type": "server_error",
                                         "param": None, "code": None}})
        rec.status = plan.status
        try:
            if "mock-hang" in (rec.model or ""):
                self._wait_for_release(rec)
            if isinstance(plan, _Json):
                self._send_json(rec, plan)
            else:
                self._send_stream(rec, plan)
        except _CutConnection as cut:
            self.close_connection = True
            try:
                if cut.reset:  # close with SO_LINGER 0: the kernel answers with RST
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                else:
                    self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        except _PeerClosed:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            if not rec.complete and rec.peer_closed_at is None:
                rec.peer_closed_at = time.monotonic()

    def _wait_for_release(self, rec: RecordedRequest) -> None:
        """Block until mock.release_stream (at most SLOW_TIMEOUT s) or raise _PeerClosed when the peer hangs up."""
        mock = self.server.mock
        deadline = time.monotonic() + SLOW_TIMEOUT
        while not mock.release_stream.wait(0.02):
            if self._peer_closed():
                rec.peer_closed_at = time.monotonic()
                raise _PeerClosed
            if time.monotonic() > deadline:
                mock.slow_timeouts += 1
                return

    def _peer_closed(self) -> bool:
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _common_headers(self, rec: RecordedRequest, extra: dict[str, str]) -> dict[str, str]:
        h: dict[str, str] = {"x-mock-seq": str(rec.seq)}
        if rec.family.startswith("openai"):
            h["x-request-id"] = rec.request_id or ""
            h["openai-processing-ms"] = "1"
            h["openai-version"] = "2020-10-01"
        elif rec.family.startswith("anthropic"):
            h["request-id"] = rec.request_id or ""
        h.update(extra)
        return h

    def _start(self, rec: RecordedRequest, status: int, headers: dict[str, str]) -> None:
        rec.response_headers = Headers(list(headers.items()))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def _send_json(self, rec: RecordedRequest, plan: _Json) -> None:
        data = _dumps(plan.body).encode()
        model = rec.model or ""
        if "mock-truncated" in model and plan.status == 200:
            data = data[: len(data) // 2]
        ctype = "application/json; charset=UTF-8" if rec.family.startswith("gemini") else "application/json"
        headers = self._common_headers(rec, {"Content-Type": ctype, "Content-Length": str(len(data))})
        headers.update(plan.headers)
        self._start(rec, plan.status, headers)
        cut = ("mock-cut" in model or "mock-reset" in model) and plan.status == 200
        if cut:
            data = data[: len(data) // 2]
        rec.first_chunk_at = time.monotonic()
        if not cut:
            rec.finished_at = time.monotonic()
        rec.response_body = data
        rec.complete = not cut
        self.wfile.write(data)
        self.wfile.flush()
        if cut:
            raise _CutConnection(reset="mock-reset" in model)

    def _write_chunk(self, rec: RecordedRequest, data: bytes) -> None:
        if rec.first_chunk_at is None:
            rec.first_chunk_at = time.monotonic()
        rec.response_body += data
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _send_stream(self, rec: RecordedRequest, plan: _Stream) -> None:
        mock = self.server.mock
        model = rec.model or ""
        slow, cut = "mock-slow" in model, "mock-cut" in model or "mock-reset" in model
        garbage = "mock-garbage" in model
        headers = self._common_headers(
            rec,
            {
                "Content-Type": plan.headers.pop("Content-Type", "text/event-stream; charset=utf-8"),
                "Transfer-Encoding": "chunked",
                "Cache-Control": "no-cache",
            },
        )
        headers.update(plan.headers)
        self._start(rec, plan.status, headers)
        n_content = 0
        pending: bytes | None = None  # hold one item back so finished_at precedes the last write
        items = plan.items
        if garbage:
            items = _with_garbage(items)
        for kind, data in items:
            if pending is not None:
                self._write_chunk(rec, pending)
                if mock.chunk_delay:
                    time.sleep(mock.chunk_delay)
            pending = data
            if kind == "content":
                n_content += 1
                if slow and n_content == 1:
                    mock.slow_stream_started.set()  # set before the write: a client that saw it sees this set
                    self._write_chunk(rec, pending)
                    pending = None
                    self._wait_for_release(rec)
                elif cut and n_content == 2:
                    self._write_chunk(rec, pending)
                    rec.finished_at = time.monotonic()
                    raise _CutConnection(reset="mock-reset" in model)
        rec.finished_at = time.monotonic()
        rec.complete = True
        if pending is not None:
            rec.response_body += pending
            self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(pending), pending))
        else:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _with_garbage(items: StreamItems) -> StreamItems:
    """mock-garbage: junk after the first event, and the usage of every event made unreadable."""
    for i, (kind, data) in enumerate(items):
        yield kind, _garble(data)
        if i == 0:
            for junk in GARBAGE_EVENTS:
                yield kind, junk


class MockProvider:
    """Fake AI provider server.  See the module docstring for the full contract."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._host, self._port = host, port
        self._lock = threading.RLock()
        self._seq = itertools.count(1)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self.connections_opened = 0  # TCP connections accepted since start: shows upstream keep-alive
        self.requests: list[RecordedRequest] = []
        self.usage: dict[str, dict[str, int]] = copy.deepcopy(USAGE)
        self.release_stream = threading.Event()
        self.slow_stream_started = threading.Event()
        self.slow_timeouts = 0
        self.chunk_delay = 0.0
        self._next_error: tuple[int, Any, dict[str, str] | None] | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> "MockProvider":
        if self._server is not None:
            return self
        server = _Server((self._host, self._port), _Handler)
        server.mock = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="MockProvider", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self.release_stream.set()  # unblock slow streams
        server.shutdown()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> "MockProvider":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "MockProvider not started"
        return self._server.server_address[1]

    @property
    def host(self) -> str:
        return self._host

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # -- controls ----------------------------------------------------------

    @property
    def next_error(self) -> tuple[int, Any, dict[str, str] | None] | None:
        with self._lock:
            return self._next_error

    @next_error.setter
    def next_error(self, value: tuple | None) -> None:
        if value is not None:
            value = tuple(value) + (None,) * (3 - len(value))
        with self._lock:
            self._next_error = value  # type: ignore[assignment]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._next_error = None
            self.usage = copy.deepcopy(USAGE)
            self.slow_timeouts = 0
            self.chunk_delay = 0.0
        self.release_stream.clear()
        self.slow_stream_started.clear()

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.requests) >= n:
                    return list(self.requests)
            time.sleep(0.01)
        raise TimeoutError(f"expected {n} requests, got {len(self.requests)}")

    @property
    def last(self) -> RecordedRequest:
        with self._lock:
            return self.requests[-1]

    def wire_usage(self, family: str) -> dict[str, Any]:
        """The usage object this instance sends for ``family`` (honours edits to ``self.usage``)."""
        return wire_usage(family, self.usage)

    # -- internals ---------------------------------------------------------

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)
            self.connections_opened += add

    def _record(self, **kw: Any) -> RecordedRequest:
        with self._lock:
            rec = RecordedRequest(seq=next(self._seq), received_at=time.monotonic(), **kw)
            rec.request_id = f"req_mock_{rec.seq}"
            self.requests.append(rec)
            return rec

    def _pop_error(self) -> tuple[int, Any, dict[str, str] | None] | None:
        with self._lock:
            err, self._next_error = self._next_error, None
            return err

    def _plan(self, rec: RecordedRequest) -> _Json | _Stream:
        path = rec.path.rstrip("/")
        body = rec.json if rec.body else {}
        if not isinstance(body, dict):
            body = {}
        route = self._route(rec.method, path, rec, body)
        if route is None:
            if rec.method == "GET" and path == "/health":
                return _Json(200, {"ok": True})
            return _Json(404, {"error": {"message": f"Unknown path {rec.method} {rec.path}",
                                         "type": "invalid_request_error", "param": None,
                                         "code": "unknown_url"}})
        family, fn = route
        rec.family = family

        err = self._pop_error()
        if err is not None:
            status, ebody, eheaders = err
            return _Json(status, ebody if ebody is not None else _error_body(family, status, rec.seq),
                         dict(eheaders or {}))
        m = _ERROR_RE.search(rec.model or "")
        if m:
            status = int(m.group(1))
            headers = {"retry-after": RETRY_AFTER} if status == 429 else {}
            if status == 429 and family.startswith("openai"):
                headers.update({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s"})
            if family.startswith("anthropic"):
                headers["x-should-retry"] = "true" if status in (429, 500, 529) else "false"
            return _Json(status, _error_body(family, status, rec.seq), headers)
        return fn(rec, body)

    def _route(self, method: str, path: str, rec: RecordedRequest, body: dict):
        if method != "POST":
            return None
        # Gemini: /v1beta/models/{model}:{action}
        gm = re.search(r"/models/([^/:]+):(generateContent|streamGenerateContent|embedContent|batchEmbedContents)$",
                       path)
        if gm:
            rec.model = gm.group(1)
            action = gm.group(2)
            if action == "generateContent":
                return "gemini.generate", self._gemini_generate
            if action == "streamGenerateContent":
                rec.stream = True
                return "gemini.generate", self._gemini_generate
            return "gemini.embed", self._gemini_embed
        if path.endswith("/v1/messages/count_tokens"):
            rec.model = body.get("model")
            return "anthropic.count_tokens", self._anthropic_count
        if path.endswith("/v1/messages"):
            rec.model = body.get("model")
            rec.stream = bool(body.get("stream"))
            return "anthropic.messages", self._anthropic
        if path.endswith("/v2/chat"):
            rec.model = body.get("model")
            rec.stream = bool(body.get("stream"))
            return "cohere.chat", self._cohere
        table = [
            ("chat/completions", "openai.chat", self._openai_chat),
            ("completions", "openai.completions", self._openai_completions),
            ("responses", "openai.responses", self._openai_responses),
            ("embeddings", "openai.embeddings", self._openai_embeddings),
            ("images/generations", "openai.images", self._openai_images),
            ("batches", "openai.batches", self._openai_batches),
        ]
        for suffix, family, fn in table:
            if path.endswith("/" + suffix):
                model = body.get("model")
                if not model:  # Azure: /openai/deployments/<deployment>/...
                    am = re.search(r"/deployments/([^/]+)/", path)
                    model = am.group(1) if am else None
                rec.model = model
                rec.stream = bool(body.get("stream"))
                return family, fn
        return None

    # -- OpenAI ------------------------------------------------------------

    def _openai_chat(self, rec: RecordedRequest, body: dict) -> _Json | _Stream:
        cid, created, model = f"chatcmpl-mock{rec.seq}", int(time.time()), rec.model
        usage = wire_usage("openai.chat", self.usage)
        tool = _forced_tool(body, "openai")
        call_id = f"call_mock{rec.seq}"
        if not rec.stream:
            message: dict[str, Any] = {"role": "assistant", "content": FULL_TEXT, "refusal": None, "annotations": []}
            if tool:
                message.update(content=None, tool_calls=[{"id": call_id, "type": "function", "function": {
                    "name": tool, "arguments": json.dumps(TOOL_ARGUMENTS)}}])
            return _Json(200, {
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{
                    "index": 0,
                    "message": message,
                    "logprobs": None, "finish_reason": "tool_calls" if tool else "stop",
                }],
                "usage": usage, "service_tier": "default", "system_fingerprint": "fp_mock",
            })
        opts = body.get("stream_options") or {}
        include_usage = bool(opts.get("include_usage"))
        obfuscate = opts.get("include_obfuscation", True) is not False

        def chunk(delta: dict, finish: str | None, obf: str) -> bytes:
            c: dict[str, Any] = {
                "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "service_tier": "default", "system_fingerprint": "fp_mock",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                c["usage"] = None
            if obfuscate:
                c["obfuscation"] = obf
            return _sse(c)

        def items() -> StreamItems:
            if tool:
                yield "pre", chunk({"role": "assistant", "content": None, "tool_calls": [{
                    "index": 0, "id": call_id, "type": "function", "function": {"name": tool, "arguments": ""}}],
                    "refusal": None}, None, "mOcK0")
                for piece in TOOL_ARGUMENT_PIECES:
                    yield "content", chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, None,
                                           "mOcK")
                yield "post", chunk({}, "tool_calls", "mOcKf")
            else:
                yield "pre", chunk({"role": "assistant", "content": "", "refusal": None}, None, "mOcK0")
                for piece in STREAM_TEXT:
                    yield "content", chunk({"content": piece}, None, "mOcK")
                yield "post", chunk({}, "stop", "mOcKf")
            if include_usage:
                yield "post", _sse({
                    "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "service_tier": "default", "system_fingerprint": "fp_mock", "choices": [], "usage": usage,
                    **({"obfuscation": "mOcKu"} if obfuscate else {}),
                })
            yield "post", _sse("[DONE]")

        return _Stream(items(), self._openai_headers())

    @staticmethod
    def _openai_headers() -> dict[str, str]:
        return {"Content-Type": "text/event-stream; charset=utf-8"}

    def _openai_completions(self, rec: RecordedRequest, body: dict) -> _Json | _Stream:
        cid, created, model = f"cmpl-mock{rec.seq}", int(time.time()), rec.model
        usage = wire_usage("openai.completions", self.usage)
        if not rec.stream:
            return _Json(200, {
                "id": cid, "object": "text_completion", "created": created, "model": model,
                "choices": [{"text": FULL_TEXT, "index": 0, "logprobs": None, "finish_reason": "stop"}],
                "usage": usage, "system_fingerprint": "fp_mock",
            })
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(text: str, finish: str | None) -> bytes:
            c: dict[str, Any] = {
                "id": cid, "object": "text_completion", "created": created, "model": model,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
                "system_fingerprint": "fp_mock",
            }
            if include_usage:
                c["usage"] = None
            return _sse(c)

        def items() -> StreamItems:
            for piece in STREAM_TEXT:
                yield "content", chunk(piece, None)
            yield "post", chunk("", "stop")
            if include_usage:
                yield "post", _sse({"id": cid, "object": "text_completion", "created": created, "model": model,
                                    "choices": [], "usage": usage, "system_fingerprint": "fp_mock"})
            yield "post", _sse("[DONE]")

        return _Stream(items(), self._openai_headers())

    def _openai_responses(self, rec: RecordedRequest, body: dict) -> _Json | _Stream:
        rid, msg_id, created = f"resp_mock{rec.seq}", f"msg_mock{rec.seq}", int(time.time())

        def response(status: str, output: list, usage: Any) -> dict:
            return {
                "id": rid, "object": "response", "created_at": created, "status": status,
                "background": False, "error": None, "incomplete_details": None,
                "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
                "max_tool_calls": None, "model": rec.model, "output": output,
                "parallel_tool_calls": True, "previous_response_id": body.get("previous_response_id"),
                "prompt_cache_key": None, "reasoning": {"effort": None, "summary": None},
                "safety_identifier": None, "service_tier": "default", "store": body.get("store", True),
                "temperature": body.get("temperature", 1.0), "text": {"format": {"type": "text"}, "verbosity": "medium"},
                "tool_choice": "auto", "tools": [], "top_logprobs": 0, "top_p": body.get("top_p", 1.0),
                "truncation": "disabled", "usage": usage, "user": None, "metadata": body.get("metadata") or {},
                **({"completed_at": created} if status == "completed" else {}),
            }

        part_done = {"type": "output_text", "annotations": [], "logprobs": [], "text": FULL_TEXT}
        item_done = {"id": msg_id, "type": "message", "status": "completed", "content": [part_done],
                     "role": "assistant"}
        usage = wire_usage("openai.responses", self.usage)
        if not rec.stream:
            return _Json(200, response("completed", [item_done], usage))

        seq = itertools.count(0)

        def ev(etype: str, **fields: Any) -> bytes:
            return _sse({"type": etype, "sequence_number": next(seq), **fields}, event=etype)

        def items() -> StreamItems:
            yield "pre", ev("response.created", response=response("in_progress", [], None))
            yield "pre", ev("response.in_progress", response=response("in_progress", [], None))
            yield "pre", ev("response.output_item.added", output_index=0,
                            item={"id": msg_id, "type": "message", "status": "in_progress", "content": [],
                                  "role": "assistant"})
            yield "pre", ev("response.content_part.added", item_id=msg_id, output_index=0, content_index=0,
                            part={"type": "output_text", "annotations": [], "logprobs": [], "text": ""})
            for piece in STREAM_TEXT:
                yield "content", ev("response.output_text.delta", item_id=msg_id, output_index=0,
                                    content_index=0, delta=piece, logprobs=[], obfuscation="mOcK")
            yield "post", ev("response.output_text.done", item_id=msg_id, output_index=0, content_index=0,
                             text=FULL_TEXT, logprobs=[])
            yield "post", ev("response.content_part.done", item_id=msg_id, output_index=0, content_index=0,
                             part=part_done)
            yield "post", ev("response.output_item.done", output_index=0, item=item_done)
            yield "post", ev("response.completed", response=response("completed", [item_done], usage))

        return _Stream(items(), self._openai_headers())

    def _openai_embeddings(self, rec: RecordedRequest, body: dict) -> _Json:
        inputs = body.get("input")
        n = len(inputs) if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else 1
        if body.get("encoding_format") == "base64":
            vec: Any = base64.b64encode(struct.pack(f"<{len(EMBEDDING)}f", *EMBEDDING)).decode()
        else:
            vec = list(EMBEDDING)
        return _Json(200, {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": vec} for i in range(n)],
            "model": rec.model,
            "usage": wire_usage("openai.embeddings", self.usage),
        })

    def _openai_batches(self, rec: RecordedRequest, body: dict) -> _Json:
        """A batch created: what the batch costs is billed later, so Tollgate does not meter it."""
        return _Json(200, {"id": f"batch_mock{rec.seq}", "object": "batch", "endpoint": body.get("endpoint"),
                           "input_file_id": body.get("input_file_id"), "completion_window": "24h",
                           "status": "validating", "created_at": int(time.time()), "errors": None,
                           "request_counts": {"total": 0, "completed": 0, "failed": 0}})

    def _openai_images(self, rec: RecordedRequest, body: dict) -> _Json:
        """dall-e style: the images, no usage (priced per image by Tollgate)."""
        n = body.get("n") if isinstance(body.get("n"), int) and body.get("n") > 0 else 1
        image = base64.b64encode(b"\x89PNG\r\n\x1a\nmock").decode()
        item = {"b64_json": image} if body.get("response_format") == "b64_json" else {
            "url": f"https://images.mock.invalid/{rec.seq}.png"}
        return _Json(200, {"created": int(time.time()), "data": [dict(item, revised_prompt=FULL_TEXT)] * n})

    # -- Anthropic ---------------------------------------------------------

    def _anthropic_count(self, rec: RecordedRequest, body: dict) -> _Json:
        return _Json(200, {"input_tokens": self.usage["anthropic.messages"]["input_tokens"]})

    def _anthropic(self, rec: RecordedRequest, body: dict) -> _Json | _Stream:
        mid, model = f"msg_mock{rec.seq}", rec.model
        usage = wire_usage("anthropic.messages", self.usage)
        tool = _forced_tool(body, "anthropic")
        tool_id = f"toolu_mock{rec.seq}"
        if not rec.stream:
            content = ([{"type": "tool_use", "id": tool_id, "name": tool, "input": TOOL_ARGUMENTS}] if tool
                       else [{"type": "text", "text": FULL_TEXT}])
            return _Json(200, {
                "id": mid, "type": "message", "role": "assistant", "model": model, "content": content,
                "stop_reason": "tool_use" if tool else "end_turn", "stop_sequence": None, "usage": usage,
            })
        start_usage = dict(usage, output_tokens=ANTHROPIC_START_OUTPUT_TOKENS)

        def ev(etype: str, **fields: Any) -> bytes:
            return _sse({"type": etype, **fields}, event=etype)

        def items() -> StreamItems:
            yield "pre", ev("message_start", message={
                "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": start_usage})
            if tool:
                yield "pre", ev("content_block_start", index=0,
                                content_block={"type": "tool_use", "id": tool_id, "name": tool, "input": {}})
                yield "pre", ev("ping")
                for piece in TOOL_ARGUMENT_PIECES:
                    yield "content", ev("content_block_delta", index=0,
                                        delta={"type": "input_json_delta", "partial_json": piece})
            else:
                yield "pre", ev("content_block_start", index=0, content_block={"type": "text", "text": ""})
                yield "pre", ev("ping")
                for piece in STREAM_TEXT:
                    yield "content", ev("content_block_delta", index=0, delta={"type": "text_delta", "text": piece})
            yield "post", ev("content_block_stop", index=0)
            yield "post", ev("message_delta", delta={"stop_reason": "tool_use" if tool else "end_turn",
                                                     "stop_sequence": None},
                             usage={"output_tokens": usage["output_tokens"]})
            yield "post", ev("message_stop")

        return _Stream(items(), {"Content-Type": "text/event-stream; charset=utf-8"})

    # -- Gemini ------------------------------------------------------------

    def _gemini_generate(self, rec: RecordedRequest, body: dict) -> _Json | _Stream:
        u = self.usage["gemini.generate"]
        resp_id, model = f"mockResp{rec.seq:06d}", rec.model

        tool = _forced_tool(body, "gemini")

        def resp(text: str, finish: bool, candidates: int) -> dict:
            part = {"functionCall": {"name": tool, "args": TOOL_ARGUMENTS}} if tool else {"text": text}
            cand: dict[str, Any] = {"content": {"parts": [part], "role": "model"}}
            if finish:
                cand["finishReason"] = "STOP"
            cand["index"] = 0
            return {"candidates": [cand], "usageMetadata": _gemini_usage(u, candidates),
                    "modelVersion": model, "responseId": resp_id}

        if not rec.stream:
            return _Json(200, resp(FULL_TEXT, True, u["candidatesTokenCount"]))
        n = 1 if tool else len(STREAM_TEXT)  # Gemini streams a function call whole, in one chunk
        chunks = [resp(p, i == n - 1, u["candidatesTokenCount"] if i == n - 1 else min(i + 1, u["candidatesTokenCount"]))
                  for i, p in enumerate(STREAM_TEXT[:n])]
        if rec.params.get("alt") == "sse":
            def items() -> StreamItems:
                for c in chunks:
                    yield "content", _sse(c, eol="\r\n")
            return _Stream(items(), {"Content-Type": "text/event-stream"})

        def items_json() -> StreamItems:  # Google's streamed JSON array (no alt=sse)
            for i, c in enumerate(chunks):
                text = json.dumps(c, indent=2)
                yield "content", (("[" if i == 0 else "\n,\r\n") + text).encode()
            yield "post", b"\n]"
        return _Stream(items_json(), {"Content-Type": "application/json; charset=UTF-8"})

    def _gemini_embed(self, rec: RecordedRequest, body: dict) -> _Json:
        if rec.path.endswith(":batchEmbedContents"):
            n = len(body.get("requests") or [None])
            return _Json(200, {"embeddings": [{"values": list(EMBEDDING)} for _ in range(n)]})
        return _Json(200, {"embedding": {"values": list(EMBEDDING)}})

    # -- Cohere v2 -----------------------------------------------------------

    def _cohere(self, rec: RecordedRequest, body: dict) -> _Json | _Stream:
        cid = f"00000000-0000-4000-8000-{rec.seq:012d}"
        usage = wire_usage("cohere.chat", self.usage)
        if not rec.stream:
            return _Json(200, {
                "id": cid,
                "message": {"role": "assistant", "content": [{"type": "text", "text": FULL_TEXT}]},
                "finish_reason": "COMPLETE",
                "usage": usage,
            })

        def ev(etype: str, **fields: Any) -> bytes:
            return _sse({"type": etype, **fields}, event=etype)

        def items() -> StreamItems:
            yield "pre", ev("message-start", id=cid, delta={"message": {
                "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}})
            yield "pre", ev("content-start", index=0,
                            delta={"message": {"content": {"type": "text", "text": ""}}})
            for piece in STREAM_TEXT:
                yield "content", ev("content-delta", index=0, delta={"message": {"content": {"text": piece}}})
            yield "post", ev("content-end", index=0)
            yield "post", ev("message-end", delta={"finish_reason": "COMPLETE", "usage": usage})

        return _Stream(items(), {"Content-Type": "text/event-stream"})


# --------------------------------------------------------------------------
# pytest fixture
# --------------------------------------------------------------------------

try:
    import pytest

    @pytest.fixture
    def mock_provider() -> Iterator[MockProvider]:
        """A started MockProvider, stopped after the test."""
        with MockProvider() as mock:
            yield mock
except ImportError:  # pragma: no cover
    pass
