"""The rewrite endpoint's parts without a gateway: reading the rewrite path, the OpenAI and Anthropic translators
both ways (answers checked by the official SDKs' own types), streams fed in every split, refusals by field."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pydantic
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from mitmproxy import http
from mitmproxy.test import tflow, tutils
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from addons.core.errors import BadRequest
from addons.ledger.models import RequestRow
from addons.rewrite import anthropic_format, openai_format
from addons.rewrite.endpoint import (
    Rewrite,
    RewriteRequest,
    RewriteStream,
    client_route,
    parse_rewrite_path,
    split_target,
    translate_request,
)
from addons.rewrite.formats import CLIENT_FORMATS
from addons.rewrite.hub import Untranslatable, make_usage
from tests.inprocess_gateway import PROVIDER_KEY, api_flow, run, secret_key

EVENTS = pydantic.TypeAdapter(RawMessageStreamEvent)


def sse(*events: dict, named: bool = True) -> bytes:
    return b"".join((f"event: {e['type']}\n" if named else "").encode() + b"data: " + json.dumps(e).encode()
                    + b"\n\n" for e in events)


# An Anthropic stream as the API sends it: text, then a tool call whose input arrives in pieces.
ANTHROPIC_STREAM = sse(
    {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                                          "content": [], "stop_reason": None, "stop_sequence": None,
                                          "usage": {"input_tokens": 10, "cache_read_input_tokens": 4,
                                                    "cache_creation_input_tokens": 2, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "check."}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1",
                                                                  "name": "weather", "input": {}}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"city": '}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '"Oslo"}'}},
    {"type": "content_block_stop", "index": 1},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
     "usage": {"output_tokens": 21}},
    {"type": "message_stop"},
)


@pytest.mark.parametrize("client_format, path, family, provider_path, client_path", [
    # the OpenAI SDK with base_url = the rewrite URL: its /chat/completions after the provider's endpoint
    ("openai", "/v1/rewrite/openai/https://api.anthropic.com/v1/messages/chat/completions", "anthropic",
     "/v1/messages", "/chat/completions"),
    # Lava's SDK: the provider URL alone
    ("openai", "/v1/rewrite/openai/https://api.anthropic.com/v1/messages", "anthropic", "/v1/messages", ""),
    # a host alone: the family's endpoint is filled in
    ("openai", "/v1/rewrite/openai/https://api.anthropic.com/chat/completions", "anthropic", "/v1/messages",
     "/chat/completions"),
    ("anthropic", "/v1/rewrite/anthropic/https://api.openai.com/v1/v1/messages", "openai", "/v1/chat/completions",
     "/v1/messages"),
    ("anthropic", "/v1/rewrite/anthropic/https://api.openai.com/v1/chat/completions/v1/messages", "openai",
     "/v1/chat/completions", "/v1/messages"),
    ("anthropic", "/v1/rewrite/anthropic/https://api.groq.com/openai/v1/v1/messages", "openai",
     "/openai/v1/chat/completions", "/v1/messages"),
    # google-genai's path and query after a Gemini-less target
    ("google", "/v1/rewrite/google/https://api.openai.com/v1/v1beta/models/gpt-4o:streamGenerateContent?alt=sse",
     "openai", "/v1/chat/completions", "/v1beta/models/gpt-4o:streamGenerateContent"),
    ("openai", "/v1/rewrite/openai/https://generativelanguage.googleapis.com/chat/completions", "gemini",
     "/v1beta/models/", "/chat/completions"),
    ("openai", "/v1/rewrite/openai/https:/api.anthropic.com/v1/messages", "anthropic", "/v1/messages", ""),
    # a Bedrock model id has a ":" of its own
    ("google", "/v1/rewrite/google/https://bedrock-runtime.us-east-1.amazonaws.com/v1beta/models/"
               "anthropic.claude-v2:1:generateContent", "bedrock", "/model/",
     "/v1beta/models/anthropic.claude-v2:1:generateContent"),
])
def test_rewrite_path_splits_into_provider_and_client_parts(client_format, path, family, provider_path, client_path):
    target = path.removeprefix(f"/v1/rewrite/{client_format}/").replace("https:/a", "https://a").partition("?")[0]
    if client_format in CLIENT_FORMATS:
        parsed = parse_rewrite_path(path)
        assert (parsed.client_format, parsed.target) == (client_format, target)
    assert split_target(RewriteRequest(client_format, None, target, "", []), family) == (provider_path, client_path)


def test_client_route_reads_the_model_and_stream_from_the_clients_path():
    assert client_route("google", "/v1beta/models/anthropic.claude-v2:1:streamGenerateContent", "") == (
        "anthropic.claude-v2:1", True)
    assert client_route("bedrock", "/model/gpt-4o%3A1/converse", "") == ("gpt-4o:1", False)
    assert client_route("google", "", "/v1beta/models/gemini-2.0-flash:generateContent") == ("gemini-2.0-flash", False)
    assert client_route("openai", "/chat/completions", "") == (None, None)


@pytest.mark.parametrize("path, code", [
    ("/v1/rewrite/cohere/https://api.openai.com/v1/chat/completions", "unknown_format"),
    ("/v1/rewrite/openai/api.openai.com/v1/chat/completions", "invalid_rewrite_url"),
    ("/v1/rewrite/openai", "invalid_rewrite_url"),
])
def test_bad_rewrite_paths_are_refused(path, code):
    with pytest.raises(BadRequest) as refused:
        parse_rewrite_path(path)
    assert refused.value.code == code


# -- requests ------------------------------------------------------------------------------------------------------

def test_openai_request_becomes_anthropics():
    body = {"model": "claude-x", "max_completion_tokens": 99, "stop": "END", "temperature": 0.2, "user": "u1",
            "parallel_tool_calls": False, "response_format": {"type": "json_schema", "json_schema": {
                "name": "w", "schema": {"type": "object"}}},
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Look"},
                                             {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
                {"role": "user", "content": "thanks"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": "auto"}
    _, sent = anthropic_format.request_from_hub(openai_format.request_to_hub(body), None)
    assert sent == {
        "model": "claude-x", "system": "Be brief.", "max_tokens": 99, "temperature": 0.2, "stop_sequences": ["END"],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Look"},
                                         {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "42"},
                                         {"type": "text", "text": "thanks"}]}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "metadata": {"user_id": "u1"},
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}


def test_anthropic_request_becomes_openais():
    body = {"model": "gpt-x", "max_tokens": 50, "system": [{"type": "text", "text": "Be brief."}],
            "stop_sequences": ["END"], "tool_choice": {"type": "any"}, "metadata": {"user_id": "u1"},
            "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
            "messages": [
                {"role": "user", "content": [{"type": "image", "source": {
                    "type": "base64", "media_type": "image/png", "data": "iVBO"}}, {"type": "text", "text": "Hi"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Calling."},
                                                  {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                              "content": [{"type": "text", "text": "42"}]}]}]}
    _, sent = openai_format.request_from_hub(anthropic_format.request_to_hub(body), None)
    assert sent == {
        "model": "gpt-x", "max_tokens": 50, "stop": ["END"], "tool_choice": "required", "user": "u1",
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"},
                                                    "description": "d"}}],
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                                         {"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": "Calling.", "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "42"}]}


@pytest.mark.parametrize("to_hub, from_hub, body, field", [
    (openai_format, anthropic_format, {"response_format": {"type": "json_object"}}, "response_format.type"),
    (openai_format, anthropic_format, {"logprobs": True}, "logprobs"),
    (openai_format, anthropic_format, {"n": 2}, "n"),
    (openai_format, anthropic_format, {"temperature": 1.5}, "temperature"),
    (openai_format, anthropic_format, {"seed": 7}, "seed"),
    (openai_format, anthropic_format, {"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]}, "messages[0].content[0].type"),
    (openai_format, anthropic_format, {"tools": [{"type": "function", "function": {"name": "f", "strict": True}}]},
     "tools[0].function.strict"),
    (anthropic_format, openai_format, {"top_k": 3}, "top_k"),
    (anthropic_format, openai_format, {"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
    (anthropic_format, openai_format, {"messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "data": "x", "media_type": "text/plain"}}]}]},
     "messages[0].content[0].type"),
    (anthropic_format, openai_format, {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "x", "cache_control": {"type": "persistent"}}]}]},
     "messages[0].content[0].cache_control"),
    (anthropic_format, openai_format, {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
     "tools[0].type"),
])
def test_untranslatable_fields_are_named(to_hub, from_hub, body, field):
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], **body}
    with pytest.raises(Untranslatable) as refused:
        from_hub.request_from_hub(to_hub.request_to_hub(body), None)
    assert refused.value.field == field


def test_ephemeral_cache_hints_are_left_to_the_providers_own_caching():
    """Anthropic clients mark prompt prefixes for caching; OpenAI and Gemini cache them on their own."""
    hint = {"type": "ephemeral"}
    body = {"model": "m", "max_tokens": 5,
            "system": [{"type": "text", "text": "Be brief.", "cache_control": hint}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}, "cache_control": hint}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": hint}]}]}
    _, sent = openai_format.request_from_hub(anthropic_format.request_to_hub(body), None)
    assert sent["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert "cache_control" not in json.dumps(sent)


def test_translate_request_refuses_with_a_400_naming_the_field():
    parsed = parse_rewrite_path("/v1/rewrite/openai/https://api.anthropic.com/v1/messages")
    with pytest.raises(BadRequest) as refused:
        translate_request(parsed, "anthropic", b'{"model": "m", "messages": [], "logit_bias": {"1": 2}}')
    assert (refused.value.code, refused.value.details) == ("untranslatable", {"param": "logit_bias"})
    with pytest.raises(BadRequest) as refused:
        translate_request(parsed, "cohere", b'{"model": "m", "messages": []}')
    assert refused.value.code == "untranslatable" and "cohere" in refused.value.message


# -- answers -------------------------------------------------------------------------------------------------------

ANTHROPIC_ANSWER = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                    "content": [{"type": "text", "text": "Checking."},
                                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}],
                    "stop_reason": "tool_use", "stop_sequence": None,
                    "usage": {"input_tokens": 10, "cache_read_input_tokens": 4, "cache_creation_input_tokens": 2,
                              "output_tokens": 21}}


def test_anthropic_answer_as_openais_and_back():
    hub = anthropic_format.response_to_hub(ANTHROPIC_ANSWER)
    completion = ChatCompletion.model_validate(openai_format.response_from_hub(hub))
    assert completion.choices[0].message.content == "Checking." and completion.choices[0].finish_reason == "tool_calls"
    assert json.loads(completion.choices[0].message.tool_calls[0].function.arguments) == {"city": "Oslo"}
    assert (completion.usage.prompt_tokens, completion.usage.prompt_tokens_details.cached_tokens,
            completion.usage.completion_tokens) == (16, 4, 21)
    again = Message.model_validate(anthropic_format.response_from_hub(hub))
    assert again.model_dump(exclude_none=True) == Message.model_validate(ANTHROPIC_ANSWER).model_dump(exclude_none=True)


def test_openai_answer_as_anthropics():
    answer = {"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-x", "choices": [
        {"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "Hel"}}],
        "usage": {"prompt_tokens": 17, "completion_tokens": 9, "total_tokens": 26,
                  "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 3}}}
    message = Message.model_validate(anthropic_format.response_from_hub(openai_format.response_to_hub(answer)))
    assert (message.content[0].text, message.stop_reason) == ("Hel", "max_tokens")
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (
        13, 4, 9)


def test_a_refusal_keeps_its_words_and_says_so():
    answer = {"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-x", "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": None,
                                                          "refusal": "I can't help with that."}}]}
    message = Message.model_validate(anthropic_format.response_from_hub(openai_format.response_to_hub(answer)))
    assert (message.content[0].text, message.stop_reason) == ("I can't help with that.", "refusal")


def test_errors_in_each_clients_shape():
    anthropic_error = b'{"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}'
    message = anthropic_format.error_to_hub(429, anthropic_error)
    assert json.loads(openai_format.error_from_hub(429, message)) == {"error": {
        "message": "slow down", "type": "rate_limit_error", "param": None, "code": None}}
    openai_error = b'{"error": {"message": "bad key", "type": "invalid_request_error", "code": "invalid_api_key"}}'
    assert json.loads(anthropic_format.error_from_hub(401, openai_format.error_to_hub(401, openai_error))) == {
        "type": "error", "error": {"type": "authentication_error", "message": "bad key"}}


# -- streams -------------------------------------------------------------------------------------------------------

def httpx_response(body: bytes) -> httpx.Response:
    return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"},
                          request=httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions"))


def _split(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def _openai_client_stream(provider_bytes: list[bytes]) -> bytes:
    decoder, encoder = anthropic_format.StreamToHub("claude-x"), openai_format.StreamFromHub("claude-x")
    out = b"".join(encoder.feed(c) for piece in provider_bytes for c in decoder.feed(piece))
    return out + b"".join(encoder.feed(c) for c in decoder.close()) + encoder.close()


@pytest.mark.parametrize("size", [1, 7, 64, 10**6])
def test_anthropic_stream_as_openai_chunks_in_any_split(size):
    out = _openai_client_stream(_split(ANTHROPIC_STREAM, size))
    assert out == _openai_client_stream([ANTHROPIC_STREAM])
    assert out.endswith(b"data: [DONE]\n\n")
    state = ChatCompletionStreamState()
    chunks = [ChatCompletionChunk.model_validate(json.loads(line[6:])) for line in out.decode().split("\n\n")
              if line.startswith("data: {")]
    for chunk in chunks:
        state.handle_chunk(chunk)
    final = state.get_final_completion()
    assert final.choices[0].message.content == "Let me check." and final.choices[0].finish_reason == "tool_calls"
    call = final.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "toolu_1", "weather", {"city": "Oslo"})
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (16, 21)


def test_a_providers_error_event_mid_stream_reaches_the_client_as_its_own():
    start = ANTHROPIC_STREAM.split(b"\n\n")[0] + b"\n\n"
    error = sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    out = _openai_client_stream([start, error])
    assert b'data: {"error":{"type":"overloaded_error","message":"Overloaded"}}' in out
    with pytest.raises(openai.APIError, match="Overloaded"):  # the OpenAI SDK raises it, as from OpenAI itself
        list(openai.Stream(cast_to=ChatCompletionChunk, response=httpx_response(out), client=openai.OpenAI(
            api_key="x", base_url="http://127.0.0.1:9")))


def test_openai_stream_as_anthropic_events_read_by_the_sdk():
    provider = openai_format.StreamToHub("gpt-x")
    client = anthropic_format.StreamFromHub("gpt-x")
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x"}
    wire = sse(*[{**base, "choices": choices, **extra} for choices, extra in [
        ([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}], {}),
        ([{"index": 0, "delta": {"content": "Hi "}, "finish_reason": None}], {}),
        ([{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                 "function": {"name": "f", "arguments": ""}}]}, "finish_reason": None}],
         {}),
        ([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]},
           "finish_reason": None}], {}),
        ([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]},
           "finish_reason": None}], {}),
        ([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}], {}),
        ([], {"usage": {"prompt_tokens": 17, "completion_tokens": 9, "total_tokens": 26,
                        "prompt_tokens_details": {"cached_tokens": 4}}}),
    ]], named=False) + b"data: [DONE]\n\n"
    out = b"".join(client.feed(c) for piece in _split(wire, 5) for c in provider.feed(piece))
    out += b"".join(client.feed(c) for c in provider.close()) + client.close()
    snapshot, json_bufs = None, {}
    for block in out.decode().split("\n\n")[:-1]:
        event_line, data_line = block.split("\n")
        event = EVENTS.validate_python(json.loads(data_line[6:]))
        assert event_line == f"event: {event.type}"
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    assert [b.type for b in snapshot.content] == ["text", "tool_use"]
    assert snapshot.content[0].text == "Hi " and snapshot.content[1].input == {"a": 1}
    assert snapshot.stop_reason == "tool_use"
    assert (snapshot.usage.input_tokens, snapshot.usage.cache_read_input_tokens, snapshot.usage.output_tokens) == (
        13, 4, 9)


def test_rewrite_stream_meters_the_providers_own_bytes_first():
    seen = []
    stream = RewriteStream(lambda data: seen.append(data) or (data,),
                           Rewrite("openai", openai_format, anthropic_format, True, "claude-x"))
    out = b"".join(b"".join(stream(piece)) for piece in [*_split(ANTHROPIC_STREAM, 50), b""])
    assert b"".join(seen) == ANTHROPIC_STREAM and seen[-1] == b""  # the tap got every byte, then the end
    assert out == _openai_client_stream([ANTHROPIC_STREAM])


def test_a_stream_that_cannot_be_translated_ends_with_the_clients_error_event(monkeypatch):
    """A translator failing mid-stream: metering still sees every byte, and the client's SDK raises."""
    seen = []
    stream = RewriteStream(lambda data: seen.append(data) or (data,),
                           Rewrite("openai", openai_format, anthropic_format, True, "claude-x"))
    head, tail = ANTHROPIC_STREAM[:200], ANTHROPIC_STREAM[200:]
    out = b"".join(stream(head))
    monkeypatch.setattr(stream.decoder, "feed", lambda data: 1 / 0)
    out += b"".join(stream(tail)) + b"".join(stream(b""))
    assert b"".join(seen) == ANTHROPIC_STREAM
    assert out.count(b'"error"') == 1 and out.endswith(b"\n\n")
    with pytest.raises(openai.APIError, match="could not be translated"):
        list(openai.Stream(cast_to=ChatCompletionChunk, response=httpx_response(out), client=openai.OpenAI(
            api_key="x", base_url="http://127.0.0.1:9")))


def test_hub_usage_counts_cached_tokens_as_input():
    assert make_usage(16, 21, cached=4, cache_write=2)["total_tokens"] == 37
    assert anthropic_format.usage_from_hub(make_usage(16, 21, cached=4, cache_write=2)) == {
        "input_tokens": 10, "cache_read_input_tokens": 4, "cache_creation_input_tokens": 2, "output_tokens": 21}
    openai.types.CompletionUsage.model_validate(make_usage(16, 21, cached=4, cache_write=2))


# -- the Gateway addon in-process ----------------------------------------------------------------------------------

def rewrite_flow(path: str, body: dict, headers=()):
    flow = api_flow(list(headers), host="127.0.0.1", port=8080, scheme="http", path=path,
                    content=json.dumps(body).encode())
    flow.client_conn.sockname = ("127.0.0.1", 8080)
    return flow


def test_gateway_translates_a_rewrite_request_and_its_answer(gw):
    flow = run(gw, rewrite_flow("/v1/rewrite/anthropic/https://api.openai.com/v1/chat/completions/v1/messages", {
        "model": "gpt-4o-mini", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]},
        [("x-api-key", secret_key())]))
    assert flow.response is None, flow.response.content
    assert flow.request.url == "https://api.openai.com/v1/chat/completions"
    assert flow.request.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert json.loads(flow.request.content) == {"model": "gpt-4o-mini", "max_completion_tokens": 20,
                                                "messages": [{"role": "user", "content": "hi"}]}
    usage = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
    flow.response = tutils.tresp(headers=http.Headers(content_type="application/json"), content=json.dumps({
        "id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini", "usage": usage,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hello"}}],
    }).encode())

    async def respond():  # hooks run on mitmproxy's event loop
        gw.responseheaders(flow)
        gw.response(flow)

    asyncio.run(respond())
    message = Message.model_validate_json(flow.response.content)
    assert (message.content[0].text, message.usage.input_tokens, message.usage.output_tokens) == ("Hello", 1000, 500)
    assert gw.writer.flush(timeout=10)
    row = RequestRow.get_by_id(flow.response.headers["x-lava-request-id"])
    assert (row.provider, row.model, row.client_format, row.input_tokens, row.output_tokens) == (
        "openai", "gpt-4o-mini", "anthropic", 1000, 500)


@pytest.mark.parametrize("path, body, headers, shape, code", [
    ("/v1/rewrite/anthropic/https://api.openai.com/v1/messages",
     {"model": "m", "max_tokens": 5, "top_k": 1, "messages": []}, True, "anthropic", "untranslatable"),
    ("/v1/rewrite/openai/https://api.openai.com/v1", {"model": "m", "messages": []}, False, "openai",
     "missing_credential"),
    ("/v1/rewrite/openai/https://api.cohere.com/v2/chat", {"model": "m", "messages": []}, True, "openai",
     "untranslatable"),
    ("/v1/rewrite/openai/https://example.com/v1/chat/completions", {"model": "m", "messages": []}, True, "openai",
     "invalid_forward_url"),
    ("/v1/rewrite/klingon/https://api.openai.com/v1", {}, True, "gateway", "unknown_format"),
    ("/v1/rewrite/openai/https://api.anthropic.com/v1/messages", {"model": "m", "messages": [], "logit_bias": {}},
     True, "openai", "untranslatable"),
    ("/v1/rewrite/google/https://api.openai.com/v1/v1beta/models/m:generateContent",
     {"contents": [], "generationConfig": {"topK": 3}}, True, "google", "untranslatable"),
])
def test_gateway_refusals_of_rewrite_requests_in_the_clients_shape(gw, path, body, headers, shape, code):
    flow = run(gw, rewrite_flow(path, body, [("authorization", f"Bearer {secret_key()}")] if headers else []))
    answer = json.loads(flow.response.content)
    assert flow.response.status_code in (400, 401)
    if shape == "anthropic":
        assert answer["type"] == "error" and answer["error"]["type"] == code
    elif shape == "openai":
        assert answer["error"]["code"] == code and "message" in answer["error"]
        assert answer["error"]["param"] == ("logit_bias" if "logit_bias" in body else None)
    elif shape == "google":
        details = {d["@type"].rpartition(".")[2]: d for d in answer["error"]["details"]}
        assert details["ErrorInfo"]["reason"] == code.upper()
        assert details["BadRequest"]["fieldViolations"][0]["field"] == "generationConfig.topK"
    else:
        assert answer["error"]["code"] == code


def test_an_answer_the_clients_format_cannot_carry_is_a_502_naming_the_field():
    from addons.proxy.gateway_addon import Gateway
    from addons.rewrite import gemini_format

    answer = {"candidates": [{"index": 0, "finishReason": "STOP", "content": {"role": "model", "parts": [
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}}]}}], "modelVersion": "gemini-2.5-flash"}
    flow = tflow.tflow(resp=tutils.tresp(status_code=200, content=json.dumps(answer).encode()))
    Gateway._translate_answer(flow, Rewrite("openai", openai_format, gemini_format, False, "gemini-2.5-flash"))
    error = json.loads(flow.response.content)["error"]
    assert flow.response.status_code == 502 and error["code"] == "untranslatable"
    assert "candidates[0].content.parts[0].inlineData" in error["message"]
