"""The hub every rewrite translation passes through: OpenAI chat completions.

A request in client format A for a provider of family B goes A -> hub -> B, and
the answer (or each stream event) B -> hub -> A. Each format is one module
(``openai_format``, ``anthropic_format``, ``gemini_format``,
``bedrock_format``) that satisfies ``FormatModule`` below with plain
functions and two small classes, and imports nothing from mitmproxy, so every
translator is unit-testable on its own.

The hub shapes (plain dicts, exactly OpenAI's wire JSON with the few
normalisations listed here):

Request (``HubRequest``)
    ``model`` (str; may be absent after ``request_to_hub`` for formats whose
    model is in the URL: the endpoint fills it), ``stream`` (bool; same),
    ``messages``: roles ``system`` / ``user`` / ``assistant`` / ``tool``;
    ``content`` is a str or a list of parts ``{"type": "text", "text"}`` and
    ``{"type": "image_url", "image_url": {"url": "data:<mime>;base64,<b64>"
    or "https://..."}}``; assistant ``tool_calls``: ``[{"id", "type":
    "function", "function": {"name", "arguments": <JSON str>}}]``; tool
    messages ``{"role": "tool", "tool_call_id", "content"}``.
    ``tools``: ``[{"type": "function", "function": {"name", "description"?,
    "parameters"?}}]``; ``tool_choice``: ``"auto" | "none" | "required" |
    {"type": "function", "function": {"name"}}``.
    ``max_tokens`` (int: ``max_completion_tokens`` is normalised to it),
    ``temperature``, ``top_p``, ``stop`` (always a list of str),
    ``response_format``: ``{"type": "text" | "json_object"}`` or
    ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"?}}``.
    Any other key present is a field the target must translate or refuse.

Response (``HubResponse``)
    ``{"id", "object": "chat.completion", "created", "model", "choices":
    [{"index": 0, "message": {"role": "assistant", "content": str | None,
    "tool_calls"?: [...]}, "finish_reason"}], "usage"}``. ``finish_reason``
    is one of ``FINISH_REASONS``.

Usage (``HubUsage``, in responses and in the last stream chunk)
    ``{"prompt_tokens", "completion_tokens", "total_tokens",
    "prompt_tokens_details": {"cached_tokens", "cache_write_tokens"},
    "completion_tokens_details": {"reasoning_tokens"}}``. ``prompt_tokens``
    counts every input token, cached ones included (OpenAI's meaning);
    ``cache_write_tokens`` is the hub's one addition to OpenAI's shape (the
    tokens written to a prompt cache, Anthropic's ``cache_creation_input_tokens``).
    Translators report usage for the client to read; metering never uses it
    (the usage readers read the provider's own bytes).

Stream chunk (``HubChunk``)
    ``{"id", "object": "chat.completion.chunk", "created", "model",
    "choices": [{"index": 0, "delta": {"role"?, "content"?, "tool_calls"?:
    [{"index", "id"?, "type"?, "function": {"name"?, "arguments"?}}]},
    "finish_reason": None | str}]}``; usage arrives in a final chunk with
    ``"choices": []`` and ``"usage": HubUsage`` (OpenAI's
    ``stream_options.include_usage`` shape). A tool call starts with a delta
    carrying ``id`` and ``function.name`` and continues with ``arguments``
    fragments under the same ``index``. A chunk ``{"error": {"type",
    "message"}}`` with no ``choices`` is an error event the provider sent
    mid-stream (OpenAI's own ``data: {"error": ...}``); encoders send it as
    their format's error event.

Errors
    ``Untranslatable(field, why)``: raised by any translator for a field it
    cannot carry across; the endpoint answers 400 ``untranslatable`` naming
    the field, in the client format's error shape.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

HubRequest = dict[str, Any]
HubResponse = dict[str, Any]
HubChunk = dict[str, Any]
HubUsage = dict[str, Any]

FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter")
"""Every ``finish_reason`` a hub response or chunk may carry."""

UNTRANSLATABLE = "untranslatable"
"""The error code (and type) of a 400 for a request that cannot be translated."""


class Untranslatable(ValueError):
    """A field (dotted path in the body it came from) has no equivalent on the other side."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field
        self.why = why


class StreamToHub(Protocol):
    """Decodes a provider's (or a client's) stream bytes into hub chunks, incrementally.

    Constructed as ``StreamToHub(model)`` with the provider model (for streams
    that do not name it). ``feed`` takes whatever bytes arrived (any split,
    even mid-frame) and returns the hub chunks now complete; ``close`` drains
    what is left at the end of the stream.
    """

    def feed(self, data: bytes) -> list[HubChunk]: ...

    def close(self) -> list[HubChunk]: ...


class StreamFromHub(Protocol):
    """Encodes hub chunks into a format's own stream bytes, one chunk at a time.

    Constructed as ``StreamFromHub(model)``. ``feed`` returns the bytes to
    send now for one hub chunk (``b""`` when the chunk produces nothing yet);
    ``close`` returns the stream's closing bytes (e.g. ``data: [DONE]`` or
    Anthropic's ``message_stop``). Never buffers a delta that can be sent.
    ``content_type`` is the Content-Type of the encoded stream.
    """

    content_type: str

    def feed(self, chunk: HubChunk) -> bytes: ...

    def close(self) -> bytes: ...


class FormatModule(Protocol):
    """What each format module (a Python module) provides.

    ``request_to_hub(body)``: a client request body in this format -> hub
    request. Raises ``Untranslatable`` for fields the hub cannot carry.

    ``request_from_hub(hub, model_in_url)``: hub request -> ``(path_suffix,
    body)`` for a provider of this family. ``model_in_url`` is the model named
    in the target URL (Gemini ``models/{model}:...``, Bedrock
    ``model/{model}/converse``), or None. ``path_suffix`` is None for formats
    whose path does not depend on the request (OpenAI, Anthropic); otherwise
    the tail of the provider path from ``models/`` (Gemini, e.g.
    ``models/gemini-2.0-flash:streamGenerateContent?alt=sse``) or ``model/``
    (Bedrock, e.g. ``model/amazon.nova-lite-v1:0/converse-stream``), which
    replaces that tail of the target URL (or is appended when the target
    ends before it).

    ``response_to_hub(body)`` / ``response_from_hub(hub)``: non-streamed
    answers, both directions.

    ``StreamToHub`` / ``StreamFromHub``: classes, see above.

    ``error_from_hub(status, message, code=None, param=None)``: the body of an
    error answer in this format's own error shape (JSON bytes); ``code`` is a
    machine-readable error code such as ``UNTRANSLATABLE``, ``param`` the
    request field it is about, where the shape has a place for it.

    ``error_to_hub(status, body)``: the human message of a provider error
    body in this format (falls back to the body text).
    """

    StreamToHub: type[StreamToHub]
    StreamFromHub: type[StreamFromHub]

    def request_to_hub(self, body: dict) -> HubRequest: ...

    def request_from_hub(self, hub: HubRequest, model_in_url: str | None) -> tuple[str | None, dict]: ...

    def response_to_hub(self, body: dict) -> HubResponse: ...

    def response_from_hub(self, hub: HubResponse) -> dict: ...

    def error_from_hub(self, status: int, message: str, code: str | None = None,
                       param: str | None = None) -> bytes: ...

    def error_to_hub(self, status: int, body: bytes) -> str: ...


def empty_usage() -> HubUsage:
    """A hub usage block with every counter at zero (translators fill what they know)."""
    return {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def make_usage(
    prompt: int, completion: int, *, cached: int = 0, cache_write: int = 0, reasoning: int = 0
) -> HubUsage:
    """A hub usage block; ``prompt`` counts every input token, cached and cache-written included."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": cache_write},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def chunk(
    chunk_id: str, model: str, created: int, delta: dict | None = None, finish_reason: str | None = None
) -> HubChunk:
    """A hub stream chunk with one choice (``delta`` and/or ``finish_reason``)."""
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason}],
    }


def usage_chunk(chunk_id: str, model: str, created: int, usage: HubUsage) -> HubChunk:
    """The final hub stream chunk carrying usage and no choices."""
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
    }


# -- reading a format's JSON: shared by the format modules ----------------------------------------------------


def json_list(value: Any, field: str) -> list[Any]:
    """A JSON array at `field` (absent: empty), else Untranslatable."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise Untranslatable(field, "expected a JSON array")
    return value


def refuse_unknown(obj: dict[str, Any], known: set[str], field: str) -> None:
    """Untranslatable for the first key of `obj` outside `known`: nothing is dropped silently."""
    for key in obj:
        if key not in known:
            raise Untranslatable(f"{field}{key}", "has no equivalent in the hub (OpenAI chat completions)")


def text_of(content: Any, field: str) -> str:
    """Hub message content that may only be text (a string, or text parts), as one string."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for i, part in enumerate(json_list(content, field)):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise Untranslatable(f"{field}[{i}]", "only text parts are allowed here")
        texts.append(str(part.get("text", "")))
    return "".join(texts)


_MESSAGE_FIELDS = {"system": {"role", "content"}, "developer": {"role", "content"}, "user": {"role", "content"},
                   "assistant": {"role", "content", "tool_calls", "refusal"},
                   "tool": {"role", "content", "tool_call_id"}}


def turns_from_hub(messages: list[dict[str, Any]], target: str, items: str,
                   turn: Callable[[str, dict[str, Any], str], tuple[str, list[dict[str, Any]]]],
                   ) -> tuple[list[str], list[dict[str, Any]]]:
    """(system prompts, turns) for a format that takes its system prompt apart and wants the roles to alternate
    (Gemini's contents, Converse's messages). `turn(role, message, field)` gives a user, assistant or tool
    message's (target role, items); consecutive items of one target role go into one turn, under `items`."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for mi, msg in enumerate(messages):
        field = f"messages[{mi}]"
        role = msg.get("role")
        if role not in _MESSAGE_FIELDS:
            raise Untranslatable(f"{field}.role", f"role {role!r} has no {target} equivalent")
        refuse_unknown(msg, _MESSAGE_FIELDS[role], f"{field}.")
        if role in ("system", "developer"):
            if turns:
                raise Untranslatable(field, f"{target} takes a system prompt only before the conversation")
            system.append(text_of(msg.get("content"), f"{field}.content"))
            continue
        if msg.get("refusal"):
            raise Untranslatable(f"{field}.refusal", f"{target} has no refusals")
        target_role, parts = turn(role, msg, field)
        if turns and turns[-1]["role"] == target_role:
            turns[-1][items] += parts
        else:
            turns.append({"role": target_role, items: parts})
    return system, turns


def user_parts_from_hub(content: Any, field: str, target: str,
                        image: Callable[[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """A user message's content as `{"text"}` items and `image(url, field)` ones: the shape Gemini's parts and
    Converse's content blocks share. Anything else is refused."""
    if isinstance(content, str):
        return [{"text": content}]
    parts = []
    for i, part in enumerate(json_list(content, field)):
        pf = f"{field}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append({"text": str(part.get("text", ""))})
        elif kind == "image_url":
            image_url = part.get("image_url") or {}
            if image_url.get("detail") not in (None, "auto"):
                raise Untranslatable(f"{pf}.image_url.detail", f"{target} sets no per-image detail")
            parts.append(image(str(image_url.get("url", "")), f"{pf}.image_url.url"))
        else:
            raise Untranslatable(pf, f"content part {kind!r} has no {target} equivalent")
    return parts


def call_arguments(call: dict[str, Any], field: str) -> Any:
    """A hub tool call's arguments (a JSON string) as JSON."""
    try:
        return json.loads((call.get("function") or {}).get("arguments") or "{}")
    except ValueError:
        raise Untranslatable(f"{field}.function.arguments", "not valid JSON") from None


def answer_arguments(call: dict[str, Any]) -> Any:
    """A model's tool call arguments as JSON for an answer; broken JSON is kept whole for the client to see."""
    arguments = (call.get("function") or {}).get("arguments")
    try:
        return json.loads(arguments or "{}")
    except ValueError:
        return {"arguments": arguments}
