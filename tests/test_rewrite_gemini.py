"""The Gemini translator (addons/rewrite/gemini_format.py), both directions, checked by google-genai itself.

As a client format, the google-genai SDK is the caller: its own request bodies (captured by an
httpx transport) are translated to the hub, and the answers and SSE events we encode are parsed by
the SDK's own client. As a provider, the input is what tests/mock_provider.py's Gemini answers put
on the wire (fetched from a running mock).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import errors, types
from pydantic import BaseModel

from addons.rewrite import gemini_format as g
from addons.rewrite import hub as h
from addons.rewrite.hub import Untranslatable
from tests.hub_samples import tool_call_stream
from tests.mock_provider import FULL_TEXT, STREAM_TEXT, MockProvider, wire_usage

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image").decode()
MODEL = "gemini-2.0-flash"


@pytest.fixture(scope="module")
def mock():
    with MockProvider() as m:
        yield m


def sdk(answer: httpx.Response | None = None, status: int = 200) -> tuple[genai.Client, list[httpx.Request]]:
    """A google-genai client whose HTTP goes to a transport that records the requests and returns ``answer``."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer or httpx.Response(200, json={"candidates": []})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    options = types.HttpOptions(base_url="http://gateway.test/v1/rewrite/google/x", httpx_client=http)
    return genai.Client(api_key="tg-test", http_options=options), seen


def sse_answer(data: bytes, piece: int = 7) -> httpx.Response:
    """An SSE answer delivered in small pieces, so the SDK's line reading meets split events."""
    return httpx.Response(200, headers={"content-type": g.SSE_CONTENT_TYPE},
                          content=iter([data[i:i + piece] for i in range(0, len(data), piece)]))


def renumber_ids(hub: dict[str, Any]) -> dict[str, Any]:
    """The hub request with its tool call ids renamed in order of appearance (Gemini mints its own)."""
    names: dict[str, str] = {}
    text = json.dumps(hub)
    for msg in hub["messages"]:
        for call in msg.get("tool_calls") or []:
            names.setdefault(call["id"], f"id{len(names)}")
    for old, new in names.items():
        text = text.replace(json.dumps(old), json.dumps(new))
    return json.loads(text)


def assert_google_accepts(body: dict[str, Any]) -> None:
    """Every part of a Gemini body we built is valid for google-genai's own types (which forbid unknown fields)."""
    assert set(body) <= {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig"}
    for content in body["contents"] + [body.get("systemInstruction") or {"parts": []}]:
        types.Content.model_validate(content)
    for tool in body.get("tools", []):
        types.Tool.model_validate(tool)
    types.ToolConfig.model_validate(body.get("toolConfig", {}))
    types.GenerationConfig.model_validate(body.get("generationConfig", {}))


def get_weather(city: str, unit: str = "celsius") -> str:
    """The weather in a city."""
    return f"sunny in {city}"


class Forecast(BaseModel):
    city: str
    high: int
    notes: list[str] | None = None


HUB_REQUEST: dict[str, Any] = {
    "model": MODEL,
    "stream": True,
    "messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "text", "text": "What is this, and the weather?"},
                                     {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                                     {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": '{"forecast": "sunny"}'},
        {"role": "tool", "tool_call_id": "call_b", "content": "rain"},
        {"role": "user", "content": "Thanks."},
    ],
    "tools": [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "max_tokens": 300, "temperature": 0.2, "top_p": 0.9, "stop": ["END"],
    "response_format": {"type": "json_schema", "json_schema": {"name": "Forecast", "schema": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
}


def test_hub_request_to_gemini_and_back():
    path, body = g.request_from_hub(HUB_REQUEST, None)
    assert path == f"models/{MODEL}:streamGenerateContent?alt=sse"
    assert_google_accepts(body)
    assert body["systemInstruction"] == {"parts": [{"text": "Answer briefly."}]}
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["contents"][0]["parts"][1:] == [{"inlineData": {"mimeType": "image/png", "data": PNG}},
                                                {"fileData": {"fileUri": "https://example.com/cat.jpg",
                                                              "mimeType": "image/jpeg"}}]
    # both function responses and the next user text go in one content, answering by name
    assert body["contents"][2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"forecast": "sunny"}}},
        {"functionResponse": {"name": "get_weather", "response": {"result": "rain"}}}, {"text": "Thanks."}]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
    assert body["generationConfig"] == {
        "maxOutputTokens": 300, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"],
        "responseMimeType": "application/json",
        "responseJsonSchema": {**HUB_REQUEST["response_format"]["json_schema"]["schema"], "title": "Forecast"}}
    back = g.request_to_hub(body) | {"model": MODEL, "stream": True}  # the endpoint fills these from the path
    assert g.model_and_stream("/v1beta/" + path) == (MODEL, True)
    expected = renumber_ids(HUB_REQUEST)
    expected["messages"][4]["content"] = '{"result": "rain"}'  # a plain-text result travels wrapped
    expected["messages"][5] = {"role": "user", "content": "Thanks."}
    expected["response_format"]["json_schema"]["schema"]["title"] = "Forecast"  # the name travels as the title
    assert renumber_ids(back) == expected


def test_google_genai_request_to_hub():
    client, seen = sdk()
    history = [
        types.Content(role="user", parts=[types.Part.from_text(text="Weather in Paris?"),
                                          types.Part.from_bytes(data=b"\x89PNG", mime_type="image/png")]),
        types.Content(role="model", parts=[types.Part.from_function_call(name="get_weather", args={"city": "Paris"})]),
        types.Content(role="user", parts=[types.Part.from_function_response(name="get_weather",
                                                                             response={"output": "sunny"})]),
    ]
    client.models.generate_content(model=MODEL, contents=history, config=types.GenerateContentConfig(
        system_instruction="Be brief.", max_output_tokens=64, temperature=0.5, top_p=0.8, stop_sequences=["x"],
        response_mime_type="application/json", response_schema=Forecast, tools=[get_weather],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode="AUTO"))))
    assert g.model_and_stream(seen[0].url.path) == (MODEL, False)
    hub = g.request_to_hub(json.loads(seen[0].content))
    call_id = hub["messages"][2]["tool_calls"][0]["id"]
    assert hub["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}, {
            "type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"\x89PNG").decode()}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": call_id, "content": '{"output": "sunny"}'},
    ]
    assert hub["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                        "unit": {"default": "celsius", "type": "string"}},
                       "required": ["city"]}}}]
    assert hub["tool_choice"] == "auto"
    assert {k: hub[k] for k in ("max_tokens", "temperature", "top_p", "stop")} == {
        "max_tokens": 64, "temperature": 0.5, "top_p": 0.8, "stop": ["x"]}
    # the SDK sends pydantic models as Gemini's OpenAPI Schema (upper-case types, nullable): JSON Schema in the hub
    schema = hub["response_format"]["json_schema"]
    assert schema["name"] == "Forecast"
    assert schema["schema"]["properties"]["high"]["type"] == "integer"
    assert schema["schema"]["properties"]["notes"]["type"] == ["array", "null"]
    assert schema["schema"]["properties"]["notes"]["items"] == {"type": "string"}
    assert "propertyOrdering" not in schema["schema"] and "property_ordering" not in schema["schema"]


def test_mock_gemini_answer_to_hub(mock):
    _, body = g.request_from_hub({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, None)
    answer = httpx.post(f"{mock.url}/v1beta/models/{MODEL}:generateContent", json=body).json()
    wire = wire_usage("gemini.generate")
    hub = g.response_to_hub(answer)
    assert hub["choices"] == [{"index": 0, "message": {"role": "assistant", "content": FULL_TEXT},
                               "finish_reason": "stop"}]
    assert hub["model"] == MODEL and hub["id"] == answer["responseId"]
    assert hub["usage"] == h.make_usage(wire["promptTokenCount"],
                                        wire["candidatesTokenCount"] + wire["thoughtsTokenCount"],
                                        cached=wire["cachedContentTokenCount"], reasoning=wire["thoughtsTokenCount"])
    assert hub["usage"]["total_tokens"] == wire["totalTokenCount"]


@pytest.mark.parametrize("piece", [1, 5, 4096])
def test_mock_gemini_stream_to_hub(mock, piece):
    path, body = g.request_from_hub({"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
                                    None)
    raw = httpx.post(f"{mock.url}/v1beta/{path}", json=body).content
    decoder = g.StreamToHub(MODEL)
    chunks = [c for i in range(0, len(raw), piece) for c in decoder.feed(raw[i:i + piece])] + decoder.close()
    texts = [c["choices"][0]["delta"]["content"] for c in chunks if c["choices"] and "content" in c["choices"][0]["delta"]]
    assert texts == STREAM_TEXT
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] \
        == ["stop"]
    wire = wire_usage("gemini.generate")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == wire["totalTokenCount"]
    assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == wire["cachedContentTokenCount"]
    assert chunks[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] == wire["thoughtsTokenCount"]
    assert sum("usage" in c for c in chunks) == 1


HUB_ANSWER: dict[str, Any] = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": MODEL,
    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Let me check.", "reasoning_content": "The user wants weather.",
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}}],
    "usage": h.make_usage(120, 40, cached=30, reasoning=12),
}


def test_answer_parsed_by_google_genai():
    body = g.response_from_hub(HUB_ANSWER)
    assert types.GenerateContentResponse.model_validate(body).function_calls[0].args == {"city": "Paris"}
    client, _ = sdk(httpx.Response(200, json=body))
    resp = client.models.generate_content(model=MODEL, contents="weather?")
    assert resp.function_calls[0].name == "get_weather" and resp.function_calls[0].args == {"city": "Paris"}
    assert resp.candidates[0].finish_reason == types.FinishReason.STOP
    parts = resp.candidates[0].content.parts
    assert (parts[0].thought, parts[0].text, parts[1].text) == (True, "The user wants weather.", "Let me check.")
    u = resp.usage_metadata
    assert (u.prompt_token_count, u.cached_content_token_count, u.candidates_token_count, u.thoughts_token_count,
            u.total_token_count) == (120, 30, 28, 12, 160)
    back = g.response_to_hub(body)
    assert back | {"created": HUB_ANSWER["created"]} == HUB_ANSWER


def hub_stream() -> list[dict[str, Any]]:
    return tool_call_stream(MODEL, h.make_usage(50, 20, cached=10, reasoning=5))


def test_stream_parsed_by_google_genai_and_back_to_hub():
    encoder = g.StreamFromHub(MODEL)
    pieces = [encoder.feed(c) for c in hub_stream()] + [encoder.close()]
    assert pieces[1].startswith(b"data: ") and b"Checking" in pieces[1]  # text goes out as it comes
    assert pieces[4] == pieces[5] == b""  # a call goes out whole, once its arguments are complete
    data = b"".join(pieces)
    client, seen = sdk(sse_answer(data))
    events = list(client.models.generate_content_stream(model=MODEL, contents="weather?"))
    assert seen[0].url.params["alt"] == "sse"
    assert "".join(e.text or "" for e in events if not e.function_calls) == "Checking now."
    calls = [(fc.name, fc.args, fc.id) for e in events for fc in (e.function_calls or [])]
    assert calls == [("get_weather", {"city": "Paris"}, "call_p"), ("get_weather", {"city": "Rome"}, "call_r")]
    last = events[-1]
    assert last.candidates[0].finish_reason == types.FinishReason.STOP
    assert (last.usage_metadata.prompt_token_count, last.usage_metadata.candidates_token_count,
            last.usage_metadata.thoughts_token_count, last.usage_metadata.cached_content_token_count) == (50, 15, 5, 10)
    decoder = g.StreamToHub(MODEL)
    back = [c for i in range(0, len(data), 3) for c in decoder.feed(data[i:i + 3])] + decoder.close()
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in back if c["choices"]) == "Checking now."
    back_calls = [t for c in back if c["choices"] for t in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [(t["index"], t["id"], t["function"]) for t in back_calls] == [
        (0, "call_p", {"name": "get_weather", "arguments": '{"city": "Paris"}'}),
        (1, "call_r", {"name": "get_weather", "arguments": '{"city": "Rome"}'})]
    assert [c["choices"][0]["finish_reason"] for c in back if c["choices"] and c["choices"][0]["finish_reason"]] \
        == ["tool_calls"]
    assert back[-1]["usage"] == hub_stream()[-1]["usage"]


def test_stream_without_sse_is_one_json_array_even_when_it_ends_in_an_error():
    whole = g.ArrayStreamFromHub(MODEL)
    items = json.loads(b"".join([whole.feed(c) for c in hub_stream()] + [whole.close()]))
    sse = b"".join([g.StreamFromHub(MODEL).feed(c) for c in hub_stream()])  # the same events, framed as SSE
    assert len(items) > 2 and [json.dumps(i, separators=(",", ":")) for i in items][:2] == [
        block[6:] for block in sse.decode().split("\r\n\r\n")[:2]]
    broken = g.ArrayStreamFromHub(MODEL)
    data = broken.feed(hub_stream()[1]) + broken.feed({"error": {"message": "overloaded", "code": 503}})
    assert json.loads(data + broken.close())[-1]["error"]["code"] == 503
    assert json.loads(g.ArrayStreamFromHub(MODEL).close()) == []


def test_stream_error_raised_by_google_genai():
    encoder = g.StreamFromHub(MODEL)
    data = encoder.feed(hub_stream()[1]) + encoder.feed({"error": {"message": "overloaded", "code": 503}})
    assert encoder.feed(hub_stream()[2]) == encoder.close() == b""  # nothing after the error
    client, _ = sdk(sse_answer(data))
    stream = client.models.generate_content_stream(model=MODEL, contents="hi")
    assert next(stream).text == "Checking"
    with pytest.raises(errors.ServerError) as caught:
        next(stream)
    assert (caught.value.code, caught.value.status, caught.value.message) == (503, "UNAVAILABLE", "overloaded")


def test_stream_event_the_hub_cannot_carry_becomes_an_error_chunk():
    decoder = g.StreamToHub(MODEL)
    image = {"candidates": [{"content": {"role": "model", "parts": [{"inlineData": {"mimeType": "image/png",
                                                                                    "data": PNG}}]}}]}
    chunks = decoder.feed(b"data: " + json.dumps(image).encode() + b"\n\n")
    assert chunks == [{"error": {"message": "candidates[0].content.parts[0].inlineData: the hub's answers carry "
                                            "text and calls only", "type": "untranslatable", "code": 502}}]


def test_mock_gemini_garbage_stream_is_survived(mock):
    path, body = g.request_from_hub({"model": "mock-garbage", "stream": True, "messages": [USER]}, None)
    raw = httpx.post(f"{mock.url}/v1beta/{path}", json=body).content
    decoder = g.StreamToHub("mock-garbage")
    # junk lines, bytes that are not UTF-8 and events of broken JSON (every Gemini event carries usage, so the
    # mock breaks them all) are skipped without a raise, and no usage is made up
    assert decoder.feed(raw) + decoder.close() == []
    fine = b'data: {"candidates":[{"content":{"parts":[{"text":"ok"}]},"finishReason":"STOP"}]}\r\n\r\n'
    assert [c["choices"][0]["delta"].get("content") for c in decoder.feed(fine)] == ["ok", None]


def test_two_candidates_stream_with_usage_last():
    def event(index: int, text: str, finish: bool, candidates: int) -> bytes:
        cand: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": index}
        if finish:
            cand["finishReason"] = "MAX_TOKENS"
        usage = {"promptTokenCount": 4, "candidatesTokenCount": candidates, "totalTokenCount": 4 + candidates}
        return b"data: " + json.dumps({"candidates": [cand], "usageMetadata": usage}).encode() + b"\r\n\r\n"
    decoder = g.StreamToHub(MODEL)
    chunks = decoder.feed(event(0, "a", False, 1) + event(1, "b", False, 2) + event(0, "c", True, 3))
    chunks += decoder.feed(event(1, "d", True, 4)) + decoder.close()
    assert [(c["choices"][0]["index"], c["choices"][0]["delta"].get("content"), c["choices"][0]["finish_reason"])
            for c in chunks[:-1]] == [(0, "a", None), (1, "b", None), (0, "c", None), (0, None, "length"),
                                      (1, "d", None), (1, None, "length")]
    assert chunks[-1]["usage"] == h.make_usage(4, 4)


def test_thought_signature_survives_the_hub():
    signature = base64.b64encode(b"\x00\xffopaque signature bytes").decode()
    hub = g.response_to_hub({"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}, "thoughtSignature": signature}]},
        "finishReason": "STOP"}]})
    call = hub["choices"][0]["message"]["tool_calls"][0]
    assert hub["choices"][0]["finish_reason"] == "tool_calls"
    assert all(ch.isalnum() or ch in "_-" for ch in call["id"])  # still a valid Anthropic tool_use id
    _, body = g.request_from_hub({"model": MODEL, "messages": [
        {"role": "user", "content": "weather?"}, {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "cold"}]}, None)
    assert body["contents"][1]["parts"] == [{"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}},
                                             "thoughtSignature": signature}]
    assert_google_accepts(body)


def test_error_in_google_shape(mock):
    body = g.error_from_hub(400, "messages[2].tool_call_id: answers no tool call", h.UNTRANSLATABLE)
    client, _ = sdk(httpx.Response(400, content=body, headers={"content-type": "application/json"}))
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model=MODEL, contents="hi")
    assert (caught.value.code, caught.value.status) == (400, "INVALID_ARGUMENT")
    assert caught.value.message == "messages[2].tool_call_id: answers no tool call"
    assert caught.value.details["error"]["details"][0]["reason"] == "UNTRANSLATABLE"
    provider = httpx.post(f"{mock.url}/v1beta/models/mock-error-429:generateContent", json={"contents": []})
    assert g.error_to_hub(429, provider.content) == provider.json()["error"]["message"]


@pytest.mark.parametrize(("body", "field"), [
    ({"contents": [], "generationConfig": {"topK": 40}}, "generationConfig.topK"),
    ({"contents": [], "safetySettings": []}, "safetySettings"),
    ({"contents": [], "tools": [{"googleSearch": {}}]}, "tools[0].googleSearch"),
    ({"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "audio/wav", "data": "AAAA"}}]}]},
     "contents[0].parts[0].inlineData"),
    ({"contents": [{"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}]},
     "contents[0].parts[0].functionResponse"),
    ({"contents": [], "generationConfig": {"responseMimeType": "text/x.enum"}}, "generationConfig.responseMimeType"),
    ({"contents": [], "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["a", "b"]}}},
     "toolConfig.functionCallingConfig.allowedFunctionNames"),
])
def test_untranslatable_gemini_requests(body, field):
    with pytest.raises(Untranslatable) as caught:
        g.request_to_hub(body)
    assert caught.value.field == field


USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(("hub", "field"), [
    ({"messages": [USER], "logprobs": True}, "logprobs"),
    ({"messages": [USER], "parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"messages": [USER, {"role": "tool", "tool_call_id": "nope", "content": "x"}]}, "messages[1].tool_call_id"),
    ({"messages": [USER, {"role": "system", "content": "late"}]}, "messages[1]"),
    ({"messages": [USER], "tools": [{"type": "function", "function": {"name": "f", "strict": True}}]},
     "tools[0].function.strict"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"messages": [USER], "reasoning_effort": "minimal"}, "reasoning_effort"),
])
def test_untranslatable_hub_requests(hub, field):
    with pytest.raises(Untranslatable) as caught:
        g.request_from_hub({"model": MODEL, **hub}, None)
    assert caught.value.field == field
