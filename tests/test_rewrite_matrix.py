"""The rewrite endpoint across every pair of client format and provider family: each official SDK (openai,
anthropic, google-genai, boto3's Converse) against every other family's mock (the mock Bedrock checks the
gateway's SigV4 signature as AWS does; boto3 signs with a Tollgate key), streamed and not; the SDK parses the
answer and every event, and the ledger's usage and cost equal the provider's report priced by genai-prices.
One gateway process for the module (SQLite: the ledger backend changes nothing here). Runs where the Gemini and
Bedrock translators (addons/rewrite/gemini_format.py, bedrock_format.py) are installed."""

from __future__ import annotations

import json
from decimal import Decimal

import anthropic
import boto3
import genai_prices
import openai
import pytest
from botocore.config import Config
from openai.lib.streaming.chat import ChatCompletionStreamState

from pricing.money import to_nanos
from tests.harness import GatewayProcess
from tests.mock_bedrock import CONVERSE_USAGE, OPERATOR, REGION, TEXT, TOOL_USE_ID
from tests.mock_provider import FULL_TEXT, TOOL_ARGUMENTS, MockProvider, wire_usage

pytestmark = pytest.mark.e2e

MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
BEDROCK_HOST = f"https://bedrock-runtime.{REGION}.amazonaws.com"
CLAUDE = "claude-3-5-haiku-latest"
ANTHROPIC_URL = "https://api.anthropic.com/v1/messages"


@pytest.fixture(scope="module")
def providers():
    with MockProvider() as server:
        yield server


@pytest.fixture(scope="module")
def gateway(bedrock, providers, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rewrite-aws")
    gw = GatewayProcess(tmp, f"sqlite:///{tmp}/ledger.db", {"bedrock": bedrock.url, "anthropic": providers.url,
                                                            "openai": providers.url, "gemini": providers.url})
    gw.env.update(AWS_ACCESS_KEY_ID=OPERATOR.access_key, AWS_SECRET_ACCESS_KEY=OPERATOR.secret_key,
                  AWS_SESSION_TOKEN=OPERATOR.token)
    gw.fund("10")
    gw.key = gw.cli_json("keys", "create", "--name", "rewrite-app")
    gw.start()
    yield gw
    gw.stop()


def _cost(model: str, provider: str, input_tokens: int, cache_read: int, cache_write: int, output: int) -> Decimal:
    usage = genai_prices.Usage(input_tokens=input_tokens, cache_read_tokens=cache_read, cache_write_tokens=cache_write,
                               output_tokens=output)
    return Decimal(to_nanos(genai_prices.calc_price(usage, model, provider_id=provider).total_price)) / 10**9


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_openai_sdk_to_bedrock_converse(gateway, bedrock, streamed):
    client = openai.OpenAI(base_url=f"{gateway.url}/v1/rewrite/openai/{BEDROCK_HOST}", api_key=gateway.admin_key,
                           max_retries=0)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    if streamed:
        stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=64, stream=True)
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage, request_id = chunks[-1].usage, stream.response.headers["x-lava-request-id"]
    else:
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages, max_tokens=64)
        answer = raw.parse()
        text, usage, request_id = answer.choices[0].message.content, answer.usage, raw.headers["x-lava-request-id"]
    assert text == "".join(TEXT)
    assert bedrock.last["path"].endswith("/converse-stream" if streamed else "/converse")
    read, write = CONVERSE_USAGE["cacheReadInputTokens"], CONVERSE_USAGE["cacheWriteInputTokens"]
    counts = (CONVERSE_USAGE["inputTokens"] + read + write, read, write, CONVERSE_USAGE["outputTokens"])
    assert (usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens, usage.completion_tokens) == (
        counts[0], read, counts[3])
    row = gateway.request_row(request_id)
    assert (row["provider"], row["model"], row["client_format"], row["status"], row["streamed"]) == (
        "bedrock", MODEL, "openai", 200, streamed)
    assert (row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"], row["output_tokens"]) == counts
    expected = _cost(MODEL, "aws", *counts)
    assert expected > 0 and Decimal(row["provider_cost"]) == expected


def _boto3(gateway, target: str):
    return boto3.client("bedrock-runtime", region_name=REGION,
                        endpoint_url=f"{gateway.url}/v1/rewrite/bedrock/{target}",
                        aws_access_key_id=gateway.key["id"], aws_secret_access_key=gateway.key["secret_key"],
                        config=Config(retries={"max_attempts": 1}))


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_boto3_converse_to_anthropic(gateway, providers, streamed):
    client = _boto3(gateway, ANTHROPIC_URL)
    request = dict(modelId=CLAUDE, system=[{"text": "Be brief."}], inferenceConfig={"maxTokens": 64},
                   messages=[{"role": "user", "content": [{"text": "Hi"}]}])
    if streamed:
        answer = client.converse_stream(**request)
        events = list(answer["stream"])
        text = "".join(e["contentBlockDelta"]["delta"].get("text", "") for e in events if "contentBlockDelta" in e)
        usage = next(e["metadata"]["usage"] for e in events if "metadata" in e)
        stop = next(e["messageStop"]["stopReason"] for e in events if "messageStop" in e)
    else:
        answer = client.converse(**request)
        text, usage, stop = answer["output"]["message"]["content"][0]["text"], answer["usage"], answer["stopReason"]
    assert (text, stop) == (FULL_TEXT, "end_turn")
    assert providers.last.json["system"] == "Be brief." and providers.last.json["max_tokens"] == 64
    reported = wire_usage("anthropic.messages")
    assert usage["outputTokens"] == reported["output_tokens"]
    request_id = answer["ResponseMetadata"]["HTTPHeaders"]["x-lava-request-id"]
    row = gateway.request_row(request_id)
    assert (row["provider"], row["model"], row["client_format"], row["streamed"]) == (
        "anthropic", CLAUDE, "bedrock", streamed)
    read, write = reported["cache_read_input_tokens"], reported["cache_creation_input_tokens"]
    counts = (reported["input_tokens"] + read + write, read, write, reported["output_tokens"])
    assert (row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"], row["output_tokens"]) == counts
    expected = _cost(CLAUDE, "anthropic", *counts)
    assert expected > 0 and Decimal(row["provider_cost"]) == expected


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_openai_sdk_tool_calls_from_bedrock_converse(gateway, bedrock, streamed):
    client = openai.OpenAI(base_url=f"{gateway.url}/v1/rewrite/openai/{BEDROCK_HOST}", api_key=gateway.admin_key,
                           max_retries=0)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}]
    asked = {"model": MODEL, "messages": [{"role": "user", "content": "Weather?"}], "max_tokens": 64,
             "tools": tools, "tool_choice": "required"}
    if streamed:
        state = ChatCompletionStreamState()
        for chunk in client.chat.completions.create(**asked, stream=True):
            state.handle_chunk(chunk)
        answer = state.get_final_completion()
    else:
        answer = client.chat.completions.create(**asked)
    sent = json.loads(bedrock.last["body"])
    assert sent["toolConfig"]["toolChoice"] == {"any": {}}
    [call] = answer.choices[0].message.tool_calls
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        TOOL_USE_ID, "get_weather", TOOL_ARGUMENTS)
    assert answer.choices[0].finish_reason == "tool_calls"


def test_boto3_converse_tool_use_from_anthropic(gateway):
    answer = _boto3(gateway, ANTHROPIC_URL).converse(
        modelId=CLAUDE, messages=[{"role": "user", "content": [{"text": "Weather?"}]}],
        toolConfig={"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}}], "toolChoice": {"any": {}}})
    block = answer["output"]["message"]["content"][-1]["toolUse"]
    assert (block["name"], block["input"], answer["stopReason"]) == ("get_weather", TOOL_ARGUMENTS, "tool_use")


def test_boto3_signature_must_be_the_keys(gateway):
    client = boto3.client("bedrock-runtime", region_name=REGION,
                          endpoint_url=f"{gateway.url}/v1/rewrite/bedrock/{ANTHROPIC_URL}",
                          aws_access_key_id=gateway.key["id"], aws_secret_access_key="not-the-secret",
                          config=Config(retries={"max_attempts": 1}))
    with pytest.raises(client.exceptions.ClientError) as refused:
        client.converse(modelId=CLAUDE, messages=[{"role": "user", "content": [{"text": "Hi"}]}])
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 401
    assert json.dumps(refused.value.response).find("not-the-secret") == -1


# -- every client against every other family -----------------------------------------------------------------------

GPT, GEMINI = "gpt-4o-mini", "gemini-2.0-flash"
_READ, _WRITE = CONVERSE_USAGE["cacheReadInputTokens"], CONVERSE_USAGE["cacheWriteInputTokens"]
_ANTHROPIC, _OPENAI, _GEMINI = (wire_usage(f) for f in ("anthropic.messages", "openai.chat", "gemini.generate"))
# family -> (target URL, model, the text its mock answers, (input, cache read, cache write, output) as the ledger
# counts the mock's report, genai-prices' provider id)
FAMILIES = {
    "openai": ("https://api.openai.com/v1/chat/completions", GPT, FULL_TEXT,
               (_OPENAI["prompt_tokens"], _OPENAI["prompt_tokens_details"]["cached_tokens"], 0,
                _OPENAI["completion_tokens"]), "openai"),
    "anthropic": (ANTHROPIC_URL, CLAUDE, FULL_TEXT,
                  (_ANTHROPIC["input_tokens"] + _ANTHROPIC["cache_read_input_tokens"]
                   + _ANTHROPIC["cache_creation_input_tokens"], _ANTHROPIC["cache_read_input_tokens"],
                   _ANTHROPIC["cache_creation_input_tokens"], _ANTHROPIC["output_tokens"]), "anthropic"),
    "gemini": ("https://generativelanguage.googleapis.com", GEMINI, FULL_TEXT,
               (_GEMINI["promptTokenCount"], _GEMINI["cachedContentTokenCount"], 0,
                _GEMINI["candidatesTokenCount"] + 6), "google"),  # the mock's 6 thoughts tokens count as output
    "bedrock": (BEDROCK_HOST, MODEL, "".join(TEXT),
                (CONVERSE_USAGE["inputTokens"] + _READ + _WRITE, _READ, _WRITE, CONVERSE_USAGE["outputTokens"]), "aws"),
}
CLIENT_FAMILY = {"openai": "openai", "anthropic": "anthropic", "google": "gemini", "bedrock": "bedrock"}


def _ask(client_format: str, gateway, target: str, model: str, streamed: bool) -> tuple[str, str]:
    """(the answer's text as the client's SDK parsed it, the request id) for one question in the client's format."""
    base = f"{gateway.url}/v1/rewrite/{client_format}/{target}"
    if client_format == "openai":
        client = openai.OpenAI(base_url=base, api_key=gateway.admin_key, max_retries=0)
        if streamed:  # every chunk through the SDK's own accumulator
            raw = client.chat.completions.with_raw_response.create(
                model=model, max_tokens=64, stream=True, messages=[{"role": "user", "content": "Hi"}])
            state = ChatCompletionStreamState()
            for chunk in raw.parse():
                state.handle_chunk(chunk)
            return state.get_final_completion().choices[0].message.content, raw.headers["x-lava-request-id"]
        raw = client.chat.completions.with_raw_response.create(model=model, max_tokens=64,
                                                               messages=[{"role": "user", "content": "Hi"}])
        return raw.parse().choices[0].message.content, raw.headers["x-lava-request-id"]
    if client_format == "anthropic":
        client = anthropic.Anthropic(base_url=base, api_key=gateway.admin_key, max_retries=0)
        if streamed:
            with client.messages.stream(model=model, max_tokens=64, messages=[{"role": "user", "content": "Hi"}]) as s:
                for _ in s:
                    pass
                return s.get_final_message().content[0].text, s.response.headers["x-lava-request-id"]
        raw = client.messages.with_raw_response.create(model=model, max_tokens=64,
                                                       messages=[{"role": "user", "content": "Hi"}])
        return raw.parse().content[0].text, raw.headers["x-lava-request-id"]
    if client_format == "google":
        from google import genai

        client = genai.Client(api_key=gateway.admin_key, http_options={"base_url": base, "api_version": "v1beta"})
        if streamed:
            chunks = list(client.models.generate_content_stream(model=model, contents="Hi"))
            return "".join(c.text or "" for c in chunks), chunks[-1].sdk_http_response.headers["x-lava-request-id"]
        answer = client.models.generate_content(model=model, contents="Hi")
        return answer.text, answer.sdk_http_response.headers["x-lava-request-id"]
    client = _boto3(gateway, target)
    request = dict(modelId=model, messages=[{"role": "user", "content": [{"text": "Hi"}]}],
                   inferenceConfig={"maxTokens": 64})
    if streamed:
        answer = client.converse_stream(**request)
        events = list(answer["stream"])
        assert "metadata" in events[-1] and "messageStop" in events[-2]
        text = "".join(e["contentBlockDelta"]["delta"].get("text", "") for e in events if "contentBlockDelta" in e)
    else:
        answer = client.converse(**request)
        text = answer["output"]["message"]["content"][0]["text"]
    return text, answer["ResponseMetadata"]["HTTPHeaders"]["x-lava-request-id"]


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("client_format, family", [(c, f) for c in CLIENT_FAMILY for f in FAMILIES
                                                   if CLIENT_FAMILY[c] != f])
def test_every_client_against_every_other_family(gateway, client_format, family, streamed):
    target, model, text, counts, pricing_id = FAMILIES[family]
    answered, request_id = _ask(client_format, gateway, target, model, streamed)
    assert answered == text
    row = gateway.request_row(request_id)
    assert (row["provider"], row["model"], row["client_format"], row["status"], row["streamed"]) == (
        family, model, client_format, 200, streamed)
    assert (row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"], row["output_tokens"]) == counts
    assert row["usage_source"] == "reported"
    expected = _cost(model, pricing_id, *counts)
    assert expected > 0 and Decimal(row["provider_cost"]) == expected
