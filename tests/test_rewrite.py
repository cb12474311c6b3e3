"""The rewrite endpoint end to end: each official SDK speaking its own format to the other family's provider
(the mock, speaking the provider's real wire format) through the running gateway, streamed and not, with
tools; usage and cost in the ledger equal the provider's report priced by genai-prices directly."""

from __future__ import annotations

import json
import os
import subprocess
from decimal import Decimal

import anthropic
import genai_prices
import httpx
import openai
import pytest

from pricing.money import to_nanos
from tests.mock_provider import FULL_TEXT, TOOL_ARGUMENTS, wire_usage
from tests.test_lava_sdk import node_sdks  # noqa: F401 (a fixture)

CLAUDE = "claude-3-5-haiku-latest"
GPT = "gpt-4o-mini"
ANTHROPIC_URL = "https://api.anthropic.com/v1/messages"
OPENAI_URL = "https://api.openai.com/v1/chat/completions"
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                          "required": ["city"]}}


def openai_client(gateway, target: str = ANTHROPIC_URL) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1/rewrite/openai/{target}", api_key=gateway.admin_key,
                         max_retries=0)


def anthropic_client(gateway, target: str = OPENAI_URL) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{gateway.url}/v1/rewrite/anthropic/{target}", api_key=gateway.admin_key,
                               max_retries=0)


def expected_cost(provider: str, model: str, usage: dict) -> Decimal:
    """genai-prices' price of the provider's own usage report, at the ledger's nano precision."""
    if provider == "anthropic":
        cached, written = usage["cache_read_input_tokens"], usage["cache_creation_input_tokens"]
        counted = genai_prices.Usage(input_tokens=usage["input_tokens"] + cached + written, cache_read_tokens=cached,
                                     cache_write_tokens=written, output_tokens=usage["output_tokens"])
    else:
        counted = genai_prices.Usage(input_tokens=usage["prompt_tokens"],
                                     cache_read_tokens=usage["prompt_tokens_details"]["cached_tokens"],
                                     output_tokens=usage["completion_tokens"])
    return Decimal(to_nanos(genai_prices.calc_price(counted, model, provider_id=provider).total_price)) / 10**9


def assert_metered(gateway, request_id: str, provider: str, model: str, client_format: str, streamed: bool) -> None:
    row = gateway.request_row(request_id)
    usage = wire_usage("anthropic.messages" if provider == "anthropic" else "openai.chat")
    assert (row["provider"], row["model"], row["client_format"], row["status"], row["streamed"]) == (
        provider, model, client_format, 200, streamed)
    if provider == "anthropic":
        counts = (usage["input_tokens"] + usage["cache_read_input_tokens"] + usage["cache_creation_input_tokens"],
                  usage["cache_read_input_tokens"], usage["cache_creation_input_tokens"], usage["output_tokens"])
    else:
        counts = (usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"], 0,
                  usage["completion_tokens"])
    assert (row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"], row["output_tokens"]) == counts
    assert row["usage_source"] == "reported"
    expected = expected_cost(provider, model, usage)
    assert expected > 0 and Decimal(row["provider_cost"]) == expected


# -- the OpenAI SDK against Anthropic ------------------------------------------------------------------------------

def test_openai_sdk_to_anthropic(gateway, mock):
    raw = openai_client(gateway).chat.completions.with_raw_response.create(
        model=CLAUDE, max_tokens=100, temperature=0.5, stop="END",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    answer = raw.parse()
    assert answer.choices[0].message.content == FULL_TEXT and answer.choices[0].finish_reason == "stop"
    usage = wire_usage("anthropic.messages")
    assert answer.usage.prompt_tokens == 35 and answer.usage.prompt_tokens_details.cached_tokens == 5
    assert answer.usage.completion_tokens == usage["output_tokens"]
    sent = mock.last.json  # what Anthropic got: its own shape
    assert sent == {"model": CLAUDE, "system": "Be brief.", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "max_tokens": 100, "temperature": 0.5,
        "stop_sequences": ["END"]}
    assert mock.last.headers["anthropic-version"] and mock.last.path == "/v1/messages"
    request_id = raw.headers["x-lava-request-id"]
    assert_metered(gateway, request_id, "anthropic", CLAUDE, "openai", streamed=False)
    listed = httpx.get(f"{gateway.url}/v1/requests/{request_id}",
                       headers={"authorization": f"Bearer {gateway.admin_key}"})
    assert (listed.json()["client_format"], listed.json()["model"]) == ("openai", CLAUDE)


@pytest.mark.one_gateway
def test_openai_sdk_streams_from_anthropic(gateway):
    stream = openai_client(gateway).chat.completions.create(
        model=CLAUDE, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Hi"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == FULL_TEXT
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage.prompt_tokens == 35 and chunks[-1].usage.completion_tokens == 13
    assert stream.response.headers["content-type"].startswith("text/event-stream")
    assert_metered(gateway, stream.response.headers["x-lava-request-id"], "anthropic", CLAUDE, "openai",
                   streamed=True)


@pytest.mark.one_gateway
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_openai_sdk_tool_calls_from_anthropic(gateway, mock, streamed):
    client = openai_client(gateway)
    messages = [{"role": "user", "content": [{"type": "text", "text": "Weather?"}, {
        "type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]
    request = dict(model=CLAUDE, messages=messages, tools=[{"type": "function", "function": WEATHER}],
                   tool_choice="required")
    if streamed:
        with client.chat.completions.stream(**request) as stream:
            for _ in stream:
                pass
            answer = stream.get_final_completion()
    else:
        answer = client.chat.completions.create(**request)
    call = answer.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", TOOL_ARGUMENTS)
    assert answer.choices[0].finish_reason == "tool_calls"
    sent = mock.last.json
    assert sent["tools"] == [{"name": "get_weather", "input_schema": WEATHER["parameters"],
                              "description": WEATHER["description"]}]
    assert sent["tool_choice"] == {"type": "any"}
    assert sent["messages"][0]["content"][1] == {"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    # the tool's result goes back in a second turn, as Anthropic's tool_result block
    client.chat.completions.create(model=CLAUDE, messages=[
        *messages, answer.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny"}])
    turns = mock.last.json["messages"]
    assert turns[1]["content"] == [{"type": "tool_use", "id": call.id, "name": "get_weather", "input": TOOL_ARGUMENTS}]
    assert turns[2] == {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                     "content": "Sunny"}]}


# -- the Anthropic SDK against OpenAI ------------------------------------------------------------------------------

def test_anthropic_sdk_to_openai(gateway, mock):
    raw = anthropic_client(gateway).messages.with_raw_response.create(
        model=GPT, max_tokens=50, system="Be brief.", stop_sequences=["END"], extra_body={"top_p": 0.9},
        messages=[{"role": "user", "content": "Hi"}])
    message = raw.parse()
    assert message.content[0].text == FULL_TEXT and message.stop_reason == "end_turn"
    usage = wire_usage("openai.chat")
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (
        usage["prompt_tokens"] - 4, 4, usage["completion_tokens"])
    assert mock.last.path == "/v1/chat/completions" and mock.last.json == {
        "model": GPT, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "max_completion_tokens": 50, "top_p": 0.9, "stop": ["END"]}  # OpenAI's reasoning models refuse max_tokens
    assert_metered(gateway, raw.headers["x-lava-request-id"], "openai", GPT, "anthropic", streamed=False)


@pytest.mark.one_gateway
def test_anthropic_sdk_streams_from_openai(gateway):
    client = anthropic_client(gateway)
    with client.messages.stream(model=GPT, max_tokens=50, messages=[{"role": "user", "content": "Hi"}]) as stream:
        events = [event.type for event in stream]
        message = stream.get_final_message()
        request_id = stream.response.headers["x-lava-request-id"]
    assert message.content[0].text == FULL_TEXT and message.stop_reason == "end_turn"
    assert events[0] == "message_start" and events[-1] == "message_stop" and "content_block_delta" in events
    assert (message.usage.input_tokens + message.usage.cache_read_input_tokens, message.usage.output_tokens) == (17, 9)
    assert_metered(gateway, request_id, "openai", GPT, "anthropic", streamed=True)


@pytest.mark.one_gateway
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_anthropic_sdk_tool_use_from_openai(gateway, mock, streamed):
    client = anthropic_client(gateway)
    tool = {"name": WEATHER["name"], "description": WEATHER["description"], "input_schema": WEATHER["parameters"]}
    request = dict(model=GPT, max_tokens=50, messages=[{"role": "user", "content": "Weather?"}], tools=[tool],
                   tool_choice={"type": "tool", "name": "get_weather"})
    if streamed:
        with client.messages.stream(**request) as stream:
            for _ in stream:
                pass
            message = stream.get_final_message()
    else:
        message = client.messages.create(**request)
    block = message.content[-1]
    assert (block.type, block.name, block.input) == ("tool_use", "get_weather", TOOL_ARGUMENTS)
    assert message.stop_reason == "tool_use"
    sent = mock.last.json
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": WEATHER["parameters"], "description": WEATHER["description"]}}]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    client.messages.create(model=GPT, max_tokens=50, messages=[
        *request["messages"], {"role": "assistant", "content": [block.model_dump(exclude_none=True)]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "Sunny"}]}])
    turns = mock.last.json["messages"]
    assert turns[1]["tool_calls"][0]["id"] == block.id
    assert json.loads(turns[1]["tool_calls"][0]["function"]["arguments"]) == TOOL_ARGUMENTS
    assert turns[2] == {"role": "tool", "tool_call_id": block.id, "content": "Sunny"}


# -- refusals and provider errors, in the client's shape -----------------------------------------------------------

@pytest.mark.one_gateway
def test_untranslatable_fields_are_refused_by_name(gateway, mock):
    seen = len(mock.requests)
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client(gateway).chat.completions.create(
            model=CLAUDE, response_format={"type": "json_object"}, messages=[{"role": "user", "content": "Hi"}])
    assert refused.value.body["type"] == "untranslatable" and "response_format" in refused.value.body["message"]
    assert refused.value.param == "response_format.type"  # where OpenAI's SDK users look for the field
    with pytest.raises(anthropic.BadRequestError) as refused:
        anthropic_client(gateway).messages.create(model=GPT, max_tokens=5, extra_body={"top_k": 3},
                                                  messages=[{"role": "user", "content": "Hi"}])
    assert refused.value.body["error"]["type"] == "untranslatable" and "top_k" in refused.value.body["error"]["message"]
    assert len(mock.requests) == seen  # nothing reached the provider


@pytest.mark.one_gateway
def test_provider_errors_come_back_in_the_clients_shape(gateway):
    with pytest.raises(openai.RateLimitError) as error:
        openai_client(gateway).chat.completions.create(model="mock-error-429",
                                                       messages=[{"role": "user", "content": "Hi"}])
    assert error.value.body["message"] == "Rate limit reached (mock). Please try again later."
    assert error.value.body["type"] == "rate_limit_error"
    with pytest.raises(openai.RateLimitError) as error:  # a stream asked for: the error is still whole JSON
        openai_client(gateway).chat.completions.create(model="mock-error-429", stream=True,
                                                       messages=[{"role": "user", "content": "Hi"}])
    assert error.value.body["type"] == "rate_limit_error"
    with pytest.raises(anthropic.InternalServerError) as error:
        anthropic_client(gateway).messages.create(model="mock-error-500", max_tokens=5,
                                                  messages=[{"role": "user", "content": "Hi"}])
    assert error.value.body["type"] == "error" and error.value.body["error"]["type"] == "api_error"
    with pytest.raises(openai.AuthenticationError) as error:  # the gateway's own refusals too
        openai.OpenAI(base_url=f"{gateway.url}/v1/rewrite/openai/{ANTHROPIC_URL}", api_key="tg_sk_wrong",
                      max_retries=0).chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "x"}])
    assert "message" in error.value.body and "type" in error.value.body


@pytest.mark.one_gateway
def test_an_unreachable_provider_is_a_502_in_the_clients_shape(gateway):
    unreachable = anthropic.Anthropic(base_url=f"{gateway.url}/v1/rewrite/anthropic/https://api.mistral.ai/v1",
                                      api_key=gateway.admin_key, max_retries=0)  # mistral: nothing listens
    with pytest.raises(anthropic.APIStatusError) as error:
        unreachable.messages.create(model="mistral-small-latest", max_tokens=5,
                                    messages=[{"role": "user", "content": "Hi"}])
    assert error.value.status_code == 502 and error.value.body["type"] == "error"
    assert error.value.body["error"]["message"] == "the provider could not be reached"


# -- Lava's Node SDK -----------------------------------------------------------------------------------------------

@pytest.mark.one_gateway
def test_lava_node_sdk_gateway_with_openai_format_reaches_anthropic(gateway, node_sdks, mock):  # noqa: F811
    result = subprocess.run(["node", "lava_rewrite_scenario.mjs"], cwd=node_sdks, capture_output=True, text=True,
                            timeout=60, env={**os.environ, "BASE_URL": f"{gateway.url}/v1/",
                                             "SECRET_KEY": gateway.admin_key, "TARGET_URL": ANTHROPIC_URL,
                                             "MODEL": CLAUDE})
    assert result.returncode == 0, result.stderr
    steps = json.loads(result.stdout.strip().splitlines()[-1])
    assert steps["chat"]["ok"], steps["chat"]
    answer = steps["chat"]["value"]
    assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["content"] == FULL_TEXT
    assert answer["usage"]["prompt_tokens"] == 35 and answer["usage"]["completion_tokens"] == 13
    assert mock.requests[-1].path == "/v1/messages" and mock.requests[-1].json["max_tokens"] == 64
    assert not steps["untranslatable"]["ok"] and "400" in steps["untranslatable"]["error"]
    assert "logprobs" in steps["untranslatable"]["error"]


# -- Gemini: google-genai as the client, and Gemini as the provider ------------------------------------------------

GEMINI = "gemini-2.0-flash"
GEMINI_HOST = "https://generativelanguage.googleapis.com"


def google_client(gateway, target: str):
    from google import genai

    return genai.Client(api_key=gateway.admin_key, http_options={
        "base_url": f"{gateway.url}/v1/rewrite/google/{target}", "api_version": "v1beta"})


def gemini_tool():
    from google.genai import types

    return types.Tool(function_declarations=[types.FunctionDeclaration(
        name=WEATHER["name"], description=WEATHER["description"], parameters_json_schema=WEATHER["parameters"])])


@pytest.mark.one_gateway
@pytest.mark.parametrize("target, provider, model", [(ANTHROPIC_URL, "anthropic", CLAUDE), (OPENAI_URL, "openai", GPT)],
                         ids=["to-anthropic", "to-openai"])
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_google_sdk_to_other_families(gateway, mock, target, provider, model, streamed):
    from google.genai import types

    client = google_client(gateway, target)
    config = types.GenerateContentConfig(system_instruction="Be brief.", max_output_tokens=40)
    if streamed:
        chunks = list(client.models.generate_content_stream(model=model, contents="Hi", config=config))
        text, answer = "".join(c.text or "" for c in chunks), chunks[-1]
    else:
        answer = client.models.generate_content(model=model, contents="Hi", config=config)
        text = answer.text
    assert text == FULL_TEXT and answer.candidates[0].finish_reason == types.FinishReason.STOP
    sent = mock.last.json
    limit = "max_completion_tokens" if provider == "openai" else "max_tokens"  # OpenAI's reasoning models want it
    assert mock.last.model == model and sent[limit] == 40
    assert (sent["system"] if provider == "anthropic" else sent["messages"][0]["content"]) == "Be brief."
    usage = answer.usage_metadata
    reported = wire_usage("anthropic.messages" if provider == "anthropic" else "openai.chat")
    assert usage.prompt_token_count == (35 if provider == "anthropic" else reported["prompt_tokens"])
    request_id = answer.sdk_http_response.headers["x-lava-request-id"]
    assert_metered(gateway, request_id, provider, model, "google", streamed=streamed)
    # tools: a forced function call comes back as Gemini's functionCall
    config = types.GenerateContentConfig(tools=[gemini_tool()], tool_config=types.ToolConfig(
        function_calling_config=types.FunctionCallingConfig(mode="ANY")))
    answer = client.models.generate_content(model=model, contents="Weather?", config=config)
    call = answer.function_calls[0]
    assert (call.name, call.args) == ("get_weather", TOOL_ARGUMENTS)


@pytest.mark.one_gateway
def test_google_rest_stream_without_sse_is_one_json_array(gateway):
    """Google answers streamGenerateContent with a JSON array unless the client asks for `alt=sse`."""
    url = f"{gateway.url}/v1/rewrite/google/{ANTHROPIC_URL}/v1beta/models/{CLAUDE}:streamGenerateContent"
    answer = httpx.post(url, headers={"x-goog-api-key": gateway.admin_key},
                        json={"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}, timeout=30)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    items = answer.json()
    assert "".join(p["text"] for item in items for c in item.get("candidates", [])
                   for p in c["content"]["parts"]) == FULL_TEXT
    assert items[-1]["candidates"][0]["finishReason"] == "STOP"
    assert items[-1]["usageMetadata"]["promptTokenCount"] == 35
    assert_metered(gateway, answer.headers["x-lava-request-id"], "anthropic", CLAUDE, "google", streamed=True)


@pytest.mark.one_gateway
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_openai_sdk_to_gemini(gateway, mock, streamed):
    client = openai_client(gateway, GEMINI_HOST)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    if streamed:
        stream = client.chat.completions.create(model=GEMINI, messages=messages, stream=True)
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage, request_id = chunks[-1].usage, stream.response.headers["x-lava-request-id"]
    else:
        raw = client.chat.completions.with_raw_response.create(model=GEMINI, messages=messages)
        answer = raw.parse()
        text, usage, request_id = answer.choices[0].message.content, answer.usage, raw.headers["x-lava-request-id"]
    assert text == FULL_TEXT
    assert mock.last.path == f"/v1beta/models/{GEMINI}:{'streamGenerateContent' if streamed else 'generateContent'}"
    assert mock.last.json["systemInstruction"]["parts"] == [{"text": "Be brief."}]
    reported = wire_usage("gemini.generate")
    assert usage.prompt_tokens == reported["promptTokenCount"]
    assert usage.prompt_tokens_details.cached_tokens == reported["cachedContentTokenCount"]
    row = gateway.request_row(request_id)
    assert (row["provider"], row["model"], row["client_format"], row["streamed"]) == ("gemini", GEMINI, "openai",
                                                                                      streamed)
    output = reported["candidatesTokenCount"] + 6  # thoughts count as output
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (
        reported["promptTokenCount"], reported["cachedContentTokenCount"], output)
    counted = genai_prices.Usage(input_tokens=reported["promptTokenCount"],
                                 cache_read_tokens=reported["cachedContentTokenCount"], output_tokens=output)
    expected = Decimal(to_nanos(genai_prices.calc_price(counted, GEMINI, provider_id="google").total_price)) / 10**9
    assert expected > 0 and Decimal(row["provider_cost"]) == expected
    answer = client.chat.completions.create(model=GEMINI, messages=messages, tool_choice="required",
                                            tools=[{"type": "function", "function": WEATHER}])
    call = answer.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", TOOL_ARGUMENTS)
