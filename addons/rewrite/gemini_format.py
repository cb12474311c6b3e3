"""Gemini generateContent / streamGenerateContent (``alt=sse``) to and from the hub, both directions.

Gemini is both a provider family (the hub request becomes a Gemini body and a
``models/{model}:...`` path) and a client format (``google``: google-genai and
Lava's SDK send Gemini bodies, which become hub requests). Mappings:

* ``systemInstruction`` <-> leading ``system`` messages; ``contents`` (roles
  ``user`` / ``model``) <-> ``user`` / ``assistant`` messages; ``functionResponse``
  parts <-> ``tool`` messages, whose ``tool_call_id`` is resolved to the
  function's name through the assistant turn that called it.
* ``inlineData`` images <-> ``data:`` URLs, ``fileData`` <-> https URLs.
* ``tools[].functionDeclarations`` <-> ``tools`` (a Gemini ``parameters``
  schema, OpenAPI-style with upper-case types, becomes JSON Schema; hub
  parameters go out as ``parametersJsonSchema``); ``toolConfig`` <-> ``tool_choice``.
* ``generationConfig``: maxOutputTokens, temperature, topP, stopSequences,
  candidateCount, seed, presence/frequencyPenalty, responseMimeType with
  responseSchema / responseJsonSchema (out as ``responseJsonSchema``).
* usageMetadata: Gemini's ``candidatesTokenCount`` leaves thoughts out, the
  hub's ``completion_tokens`` counts them (``reasoning_tokens`` = thoughts).
* Gemini's function calls carry no id (or one of Gemini's own): the hub id is
  minted, and a ``thoughtSignature`` (Gemini 3 rejects a function call sent
  back without it) travels inside the id, ``call_<hex>__ts_<urlsafe b64>``, so
  it is restored when the client sends the call back.

Hub stream chunks may also be ``{"error": {"message", "type", "code"?}}`` (the
shape OpenAI sends mid-stream): a provider's error event, or an event the hub
cannot carry; the encoder sends it as Google's error event, which google-genai raises.

Deliberate omissions, named here because nothing else is dropped: thought
parts in a request's history (Gemini itself ignores them), the
``thoughtSignature`` of a text part (only a function call's is required back)
and a function
declaration's ``response`` / ``responseJsonSchema`` (it only describes what the
client's own function returns; google-genai adds it to every typed function).
Anything else without a hub equivalent raises ``Untranslatable``. Gemini
providers are always asked for SSE (``alt=sse``); a Google client gets SSE when
it asks for it (google-genai always does), else one JSON array, as Google sends.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
import uuid
from typing import Any

from addons.core.compact_json import compact_json
from addons.rewrite import hub as h
from addons.rewrite.data_urls import data_url, guess_mime, split_data_url
from addons.rewrite.hub import Untranslatable
from addons.rewrite.hub import json_list as _list
from addons.rewrite.hub import refuse_unknown as _refuse_unknown
from addons.rewrite.hub import text_of as _text_of

SSE_CONTENT_TYPE = "text/event-stream"

_FINISH_TO_HUB = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter",
                  "RECITATION": "content_filter", "BLOCKLIST": "content_filter",
                  "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter",
                  "IMAGE_SAFETY": "content_filter", "IMAGE_PROHIBITED_CONTENT": "content_filter"}
"""Gemini's finishReason -> the hub's; any other reason (OTHER, MALFORMED_FUNCTION_CALL, ...) ends as "stop"."""
_FINISH_FROM_HUB = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP", "function_call": "STOP",
                    "content_filter": "SAFETY"}
_MODES_TO_HUB = {"AUTO": "auto", "NONE": "none", "ANY": "required"}
_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                  409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL",
                  501: "NOT_IMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_REASONING_BUDGET = {"none": 0, "low": 1024, "medium": 8192, "high": 24576}
"""OpenAI's reasoning_effort as a Gemini thinkingBudget (the values Google's OpenAI compatibility layer uses)."""
_SIGNATURE = "__ts_"
_PATH = re.compile(r"(?:.*/)?models/(?P<model>[^/:]+):(?P<action>generateContent|streamGenerateContent)")


# -- small helpers ---------------------------------------------------------------------------------------------


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def _norm(value: Any, field: str) -> dict[str, Any]:
    """A Gemini object with its keys in camelCase: the API (and google-genai) accept both spellings."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Untranslatable(field, "expected a JSON object")
    return {_camel(k): v for k, v in value.items()}




def model_and_stream(path: str) -> tuple[str, bool] | None:
    """``(model, stream)`` of a Gemini client path (``.../models/{model}:streamGenerateContent``), else None."""
    m = _PATH.fullmatch(path.split("?", 1)[0])
    return None if m is None else (m["model"], m["action"] == "streamGenerateContent")


def _new_call_id(signature: str | None = None) -> str:
    call_id = f"call_{uuid.uuid4().hex[:24]}"
    if signature:
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            raw = signature.encode()
        call_id += _SIGNATURE + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return call_id


def _signature_of(call_id: str) -> str | None:
    """The thoughtSignature a hub tool call id carries (see the module docstring), as Gemini's base64."""
    if _SIGNATURE not in call_id:
        return None
    tail = call_id.split(_SIGNATURE, 1)[1]
    try:
        return base64.b64encode(base64.urlsafe_b64decode(tail + "=" * (-len(tail) % 4))).decode()
    except (binascii.Error, ValueError):
        return None


def schema_to_json_schema(schema: Any) -> Any:
    """A Gemini ``Schema`` (OpenAPI subset: ``"OBJECT"``, ``nullable``, either key spelling) as JSON Schema."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    nullable = False
    for key, value in schema.items():
        key = _camel(key)
        if key == "type" and isinstance(value, str):
            out["type"] = value.lower()
        elif key == "nullable":
            nullable = bool(value)
        elif key == "propertyOrdering":
            continue  # an ordering hint for Gemini's decoder; JSON Schema's properties keep their order
        elif key == "properties" and isinstance(value, dict):
            out["properties"] = {name: schema_to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "not", "additionalProperties") and isinstance(value, dict):
            out[key] = schema_to_json_schema(value)
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems") and isinstance(value, list):
            out[key] = [schema_to_json_schema(sub) for sub in value]
        elif key in ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties") \
                and isinstance(value, str) and value.isdigit():
            out[key] = int(value)  # int64 fields arrive as strings in proto JSON
        else:
            out[key] = value
    if nullable and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


# -- requests --------------------------------------------------------------------------------------------------


def request_to_hub(body: dict) -> h.HubRequest:
    """A Gemini generateContent body -> hub request (model and stream come from the URL: the endpoint fills them)."""
    body = _norm(body, "")
    _refuse_unknown(body, {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig", "model"}, "")
    hub: h.HubRequest = {"messages": []}
    if isinstance(body.get("model"), str):
        hub["model"] = body["model"].removeprefix("models/")
    system = _norm(body.get("systemInstruction"), "systemInstruction")
    if system:
        texts = []
        for i, part in enumerate(_list(system.get("parts"), "systemInstruction.parts")):
            part = _norm(part, f"systemInstruction.parts[{i}]")
            if set(part) - {"text"}:
                raise Untranslatable(f"systemInstruction.parts[{i}]", "a system instruction carries only text")
            texts.append(part.get("text", ""))
        hub["messages"].append({"role": "system", "content": "".join(texts)})
    pending: dict[str, list[str]] = {}  # function name -> ids of its calls not answered yet
    for ci, content in enumerate(_list(body.get("contents"), "contents")):
        hub["messages"] += _content_to_hub(_norm(content, f"contents[{ci}]"), f"contents[{ci}]", pending)
    if "tools" in body:
        hub["tools"] = _tools_to_hub(body["tools"])
    if "toolConfig" in body:
        hub |= _tool_config_to_hub(_norm(body["toolConfig"], "toolConfig"))
    hub |= _generation_config_to_hub(_norm(body.get("generationConfig"), "generationConfig"))
    return hub


def _content_to_hub(content: dict[str, Any], field: str, pending: dict[str, list[str]]) -> list[dict[str, Any]]:
    _refuse_unknown(content, {"role", "parts"}, f"{field}.")
    role = content.get("role") or "user"
    parts = [_norm(p, f"{field}.parts[{i}]") for i, p in enumerate(_list(content.get("parts"), f"{field}.parts"))]
    if role == "model":
        return [_model_turn_to_hub(parts, field, pending)]
    if role not in ("user", "function"):
        raise Untranslatable(f"{field}.role", f"unknown role {role!r}")
    tool_messages: list[dict[str, Any]] = []
    user_parts: list[dict[str, Any]] = []
    for i, part in enumerate(parts):
        pf = f"{field}.parts[{i}]"
        if "functionResponse" in part:
            _refuse_unknown(part, {"functionResponse"}, f"{pf}.")
            tool_messages.append(_function_response_to_hub(_norm(part["functionResponse"], pf), pf, pending))
        elif part.get("thought"):
            continue  # thoughts in history are ignored by Gemini itself
        elif "text" in part:
            _refuse_unknown(part, {"text", "thoughtSignature"}, f"{pf}.")
            user_parts.append({"type": "text", "text": part["text"]})
        elif "inlineData" in part:
            _refuse_unknown(part, {"inlineData"}, f"{pf}.")
            blob = _norm(part["inlineData"], f"{pf}.inlineData")
            mime = str(blob.get("mimeType", ""))
            if not mime.startswith("image/"):
                raise Untranslatable(f"{pf}.inlineData", f"only images cross to the hub, not {mime or 'untyped data'}")
            user_parts.append({"type": "image_url", "image_url": {"url": data_url(mime, str(blob.get("data", "")))}})
        elif "fileData" in part:
            _refuse_unknown(part, {"fileData"}, f"{pf}.")
            file = _norm(part["fileData"], f"{pf}.fileData")
            mime = str(file.get("mimeType") or guess_mime(str(file.get("fileUri", ""))) or "")
            uri = str(file.get("fileUri", ""))
            if not mime.startswith("image/") or not uri.startswith(("https://", "http://")):
                raise Untranslatable(f"{pf}.fileData", "only http(s) image URLs cross to the hub")
            user_parts.append({"type": "image_url", "image_url": {"url": uri}})
        else:
            raise Untranslatable(f"{pf}.{next(iter(part), '')}", "this part has no equivalent in the hub")
    out = tool_messages
    if user_parts:
        only_text = all(p["type"] == "text" for p in user_parts)
        content_value: Any = "".join(p["text"] for p in user_parts) if only_text else user_parts
        out.append({"role": "user", "content": content_value})
    return out


def _model_turn_to_hub(parts: list[dict[str, Any]], field: str, pending: dict[str, list[str]]) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, part in enumerate(parts):
        pf = f"{field}.parts[{i}]"
        if part.get("thought"):
            continue  # thoughts in history are ignored by Gemini itself
        if "functionCall" in part:
            _refuse_unknown(part, {"functionCall", "thoughtSignature"}, f"{pf}.")
            call = _norm(part["functionCall"], f"{pf}.functionCall")
            name = str(call.get("name", ""))
            call_id = call.get("id") or _new_call_id(part.get("thoughtSignature"))
            pending.setdefault(name, []).append(call_id)
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": name, "arguments": json.dumps(call.get("args") or {})}})
        elif "text" in part:
            _refuse_unknown(part, {"text", "thoughtSignature"}, f"{pf}.")
            texts.append(part["text"])
        else:
            raise Untranslatable(f"{pf}.{next(iter(part), '')}", "a model turn crosses to the hub as text and calls")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _function_response_to_hub(resp: dict[str, Any], field: str, pending: dict[str, list[str]]) -> dict[str, Any]:
    _refuse_unknown(resp, {"name", "response", "id"}, f"{field}.functionResponse.")
    name = str(resp.get("name", ""))
    call_id = resp.get("id")
    queue = pending.get(name) or []
    if call_id in queue:
        queue.remove(call_id)
    elif call_id is None and queue:
        call_id = queue.pop(0)
    elif call_id is None:
        raise Untranslatable(f"{field}.functionResponse", f"answers no earlier functionCall of {name!r}")
    return {"role": "tool", "tool_call_id": call_id, "content": json.dumps(resp.get("response") or {})}


def _tools_to_hub(tools: Any) -> list[dict[str, Any]]:
    out = []
    for ti, tool in enumerate(_list(tools, "tools")):
        tool = _norm(tool, f"tools[{ti}]")
        _refuse_unknown(tool, {"functionDeclarations"}, f"tools[{ti}].")
        for di, decl in enumerate(_list(tool.get("functionDeclarations"), f"tools[{ti}].functionDeclarations")):
            df = f"tools[{ti}].functionDeclarations[{di}]"
            decl = _norm(decl, df)
            _refuse_unknown(decl, {"name", "description", "parameters", "parametersJsonSchema", "response",
                                   "responseJsonSchema"}, f"{df}.")
            fn: dict[str, Any] = {"name": decl.get("name", "")}
            if "description" in decl:
                fn["description"] = decl["description"]
            if "parametersJsonSchema" in decl:
                fn["parameters"] = decl["parametersJsonSchema"]
            elif "parameters" in decl:
                fn["parameters"] = schema_to_json_schema(decl["parameters"])
            out.append({"type": "function", "function": fn})
    return out


def _tool_config_to_hub(config: dict[str, Any]) -> dict[str, Any]:
    _refuse_unknown(config, {"functionCallingConfig"}, "toolConfig.")
    fcc = _norm(config.get("functionCallingConfig"), "toolConfig.functionCallingConfig")
    _refuse_unknown(fcc, {"mode", "allowedFunctionNames"}, "toolConfig.functionCallingConfig.")
    mode = str(fcc.get("mode", "AUTO")).upper()
    names = _list(fcc.get("allowedFunctionNames"), "toolConfig.functionCallingConfig.allowedFunctionNames")
    if mode not in _MODES_TO_HUB:
        raise Untranslatable("toolConfig.functionCallingConfig.mode", f"mode {mode} has no hub tool_choice")
    if names and mode == "ANY" and len(names) == 1:
        return {"tool_choice": {"type": "function", "function": {"name": names[0]}}}
    if names:
        raise Untranslatable("toolConfig.functionCallingConfig.allowedFunctionNames",
                             "the hub can force one named function, not restrict the choice to a list")
    return {"tool_choice": _MODES_TO_HUB[mode]}


def _generation_config_to_hub(config: dict[str, Any]) -> dict[str, Any]:
    f = "generationConfig."
    _refuse_unknown(config, {"maxOutputTokens", "temperature", "topP", "stopSequences", "candidateCount", "seed",
                             "presencePenalty", "frequencyPenalty", "responseMimeType", "responseSchema",
                             "responseJsonSchema", "responseModalities", "thinkingConfig"}, f)
    hub: dict[str, Any] = {}
    for src, dst in (("maxOutputTokens", "max_tokens"), ("temperature", "temperature"), ("topP", "top_p"),
                     ("seed", "seed"), ("presencePenalty", "presence_penalty"),
                     ("frequencyPenalty", "frequency_penalty")):
        if config.get(src) is not None:
            hub[dst] = config[src]
    if config.get("stopSequences"):
        hub["stop"] = list(config["stopSequences"])
    if config.get("candidateCount") not in (None, 1):
        hub["n"] = config["candidateCount"]
    modalities = [str(m).upper() for m in _list(config.get("responseModalities"), f"{f}responseModalities")]
    if set(modalities) - {"TEXT"}:
        raise Untranslatable(f"{f}responseModalities", "the hub answers text only")
    thinking = _norm(config.get("thinkingConfig"), f"{f}thinkingConfig")
    _refuse_unknown(thinking, {"thinkingBudget"}, f"{f}thinkingConfig.")
    if "thinkingBudget" in thinking:
        effort = {v: k for k, v in _REASONING_BUDGET.items()}.get(thinking["thinkingBudget"])
        if effort is None:
            raise Untranslatable(f"{f}thinkingConfig.thinkingBudget",
                                 f"only the budgets {sorted(_REASONING_BUDGET.values())} map to a reasoning_effort")
        hub["reasoning_effort"] = effort
    mime = config.get("responseMimeType")
    schema = config.get("responseJsonSchema")
    if schema is None and config.get("responseSchema") is not None:
        schema = schema_to_json_schema(config["responseSchema"])
    if mime in (None, "text/plain") and schema is None:
        return hub
    if mime != "application/json":
        raise Untranslatable(f"{f}responseMimeType", f"{mime!r}: the hub has JSON mode and JSON schemas only")
    if schema is None:
        hub["response_format"] = {"type": "json_object"}
    else:
        name = schema.get("title") if isinstance(schema, dict) and isinstance(schema.get("title"), str) else None
        name = re.sub(r"[^a-zA-Z0-9_-]", "_", name or "response")[:64]
        hub["response_format"] = {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}
    return hub


def request_from_hub(hub: h.HubRequest, model_in_url: str | None) -> tuple[str | None, dict]:
    """Hub request -> (``models/{model}:generateContent`` or ``:streamGenerateContent?alt=sse``, Gemini body)."""
    model = model_in_url or hub.get("model")
    if not model:
        raise Untranslatable("model", "no model in the body or the target URL")
    model = str(model).removeprefix("models/")
    _refuse_unknown(hub, {"model", "stream", "stream_options", "messages", "tools", "tool_choice", "max_tokens",
                          "temperature", "top_p", "stop", "response_format", "n", "seed", "presence_penalty",
                          "frequency_penalty", "parallel_tool_calls", "reasoning_effort"}, "")
    if hub.get("parallel_tool_calls") is False:
        raise Untranslatable("parallel_tool_calls", "Gemini cannot be kept from calling functions in parallel")
    body: dict[str, Any] = {"contents": []}
    system, contents = _messages_from_hub(hub.get("messages") or [])
    body["contents"] = contents
    if system:
        body["systemInstruction"] = {"parts": [{"text": t} for t in system]}
    if hub.get("tools"):
        body["tools"] = [{"functionDeclarations": [_tool_from_hub(t, i) for i, t in enumerate(hub["tools"])]}]
    if hub.get("tool_choice") is not None:
        body["toolConfig"] = {"functionCallingConfig": _tool_choice_from_hub(hub["tool_choice"])}
    config = _generation_config_from_hub(hub)
    if config:
        body["generationConfig"] = config
    action = "streamGenerateContent?alt=sse" if hub.get("stream") else "generateContent"
    return f"models/{model}:{action}", body



def _messages_from_hub(messages: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    names: dict[str, str] = {}  # tool call id -> function name

    def turn(role: str, msg: dict[str, Any], field: str) -> tuple[str, list[dict[str, Any]]]:
        if role == "user":
            return "user", _user_parts_from_hub(msg.get("content"), f"{field}.content")
        if role == "assistant":
            return "model", _assistant_parts_from_hub(msg, field, names)
        call_id = str(msg.get("tool_call_id", ""))
        if call_id not in names:
            raise Untranslatable(f"{field}.tool_call_id", "answers no tool call of an earlier assistant message")
        text = _text_of(msg.get("content"), f"{field}.content")
        try:
            response = json.loads(text)
        except ValueError:
            response = None
        if not isinstance(response, dict):
            response = {"result": text}
        return "user", [{"functionResponse": {"name": names[call_id], "response": response}}]

    # Gemini wants a turn's function responses (and text) in one content
    return h.turns_from_hub(messages, "Gemini", "parts", turn)


def _user_parts_from_hub(content: Any, field: str) -> list[dict[str, Any]]:
    return h.user_parts_from_hub(content, field, "Gemini", _image_part)


def _image_part(url: str, field: str) -> dict[str, Any]:
    split = split_data_url(url, field)
    if split is not None:
        return {"inlineData": {"mimeType": split[0], "data": split[1]}}
    file: dict[str, Any] = {"fileUri": url}
    if mime := guess_mime(url):
        file["mimeType"] = mime
    return {"fileData": file}


def _assistant_parts_from_hub(msg: dict[str, Any], field: str, names: dict[str, str]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    text = _text_of(msg.get("content"), f"{field}.content")
    if text:
        parts.append({"text": text})
    for ci, call in enumerate(msg.get("tool_calls") or []):
        cf = f"{field}.tool_calls[{ci}]"
        fn = call.get("function") or {}
        args = h.call_arguments(call, cf)
        if not isinstance(args, dict):
            raise Untranslatable(f"{cf}.function.arguments", "Gemini's function arguments are a JSON object")
        names[str(call.get("id", ""))] = str(fn.get("name", ""))
        part: dict[str, Any] = {"functionCall": {"name": fn.get("name", ""), "args": args}}
        if signature := _signature_of(str(call.get("id", ""))):
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts or [{"text": ""}]


def _tool_from_hub(tool: dict[str, Any], i: int) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise Untranslatable(f"tools[{i}].type", f"{tool.get('type')!r} tools have no Gemini equivalent")
    fn = tool.get("function") or {}
    _refuse_unknown(fn, {"name", "description", "parameters", "strict"}, f"tools[{i}].function.")
    if fn.get("strict"):
        raise Untranslatable(f"tools[{i}].function.strict", "Gemini does not enforce a function's schema strictly")
    decl: dict[str, Any] = {"name": fn.get("name", "")}
    if "description" in fn:
        decl["description"] = fn["description"]
    if fn.get("parameters") is not None:
        decl["parametersJsonSchema"] = fn["parameters"]
    return decl


def _tool_choice_from_hub(choice: Any) -> dict[str, Any]:
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if choice.get("type") != "function" or not name:
            raise Untranslatable("tool_choice", "only a named function can be forced")
        return {"mode": "ANY", "allowedFunctionNames": [name]}
    modes = {v: k for k, v in _MODES_TO_HUB.items()}
    if choice not in modes:
        raise Untranslatable("tool_choice", f"{choice!r} has no Gemini mode")
    return {"mode": modes[choice]}


def _generation_config_from_hub(hub: h.HubRequest) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for src, dst in (("max_tokens", "maxOutputTokens"), ("temperature", "temperature"), ("top_p", "topP"),
                     ("seed", "seed"), ("presence_penalty", "presencePenalty"),
                     ("frequency_penalty", "frequencyPenalty"), ("n", "candidateCount")):
        if hub.get(src) is not None:
            config[dst] = hub[src]
    if hub.get("stop"):
        config["stopSequences"] = [hub["stop"]] if isinstance(hub["stop"], str) else list(hub["stop"])
    if hub.get("reasoning_effort") is not None:
        if hub["reasoning_effort"] not in _REASONING_BUDGET:
            raise Untranslatable("reasoning_effort", f"{hub['reasoning_effort']!r} has no Gemini thinking budget")
        config["thinkingConfig"] = {"thinkingBudget": _REASONING_BUDGET[hub["reasoning_effort"]]}
    fmt = hub.get("response_format")
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind == "json_object":
            config["responseMimeType"] = "application/json"
        elif kind == "json_schema":
            spec = fmt.get("json_schema") or {}
            if not isinstance(spec.get("schema"), dict):
                raise Untranslatable("response_format.json_schema.schema", "a JSON schema object is required")
            _refuse_unknown(spec, {"name", "schema", "strict", "description"}, "response_format.json_schema.")
            schema = dict(spec["schema"])  # Gemini takes no schema name: it travels as the title JSON Schema has
            for key, value in (("title", spec.get("name")), ("description", spec.get("description"))):
                if value and key not in schema:
                    schema[key] = value
            config["responseMimeType"] = "application/json"
            config["responseJsonSchema"] = schema  # constrained decoding: strict or not, Gemini follows it
        elif kind != "text":
            raise Untranslatable("response_format", f"{kind!r} has no Gemini equivalent")
    return config


# -- responses -------------------------------------------------------------------------------------------------


def usage_to_hub(meta: dict[str, Any]) -> h.HubUsage:
    """Gemini usageMetadata -> hub usage: prompt counts cached tokens (as Gemini's does), completion counts thoughts."""
    meta = _norm(meta, "usageMetadata")

    def n(key: str) -> int:
        value = meta.get(key) or 0
        return int(value) if isinstance(value, (int, str)) and str(value).isdigit() else 0

    prompt = n("promptTokenCount") + n("toolUsePromptTokenCount")
    usage = h.make_usage(prompt, n("candidatesTokenCount") + n("thoughtsTokenCount"),
                         cached=n("cachedContentTokenCount"), reasoning=n("thoughtsTokenCount"))
    return usage


def usage_from_hub(usage: h.HubUsage) -> dict[str, Any]:
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    meta: dict[str, Any] = {"promptTokenCount": prompt, "candidatesTokenCount": completion - reasoning,
                            "totalTokenCount": prompt + completion}
    if cached:
        meta["cachedContentTokenCount"] = cached
    if reasoning:
        meta["thoughtsTokenCount"] = reasoning
    return meta


def _finish_to_hub(reason: Any, has_calls: bool) -> str | None:
    if not reason:
        return None
    hub_reason = _FINISH_TO_HUB.get(str(reason), "stop")
    return "tool_calls" if hub_reason == "stop" and has_calls else hub_reason


def _parts_to_hub(parts: list[Any], field: str) -> tuple[str, str, list[dict[str, Any]]]:
    """(text, thought text, hub tool calls) of a candidate's parts."""
    text, thoughts, calls = [], [], []
    for i, part in enumerate(parts):
        part = _norm(part, f"{field}[{i}]")
        if "functionCall" in part:
            call = _norm(part["functionCall"], f"{field}[{i}].functionCall")
            calls.append({"id": call.get("id") or _new_call_id(part.get("thoughtSignature")), "type": "function",
                          "function": {"name": call.get("name", ""), "arguments": json.dumps(call.get("args") or {})}})
        elif "text" in part:
            (thoughts if part.get("thought") else text).append(part["text"])
        else:
            raise Untranslatable(f"{field}[{i}].{next(iter(part), '')}", "the hub's answers carry text and calls only")
    return "".join(text), "".join(thoughts), calls


def response_to_hub(body: dict) -> h.HubResponse:
    body = _norm(body, "")
    choices = []
    for ci, cand in enumerate(_list(body.get("candidates"), "candidates")):
        cand = _norm(cand, f"candidates[{ci}]")
        content = _norm(cand.get("content"), f"candidates[{ci}].content")
        text, thoughts, calls = _parts_to_hub(_list(content.get("parts"), f"candidates[{ci}].content.parts"),
                                              f"candidates[{ci}].content.parts")
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if thoughts:
            message["reasoning_content"] = thoughts
        if calls:
            message["tool_calls"] = calls
        choices.append({"index": cand.get("index", ci), "message": message,
                        "finish_reason": _finish_to_hub(cand.get("finishReason"), bool(calls)) or "stop"})
    if not choices and _norm(body.get("promptFeedback"), "promptFeedback").get("blockReason"):
        choices.append({"index": 0, "message": {"role": "assistant", "content": None}, "finish_reason": "content_filter"})
    hub: h.HubResponse = {"id": body.get("responseId") or f"gemini-{uuid.uuid4().hex}", "object": "chat.completion",
                          "created": int(time.time())}
    if body.get("modelVersion"):  # else absent, for the endpoint to fill with the model the request named
        hub["model"] = body["modelVersion"]
    return hub | {"choices": choices, "usage": usage_to_hub(body.get("usageMetadata") or {})}


def _parts_from_hub(message: dict[str, Any]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        parts.append({"text": message["reasoning_content"], "thought": True})
    if message.get("content"):
        parts.append({"text": message["content"]})
    for call in message.get("tool_calls") or []:
        fn, args = call.get("function") or {}, h.answer_arguments(call)
        parts.append({"functionCall": {"id": call.get("id"), "name": fn.get("name", ""), "args": args}})
    return parts


def response_from_hub(hub: h.HubResponse) -> dict:
    candidates = []
    for choice in hub.get("choices") or []:
        cand: dict[str, Any] = {"content": {"role": "model", "parts": _parts_from_hub(choice.get("message") or {})},
                                "index": choice.get("index", 0)}
        if choice.get("finish_reason"):
            cand["finishReason"] = _FINISH_FROM_HUB.get(choice["finish_reason"], "OTHER")
        candidates.append(cand)
    out: dict[str, Any] = {"candidates": candidates}
    if hub.get("usage"):
        out["usageMetadata"] = usage_from_hub(hub["usage"])
    out["modelVersion"] = hub.get("model") or ""
    out["responseId"] = hub.get("id") or ""
    return out


# -- errors ----------------------------------------------------------------------------------------------------


def error_from_hub(status: int, message: str, code: str | None = None, param: str | None = None) -> bytes:
    """Google's error shape (``{"error": {"code", "message", "status"}}``), with ``code`` as an ErrorInfo reason."""
    error: dict[str, Any] = {"code": status, "message": message,
                             "status": _GOOGLE_STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")}
    if code:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": code.upper(),
                             "domain": "tollgate"}]
    if param:
        error.setdefault("details", []).append({"@type": "type.googleapis.com/google.rpc.BadRequest",
                                                "fieldViolations": [{"field": param, "description": message}]})
    return json.dumps({"error": error}).encode()


def error_to_hub(status: int, body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip() or f"HTTP {status}"
    if isinstance(parsed, list) and parsed:  # the streamed JSON array form wraps the error in a list
        parsed = parsed[0]
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    return body.decode("utf-8", "replace").strip() or f"HTTP {status}"


# -- streams ---------------------------------------------------------------------------------------------------


class _SSEDecoder:
    """SSE events' ``data`` from bytes in any split (LF or CRLF line ends), as httpx's LineDecoder does lines."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, data: bytes) -> list[str]:
        self._buffer += data
        events = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                return events
            line = self._buffer[:end].rstrip(b"\r").decode("utf-8", "replace")
            self._buffer = self._buffer[end + 1:]
            if not line:
                if self._data:
                    events.append("\n".join(self._data))
                self._data = []
            elif line.startswith("data:"):
                self._data.append(line[5:].removeprefix(" "))

    def close(self) -> list[str]:
        events = self.feed(b"\n\n") if self._buffer or self._data else []
        return events


class StreamToHub:
    """Gemini's SSE stream (every event a GenerateContentResponse, usage cumulative) -> hub chunks.

    Each event's text, thoughts and calls go out at once; a call arrives whole (id, name and
    arguments in one delta). The usage chunk follows the event that finishes the last candidate
    (Gemini's last event), or closes the stream when none did.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self._sse = _SSEDecoder()
        self._id = f"gemini-{uuid.uuid4().hex}"
        self._created = int(time.time())
        self._started: set[int] = set()
        self._finished: set[int] = set()
        self._calls: dict[int, int] = {}  # candidate index -> tool calls so far
        self._usage: dict[str, Any] | None = None
        self._usage_sent = False

    def feed(self, data: bytes) -> list[h.HubChunk]:
        return [c for event in self._sse.feed(data) for c in self._safe_event(event)]

    def close(self) -> list[h.HubChunk]:
        chunks = [c for event in self._sse.close() for c in self._safe_event(event)]
        if self._usage is not None and not self._usage_sent:
            chunks.append(self._usage_chunk())
        return chunks

    def _usage_chunk(self) -> h.HubChunk:
        self._usage_sent = True
        return h.usage_chunk(self._id, self.model, self._created, usage_to_hub(self._usage or {}))

    def _safe_event(self, data: str) -> list[h.HubChunk]:
        """An event the hub cannot carry (an image part, say) ends the stream with an error chunk, not a raise."""
        try:
            return self._event(data)
        except Untranslatable as e:
            return [{"error": {"message": str(e), "type": h.UNTRANSLATABLE, "code": 502}}]

    def _event(self, data: str) -> list[h.HubChunk]:
        try:
            event = json.loads(data)
        except ValueError:
            return []
        if not isinstance(event, dict):
            return []
        event = _norm(event, "")
        if isinstance(event.get("error"), dict):
            return [{"error": event["error"]}]
        self.model = event.get("modelVersion") or self.model
        if event.get("responseId") and not self._started:
            self._id = event["responseId"]
        if isinstance(event.get("usageMetadata"), dict):
            self._usage = event["usageMetadata"]
        out: list[h.HubChunk] = []
        finished = False
        for ci, cand in enumerate(_list(event.get("candidates"), "candidates")):
            cand = _norm(cand, f"candidates[{ci}]")
            index = cand.get("index", ci)
            content = _norm(cand.get("content"), f"candidates[{ci}].content")
            text, thoughts, calls = _parts_to_hub(_list(content.get("parts"), f"candidates[{ci}].content.parts"),
                                                  f"candidates[{ci}].content.parts")
            delta: dict[str, Any] = {}
            if index not in self._started:
                self._started.add(index)
                delta["role"] = "assistant"
            if thoughts:
                delta["reasoning_content"] = thoughts
            if text:
                delta["content"] = text
            if calls:
                first = self._calls.get(index, 0)
                delta["tool_calls"] = [dict(call, index=first + i) for i, call in enumerate(calls)]
                self._calls[index] = first + len(calls)
            if delta:
                out.append(self._chunk(index, delta, None))
            reason = _finish_to_hub(cand.get("finishReason"), self._calls.get(index, 0) > 0)
            if reason and index not in self._finished:
                self._finished.add(index)
                out.append(self._chunk(index, {}, reason))
                finished = True
        if finished and self._usage is not None and not self._usage_sent and self._finished >= self._started:
            out.append(self._usage_chunk())  # the usage chunk is the last, after every candidate's finish
        return out

    def _chunk(self, index: int, delta: dict[str, Any], reason: str | None) -> h.HubChunk:
        c = h.chunk(self._id, self.model, self._created, delta, reason)
        c["choices"][0]["index"] = index
        return c


class StreamFromHub:
    """Hub chunks -> Gemini's SSE stream (``data: <GenerateContentResponse>`` events, CRLF as Google sends).

    Text and thoughts go out as they come. A tool call goes out whole once its arguments are
    complete (the next call starts, or the choice finishes): Gemini has no partial calls. The
    finishReason waits for the usage chunk that follows it, so the last event carries both, as
    Gemini's own does.
    """

    content_type = SSE_CONTENT_TYPE

    def __init__(self, model: str) -> None:
        self.model = model
        self._id = ""
        self._calls: dict[int, dict[int, dict[str, Any]]] = {}  # choice -> open call index -> {id, name, arguments}
        self._sent: dict[int, set[int]] = {}  # choice -> call indexes already sent whole
        self._finish: dict[int, str] = {}
        self._done = False

    def feed(self, chunk: h.HubChunk) -> bytes:
        if self._done:
            return b""
        if isinstance(chunk.get("error"), dict):  # a provider's error mid-stream, in Google's shape
            self._done = True
            error = chunk["error"]
            status = error.get("code") if isinstance(error.get("code"), int) else 500
            return self._event(json.loads(error_from_hub(status, str(error.get("message", "")))))
        self._id = self._id or chunk.get("id") or ""
        self.model = chunk.get("model") or self.model
        if "usage" in chunk and not chunk.get("choices"):
            return self._final(chunk.get("usage"))
        out = b""
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            delta = choice.get("delta") or {}
            parts: list[dict[str, Any]] = []
            if delta.get("reasoning_content"):
                parts.append({"text": delta["reasoning_content"], "thought": True})
            if delta.get("content"):
                parts.append({"text": delta["content"]})
            calls = self._calls.setdefault(index, {})
            for call in delta.get("tool_calls") or []:
                ci = call.get("index", 0)
                if ci in self._sent.get(index, ()):
                    continue  # a fragment after its call went out: malformed hub stream
                if ci not in calls:
                    parts += self._complete_calls(index)
                    calls[ci] = {"id": call.get("id"), "name": "", "arguments": ""}
                fn = call.get("function") or {}
                calls[ci]["name"] += fn.get("name") or ""
                calls[ci]["arguments"] += fn.get("arguments") or ""
            if choice.get("finish_reason"):
                parts += self._complete_calls(index)
                self._finish[index] = choice["finish_reason"]
            if parts:
                out += self._event({"candidates": [{"content": {"role": "model", "parts": parts}, "index": index}]})
        return out

    def close(self) -> bytes:
        return b"" if self._done else self._final(None)

    def _complete_calls(self, index: int) -> list[dict[str, Any]]:
        calls = self._calls.get(index) or {}
        parts = _parts_from_hub({"tool_calls": [{"id": c["id"], "function": {"name": c["name"],
                                                                               "arguments": c["arguments"]}}
                                                for _, c in sorted(calls.items())]})
        self._sent.setdefault(index, set()).update(calls)
        calls.clear()
        return parts

    def _final(self, usage: h.HubUsage | None) -> bytes:
        self._done = True
        candidates = []
        for index in sorted(set(self._calls) | set(self._finish)):
            parts = self._complete_calls(index)
            cand: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": index}
            if index in self._finish:
                cand["finishReason"] = _FINISH_FROM_HUB.get(self._finish[index], "OTHER")
            if parts or index in self._finish:
                candidates.append(cand)
        event: dict[str, Any] = {"candidates": candidates}
        if usage:
            event["usageMetadata"] = usage_from_hub(usage)
        if not candidates and not usage:
            return b""
        return self._event(event)

    def _event(self, event: dict[str, Any]) -> bytes:
        if "error" not in event:
            event["modelVersion"] = self.model
            event["responseId"] = self._id
        return self._frame(compact_json(event).encode())

    def _frame(self, item: bytes) -> bytes:
        return b"data: " + item + b"\r\n\r\n"


class ArrayStreamFromHub(StreamFromHub):
    """Hub chunks -> streamGenerateContent without ``alt=sse``: one JSON array whose items go out as they are
    complete, as Google sends it to a client that did not ask for server-sent events."""

    content_type = "application/json"

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self._opened = False

    def _frame(self, item: bytes) -> bytes:
        head, self._opened = (b",\r\n" if self._opened else b"["), True
        return head + item

    def close(self) -> bytes:
        last = super().close()
        return last + (b"]" if self._opened else b"[]")
