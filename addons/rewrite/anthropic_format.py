"""Anthropic messages <-> hub, both directions, streams included.

Anthropic's shape differs from the hub's in four places: the system prompt is a top-level field, tool
calls and their results are content blocks (``tool_use`` in an assistant turn, ``tool_result`` in a user
turn) rather than fields and ``tool`` messages, ``max_tokens`` is required, and usage counts input tokens
without the cached ones. A field with no counterpart raises ``Untranslatable``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from addons.core.compact_json import compact_json
from addons.rewrite.hub import (
    HubChunk,
    HubRequest,
    HubResponse,
    HubUsage,
    Untranslatable,
    call_arguments,
    chunk,
    make_usage,
    usage_chunk,
)
from addons.rewrite.openai_format import error_message
from addons.usage.sse import SSEDecoder

STREAM_CONTENT_TYPE = "text/event-stream; charset=utf-8"
DEFAULT_MAX_TOKENS = 4096
"""max_tokens sent to Anthropic (which requires it) for a client that set none."""

_STOP_TO_HUB = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                "pause_turn": "stop", "refusal": "content_filter", "model_context_window_exceeded": "length"}
_STOP_FROM_HUB = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal",
                  "function_call": "tool_use"}
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                504: "timeout_error", 529: "overloaded_error"}
# Hub request keys Anthropic has no use for, and the values with which they mean "nothing asked".
_NEUTRAL = {"n": (1,), "frequency_penalty": (0, 0.0), "presence_penalty": (0, 0.0), "logprobs": (False,),
            "stream_options": None, "store": (False,)}
_EFFORTS = ("low", "medium", "high")


# -- requests ---------------------------------------------------------------------------------------

def request_to_hub(body: dict) -> HubRequest:
    """An Anthropic messages request as a hub request."""
    body = dict(body)
    hub: HubRequest = {}
    messages: list[dict] = []
    if "model" in body:
        hub["model"] = body.pop("model")
    system = body.pop("system", None)
    if system:
        messages.append({"role": "system", "content": _text_of(system, "system")})
    for i, message in enumerate(_list(body.pop("messages", None), "messages")):
        messages += _message_to_hub(message, f"messages[{i}]")
    hub["messages"] = messages
    if "max_tokens" in body:
        hub["max_tokens"] = body.pop("max_tokens")
    for name in ("temperature", "top_p", "stream"):
        if name in body:
            hub[name] = body.pop(name)
    if "stop_sequences" in body:
        hub["stop"] = list(body.pop("stop_sequences") or [])
    if tools := body.pop("tools", None):
        hub["tools"] = [_tool_to_hub(tool, f"tools[{i}]") for i, tool in enumerate(_list(tools, "tools"))]
    if (choice := body.pop("tool_choice", None)) is not None:
        _tool_choice_to_hub(choice, hub)
    metadata = body.pop("metadata", None) or {}
    if isinstance(metadata, dict) and metadata.get("user_id"):
        hub["user"] = metadata["user_id"]
    if isinstance(metadata, dict) and set(metadata) - {"user_id"}:
        raise Untranslatable("metadata", "only metadata.user_id has a counterpart")
    if (output := body.pop("output_config", None)) is not None:
        _output_config_to_hub(output, hub)
    thinking = body.pop("thinking", None)
    if thinking and thinking.get("type") != "disabled":
        raise Untranslatable("thinking", "extended thinking has no counterpart in the hub (chat completions)")
    for name in body:
        raise Untranslatable(name, "has no counterpart in the target format")
    return hub


def _message_to_hub(message: Any, where: str) -> list[dict]:
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise Untranslatable(f"{where}.role", "must be user or assistant")
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    parts: list[dict] = []
    tool_calls: list[dict] = []
    results: list[dict] = []
    for j, block in enumerate(_list(content, f"{where}.content")):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if isinstance(block, dict):
            _cache_hint(block, at)
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image" and role == "user":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block.get("source"), at)}})
        elif kind == "tool_use" and role == "assistant":
            tool_calls.append({"id": block.get("id"), "type": "function", "function": {
                "name": block.get("name"), "arguments": json.dumps(block.get("input") or {})}})
        elif kind == "tool_result" and role == "user":
            if block.get("is_error"):
                raise Untranslatable(f"{at}.is_error", "a tool error flag has no counterpart")
            results.append({"role": "tool", "tool_call_id": block.get("tool_use_id"),
                            "content": _text_of(block.get("content") or "", f"{at}.content")})
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            continue  # the model's own earlier reasoning: context for Anthropic only, no hub field carries it
        else:
            raise Untranslatable(f"{at}.type", f"{kind!r} content has no counterpart")
    out = list(results)
    if role == "assistant":
        text = "".join(p["text"] for p in parts)
        hub_message: dict = {"role": "assistant", "content": text or None}
        if tool_calls:
            hub_message["tool_calls"] = tool_calls
        if text or tool_calls:
            out.append(hub_message)
    elif parts:
        out.append({"role": "user", "content": parts})
    return out


def _image_url(source: Any, where: str) -> str:
    source = source if isinstance(source, dict) else {}
    if source.get("type") == "base64":
        return f"data:{source.get('media_type')};base64,{source.get('data')}"
    if source.get("type") == "url":
        return source.get("url")
    raise Untranslatable(f"{where}.source.type", f"{source.get('type')!r} images have no counterpart")


def _tool_to_hub(tool: Any, where: str) -> dict:
    if not isinstance(tool, dict) or tool.get("type") not in (None, "custom") or "input_schema" not in tool:
        raise Untranslatable(f"{where}.type", "only client tools with an input_schema have a counterpart")
    _cache_hint(tool, where)
    function = {"name": tool.get("name"), "parameters": tool["input_schema"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _output_config_to_hub(output: Any, hub: HubRequest) -> None:
    """Structured outputs (a JSON schema) and effort, the two Anthropic settings chat completions has too."""
    output = dict(output) if isinstance(output, dict) else {}
    if (fmt := output.pop("format", None)) is not None:
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
            raise Untranslatable("output_config.format.type", "only json_schema has a counterpart")
        schema = {"name": "response", "schema": fmt.get("schema"), "strict": True}
        hub["response_format"] = {"type": "json_schema", "json_schema": schema}
    if (effort := output.pop("effort", None)) is not None:
        if effort not in _EFFORTS:
            raise Untranslatable("output_config.effort", f"{effort!r} has no counterpart (low, medium, high do)")
        hub["reasoning_effort"] = effort
    for name in output:
        raise Untranslatable(f"output_config.{name}", "has no counterpart in the target format")


def _tool_choice_to_hub(choice: Any, hub: HubRequest) -> None:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        hub["tool_choice"] = "auto"
    elif kind == "any":
        hub["tool_choice"] = "required"
    elif kind == "none":
        hub["tool_choice"] = "none"
    elif kind == "tool":
        hub["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    else:
        raise Untranslatable("tool_choice.type", f"{kind!r} has no counterpart")
    if choice.get("disable_parallel_tool_use"):
        hub["parallel_tool_calls"] = False


def request_from_hub(hub: HubRequest, model_in_url: str | None) -> tuple[str | None, dict]:
    """A hub request as an Anthropic messages request."""
    hub = dict(hub)
    body: dict[str, Any] = {"model": hub.pop("model", None) or model_in_url}
    system: list[str] = []
    messages: list[dict] = []
    for i, message in enumerate(_list(hub.pop("messages", None), "messages")):
        where = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            system.append(_text_of(message.get("content") or "", f"{where}.content"))
        elif role == "user":
            _append(messages, "user", _content_from_hub(message.get("content"), where))
        elif role == "assistant":
            _append(messages, "assistant", _assistant_from_hub(message, where))
        elif role == "tool":
            _append(messages, "user", [{"type": "tool_result", "tool_use_id": message.get("tool_call_id"),
                                        "content": _text_of(message.get("content") or "", f"{where}.content")}])
        else:
            raise Untranslatable(f"{where}.role", f"{role!r} has no counterpart")
    if system:
        body["system"] = "\n\n".join(system)
    body["messages"] = messages
    max_tokens = hub.pop("max_tokens", None)
    body["max_tokens"] = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    if (temperature := hub.pop("temperature", None)) is not None:
        if temperature > 1:
            raise Untranslatable("temperature", "Anthropic's temperature goes from 0 to 1")
        body["temperature"] = temperature
    if (top_p := hub.pop("top_p", None)) is not None:
        body["top_p"] = top_p
    if stop := hub.pop("stop", None):
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if hub.pop("stream", False):
        body["stream"] = True
    if tools := hub.pop("tools", None):
        body["tools"] = [_tool_from_hub(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    choice = hub.pop("tool_choice", None)
    parallel = hub.pop("parallel_tool_calls", None)
    if choice is not None or parallel is False:
        body["tool_choice"] = _tool_choice_from_hub(choice)
        if parallel is False:
            body["tool_choice"]["disable_parallel_tool_use"] = True
    if user := hub.pop("user", None):
        body["metadata"] = {"user_id": user}
    output: dict[str, Any] = {}
    response_format = hub.pop("response_format", None) or {"type": "text"}
    if response_format.get("type") == "json_schema":
        output["format"] = {"type": "json_schema", "schema": (response_format.get("json_schema") or {}).get("schema")}
    elif response_format.get("type") != "text":
        raise Untranslatable("response_format.type", f"{response_format.get('type')!r} has no counterpart in Anthropic "
                                                     "messages (json_schema does)")
    if (effort := hub.pop("reasoning_effort", None)) is not None:
        if effort not in _EFFORTS:
            raise Untranslatable("reasoning_effort",
                                 f"{effort!r} has no counterpart in Anthropic (low, medium, high do)")
        output["effort"] = effort
    if output:
        body["output_config"] = output
    for name, value in hub.items():
        neutral = _NEUTRAL.get(name, ())
        if neutral is None or value is None or value in neutral:
            continue
        raise Untranslatable(name, "has no counterpart in Anthropic messages")
    return None, body


def _append(messages: list[dict], role: str, content: list[dict]) -> None:
    """Consecutive turns of one role become one (tool results followed by the user's text, say)."""
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"] += content
    else:
        messages.append({"role": role, "content": content})


def _content_from_hub(content: Any, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = []
    for j, part in enumerate(_list(content, f"{where}.content")):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url":
            blocks.append({"type": "image", "source": _image_source((part.get("image_url") or {}).get("url"), at)})
        else:
            raise Untranslatable(f"{at}.type", f"{kind!r} content has no counterpart in Anthropic messages")
    return blocks


def _image_source(url: Any, where: str) -> dict:
    if isinstance(url, str) and url.startswith("data:"):
        head, _, data = url.partition(",")
        media_type, _, encoding = head[5:].partition(";")
        if encoding != "base64":
            raise Untranslatable(f"{where}.image_url.url", "a data: URL must be base64")
        return {"type": "base64", "media_type": media_type, "data": data}
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        return {"type": "url", "url": url}
    raise Untranslatable(f"{where}.image_url.url", "must be a data: or https: URL")


def _assistant_from_hub(message: dict, where: str) -> list[dict]:
    content = message.get("content")
    blocks = _content_from_hub(content, where) if content else []
    for k, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        arguments = call_arguments(call, f"{where}.tool_calls[{k}]")
        blocks.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": arguments})
    if message.get("function_call"):
        raise Untranslatable(f"{where}.function_call", "the legacy function_call has no counterpart; use tool_calls")
    return blocks


def _tool_from_hub(tool: Any, where: str) -> dict:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise Untranslatable(f"{where}.type", "only function tools have a counterpart in Anthropic messages")
    function = tool.get("function") or {}
    if function.get("strict"):
        raise Untranslatable(f"{where}.function.strict", "strict schemas have no counterpart in Anthropic messages")
    out = {"name": function.get("name"),
           "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _tool_choice_from_hub(choice: Any) -> dict:
    if choice is None or choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    raise Untranslatable("tool_choice", f"{choice!r} has no counterpart in Anthropic messages")


# -- responses --------------------------------------------------------------------------------------

def response_to_hub(body: dict) -> HubResponse:
    text = []
    tool_calls = []
    for block in body.get("content") or []:
        if block.get("type") == "text":
            text.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            tool_calls.append({"id": block.get("id"), "type": "function", "function": {
                "name": block.get("name"), "arguments": json.dumps(block.get("input") or {})}})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": body.get("id"), "object": "chat.completion", "created": int(time.time()), "model": body.get("model"),
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": _STOP_TO_HUB.get(body.get("stop_reason"), "stop")}],
        "usage": usage_to_hub(body.get("usage") or {}),
    }


def usage_to_hub(usage: dict) -> HubUsage:
    read = usage.get("cache_read_input_tokens") or 0
    write = usage.get("cache_creation_input_tokens") or 0
    return make_usage((usage.get("input_tokens") or 0) + read + write, usage.get("output_tokens") or 0,
                      cached=read, cache_write=write)


def usage_from_hub(usage: HubUsage | None) -> dict:
    usage = usage or {}
    details = usage.get("prompt_tokens_details") or {}
    read, write = details.get("cached_tokens") or 0, details.get("cache_write_tokens") or 0
    return {"input_tokens": max((usage.get("prompt_tokens") or 0) - read - write, 0),
            "cache_creation_input_tokens": write, "cache_read_input_tokens": read,
            "output_tokens": usage.get("completion_tokens") or 0}


def response_from_hub(hub: HubResponse) -> dict:
    choice = (hub.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    if message.get("refusal"):  # the model declined: its words, and Anthropic's own stop reason for it
        content.append({"type": "text", "text": message["refusal"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"),
                        "input": _arguments(function.get("arguments"))})
    return {"id": hub.get("id"), "type": "message", "role": "assistant", "model": hub.get("model"),
            "content": content, "stop_reason": "refusal" if message.get("refusal") else _STOP_FROM_HUB.get(
                choice.get("finish_reason"), "end_turn"),
            "stop_sequence": None, "usage": usage_from_hub(hub.get("usage"))}


def _arguments(arguments: Any) -> dict:
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {"_raw": arguments}  # a model's malformed JSON, kept whole rather than lost
    return value if isinstance(value, dict) else {"_value": value}


# -- errors -----------------------------------------------------------------------------------------

def error_from_hub(status: int, message: str, code: str | None = None, param: str | None = None) -> bytes:
    kind = code or _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


def error_to_hub(status: int, body: bytes) -> str:
    return error_message(body)


# -- streams ----------------------------------------------------------------------------------------

class StreamToHub:
    """Anthropic's typed events as hub chunks: text and tool-input deltas as they come, the stop reason with
    message_delta, and the usage (message_start's input side, message_delta's output) once message_stop ends it."""

    def __init__(self, model: str | None = None) -> None:
        self._sse = SSEDecoder()
        self._id, self._model, self._created = "", model or "", int(time.time())
        self._usage: dict = {}
        self._tools: dict[int, int] = {}  # content block index -> hub tool call index
        self._done = False

    def feed(self, data: bytes) -> list[HubChunk]:
        return self._chunks(self._sse.feed(data))

    def close(self) -> list[HubChunk]:
        return self._chunks(self._sse.flush())

    def _chunks(self, events) -> list[HubChunk]:
        out: list[HubChunk] = []
        for event in events:
            if not event.data:
                continue
            try:
                obj = json.loads(event.data)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out += self._event(obj)
        return out

    def _chunk(self, delta: dict | None = None, finish: str | None = None) -> HubChunk:
        return chunk(self._id, self._model, self._created, delta, finish)

    def _event(self, obj: dict) -> list[HubChunk]:
        kind = obj.get("type")
        if kind == "message_start":
            message = obj.get("message") or {}
            self._id = message.get("id") or self._id
            self._model = message.get("model") or self._model
            self._usage.update(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = obj.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = self._tools[obj.get("index")] = len(self._tools)
                return [self._chunk({"tool_calls": [{"index": index, "id": block.get("id"), "type": "function",
                                                     "function": {"name": block.get("name"), "arguments": ""}}]})]
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk({"content": block["text"]})]
            return []
        if kind == "content_block_delta":
            delta = obj.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [self._chunk({"content": delta.get("text", "")})]
            if delta.get("type") == "input_json_delta" and obj.get("index") in self._tools:
                return [self._chunk({"tool_calls": [{"index": self._tools[obj["index"]],
                                                     "function": {"arguments": delta.get("partial_json", "")}}]})]
            return []  # thinking and signature deltas: nothing in the hub carries them
        if kind == "message_delta":
            self._usage.update({k: v for k, v in (obj.get("usage") or {}).items() if v is not None})
            reason = (obj.get("delta") or {}).get("stop_reason")
            return [self._chunk(finish=_STOP_TO_HUB.get(reason, "stop"))] if reason else []
        if kind == "message_stop" and not self._done:
            self._done = True
            return [usage_chunk(self._id, self._model, self._created, usage_to_hub(self._usage))]
        if kind == "error":
            return [{"error": obj.get("error") or {"type": "api_error", "message": "stream error"}}]
        return []


class StreamFromHub:
    """Hub chunks as Anthropic's typed events. message_start goes out with the first chunk; a block opens
    with its first delta and closes when another kind begins; the stop reason waits for the usage chunk
    (the hub's last) so message_delta carries both, as Anthropic's does."""

    content_type = STREAM_CONTENT_TYPE

    def __init__(self, model: str | None = None) -> None:
        self._model = model or ""
        self._started = False
        self._block: tuple[str, int] | None = None  # ("text", -1) or ("tool", hub index) of the open block
        self._next_block = 0
        self._stop: str | None = None
        self._refused = False  # the model declined (OpenAI's refusal deltas): stop_reason "refusal"
        self._ended = False

    @staticmethod
    def _event(kind: str, **fields: Any) -> bytes:
        return f"event: {kind}\ndata: {compact_json({'type': kind, **fields})}\n\n".encode()

    def _start(self, hub_chunk: HubChunk) -> bytes:
        if self._started:
            return b""
        self._started = True
        message = {"id": hub_chunk.get("id") or "msg_rewrite", "type": "message", "role": "assistant",
                   "model": hub_chunk.get("model") or self._model, "content": [], "stop_reason": None,
                   "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
        return self._event("message_start", message=message)

    def _open(self, kind: str, key: int, block: dict) -> bytes:
        if self._block == (kind, key):
            return b""
        out = self._close_block()
        self._block = (kind, key)
        out += self._event("content_block_start", index=self._next_block, content_block=block)
        return out

    def _close_block(self) -> bytes:
        if self._block is None:
            return b""
        self._block = None
        self._next_block += 1
        return self._event("content_block_stop", index=self._next_block - 1)

    def feed(self, hub_chunk: HubChunk) -> bytes:
        if "error" in hub_chunk and "choices" not in hub_chunk:
            error = hub_chunk["error"] if isinstance(hub_chunk["error"], dict) else {"message": str(hub_chunk["error"])}
            return self._event("error", error={"type": error.get("type") or "api_error",
                                                "message": error.get("message") or ""})
        out = self._start(hub_chunk)
        for choice in hub_chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("refusal"):
                self._refused = True
            if text := delta.get("content") or delta.get("refusal"):
                out += self._open("text", -1, {"type": "text", "text": ""})
                out += self._event("content_block_delta", index=self._next_block,
                                   delta={"type": "text_delta", "text": text})
            for call in delta.get("tool_calls") or []:
                function = call.get("function") or {}
                key = call.get("index", 0)
                if call.get("id") or self._block != ("tool", key):
                    out += self._open("tool", key, {"type": "tool_use", "id": call.get("id"),
                                                    "name": function.get("name"), "input": {}})
                if function.get("arguments"):
                    out += self._event("content_block_delta", index=self._next_block,
                                       delta={"type": "input_json_delta", "partial_json": function["arguments"]})
            if choice.get("finish_reason"):
                out += self._close_block()
                self._stop = "refusal" if self._refused else _STOP_FROM_HUB.get(choice["finish_reason"], "end_turn")
        if hub_chunk.get("usage"):
            out += self._end(hub_chunk["usage"])
        return out

    def _end(self, usage: HubUsage | None) -> bytes:
        if self._ended or not self._started:
            return b""
        self._ended = True
        out = self._close_block()
        out += self._event("message_delta", delta={"stop_reason": self._stop or "end_turn", "stop_sequence": None},
                           usage=usage_from_hub(usage))
        return out + self._event("message_stop")

    def close(self) -> bytes:
        return self._end(None)


# -- helpers ----------------------------------------------------------------------------------------

def _list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise Untranslatable(where, "must be a list")
    return value


def _cache_hint(block: dict, where: str) -> None:
    """An `ephemeral` cache_control is a hint whose purpose the providers serve on their own: OpenAI and Gemini
    cache repeated prompt prefixes automatically, and what they read from cache comes back as cached tokens.
    (Bedrock caches only at explicit cache points, which are not added.) Any other kind is refused."""
    hint = block.get("cache_control")
    if hint is not None and (not isinstance(hint, dict) or hint.get("type") != "ephemeral"):
        raise Untranslatable(f"{where}.cache_control", "only ephemeral prompt caching hints are accepted")


def _text_of(content: Any, where: str) -> str:
    """A string, or text blocks/parts joined; anything else in it cannot be carried as text."""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(_list(content, where)):
        if not isinstance(part, dict) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, dict) else None
            raise Untranslatable(f"{where}[{j}].type", f"{kind!r} content has no counterpart here (text only)")
        _cache_hint(part, f"{where}[{j}]")
        texts.append(part.get("text", ""))
    return "\n".join(texts)
