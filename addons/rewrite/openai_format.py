"""OpenAI chat completions <-> hub: nearly the identity, since the hub is this shape.

What differs is normalised on the way in (``max_completion_tokens`` -> ``max_tokens``, a ``stop`` string ->
a list, the ``developer`` role -> ``system``), so the other formats see one spelling of each.
"""

from __future__ import annotations

import json
from typing import Any

from addons.core.compact_json import compact_json
from addons.rewrite.hub import HubChunk, HubRequest, HubResponse, Untranslatable
from addons.usage.sse import SSEDecoder

STREAM_CONTENT_TYPE = "text/event-stream; charset=utf-8"
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 429: "rate_limit_error"}


def request_to_hub(body: dict) -> HubRequest:
    hub = dict(body)
    if "max_completion_tokens" in hub:
        limit = hub.pop("max_completion_tokens")
        if hub.get("max_tokens") not in (None, limit):
            raise Untranslatable("max_completion_tokens", "contradicts max_tokens")
        hub["max_tokens"] = limit
    if isinstance(hub.get("stop"), str):
        hub["stop"] = [hub["stop"]]
    if isinstance(hub.get("messages"), list):
        hub["messages"] = [dict(m, role="system") if isinstance(m, dict) and m.get("role") == "developer" else m
                           for m in hub["messages"]]
    return hub


def request_from_hub(hub: HubRequest, model_in_url: str | None) -> tuple[str | None, dict]:
    body = dict(hub)
    if body.get("stream"):  # the usage arrives in the last chunk, for the client's format to report
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return None, body


def response_to_hub(body: dict) -> HubResponse:
    return body


def response_from_hub(hub: HubResponse) -> dict:
    return hub


def error_from_hub(status: int, message: str, code: str | None = None, param: str | None = None) -> bytes:
    kind = code or _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


def error_to_hub(status: int, body: bytes) -> str:
    return error_message(body)


def error_message(body: bytes) -> str:
    """The message of a JSON error body in any of the common shapes ({"error": {"message"}}, {"message"},
    {"error": "..."}), else the body's text."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")[:1000]
    if isinstance(data, list) and data:  # Google's streamed-array errors
        data = data[0]
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
        for key in ("message", "Message"):
            if isinstance(data.get(key), str):
                return data[key]
    return body.decode("utf-8", "replace")[:1000]


class StreamToHub:
    """OpenAI's chat completion chunks are hub chunks: only the SSE framing and ``[DONE]`` go."""

    def __init__(self, model: str | None = None) -> None:
        self._sse = SSEDecoder()

    def feed(self, data: bytes) -> list[HubChunk]:
        return self._chunks(self._sse.feed(data))

    def close(self) -> list[HubChunk]:
        return self._chunks(self._sse.flush())

    @staticmethod
    def _chunks(events) -> list[HubChunk]:
        chunks = []
        for event in events:
            if not event.data or event.data.strip() == "[DONE]":
                continue
            try:
                obj: Any = json.loads(event.data)
            except ValueError:
                continue  # a provider's broken event: the client cannot use it either
            if isinstance(obj, dict):
                chunks.append(obj)
        return chunks


class StreamFromHub:
    content_type = STREAM_CONTENT_TYPE

    def __init__(self, model: str | None = None) -> None:
        pass

    def feed(self, chunk: HubChunk) -> bytes:
        return b"data: " + compact_json(chunk).encode() + b"\n\n"

    def close(self) -> bytes:
        return b"data: [DONE]\n\n"
