"""The Bedrock Converse translator (addons/rewrite/bedrock_format.py), both directions, checked by boto3 itself.

As a client format, boto3's bedrock-runtime client is the caller: its own Converse bodies (taken at
botocore's ``before-send`` event, where botocore's own tests stub the network) are translated to the
hub, and the answers and event streams we encode go back through botocore's response parser for the
bedrock-runtime service model (event stream framing and CRCs included). As a provider, the input is
what tests/mock_bedrock.py puts on the wire.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.eventstream import EventStreamBuffer
from botocore.exceptions import ClientError, EventStreamError

from addons.rewrite import bedrock_format as b
from addons.rewrite import hub as h
from addons.rewrite.hub import Untranslatable
from tests.hub_samples import tool_call_stream
from tests.mock_bedrock import CONVERSE_USAGE, TEXT, MockBedrock

MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
PNG_BYTES = b"\x89PNG\r\n\x1a\n fake image"
PNG = base64.b64encode(PNG_BYTES).decode()


class _Raw:
    """What botocore reads a response body from (urllib3's ``stream()``), in small pieces."""

    def __init__(self, data: bytes, piece: int) -> None:
        self._pieces = [data[i:i + piece] for i in range(0, len(data), piece)]

    def stream(self, **_: Any):
        yield from self._pieces

    def close(self) -> None:
        pass


def boto(status: int = 200, body: bytes = b"{}", headers: dict[str, str] | None = None, piece: int = 5):
    """A bedrock-runtime client that records what it sends and gets ``body`` back, parsed by botocore."""
    seen: list[Any] = []
    client = boto3.client("bedrock-runtime", region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE",
                          aws_secret_access_key="secret", endpoint_url="http://gateway.test/v1/rewrite/bedrock/x",
                          config=Config(retries={"total_max_attempts": 1}))

    def answer(request: Any, **_: Any) -> AWSResponse:
        seen.append(request)
        return AWSResponse(request.url, status, headers or {"content-type": "application/json"}, _Raw(body, piece))

    client.meta.events.register("before-send.bedrock-runtime.*", answer)
    return client, seen


def path_of(request: Any) -> str:
    return request.url.split("http://gateway.test/v1/rewrite/bedrock/x", 1)[1]


def assert_boto3_sends(body: dict[str, Any], model: str) -> None:
    """boto3, given our Converse body as its parameters (image bytes decoded), validates it against the
    bedrock-runtime service model and sends exactly that body."""
    params = copy.deepcopy(body)
    for msg in params["messages"]:
        for block in msg["content"]:
            if "image" in block:
                block["image"]["source"]["bytes"] = base64.b64decode(block["image"]["source"]["bytes"])
    client, seen = boto(body=json.dumps(MockBedrock.converse_answer()).encode())
    client.converse(modelId=model, **params)
    assert json.loads(seen[0].body) == body


HUB_REQUEST: dict[str, Any] = {
    "model": MODEL,
    "stream": False,
    "messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "text", "text": "What is this, and the weather?"},
                                     {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "tooluse_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "tooluse_b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "tooluse_a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "tooluse_b", "content": "rain"},
        {"role": "user", "content": "Thanks."},
    ],
    "tools": [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
    "tool_choice": "required",
    "max_tokens": 300, "temperature": 0.2, "top_p": 0.9, "stop": ["END"], "reasoning_effort": "low",
    "response_format": {"type": "json_schema", "json_schema": {"name": "Forecast", "schema": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
}


def test_hub_request_to_converse_and_back():
    path, body = b.request_from_hub(HUB_REQUEST, None)
    assert path == "model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    assert b.model_and_stream("/" + path) == (MODEL, False)
    assert body["system"] == [{"text": "Answer briefly."}]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][0]["content"][1] == {"image": {"format": "png", "source": {"bytes": PNG}}}
    assert body["messages"][2]["content"] == [  # tool results and the next text: one user turn
        {"toolResult": {"toolUseId": "tooluse_a", "content": [{"text": "sunny"}]}},
        {"toolResult": {"toolUseId": "tooluse_b", "content": [{"text": "rain"}]}}, {"text": "Thanks."}]
    assert body["inferenceConfig"] == {"maxTokens": 300, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]}
    assert body["toolConfig"]["toolChoice"] == {"any": {}}
    assert body["outputConfig"] == {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": {
        "schema": json.dumps(HUB_REQUEST["response_format"]["json_schema"]["schema"]), "name": "Forecast"}}},
        "effort": "low"}
    assert_boto3_sends(body, MODEL)
    back = b.request_to_hub(body) | {"model": MODEL, "stream": False}  # the endpoint fills these from the path
    expected = copy.deepcopy(HUB_REQUEST)
    expected["messages"][5] = {"role": "user", "content": "Thanks."}
    assert back == expected
    stream_path, _ = b.request_from_hub(HUB_REQUEST | {"stream": True}, "arn:aws:bedrock:us-east-1:1:x/y")
    assert stream_path == "model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ax%2Fy/converse-stream"


def test_boto3_converse_request_to_hub():
    client, seen = boto(body=json.dumps(MockBedrock.converse_answer()).encode())
    client.converse(
        modelId=MODEL, system=[{"text": "Be brief."}],
        messages=[
            {"role": "user", "content": [{"text": "Weather here?"},
                                         {"image": {"format": "png", "source": {"bytes": PNG_BYTES}}}]},
            {"role": "assistant", "content": [{"toolUse": {"toolUseId": "tu1", "name": "get_weather",
                                                           "input": {"city": "Paris"}}}]},
            {"role": "user", "content": [{"toolResult": {"toolUseId": "tu1", "content": [{"json": {"t": 21}}]}}]},
        ],
        inferenceConfig={"maxTokens": 64, "temperature": 0.5, "topP": 0.8, "stopSequences": ["x"]},
        toolConfig={"tools": [{"toolSpec": {"name": "get_weather", "description": "Weather.",
                                            "inputSchema": {"json": {"type": "object"}}}}],
                    "toolChoice": {"tool": {"name": "get_weather"}}})
    assert b.model_and_stream(path_of(seen[0])) == (MODEL, False)
    hub = b.request_to_hub(json.loads(seen[0].body))
    assert hub == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Weather here?"},
                                         {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "tu1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "tu1", "content": '{"t": 21}'},
        ],
        "max_tokens": 64, "temperature": 0.5, "top_p": 0.8, "stop": ["x"],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather.",
                                                    "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }


def test_mock_converse_answer_to_hub():
    hub = b.response_to_hub(MockBedrock.converse_answer())
    assert hub["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "".join(TEXT)},
                               "finish_reason": "stop"}]
    u = CONVERSE_USAGE  # Converse's inputTokens leave the cache out; the hub's prompt_tokens count it
    assert hub["usage"] == h.make_usage(u["inputTokens"] + u["cacheReadInputTokens"] + u["cacheWriteInputTokens"],
                                        u["outputTokens"], cached=u["cacheReadInputTokens"],
                                        cache_write=u["cacheWriteInputTokens"])
    assert hub["usage"]["total_tokens"] == u["totalTokens"]


@pytest.mark.parametrize("piece", [1, 37, 100000])
def test_mock_converse_stream_to_hub(piece):
    data = b"".join(MockBedrock.converse_frames())
    decoder = b.StreamToHub(MODEL)
    chunks = [c for i in range(0, len(data), piece) for c in decoder.feed(data[i:i + piece])] + decoder.close()
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert [c["choices"][0]["delta"]["content"] for c in chunks if "content" in (c["choices"] or [{}])[0].get(
        "delta", {})] == TEXT
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == CONVERSE_USAGE["totalTokens"]
    assert chunks[-1]["usage"]["prompt_tokens_details"] == {
        "cached_tokens": CONVERSE_USAGE["cacheReadInputTokens"],
        "cache_write_tokens": CONVERSE_USAGE["cacheWriteInputTokens"]}


HUB_ANSWER: dict[str, Any] = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000,
    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Let me check.", "reasoning_content": "The user wants weather.",
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}}],
    "usage": h.make_usage(120, 40, cached=30, cache_write=10),
}


def test_answer_parsed_by_boto3():
    body = b.response_from_hub(HUB_ANSWER)
    client, _ = boto(body=json.dumps(body).encode())
    resp = client.converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "weather?"}]}])
    assert resp["stopReason"] == "tool_use"
    assert resp["output"]["message"]["content"] == [
        {"reasoningContent": {"reasoningText": {"text": "The user wants weather."}}}, {"text": "Let me check."},
        {"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Paris"}}}]
    assert resp["usage"] == {"inputTokens": 80, "outputTokens": 40, "totalTokens": 160,
                             "cacheReadInputTokens": 30, "cacheWriteInputTokens": 10}
    back = b.response_to_hub(body)
    assert back | {"id": HUB_ANSWER["id"], "created": HUB_ANSWER["created"]} == HUB_ANSWER


def hub_stream() -> list[dict[str, Any]]:
    return tool_call_stream(MODEL, h.make_usage(50, 20, cached=10, cache_write=4))


def encode(chunks: list[dict[str, Any]]) -> list[bytes]:
    encoder = b.StreamFromHub(MODEL)
    return [encoder.feed(c) for c in chunks] + [encoder.close()]


def test_event_stream_parsed_by_boto3_and_back_to_hub():
    pieces = encode(hub_stream())
    assert all(p for p in pieces[1:7])  # every text and argument delta is a frame at once
    data = b"".join(pieces)
    frames = EventStreamBuffer()
    frames.add_data(data)  # botocore's decoder checks both CRCs of every frame
    assert [m.headers[":event-type"] for m in frames] == [
        "messageStart", "contentBlockDelta", "contentBlockDelta", "contentBlockStop", "contentBlockStart",
        "contentBlockDelta", "contentBlockDelta", "contentBlockStop", "contentBlockStart", "contentBlockDelta",
        "contentBlockStop", "messageStop", "metadata"]
    client, seen = boto(body=data, headers={"content-type": b.EVENT_STREAM}, piece=9)
    resp = client.converse_stream(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "weather?"}]}])
    assert path_of(seen[0]).endswith("/converse-stream")
    events = list(resp["stream"])
    assert events[0] == {"messageStart": {"role": "assistant"}}
    assert [e["contentBlockDelta"]["delta"] for e in events if "contentBlockDelta" in e] == [
        {"text": "Checking"}, {"text": " now."}, {"toolUse": {"input": '{"city": '}}, {"toolUse": {"input": '"Paris"}'}},
        {"toolUse": {"input": '{"city": "Rome"}'}}]
    assert [e["contentBlockStart"] for e in events if "contentBlockStart" in e] == [
        {"start": {"toolUse": {"toolUseId": "call_p", "name": "get_weather"}}, "contentBlockIndex": 1},
        {"start": {"toolUse": {"toolUseId": "call_r", "name": "get_weather"}}, "contentBlockIndex": 2}]
    assert events[-2] == {"messageStop": {"stopReason": "tool_use"}}
    assert events[-1]["metadata"]["usage"] == {"inputTokens": 36, "outputTokens": 20, "totalTokens": 70,
                                               "cacheReadInputTokens": 10, "cacheWriteInputTokens": 4}
    decoder = b.StreamToHub(MODEL)
    back = [c for i in range(0, len(data), 11) for c in decoder.feed(data[i:i + 11])] + decoder.close()
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in back if c["choices"]) == "Checking now."
    calls: dict[int, dict[str, str]] = {}
    for c in back:
        for t in (c["choices"][0]["delta"].get("tool_calls", []) if c["choices"] else []):
            call = calls.setdefault(t["index"], {"id": t.get("id"), "name": "", "arguments": ""})
            call["name"] += t["function"].get("name") or ""
            call["arguments"] += t["function"].get("arguments") or ""
    assert calls == {0: {"id": "call_p", "name": "get_weather", "arguments": '{"city": "Paris"}'},
                     1: {"id": "call_r", "name": "get_weather", "arguments": '{"city": "Rome"}'}}
    assert back[-1]["usage"] == hub_stream()[-1]["usage"]


def test_stream_error_frame_raised_by_boto3():
    encoder = b.StreamFromHub(MODEL)
    data = encoder.feed(hub_stream()[1]) + encoder.feed({"error": {"message": "slow down", "type": "throttlingException"}})
    client, _ = boto(body=data, headers={"content-type": b.EVENT_STREAM})
    resp = client.converse_stream(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    with pytest.raises(EventStreamError) as caught:
        list(resp["stream"])
    assert caught.value.response["Error"] == {"Code": "throttlingException", "Message": "slow down"}
    assert encoder.feed(hub_stream()[2]) == encoder.close() == b""  # nothing after the exception
    decoder = b.StreamToHub(MODEL)
    assert decoder.feed(data)[-1] == {"error": {"message": "slow down", "type": "throttlingException"}}
    by_code = b.StreamFromHub(MODEL).feed({"error": {"message": "x", "type": "rate_limit_error", "code": 429}})
    assert b.StreamToHub(MODEL).feed(by_code) == [{"error": {"message": "x", "type": "throttlingException"}}]


def test_broken_frame_becomes_an_error_chunk():
    frame = bytearray(b"".join(MockBedrock.converse_frames()[:2]))
    frame[-1] ^= 0xFF  # the second frame's message CRC no longer matches
    chunks = b.StreamToHub(MODEL).feed(bytes(frame))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[1]["error"]["type"] == "server_error" and "broken event stream" in chunks[1]["error"]["message"]


@pytest.mark.parametrize(("status", "code"), [(400, "ValidationException"), (429, "ThrottlingException"),
                                              (500, "InternalServerException")])
def test_error_in_aws_shape(status: int, code: str):
    body = b.error_from_hub(status, "messages[1].content[0]: no Converse equivalent", h.UNTRANSLATABLE)
    for headers in ({"content-type": "application/json"},
                    {"content-type": "application/json", "x-amzn-errortype": b.error_type(status)}):
        client, _ = boto(status=status, body=body, headers=headers)
        with pytest.raises(ClientError) as caught:
            client.converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}])
        assert caught.value.response["Error"]["Code"] == code
        assert caught.value.response["Error"]["Message"] == "messages[1].content[0]: no Converse equivalent"
    assert b.error_to_hub(403, b'{"message": "The security token is invalid"}') == "The security token is invalid"


def _converse(**body: Any) -> Callable[[], Any]:
    return lambda: b.request_to_hub({"messages": [{"role": "user", "content": [{"text": "hi"}]}], **body})


@pytest.mark.parametrize(("call", "field"), [
    (_converse(additionalModelRequestFields={"top_k": 5}), "additionalModelRequestFields"),
    (_converse(guardrailConfig={}), "guardrailConfig"),
    (_converse(system=[{"text": "x"}, {"cachePoint": {"type": "default"}}]), "system[1].cachePoint"),
    (_converse(messages=[{"role": "user", "content": [{"document": {}}]}]), "messages[0].content[0].document"),
    (_converse(messages=[{"role": "user", "content": [{"image": {"format": "png", "source": {
        "s3Location": {"uri": "s3://b/k"}}}}]}]), "messages[0].content[0].image.source"),
    (_converse(messages=[{"role": "user", "content": [{"toolResult": {"toolUseId": "t", "status": "error",
                                                                      "content": [{"text": "boom"}]}}]}]),
     "messages[0].content[0].toolResult.status"),
    (_converse(inferenceConfig={"maxTokens": 5, "topK": 3}), "inferenceConfig.topK"),
])
def test_untranslatable_converse_requests(call, field):
    with pytest.raises(Untranslatable) as caught:
        call()
    assert caught.value.field == field


USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(("hub", "field"), [
    ({"messages": [USER], "seed": 7}, "seed"),
    ({"messages": [USER], "n": 2}, "n"),
    ({"messages": [USER], "reasoning_effort": "minimal"}, "reasoning_effort"),
    ({"messages": [USER], "presence_penalty": 0.5}, "presence_penalty"),
    ({"messages": [USER], "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [USER], "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"},
     "tool_choice"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:image/bmp;base64,AAAA"}}]}]}, "messages[0].content[0].image_url.url"),
    ({"messages": [USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
])
def test_untranslatable_hub_requests(hub, field):
    with pytest.raises(Untranslatable) as caught:
        b.request_from_hub({"model": MODEL, **hub}, None)
    assert caught.value.field == field
