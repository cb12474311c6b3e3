"""Bedrock Converse / ConverseStream to and from the hub, both directions.

Bedrock is both a provider family (the hub request becomes a Converse body and a
``model/{modelId}/converse[-stream]`` path) and a client format (``bedrock``:
boto3's ``converse`` / ``converse_stream`` send Converse bodies). Mappings:

* ``system`` text blocks <-> leading ``system`` messages; ``messages`` content
  blocks: ``text``, ``image`` (bytes, base64 in the JSON wire) <-> ``data:`` URLs,
  ``toolUse`` <-> assistant ``tool_calls``, ``toolResult`` (in a user message)
  <-> ``tool`` messages. Consecutive messages of one role are merged: Converse
  wants user and assistant to alternate.
* ``inferenceConfig`` (maxTokens, temperature, topP, stopSequences);
  ``toolConfig`` (toolSpec with ``inputSchema.json``; toolChoice auto / any /
  tool) <-> ``tools`` and ``tool_choice``; ``outputConfig.textFormat``
  (a JSON schema, as a string) <-> ``response_format`` json_schema;
  ``outputConfig.effort`` <-> ``reasoning_effort``.
* usage: Converse's ``inputTokens`` leave cached tokens out, the hub's
  ``prompt_tokens`` counts them (``+ cacheReadInputTokens + cacheWriteInputTokens``).
* ConverseStream is AWS's binary event stream: decoded with botocore's
  ``EventStreamBuffer``; encoded here (``encode_event``) frame by frame
  (prelude with lengths and CRC32, string headers ``:event-type``,
  ``:content-type``, ``:message-type``, JSON payload, message CRC32).

Hub stream chunks may also be ``{"error": {"message", "type", "code"?}}`` (the
shape OpenAI sends mid-stream): a Bedrock exception frame, or an event the hub
cannot carry; the encoder sends it as an exception frame, which boto3 raises.

Deliberate omissions, named because nothing else is dropped: ``reasoningContent``
blocks in a request's history (Bedrock's Anthropic models drop earlier turns'
reasoning themselves) and the ``signature`` of streamed reasoning. Anything else without a hub equivalent raises
``Untranslatable``. A hub request can reach Bedrock only with images as data
URLs (Converse fetches no URLs).
"""

from __future__ import annotations

import binascii
import json
import struct
import time
import uuid
from typing import Any
from urllib.parse import quote, unquote

from botocore.eventstream import EventStreamBuffer, ParserError

from addons.core.compact_json import compact_json
from addons.rewrite import hub as h
from addons.rewrite.data_urls import data_url, split_data_url
from addons.rewrite.hub import Untranslatable
from addons.rewrite.hub import json_list as _list
from addons.rewrite.hub import refuse_unknown as _refuse_unknown
from addons.rewrite.hub import text_of as _text_of

EVENT_STREAM = "application/vnd.amazon.eventstream"

_STOP_TO_HUB = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                "guardrail_intervened": "content_filter", "content_filtered": "content_filter",
                "model_context_window_exceeded": "length"}
"""Converse's stopReason -> the hub's; the malformed_* reasons end as "stop"."""
_STOP_FROM_HUB = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                  "content_filter": "content_filtered"}
_IMAGE_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}
_IMAGE_FORMAT_OF_MIME = {mime: fmt for fmt, mime in _IMAGE_FORMATS.items()}
_EFFORTS = ("low", "medium", "high", "xhigh")
"""Reasoning efforts both Converse's outputConfig.effort and OpenAI's reasoning_effort name."""
_ERROR_TYPES = {400: "ValidationException", 401: "UnrecognizedClientException", 403: "AccessDeniedException",
                404: "ResourceNotFoundException", 408: "ModelTimeoutException", 424: "ModelErrorException",
                429: "ThrottlingException", 500: "InternalServerException", 503: "ServiceUnavailableException"}
_STREAM_EXCEPTIONS = {400: "validationException", 429: "throttlingException", 503: "serviceUnavailableException"}
"""A hub error chunk's code -> ConverseStream's exception event (anything else: internalServerException)."""



def _dict(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Untranslatable(field, "expected a JSON object")
    return value



def model_and_stream(path: str) -> tuple[str, bool] | None:
    """``(modelId, stream)`` of a Converse client path (``.../model/{modelId}/converse-stream``), else None."""
    head, sep, op = path.split("?", 1)[0].rpartition("/")
    _, sep2, model = head.rpartition("/model/")
    if not sep or not sep2 or not model or op not in ("converse", "converse-stream"):
        return None
    return unquote(model), op == "converse-stream"


def error_type(status: int) -> str:
    """The ``x-amzn-errortype`` (and ``__type``) AWS gives an error of this status."""
    return _ERROR_TYPES.get(status, "InternalServerException" if status >= 500 else "ValidationException")


# -- requests --------------------------------------------------------------------------------------------------


def request_to_hub(body: dict) -> h.HubRequest:
    """A Converse body -> hub request (modelId and stream come from the URL: the endpoint fills them)."""
    body = _dict(body, "")
    _refuse_unknown(body, {"modelId", "messages", "system", "inferenceConfig", "toolConfig", "outputConfig"}, "")
    hub: h.HubRequest = {"messages": []}
    if isinstance(body.get("modelId"), str):
        hub["model"] = body["modelId"]
    texts = []
    for i, block in enumerate(_list(body.get("system"), "system")):
        block = _dict(block, f"system[{i}]")
        _refuse_unknown(block, {"text"}, f"system[{i}].")
        texts.append(str(block.get("text", "")))
    if texts:
        hub["messages"].append({"role": "system", "content": "\n".join(texts)})
    for mi, msg in enumerate(_list(body.get("messages"), "messages")):
        hub["messages"] += _message_to_hub(_dict(msg, f"messages[{mi}]"), f"messages[{mi}]")
    config = _dict(body.get("inferenceConfig"), "inferenceConfig")
    _refuse_unknown(config, {"maxTokens", "temperature", "topP", "stopSequences"}, "inferenceConfig.")
    for src, dst in (("maxTokens", "max_tokens"), ("temperature", "temperature"), ("topP", "top_p")):
        if config.get(src) is not None:
            hub[dst] = config[src]
    if config.get("stopSequences"):
        hub["stop"] = list(config["stopSequences"])
    if "toolConfig" in body:
        hub |= _tool_config_to_hub(_dict(body["toolConfig"], "toolConfig"))
    if "outputConfig" in body:
        hub |= _output_config_to_hub(_dict(body["outputConfig"], "outputConfig"))
    return hub


def _message_to_hub(msg: dict[str, Any], field: str) -> list[dict[str, Any]]:
    _refuse_unknown(msg, {"role", "content"}, f"{field}.")
    role = msg.get("role")
    blocks = [_dict(b, f"{field}.content[{i}]") for i, b in enumerate(_list(msg.get("content"), f"{field}.content"))]
    if role == "assistant":
        texts, calls = [], []
        for i, block in enumerate(blocks):
            bf = f"{field}.content[{i}]"
            if "text" in block:
                _refuse_unknown(block, {"text"}, f"{bf}.")
                texts.append(str(block["text"]))
            elif "toolUse" in block:
                _refuse_unknown(block, {"toolUse"}, f"{bf}.")
                use = _dict(block["toolUse"], f"{bf}.toolUse")
                _refuse_unknown(use, {"toolUseId", "name", "input"}, f"{bf}.toolUse.")
                calls.append({"id": use.get("toolUseId", ""), "type": "function",
                              "function": {"name": use.get("name", ""), "arguments": json.dumps(use.get("input", {}))}})
            elif "reasoningContent" in block:
                continue  # earlier turns' reasoning: Bedrock's models drop it themselves
            else:
                raise Untranslatable(f"{bf}.{next(iter(block), '')}", "an assistant turn crosses as text and tool uses")
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
        if calls:
            message["tool_calls"] = calls
        return [message]
    if role != "user":
        raise Untranslatable(f"{field}.role", f"role {role!r} has no hub equivalent")
    tools, parts = [], []
    for i, block in enumerate(blocks):
        bf = f"{field}.content[{i}]"
        if "text" in block:
            _refuse_unknown(block, {"text"}, f"{bf}.")
            parts.append({"type": "text", "text": str(block["text"])})
        elif "image" in block:
            _refuse_unknown(block, {"image"}, f"{bf}.")
            parts.append(_image_to_hub(_dict(block["image"], f"{bf}.image"), f"{bf}.image"))
        elif "toolResult" in block:
            _refuse_unknown(block, {"toolResult"}, f"{bf}.")
            tools.append(_tool_result_to_hub(_dict(block["toolResult"], f"{bf}.toolResult"), f"{bf}.toolResult"))
        else:
            raise Untranslatable(f"{bf}.{next(iter(block), '')}", "this content block has no hub equivalent")
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        tools.append({"role": "user", "content": "".join(p["text"] for p in parts) if only_text else parts})
    return tools


def _image_to_hub(image: dict[str, Any], field: str) -> dict[str, Any]:
    _refuse_unknown(image, {"format", "source"}, f"{field}.")
    source = _dict(image.get("source"), f"{field}.source")
    fmt = image.get("format")
    if fmt not in _IMAGE_FORMATS:
        raise Untranslatable(f"{field}.format", f"unknown image format {fmt!r}")
    if set(source) != {"bytes"} or not isinstance(source["bytes"], str):
        raise Untranslatable(f"{field}.source", "only inline image bytes cross to the hub (not s3Location)")
    return {"type": "image_url", "image_url": {"url": data_url(_IMAGE_FORMATS[fmt], source["bytes"])}}


def _tool_result_to_hub(result: dict[str, Any], field: str) -> dict[str, Any]:
    _refuse_unknown(result, {"toolUseId", "content", "status"}, f"{field}.")
    if result.get("status") == "error":
        raise Untranslatable(f"{field}.status", "the hub's tool messages carry no error status")
    texts = []
    for i, block in enumerate(_list(result.get("content"), f"{field}.content")):
        block = _dict(block, f"{field}.content[{i}]")
        if set(block) == {"text"}:
            texts.append(str(block["text"]))
        elif set(block) == {"json"}:
            texts.append(json.dumps(block["json"]))
        else:
            raise Untranslatable(f"{field}.content[{i}]", "the hub's tool results are text (or JSON as text)")
    return {"role": "tool", "tool_call_id": result.get("toolUseId", ""), "content": "".join(texts)}


def _tool_config_to_hub(config: dict[str, Any]) -> dict[str, Any]:
    _refuse_unknown(config, {"tools", "toolChoice"}, "toolConfig.")
    hub: dict[str, Any] = {"tools": []}
    for i, tool in enumerate(_list(config.get("tools"), "toolConfig.tools")):
        tf = f"toolConfig.tools[{i}]"
        tool = _dict(tool, tf)
        _refuse_unknown(tool, {"toolSpec"}, f"{tf}.")
        spec = _dict(tool.get("toolSpec"), f"{tf}.toolSpec")
        _refuse_unknown(spec, {"name", "description", "inputSchema", "strict"}, f"{tf}.toolSpec.")
        schema = _dict(spec.get("inputSchema"), f"{tf}.toolSpec.inputSchema")
        _refuse_unknown(schema, {"json"}, f"{tf}.toolSpec.inputSchema.")
        fn: dict[str, Any] = {"name": spec.get("name", "")}
        if "description" in spec:
            fn["description"] = spec["description"]
        if "json" in schema:
            fn["parameters"] = schema["json"]
        if "strict" in spec:
            fn["strict"] = bool(spec["strict"])
        hub["tools"].append({"type": "function", "function": fn})
    if "toolChoice" in config:
        choice = _dict(config["toolChoice"], "toolConfig.toolChoice")
        if set(choice) == {"auto"}:
            hub["tool_choice"] = "auto"
        elif set(choice) == {"any"}:
            hub["tool_choice"] = "required"
        elif set(choice) == {"tool"}:
            name = _dict(choice["tool"], "toolConfig.toolChoice.tool").get("name", "")
            hub["tool_choice"] = {"type": "function", "function": {"name": name}}
        else:
            raise Untranslatable("toolConfig.toolChoice", "one of auto, any or tool")
    return hub


def _output_config_to_hub(config: dict[str, Any]) -> dict[str, Any]:
    _refuse_unknown(config, {"textFormat", "effort"}, "outputConfig.")
    hub: dict[str, Any] = {}
    if "effort" in config:
        if config["effort"] not in _EFFORTS:
            raise Untranslatable("outputConfig.effort", f"{config['effort']!r}: the hub's efforts are {_EFFORTS}")
        hub["reasoning_effort"] = config["effort"]
    if "textFormat" in config:
        hub["response_format"] = _text_format_to_hub(config)
    return hub


def _text_format_to_hub(config: dict[str, Any]) -> dict[str, Any]:
    fmt = _dict(config.get("textFormat"), "outputConfig.textFormat")
    spec = _dict(_dict(fmt.get("structure"), "outputConfig.textFormat.structure").get("jsonSchema"),
                 "outputConfig.textFormat.structure.jsonSchema")
    _refuse_unknown(spec, {"schema", "name", "description"}, "outputConfig.textFormat.structure.jsonSchema.")
    if fmt.get("type") != "json_schema":
        raise Untranslatable("outputConfig.textFormat.type", "only json_schema")
    try:
        schema = json.loads(spec.get("schema", ""))
    except (TypeError, ValueError):
        raise Untranslatable("outputConfig.textFormat.structure.jsonSchema.schema", "not a JSON string") from None
    json_schema: dict[str, Any] = {"name": spec.get("name") or "response", "schema": schema}
    if "description" in spec:
        json_schema["description"] = spec["description"]
    return {"type": "json_schema", "json_schema": json_schema}


def request_from_hub(hub: h.HubRequest, model_in_url: str | None) -> tuple[str | None, dict]:
    """Hub request -> (``model/{modelId}/converse`` or ``/converse-stream``, Converse body)."""
    model = model_in_url or hub.get("model")
    if not model:
        raise Untranslatable("model", "no model in the body or the target URL")
    _refuse_unknown(hub, {"model", "stream", "stream_options", "messages", "tools", "tool_choice", "max_tokens",
                          "temperature", "top_p", "stop", "response_format", "n", "parallel_tool_calls",
                          "presence_penalty", "frequency_penalty", "reasoning_effort"}, "")
    if hub.get("n") not in (None, 1):
        raise Untranslatable("n", "Converse answers one choice")
    if hub.get("parallel_tool_calls") is False:
        raise Untranslatable("parallel_tool_calls", "Converse cannot be kept from calling tools in parallel")
    for key in ("presence_penalty", "frequency_penalty"):
        if hub.get(key) not in (None, 0):
            raise Untranslatable(key, "Converse has no penalties")
    system, messages = _messages_from_hub(hub.get("messages") or [])
    body: dict[str, Any] = {"messages": messages}
    if system:
        body["system"] = [{"text": t} for t in system]
    config: dict[str, Any] = {}
    for src, dst in (("max_tokens", "maxTokens"), ("temperature", "temperature"), ("top_p", "topP")):
        if hub.get(src) is not None:
            config[dst] = hub[src]
    if hub.get("stop"):
        config["stopSequences"] = [hub["stop"]] if isinstance(hub["stop"], str) else list(hub["stop"])
    if config:
        body["inferenceConfig"] = config
    tool_config = _tool_config_from_hub(hub)
    if tool_config:
        body["toolConfig"] = tool_config
    output: dict[str, Any] = {}
    fmt = hub.get("response_format")
    if fmt is not None and (fmt.get("type") if isinstance(fmt, dict) else None) != "text":
        output = _output_config_from_hub(fmt)
    if hub.get("reasoning_effort") is not None:
        if hub["reasoning_effort"] not in _EFFORTS:
            raise Untranslatable("reasoning_effort", f"{hub['reasoning_effort']!r}: Converse's efforts are {_EFFORTS}")
        output["effort"] = hub["reasoning_effort"]
    if output:
        body["outputConfig"] = output
    op = "converse-stream" if hub.get("stream") else "converse"
    return f"model/{quote(unquote(str(model)), safe='')}/{op}", body



def _messages_from_hub(messages: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    return h.turns_from_hub(messages, "Converse", "content", _turn_from_hub)  # Converse wants the roles to alternate


def _turn_from_hub(role: str, msg: dict[str, Any], field: str) -> tuple[str, list[dict[str, Any]]]:
    if role == "user":
        return "user", _user_blocks_from_hub(msg.get("content"), f"{field}.content")
    if role == "assistant":
        return "assistant", _assistant_blocks_from_hub(msg, field)
    text = _text_of(msg.get("content"), f"{field}.content")
    return "user", [{"toolResult": {"toolUseId": msg.get("tool_call_id", ""), "content": [{"text": text}]}}]


def _user_blocks_from_hub(content: Any, field: str) -> list[dict[str, Any]]:
    return h.user_parts_from_hub(content, field, "Converse", _image_block)


def _image_block(url: str, field: str) -> dict[str, Any]:
    split = split_data_url(url, field)
    if split is None:
        raise Untranslatable(field, "Converse takes image bytes, not URLs")
    if split[0] not in _IMAGE_FORMAT_OF_MIME:
        raise Untranslatable(field, f"Converse takes png, jpeg, gif or webp, not {split[0]}")
    return {"image": {"format": _IMAGE_FORMAT_OF_MIME[split[0]], "source": {"bytes": split[1]}}}


def _assistant_blocks_from_hub(msg: dict[str, Any], field: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = _text_of(msg.get("content"), f"{field}.content")
    if text:
        blocks.append({"text": text})
    for ci, call in enumerate(msg.get("tool_calls") or []):
        args = h.call_arguments(call, f"{field}.tool_calls[{ci}]")
        fn = call.get("function") or {}
        blocks.append({"toolUse": {"toolUseId": call.get("id", ""), "name": fn.get("name", ""), "input": args}})
    return blocks or [{"text": ""}]


def _tool_config_from_hub(hub: h.HubRequest) -> dict[str, Any]:
    config: dict[str, Any] = {}
    tools = []
    for i, tool in enumerate(hub.get("tools") or []):
        if tool.get("type") != "function":
            raise Untranslatable(f"tools[{i}].type", f"{tool.get('type')!r} tools have no Converse equivalent")
        fn = tool.get("function") or {}
        _refuse_unknown(fn, {"name", "description", "parameters", "strict"}, f"tools[{i}].function.")
        spec: dict[str, Any] = {"name": fn.get("name", ""),
                                "inputSchema": {"json": fn.get("parameters") or {"type": "object", "properties": {}}}}
        if fn.get("description"):
            spec["description"] = fn["description"]
        if fn.get("strict") is not None:
            spec["strict"] = bool(fn["strict"])
        tools.append({"toolSpec": spec})
    choice = hub.get("tool_choice")
    if choice == "none":
        raise Untranslatable("tool_choice", "Converse has no 'none' tool choice")
    if tools:
        config["tools"] = tools
    if choice is None:
        return config
    if not tools:
        raise Untranslatable("tool_choice", "Converse takes a tool choice only with tools")
    if choice == "auto":
        config["toolChoice"] = {"auto": {}}
    elif choice == "required":
        config["toolChoice"] = {"any": {}}
    elif isinstance(choice, dict) and choice.get("type") == "function" and (choice.get("function") or {}).get("name"):
        config["toolChoice"] = {"tool": {"name": choice["function"]["name"]}}
    else:
        raise Untranslatable("tool_choice", f"{choice!r} has no Converse equivalent")
    return config


def _output_config_from_hub(fmt: Any) -> dict[str, Any]:
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind != "json_schema":
        raise Untranslatable("response_format", f"Converse has JSON schemas but no {kind!r} mode")
    spec = fmt.get("json_schema") or {}
    if not isinstance(spec.get("schema"), dict):
        raise Untranslatable("response_format.json_schema.schema", "a JSON schema object is required")
    schema: dict[str, Any] = {"schema": json.dumps(spec["schema"]), "name": spec.get("name") or "response"}
    if spec.get("description"):
        schema["description"] = spec["description"]
    return {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": schema}}}


# -- responses -------------------------------------------------------------------------------------------------


def _count(usage: dict[str, Any], key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_to_hub(usage: dict[str, Any]) -> h.HubUsage:
    """Converse usage -> hub usage (whose prompt_tokens count the cached and cache-written tokens too)."""
    read, write = _count(usage, "cacheReadInputTokens"), _count(usage, "cacheWriteInputTokens")
    return h.make_usage(_count(usage, "inputTokens") + read + write, _count(usage, "outputTokens"),
                        cached=read, cache_write=write)


def usage_from_hub(usage: h.HubUsage) -> dict[str, Any]:
    details = usage.get("prompt_tokens_details") or {}
    read, write = int(details.get("cached_tokens") or 0), int(details.get("cache_write_tokens") or 0)
    fresh = max(int(usage.get("prompt_tokens") or 0) - read - write, 0)
    out = int(usage.get("completion_tokens") or 0)
    return {"inputTokens": fresh, "outputTokens": out, "totalTokens": fresh + out + read + write,
            "cacheReadInputTokens": read, "cacheWriteInputTokens": write}


def _blocks_to_hub(blocks: list[Any]) -> tuple[str, str, list[dict[str, Any]]]:
    """(text, reasoning text, hub tool calls) of an answer's content blocks."""
    text, reasoning, calls = [], [], []
    for i, block in enumerate(blocks):
        block = _dict(block, f"output.message.content[{i}]")
        if "text" in block:
            text.append(str(block["text"]))
        elif "toolUse" in block:
            use = _dict(block["toolUse"], f"output.message.content[{i}].toolUse")
            calls.append({"id": use.get("toolUseId", ""), "type": "function",
                          "function": {"name": use.get("name", ""), "arguments": json.dumps(use.get("input", {}))}})
        elif "reasoningContent" in block:
            reasoning.append(str(_dict(_dict(block["reasoningContent"], "reasoningContent").get("reasoningText"),
                                       "reasoningText").get("text", "")))
        else:
            raise Untranslatable(f"output.message.content[{i}].{next(iter(block), '')}",
                                 "the hub's answers carry text and tool calls only")
    return "".join(text), "".join(reasoning), calls


def response_to_hub(body: dict) -> h.HubResponse:
    body = _dict(body, "")
    message = _dict(_dict(body.get("output"), "output").get("message"), "output.message")
    text, reasoning, calls = _blocks_to_hub(_list(message.get("content"), "output.message.content"))
    hub_message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if reasoning:
        hub_message["reasoning_content"] = reasoning
    if calls:
        hub_message["tool_calls"] = calls
    # no "model": a Converse answer names none; the endpoint fills in the one the request named
    return {"id": f"bedrock-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "choices": [{"index": 0, "message": hub_message,
                                      "finish_reason": _STOP_TO_HUB.get(str(body.get("stopReason")), "stop")}],
            "usage": usage_to_hub(_dict(body.get("usage"), "usage"))}


def _blocks_from_hub(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        blocks.append({"reasoningContent": {"reasoningText": {"text": message["reasoning_content"]}}})
    if message.get("content"):
        blocks.append({"text": message["content"]})
    for call in message.get("tool_calls") or []:
        fn, args = call.get("function") or {}, h.answer_arguments(call)
        blocks.append({"toolUse": {"toolUseId": call.get("id", ""), "name": fn.get("name", ""), "input": args}})
    return blocks


def response_from_hub(hub: h.HubResponse) -> dict:
    choices = hub.get("choices") or [{}]
    if len(choices) > 1:
        raise Untranslatable("choices", "a Converse answer has one message")
    choice = choices[0]
    return {"output": {"message": {"role": "assistant", "content": _blocks_from_hub(choice.get("message") or {})}},
            "stopReason": _STOP_FROM_HUB.get(choice.get("finish_reason") or "stop", "end_turn"),
            "usage": usage_from_hub(hub.get("usage") or h.empty_usage()), "metrics": {"latencyMs": 0}}


# -- errors ----------------------------------------------------------------------------------------------------


def error_from_hub(status: int, message: str, code: str | None = None, param: str | None = None) -> bytes:
    """AWS's JSON error (``{"message"}``, its type in ``__type``, which botocore reads when the header is absent).

    ``code`` (e.g. ``untranslatable``) is kept in ``reason``; the endpoint should also send
    ``x-amzn-errortype: error_type(status)``.
    """
    body: dict[str, Any] = {"__type": error_type(status), "message": message}
    if code:
        body["reason"] = code
    return json.dumps(body).encode()


def error_to_hub(status: int, body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        for key in ("message", "Message"):
            if isinstance(parsed.get(key), str):
                return parsed[key]
    return body.decode("utf-8", "replace").strip() or f"HTTP {status}"


# -- the binary event stream -----------------------------------------------------------------------------------


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return struct.pack("!B", len(raw_name)) + raw_name + struct.pack("!BH", 7, len(raw_value)) + raw_value


def encode_event(event_type: str, payload: dict[str, Any], message_type: str = "event") -> bytes:
    """One event-stream message: prelude (total length, headers length, CRC32), headers, JSON payload, CRC32.

    ``message_type="exception"`` makes an error frame (``:exception-type`` instead of ``:event-type``).
    """
    kind = ":event-type" if message_type == "event" else ":exception-type"
    headers = _header(kind, event_type) + _header(":content-type", "application/json") \
        + _header(":message-type", message_type)
    body = compact_json(payload).encode()
    prelude = struct.pack("!II", 12 + len(headers) + len(body) + 4, len(headers))
    message = prelude + struct.pack("!I", binascii.crc32(prelude)) + headers + body
    return message + struct.pack("!I", binascii.crc32(message))


class StreamToHub:
    """ConverseStream's event stream -> hub chunks, event by event.

    messageStart opens the choice; a toolUse block's contentBlockStart starts a hub tool call
    and its deltas carry the arguments; messageStop finishes; metadata carries usage. An
    exception frame becomes a hub ``{"error": {"message", "type"}}`` chunk (the shape OpenAI
    sends mid-stream).
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self._frames = EventStreamBuffer()
        self._id = f"bedrock-{uuid.uuid4().hex}"
        self._created = int(time.time())
        self._tools: dict[int, int] = {}  # contentBlockIndex -> hub tool call index
        self._started = False
        self._broken = False

    def feed(self, data: bytes) -> list[h.HubChunk]:
        if self._broken:
            return []
        chunks: list[h.HubChunk] = []
        try:
            self._frames.add_data(data)
            for message in self._frames:
                chunks += self._message(message)
        except ParserError as e:  # the rest cannot be framed
            self._broken = True
            chunks.append({"error": {"message": f"broken event stream from Bedrock: {e}", "type": "server_error"}})
        except Untranslatable as e:  # an event the hub cannot carry ends the stream with an error chunk
            self._broken = True
            chunks.append({"error": {"message": str(e), "type": h.UNTRANSLATABLE, "code": 502}})
        return chunks

    def close(self) -> list[h.HubChunk]:
        return []

    def _chunk(self, delta: dict[str, Any], reason: str | None = None) -> h.HubChunk:
        if not self._started:
            self._started = True
            delta = {"role": "assistant", **delta}
        return h.chunk(self._id, self.model, self._created, delta, reason)

    def _message(self, message: Any) -> list[h.HubChunk]:
        headers = message.headers
        try:
            payload = json.loads(message.payload or b"{}")
        except ValueError:
            payload = {}
        if headers.get(":message-type") != "event":
            kind = headers.get(":exception-type") or headers.get(":error-code") or "exception"
            text = payload.get("message") if isinstance(payload, dict) else None
            return [{"error": {"message": text or str(headers.get(":error-message") or kind), "type": kind}}]
        if not isinstance(payload, dict):
            return []
        event = headers.get(":event-type")
        if event == "messageStart":
            return [self._chunk({})]
        if event == "contentBlockStart":
            use = _dict(_dict(payload.get("start"), "start").get("toolUse"), "toolUse")
            if not use:
                return []
            index = self._tools[payload.get("contentBlockIndex", 0)] = len(self._tools)
            return [self._chunk({"tool_calls": [{"index": index, "id": use.get("toolUseId", ""), "type": "function",
                                                 "function": {"name": use.get("name", ""), "arguments": ""}}]})]
        if event == "contentBlockDelta":
            delta = _dict(payload.get("delta"), "delta")
            if "text" in delta:
                return [self._chunk({"content": delta["text"]})]
            if "toolUse" in delta:
                index = self._tools.get(payload.get("contentBlockIndex", 0), 0)
                fragment = _dict(delta["toolUse"], "toolUse").get("input", "")
                return [self._chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})]
            if "reasoningContent" in delta:
                text = _dict(delta["reasoningContent"], "reasoningContent").get("text")
                return [self._chunk({"reasoning_content": text})] if text else []
            return []
        if event == "messageStop":
            return [self._chunk({}, _STOP_TO_HUB.get(str(payload.get("stopReason")), "stop"))]
        if event == "metadata" and isinstance(payload.get("usage"), dict):
            return [h.usage_chunk(self._id, self.model, self._created, usage_to_hub(payload["usage"]))]
        return []


class StreamFromHub:
    """Hub chunks -> ConverseStream's event stream, one frame per event as the chunk arrives.

    Text is a contentBlockDelta of an implicit text block (Bedrock sends no contentBlockStart
    for text); each tool call is its own block, opened by contentBlockStart. The finish becomes
    contentBlockStop and messageStop, the usage chunk the metadata event.
    """

    content_type = EVENT_STREAM

    def __init__(self, model: str) -> None:
        self.model = model
        self._began = time.monotonic()
        self._started = False
        self._block = -1  # the open content block's index, -1 when none
        self._block_kind: str | None = None  # "text", "reasoning" or "tool"
        self._tool: int | None = None  # the hub index of the open tool call
        self._stopped = False
        self._metadata = False
        self._failed = False

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return encode_event("messageStart", {"role": "assistant"})

    def _open(self, kind: str, tool: int | None = None) -> bytes:
        if self._block_kind == kind and self._tool == tool:
            return b""
        out = self._close_block()
        self._block += 1
        self._block_kind, self._tool = kind, tool
        return out

    def _close_block(self) -> bytes:
        if self._block_kind is None:
            return b""
        self._block_kind, self._tool = None, None
        return encode_event("contentBlockStop", {"contentBlockIndex": self._block})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return encode_event("contentBlockDelta", {"contentBlockIndex": self._block, "delta": delta})

    def feed(self, chunk: h.HubChunk) -> bytes:
        if self._failed:
            return b""
        if isinstance(chunk.get("error"), dict):  # an exception frame ends the stream, as AWS's do
            self._failed = True
            error = chunk["error"]
            kind = str(error.get("type", ""))
            if not kind.endswith("Exception"):
                kind = _STREAM_EXCEPTIONS.get(error.get("code"), "internalServerException")
            return encode_event(kind, {"message": str(error.get("message", ""))}, "exception")
        if "usage" in chunk and not chunk.get("choices"):
            return self._start() + self._stop("stop") + self._usage(chunk["usage"])
        out = b""
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                raise Untranslatable("choices", "a Converse stream has one message")
            delta = choice.get("delta") or {}
            out += self._start()
            if delta.get("reasoning_content"):
                out += self._open("reasoning")
                out += self._delta({"reasoningContent": {"text": delta["reasoning_content"]}})
            if delta.get("content"):
                out += self._open("text") + self._delta({"text": delta["content"]})
            for call in delta.get("tool_calls") or []:
                fn = call.get("function") or {}
                if call.get("id") is not None or self._tool != call.get("index", 0):
                    out += self._open("tool", call.get("index", 0))
                    out += encode_event("contentBlockStart", {
                        "contentBlockIndex": self._block,
                        "start": {"toolUse": {"toolUseId": call.get("id") or "", "name": fn.get("name") or ""}}})
                if fn.get("arguments"):
                    out += self._delta({"toolUse": {"input": fn["arguments"]}})
            if choice.get("finish_reason"):
                out += self._stop(choice["finish_reason"])
        return out

    def _stop(self, reason: str) -> bytes:
        if self._stopped:
            return b""
        self._stopped = True
        return self._close_block() + encode_event("messageStop", {"stopReason": _STOP_FROM_HUB.get(reason, "end_turn")})

    def _usage(self, usage: h.HubUsage) -> bytes:
        if self._metadata:
            return b""
        self._metadata = True
        latency = int((time.monotonic() - self._began) * 1000)
        return encode_event("metadata", {"usage": usage_from_hub(usage), "metrics": {"latencyMs": latency}})

    def close(self) -> bytes:
        if not self._started or self._failed:
            return b""
        return self._stop("stop")
