"""The official SDKs through both ways in (HTTPS_PROXY and the forward endpoint), on both ledgers:
usage and cost recorded per API family, streamed and not, and the provider saw only its real key."""

from __future__ import annotations

import ssl
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest
from google import genai

from addons.auth.credentials import ForwardToken, encode_forward_token
from pricing.cost import price
from pricing.money import format_usd, to_nanos
from pricing.usage import TokenUsage
from tests.harness import (
    ANTHROPIC,
    GEMINI,
    OPENAI_CHAT,
    OPENAI_EMBEDDINGS,
    OPENAI_RESPONSES,
    PROVIDER_KEYS,
)
from tests.ledger_reads import wait_for


def assert_row(gateway, request_id, provider, model, usage, *, streamed, endpoint):
    row = gateway.request_row(request_id)
    assert (row["provider"], row["model"], row["endpoint"], row["status"], row["streamed"]) == (
        provider, model, endpoint, 200, streamed)
    got = TokenUsage(row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"],
                     row["output_tokens"], row["reasoning_tokens"])
    assert got == usage
    assert row["usage_source"] == "reported"
    cost = price(usage, model=model, provider_id=provider, pricing_id=provider)
    assert cost.total_nanos > 0
    assert row["provider_cost"] == row["charged"] == format_usd(cost.total_nanos)
    return row


def the_new_row(gateway, before: set[str], provider: str = "gemini") -> dict:
    """The newest row of `provider` not among the ids `before`, once the writer has committed it (for an SDK that
    shows no response headers)."""
    return wait_for(lambda: [r for r in gateway.ledger.requests() if r["id"] not in before and r["provider"] == provider],
                    what=f"a new {provider} row")[0]


def assert_provider_saw_only_real_key(mock, header, value, admin_key):
    seen = mock.last.headers
    assert seen[header] == value
    raw = " ".join(f"{k}: {v}" for k, v in seen.items_raw())
    assert admin_key not in raw and "tg_sk_" not in raw and "x-lava" not in raw.lower()


@pytest.mark.launchers
@pytest.mark.parametrize("stream", [False, True])
def test_openai_chat_through_https_proxy(proxied, mock, stream):
    client = openai.OpenAI(api_key=proxied.admin_key)
    args = dict(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    if stream:
        with client.chat.completions.with_streaming_response.create(stream=True, **args) as raw:
            request_id = raw.headers["x-lava-request-id"]
            chunks = list(raw.parse())
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the mock."
        assert all(c.usage is None for c in chunks), "the usage chunk the gateway asked for leaked to the client"
    else:
        raw = client.chat.completions.with_raw_response.create(**args)
        request_id = raw.headers["x-lava-request-id"]
        assert raw.parse().usage.prompt_tokens == 17
        assert raw.headers["x-request-id"].startswith("req_mock")  # the provider's own header passes through
    assert request_id.startswith("req_") and raw.headers["x-tollgate-request-id"] == request_id
    assert_provider_saw_only_real_key(mock, "authorization", f"Bearer {PROVIDER_KEYS['OPENAI_API_KEY']}",
                                      proxied.admin_key)
    assert_row(proxied, request_id, "openai", "gpt-4o-mini", OPENAI_CHAT, streamed=stream, endpoint="chat.completions")


def test_openai_stream_that_asked_for_usage_keeps_it(proxied):
    client = openai.OpenAI(api_key=proxied.admin_key)
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True},
    ) as raw:
        chunks = list(raw.parse())
        request_id = raw.headers["x-lava-request-id"]
    assert chunks[-1].usage.completion_tokens == 9
    assert_row(proxied, request_id, "openai", "gpt-4o-mini", OPENAI_CHAT, streamed=True, endpoint="chat.completions")


@pytest.mark.parametrize("stream", [False, True])
def test_openai_responses_api(proxied, stream):
    client = openai.OpenAI(api_key=proxied.admin_key)
    if stream:
        with client.responses.with_streaming_response.create(model="gpt-4o-mini", input="hi", stream=True) as raw:
            events = list(raw.parse())
            request_id = raw.headers["x-lava-request-id"]
        assert events[-1].type == "response.completed"
    else:
        raw = client.responses.with_raw_response.create(model="gpt-4o-mini", input="hi")
        request_id = raw.headers["x-lava-request-id"]
    assert_row(proxied, request_id, "openai", "gpt-4o-mini", OPENAI_RESPONSES, streamed=stream, endpoint="responses")


def test_openai_embeddings(proxied):
    raw = openai.OpenAI(api_key=proxied.admin_key).embeddings.with_raw_response.create(
        model="text-embedding-3-small", input="hi")
    assert len(raw.parse().data[0].embedding) == 8
    assert_row(proxied, raw.headers["x-lava-request-id"], "openai", "text-embedding-3-small", OPENAI_EMBEDDINGS,
               streamed=False, endpoint="embeddings")


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_messages(proxied, mock, stream):
    client = anthropic.Anthropic(api_key=proxied.admin_key)
    args = dict(model="claude-3-5-haiku-20241022", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    if stream:
        with client.messages.with_streaming_response.create(stream=True, **args) as raw:
            events = list(raw.parse())
            request_id = raw.headers["x-lava-request-id"]
        assert events[-1].type == "message_stop"
    else:
        raw = client.messages.with_raw_response.create(**args)
        request_id = raw.headers["x-lava-request-id"]
        assert raw.parse().content[0].text == "Hello from the mock."
    assert_provider_saw_only_real_key(mock, "x-api-key", PROVIDER_KEYS["ANTHROPIC_API_KEY"], proxied.admin_key)
    assert_row(proxied, request_id, "anthropic", "claude-3-5-haiku-20241022", ANTHROPIC, streamed=stream,
               endpoint="messages")


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_generate_content(proxied, mock, stream):
    client = genai.Client(api_key=proxied.admin_key)
    mock.reset()
    before = {r["id"] for r in proxied.ledger.requests()}
    if stream:
        text = "".join(c.text or "" for c in client.models.generate_content_stream(model="gemini-2.0-flash", contents="hi"))
    else:
        text = client.models.generate_content(model="gemini-2.0-flash", contents="hi").text
    assert text == "Hello from the mock."
    assert_provider_saw_only_real_key(mock, "x-goog-api-key", PROVIDER_KEYS["GEMINI_API_KEY"], proxied.admin_key)
    row = the_new_row(proxied, before)
    assert_row(proxied, row["id"], "gemini", "gemini-2.0-flash", GEMINI, streamed=stream,
               endpoint="streamGenerateContent" if stream else "generateContent")


@pytest.mark.parametrize("stream", [False, True])
def test_openai_sdk_through_forward_endpoint_with_forward_token(gateway, mock, stream):
    """Lava-style: base_url is the forward URL, the api key a forward token."""
    token = encode_forward_token(ForwardToken(secret_key=gateway.admin_key))
    client = openai.OpenAI(api_key=token, base_url=f"{gateway.url}/v1/forward?u=https://api.openai.com/v1/")
    args = dict(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    if stream:
        with client.chat.completions.with_streaming_response.create(stream=True, **args) as raw:
            assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == "Hello from the mock."
            request_id = raw.headers["x-lava-request-id"]
    else:
        raw = client.chat.completions.with_raw_response.create(**args)
        request_id = raw.headers["x-lava-request-id"]
    assert mock.last.path == "/v1/chat/completions"
    assert_provider_saw_only_real_key(mock, "authorization", f"Bearer {PROVIDER_KEYS['OPENAI_API_KEY']}",
                                      gateway.admin_key)
    assert_row(gateway, request_id, "openai", "gpt-4o-mini", OPENAI_CHAT, streamed=stream, endpoint="chat.completions")


@pytest.mark.parametrize("u", ["https://api.openai.com/v1", "https://api.openai.com/v1/"])
def test_openai_sdk_forward_base_url_with_or_without_trailing_slash(gateway, mock, u):
    client = openai.OpenAI(api_key=gateway.admin_key, base_url=f"{gateway.url}/v1/forward?u={u}")
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert mock.last.path == "/v1/chat/completions"
    assert_row(gateway, raw.headers["x-lava-request-id"], "openai", "gpt-4o-mini", OPENAI_CHAT, streamed=False,
               endpoint="chat.completions")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("u", ["https://generativelanguage.googleapis.com", "https://generativelanguage.googleapis.com/"])
def test_gemini_sdk_through_forward_endpoint(gateway, mock, u, stream):
    """google-genai appends its path to the forward path itself, and alt=sse beside u."""
    client = genai.Client(api_key=gateway.admin_key, http_options={"base_url": f"{gateway.url}/v1/forward?u={u}"})
    before = {r["id"] for r in gateway.ledger.requests()}
    if stream:
        text = "".join(c.text or "" for c in client.models.generate_content_stream(model="gemini-2.0-flash",
                                                                                      contents="hi"))
    else:
        text = client.models.generate_content(model="gemini-2.0-flash", contents="hi").text
    assert text == "Hello from the mock."
    assert mock.last.path.partition("?")[0].endswith(
        "/models/gemini-2.0-flash:" + ("streamGenerateContent" if stream else "generateContent"))
    assert_provider_saw_only_real_key(mock, "x-goog-api-key", PROVIDER_KEYS["GEMINI_API_KEY"], gateway.admin_key)
    row = the_new_row(gateway, before)
    assert_row(gateway, row["id"], "gemini", "gemini-2.0-flash", GEMINI, streamed=stream,
               endpoint="streamGenerateContent" if stream else "generateContent")


def test_anthropic_sdk_through_forward_endpoint_with_secret_key(gateway, mock):
    client = anthropic.Anthropic(api_key=gateway.admin_key,
                                 base_url=f"{gateway.url}/v1/forward?u=https://api.anthropic.com")
    raw = client.messages.with_raw_response.create(
        model="claude-3-5-haiku-20241022", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert mock.last.path == "/v1/messages"
    assert_row(gateway, raw.headers["x-lava-request-id"], "anthropic", "claude-3-5-haiku-20241022", ANTHROPIC,
               streamed=False, endpoint="messages")


def test_bring_your_own_key_pays_the_service_fee_instead_of_the_provider_cost(gateway, mock):
    token = encode_forward_token(ForwardToken(secret_key=gateway.admin_key, provider_key="sk-customer-own"))
    client = openai.OpenAI(api_key=token, base_url=f"{gateway.url}/v1/forward?u=https://api.openai.com/v1/")
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert mock.last.headers["authorization"] == "Bearer sk-customer-own"
    row = gateway.request_row(raw.headers["x-lava-request-id"])
    cost = price(OPENAI_CHAT, model="gpt-4o-mini", provider_id="openai", pricing_id="openai").total_nanos
    # the gateway runs with byok_fee_percent 10 and byok_fee_per_request 0.001
    assert row["byok"] is True and row["provider_cost"] == format_usd(cost)
    assert row["charged"] == format_usd(to_nanos(Decimal(cost) / 10 / 10**9) + 1_000_000)


def test_metadata_is_recorded_and_not_forwarded(gateway, mock):
    client = openai.OpenAI(api_key=gateway.admin_key, base_url=f"{gateway.url}/v1/forward?u=https://api.openai.com/v1/")
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
        extra_headers={"x-lava-metadata": '{"user_id": "u42", "feature": "chat"}'})
    assert "x-lava-metadata" not in mock.last.headers
    assert gateway.request_row(raw.headers["x-lava-request-id"])["metadata"] == {"user_id": "u42", "feature": "chat"}


def test_wallet_is_debited_by_exactly_the_recorded_charges(gateway):
    before = gateway.ledger.balance()
    raw = openai.OpenAI(api_key=gateway.admin_key, base_url=f"{gateway.url}/v1/forward?u=https://api.openai.com/v1/"
                        ).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    row = gateway.request_row(raw.headers["x-lava-request-id"])
    assert Decimal(gateway.ledger.balance()) == Decimal(before) - Decimal(row["charged"])
    assert gateway.ledger.audit_ok() is True


def test_gemini_key_in_query_is_read_and_never_forwarded(proxied, mock):
    with httpx.Client(proxy=proxied.url, verify=ssl.create_default_context(cafile=str(proxied.ca)),
                      trust_env=False, timeout=15) as client:
        response = client.post(
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent",
            params={"key": proxied.admin_key}, json={"contents": [{"parts": [{"text": "hi"}]}]})
    assert response.status_code == 200
    assert "key" not in mock.last.params
    assert_provider_saw_only_real_key(mock, "x-goog-api-key", PROVIDER_KEYS["GEMINI_API_KEY"], proxied.admin_key)


def test_usage_report_totals_match_request_rows(gateway):
    def report_of_a_ledger_at_rest():  # an earlier test's row may still be on its way to the ledger
        rows = gateway.ledger.requests(limit=100000)
        usage = gateway.cli_json("usage", "--by", "provider")
        return (rows, usage) if gateway.ledger.requests(limit=100000) == rows else None

    rows, usage = wait_for(report_of_a_ledger_at_rest, 20, "no row written around the usage report")
    report = {r["group"]: r for r in usage["rows"]}
    assert rows and set(report) == {r["provider"] for r in rows}
    assert usage["totals"]["requests"] == len(rows)

    def cost(rows):  # unpriced and unmetered rows have no cost (null), and are counted apart
        return sum(Decimal(r["provider_cost"]) for r in rows if r["provider_cost"] is not None)

    def unknown(rows, source):
        return sum(r["price_source"] == source for r in rows)

    assert Decimal(usage["totals"]["provider_cost"] or 0) == cost(rows)
    for provider, totals in report.items():
        mine = [r for r in rows if r["provider"] == provider]
        assert totals["requests"] == len(mine)
        assert totals["output_tokens"] == sum(r["output_tokens"] for r in mine)
        assert Decimal(totals["provider_cost"] or 0) == cost(mine)
        for source in ("unpriced", "unmetered"):
            assert totals[f"{source}_requests"] == unknown(mine, source)


@pytest.mark.parametrize(("provider", "url", "model", "usage", "endpoint"), [
    ("groq", "https://api.groq.com/openai/v1/chat/completions", "llama-3.3-70b-versatile", OPENAI_CHAT,
     "chat.completions"),
    ("cohere", "https://api.cohere.com/v2/chat", "command-a-03-2025", TokenUsage(input_tokens=31, output_tokens=17),
     "cohere.chat"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_other_families_through_forward_endpoint(gateway, provider, url, model, usage, endpoint, stream):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    with httpx.Client(trust_env=False, timeout=15) as client:
        response = client.post(f"{gateway.url}/v1/forward", params={"u": url}, json=body,
                               headers={"authorization": f"Bearer {gateway.admin_key}"})
    assert response.status_code == 200
    assert_row(gateway, response.headers["x-lava-request-id"], provider, model, usage, streamed=stream,
               endpoint=endpoint)


@pytest.mark.parametrize("way_in", ["forward endpoint", "HTTPS_PROXY"])
def test_upstream_connection_is_reused_across_requests(gateway, mock, way_in):
    """A keep-alive client pays one connection to the provider, not one per request, streams included.
    (httpx here: the openai SDK drops its own connection after every stream, even straight to a provider.)"""
    if way_in == "HTTPS_PROXY":
        client = httpx.Client(proxy=gateway.url, verify=ssl.create_default_context(cafile=str(gateway.ca)))
        url = "https://api.openai.com/v1/chat/completions"
    else:
        client = httpx.Client(trust_env=False)
        url = f"{gateway.url}/v1/forward?u=https://api.openai.com/v1/chat/completions"
    headers = {"authorization": f"Bearer {gateway.admin_key}"}

    def chat(stream):
        body = {"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
        with client.stream("POST", url, json=body, headers=headers) as response:
            data = response.read()
        assert response.status_code == 200 and (b"[DONE]" in data) == stream

    with client:
        chat(False)  # opens the client's connection, and the gateway's to the provider
        before, first_seq = mock.connections_opened, mock.last.seq
        for stream in (True, False, True, True, False):
            chat(stream)
    assert mock.last.seq - first_seq == 5
    assert mock.connections_opened == before, "the gateway opened a new provider connection for a request"
