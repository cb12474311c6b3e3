"""The mock provider speaks the real wire formats: the official SDKs, pointed
straight at it (no proxy), parse its answers and usage exactly."""

from __future__ import annotations

import json
import socket
import threading
import time

import anthropic
import httpx
import httpx2  # the transport the SDKs use
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tests.mock_provider import (
    ANTHROPIC_START_OUTPUT_TOKENS,
    EMBEDDING,
    FULL_TEXT,
    GARBAGE_EVENTS,
    RETRY_AFTER,
    STREAM_TEXT,
    USAGE,
    MockProvider,
    mock_provider,  # noqa: F401  (fixture)
    wire_usage,
)

MSGS = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def mock():
    with MockProvider() as m:
        yield m


@pytest.fixture(autouse=True)
def _reset(mock):
    mock.reset()
    yield


def oai(mock, prefix="/v1", **kw):
    return openai.OpenAI(base_url=mock.url + prefix, api_key="sk-test", max_retries=0, **kw)


def anth(mock):
    return anthropic.Anthropic(base_url=mock.url, api_key="sk-ant-test", max_retries=0)


_KEEP = []  # genai.Client closes its HTTP client when garbage-collected; keep them alive


def gem(mock, api_version=None):  # this SDK generation defaults to /v1/models/..., older ones /v1beta
    client = genai.Client(api_key="g-test",
                          http_options=genai_types.HttpOptions(base_url=mock.url, api_version=api_version))
    _KEEP.append(client)
    return client


def sse_events(raw: bytes) -> list[tuple[str | None, str]]:
    out = []
    for block in raw.decode().replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        ev = None
        data = []
        for line in block.split("\n"):
            if line.startswith("event: "):
                ev = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        out.append((ev, "\n".join(data)))
    return out


# ---------------------------------------------------------------- OpenAI chat


def test_openai_chat_nonstream(mock):
    raw = oai(mock).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSGS)
    r = raw.parse()
    assert raw.headers["x-request-id"] == "req_mock_1"
    assert raw.headers["content-type"].startswith("application/json")
    assert r.model == "gpt-4o-mini" and r.choices[0].message.content == FULL_TEXT
    u, t = r.usage, USAGE["openai.chat"]
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (
        t["prompt_tokens"], t["completion_tokens"], t["prompt_tokens"] + t["completion_tokens"])
    assert u.prompt_tokens_details.cached_tokens == t["cached_tokens"]
    assert u.completion_tokens_details.reasoning_tokens == t["reasoning_tokens"]
    rec = mock.last
    assert rec.family == "openai.chat" and rec.headers["AUTHORIZATION"] == "Bearer sk-test"
    assert rec.json["messages"] == MSGS and rec.complete and rec.finished_at is not None


@pytest.mark.parametrize("include_usage", [True, False])
def test_openai_chat_stream(mock, include_usage):
    kw = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = list(oai(mock).chat.completions.create(model="gpt-4o", messages=MSGS, stream=True, **kw))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == FULL_TEXT
    assert chunks[-1 if not include_usage else -2].choices[0].finish_reason == "stop"
    raw = [json.loads(d) for _, d in sse_events(mock.last.response_body) if d != "[DONE]"]
    assert sse_events(mock.last.response_body)[-1] == (None, "[DONE]")
    assert mock.last.response_headers["content-type"].startswith("text/event-stream")
    if include_usage:
        assert all("usage" in c and c["usage"] is None for c in raw[:-1])
        assert raw[-1]["choices"] == [] and raw[-1]["usage"] == wire_usage("openai.chat")
        assert chunks[-1].usage.prompt_tokens_details.cached_tokens == USAGE["openai.chat"]["cached_tokens"]
        assert chunks[-1].usage.completion_tokens == USAGE["openai.chat"]["completion_tokens"]
    else:
        assert all("usage" not in c for c in raw)


def test_openai_legacy_completions(mock):
    r = oai(mock).completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hello")
    assert r.choices[0].text == FULL_TEXT and r.usage.prompt_tokens == USAGE["openai.completions"]["prompt_tokens"]
    s = list(oai(mock).completions.create(model="x", prompt="hi", stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in s if c.choices) == FULL_TEXT
    assert s[-1].usage.completion_tokens == USAGE["openai.completions"]["completion_tokens"]


@pytest.mark.parametrize("prefix", ["/openai/v1", "/api/v1", "/v1/openai", "/inference/v1", "/v1beta/openai"])
def test_openai_compatible_prefixes(mock, prefix):
    r = oai(mock, prefix).chat.completions.create(model="llama-3", messages=MSGS)
    assert r.usage.prompt_tokens == USAGE["openai.chat"]["prompt_tokens"]
    assert mock.last.path == prefix + "/chat/completions"


# ---------------------------------------------------------------- OpenAI responses / embeddings

RESPONSES_EVENTS = (
    ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    + ["response.output_text.delta"] * len(STREAM_TEXT)
    + ["response.output_text.done", "response.content_part.done", "response.output_item.done",
       "response.completed"]
)


def _check_responses_usage(u):
    t = USAGE["openai.responses"]
    assert (u.input_tokens, u.output_tokens, u.total_tokens) == (
        t["input_tokens"], t["output_tokens"], t["input_tokens"] + t["output_tokens"])
    assert u.input_tokens_details.cached_tokens == t["cached_tokens"]
    assert u.output_tokens_details.reasoning_tokens == t["reasoning_tokens"]


def test_openai_responses(mock):
    r = oai(mock).responses.create(model="gpt-4.1", input="Say hello")
    assert r.output_text == FULL_TEXT and r.model == "gpt-4.1" and r.status == "completed"
    _check_responses_usage(r.usage)

    events = list(oai(mock).responses.create(model="gpt-4.1", input="Say hello", stream=True))
    assert [e.type for e in events] == RESPONSES_EVENTS
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == FULL_TEXT
    assert events[0].response.usage is None
    _check_responses_usage(events[-1].response.usage)
    # framing: "event: <type>" line matching data.type
    assert all(ev == json.loads(d)["type"] for ev, d in sse_events(mock.last.response_body))

    with oai(mock).responses.stream(model="gpt-4.1", input="hi") as stream:
        final = stream.get_final_response()
    assert final.output_text == FULL_TEXT
    _check_responses_usage(final.usage)


@pytest.mark.parametrize("fmt", [None, "float"])
def test_openai_embeddings(mock, fmt):
    kw = {"encoding_format": fmt} if fmt else {}
    r = oai(mock).embeddings.create(model="text-embedding-3-small", input=["a", "b"], **kw)
    assert mock.last.json["encoding_format"] == (fmt or "base64")
    assert [d.embedding for d in r.data] == [EMBEDDING, EMBEDDING]
    assert r.usage.prompt_tokens == r.usage.total_tokens == USAGE["openai.embeddings"]["prompt_tokens"]


# ---------------------------------------------------------------- Anthropic


def _check_anthropic_usage(u):
    t = USAGE["anthropic.messages"]
    assert (u.input_tokens, u.output_tokens, u.cache_creation_input_tokens, u.cache_read_input_tokens) == (
        t["input_tokens"], t["output_tokens"], t["cache_creation_input_tokens"], t["cache_read_input_tokens"])


def test_anthropic_messages(mock):
    raw = anth(mock).messages.with_raw_response.create(model="claude-sonnet-4-6", max_tokens=64, messages=MSGS)
    m = raw.parse()
    assert raw.headers["request-id"] == mock.last.request_id
    assert m.content[0].text == FULL_TEXT and m.model == "claude-sonnet-4-6" and m.stop_reason == "end_turn"
    _check_anthropic_usage(m.usage)
    # this SDK generation sends the api key as "Authorization: Bearer" (older ones: x-api-key)
    h = mock.last.headers
    assert "sk-ant-test" in (h.get("x-api-key"), h.get("authorization", "").removeprefix("Bearer "))
    assert "anthropic-version" in h


def test_anthropic_stream(mock):
    with anth(mock).messages.stream(model="claude-haiku-4-5", max_tokens=64, messages=MSGS) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == FULL_TEXT and final.stop_reason == "end_turn"
    _check_anthropic_usage(final.usage)
    events = sse_events(mock.last.response_body)
    assert [e for e, _ in events] == (["message_start", "content_block_start", "ping"]
                                      + ["content_block_delta"] * len(STREAM_TEXT)
                                      + ["content_block_stop", "message_delta", "message_stop"])
    start, delta = json.loads(events[0][1]), json.loads(events[-2][1])
    assert start["message"]["usage"]["output_tokens"] == ANTHROPIC_START_OUTPUT_TOKENS
    assert delta["usage"] == {"output_tokens": USAGE["anthropic.messages"]["output_tokens"]}


def test_anthropic_count_tokens(mock):
    r = anth(mock).messages.count_tokens(model="claude-sonnet-4-6", messages=MSGS)
    assert r.input_tokens == USAGE["anthropic.messages"]["input_tokens"]


# ---------------------------------------------------------------- Gemini


def _check_gemini_usage(u):
    t = USAGE["gemini.generate"]
    assert (u.prompt_token_count, u.candidates_token_count, u.cached_content_token_count,
            u.thoughts_token_count) == (t["promptTokenCount"], t["candidatesTokenCount"],
                                        t["cachedContentTokenCount"], t["thoughtsTokenCount"])
    assert u.total_token_count == t["promptTokenCount"] + t["candidatesTokenCount"] + t["thoughtsTokenCount"]


@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_gemini_generate(mock, version):
    r = gem(mock, version).models.generate_content(model="gemini-2.5-flash", contents="Say hello")
    assert r.text == FULL_TEXT and r.model_version == "gemini-2.5-flash" and r.response_id
    _check_gemini_usage(r.usage_metadata)
    assert mock.last.path == f"/{version}/models/gemini-2.5-flash:generateContent"
    assert mock.last.headers["x-goog-api-key"] == "g-test"


@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_gemini_stream(mock, version):
    chunks = list(gem(mock, version).models.generate_content_stream(model="gemini-2.5-pro", contents="Say hello"))
    assert mock.last.path == f"/{version}/models/gemini-2.5-pro:streamGenerateContent"
    assert mock.last.params == {"alt": "sse"}
    assert "".join(c.text for c in chunks) == FULL_TEXT and len(chunks) == len(STREAM_TEXT)
    assert all(c.usage_metadata.prompt_token_count == USAGE["gemini.generate"]["promptTokenCount"] for c in chunks)
    assert [c.usage_metadata.candidates_token_count for c in chunks[:-1]] == list(range(1, len(STREAM_TEXT)))
    _check_gemini_usage(chunks[-1].usage_metadata)
    assert chunks[-1].candidates[0].finish_reason == genai_types.FinishReason.STOP
    assert b"\r\n\r\n" in mock.last.response_body and b"event:" not in mock.last.response_body


def test_gemini_stream_json_array(mock):
    r = httpx.post(mock.url + "/v1beta/models/gemini-2.0-flash:streamGenerateContent", json={"contents": []})
    arr = r.json()
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in arr) == FULL_TEXT


def test_gemini_embed(mock):
    r = gem(mock).models.embed_content(model="text-embedding-004", contents=["a", "b"])
    assert [e.values for e in r.embeddings] == [EMBEDDING, EMBEDDING]
    r = httpx.post(mock.url + "/v1beta/models/text-embedding-004:embedContent", json={})
    assert r.json() == {"embedding": {"values": EMBEDDING}}


# ---------------------------------------------------------------- Cohere v2 (no SDK installed: raw httpx)


def test_cohere_chat(mock):
    body = {"model": "command-a-03-2025", "messages": MSGS}
    r = httpx.post(mock.url + "/v2/chat", json=body).json()
    assert r["message"]["content"][0]["text"] == FULL_TEXT and r["finish_reason"] == "COMPLETE"
    t = USAGE["cohere.chat"]
    assert r["usage"] == {"billed_units": {"input_tokens": t["billed_input_tokens"],
                                           "output_tokens": t["billed_output_tokens"]},
                          "tokens": {"input_tokens": t["input_tokens"], "output_tokens": t["output_tokens"]}}
    with httpx.stream("POST", mock.url + "/v2/chat", json={**body, "stream": True}) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        events = sse_events(s.read())
    assert all(ev == json.loads(d)["type"] for ev, d in events)
    assert [e for e, _ in events] == (["message-start", "content-start"] + ["content-delta"] * len(STREAM_TEXT)
                                      + ["content-end", "message-end"])
    assert json.loads(events[-1][1])["delta"]["usage"] == r["usage"]


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("status,exc", [(429, openai.RateLimitError), (500, openai.InternalServerError)])
def test_openai_errors(mock, status, exc):
    with pytest.raises(exc) as ei:
        oai(mock).chat.completions.create(model=f"mock-error-{status}", messages=MSGS, stream=True)
    assert ei.value.status_code == status and ei.value.request_id == mock.last.request_id
    assert set(ei.value.body) == {"message", "type", "param", "code"}
    assert (ei.value.response.headers.get("retry-after") == RETRY_AFTER) == (status == 429)


@pytest.mark.parametrize("status,exc,etype", [(429, anthropic.RateLimitError, "rate_limit_error"),
                                              (500, anthropic.InternalServerError, "api_error"),
                                              (529, anthropic.OverloadedError, "overloaded_error")])
def test_anthropic_errors(mock, status, exc, etype):
    with pytest.raises(exc) as ei:
        anth(mock).messages.create(model=f"mock-error-{status}", max_tokens=8, messages=MSGS)
    assert ei.value.body["type"] == "error" and ei.value.body["error"]["type"] == etype


@pytest.mark.parametrize("status,exc,gstatus", [(429, genai_errors.ClientError, "RESOURCE_EXHAUSTED"),
                                                (500, genai_errors.ServerError, "INTERNAL")])
def test_gemini_errors(mock, status, exc, gstatus):
    with pytest.raises(exc) as ei:
        gem(mock).models.generate_content(model=f"mock-error-{status}", contents="hi")
    assert ei.value.code == status and ei.value.status == gstatus


def test_next_error_override(mock):
    mock.next_error = (401, None)
    with pytest.raises(openai.AuthenticationError):
        oai(mock).chat.completions.create(model="gpt-4o", messages=MSGS)
    mock.next_error = (418, {"error": {"message": "teapot", "type": "x", "param": None, "code": None}},
                       {"x-custom": "1"})
    with pytest.raises(openai.APIStatusError) as ei:
        oai(mock).embeddings.create(model="e", input="a")
    assert ei.value.status_code == 418 and ei.value.response.headers["x-custom"] == "1"
    assert oai(mock).chat.completions.create(model="gpt-4o", messages=MSGS).choices  # one-shot


# ---------------------------------------------------------------- slow / cut streams


def test_slow_stream_first_chunk_before_upstream_finished(mock):
    stream = oai(mock).chat.completions.create(model="mock-slow", messages=MSGS, stream=True)
    it = iter(stream)
    contents = []
    for c in it:
        if c.choices and c.choices[0].delta.content:
            contents.append(c.choices[0].delta.content)
            break
    seen_first = time.monotonic()
    assert contents == [STREAM_TEXT[0]] and mock.slow_stream_started.is_set()
    slow = mock.last
    assert slow.finished_at is None
    # the server is threaded: other requests are served while the slow stream is parked
    assert anth(mock).messages.create(model="claude-haiku-4-5", max_tokens=8, messages=MSGS).content
    threading.Timer(0.05, mock.release_stream.set).start()
    contents += [c.choices[0].delta.content or "" for c in it if c.choices]
    assert "".join(contents) == FULL_TEXT
    assert slow.finished_at > seen_first and slow.complete and mock.slow_timeouts == 0


@pytest.mark.parametrize("family", ["openai", "anthropic", "gemini"])
def test_cut_stream(mock, family):
    got = []
    with pytest.raises(Exception) as ei:
        if family == "openai":
            for c in oai(mock).chat.completions.create(model="mock-cut", messages=MSGS, stream=True):
                got += [c.choices[0].delta.content] if c.choices and c.choices[0].delta.content else []
        elif family == "anthropic":
            with anth(mock).messages.stream(model="mock-cut", max_tokens=8, messages=MSGS) as s:
                for text in s.text_stream:
                    got.append(text)
        else:
            for c in gem(mock).models.generate_content_stream(model="mock-cut", contents="hi"):
                got.append(c.text)
    assert isinstance(ei.value, (openai.APIConnectionError, anthropic.APIConnectionError, httpx.HTTPError,
                                 httpx2.HTTPError)), repr(ei.value)
    assert got == STREAM_TEXT[:2]
    assert not mock.last.complete and mock.last.finished_at is not None
    tail = mock.last.response_body.split(STREAM_TEXT[1].encode())[-1]
    assert b"finishReason" not in tail and b"stop_reason" not in tail and b"finish_reason\":\"stop" not in tail
    if family != "gemini":  # Gemini chunks all carry (cumulative) usageMetadata, as Google's do
        assert b"usage" not in tail


def test_reset_stream_is_a_connection_reset(mock):
    body = {"model": "mock-reset", "messages": MSGS, "stream": True}
    with pytest.raises(httpx.ReadError, match="reset"):
        with httpx.stream("POST", mock.url + "/v1/chat/completions", json=body) as response:
            for _ in response.iter_raw():
                pass
    assert not mock.last.complete and mock.last.response_body.count(b"data: ") == 3


def test_hang_sends_nothing_until_released(mock):
    started = time.monotonic()
    threading.Timer(0.2, mock.release_stream.set).start()
    assert oai(mock).chat.completions.create(model="mock-hang", messages=MSGS).choices[0].message.content == FULL_TEXT
    assert time.monotonic() - started >= 0.2 and mock.last.peer_closed_at is None


@pytest.mark.parametrize("model", ["mock-hang", "mock-slow"])
def test_a_peer_that_hangs_up_is_noticed(mock, model):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(mock.url + "/v1/chat/completions", json={"model": model, "messages": MSGS, "stream": True},
                   timeout=0.2)
    deadline = time.monotonic() + 2
    while mock.last.peer_closed_at is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert mock.last.peer_closed_at is not None and not mock.last.complete


def test_garbage_stream_carries_junk_and_unreadable_usage(mock):
    body = {"model": "mock-garbage", "messages": MSGS, "stream": True, "stream_options": {"include_usage": True}}
    raw = httpx.post(mock.url + "/v1/chat/completions", json=body).content
    assert all(junk in raw for junk in GARBAGE_EVENTS) and raw.endswith(b"data: [DONE]\n\n")
    assert b'"usage":{' not in raw and b'"usage:{' in raw and b'"usage":null' in raw


def test_truncated_json_is_a_complete_http_message(mock):
    response = httpx.post(mock.url + "/v1/chat/completions", json={"model": "mock-truncated", "messages": MSGS})
    assert response.status_code == 200 and len(response.content) == int(response.headers["content-length"])
    with pytest.raises(json.JSONDecodeError):
        response.json()
    assert mock.last.complete


# ---------------------------------------------------------------- transport


def test_chunked_one_event_per_chunk_and_keepalive(mock):
    body = json.dumps({"model": "m", "messages": MSGS, "stream": True}).encode()
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    with socket.create_connection(("127.0.0.1", mock.port), timeout=5) as s:
        f = s.makefile("rb")
        for _ in range(2):  # two requests on one connection
            s.sendall(req)
            assert f.readline().startswith(b"HTTP/1.1 200")
            headers = {}
            while (line := f.readline()) != b"\r\n":
                k, v = line.decode().split(":", 1)
                headers[k.lower()] = v.strip()
            assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers
            chunks = []
            while (size := int(f.readline(), 16)) != 0:
                chunks.append(f.read(size))
                assert f.read(2) == b"\r\n"
            assert f.read(2) == b"\r\n"
            assert all(c.startswith(b"data: ") and c.endswith(b"\n\n") and c.count(b"\n\n") == 1 for c in chunks)
            assert chunks[-1] == b"data: [DONE]\n\n"


def test_fixture_helper_and_usage_override(mock_provider):  # noqa: F811
    assert mock_provider.url.startswith("http://127.0.0.1:")
    mock_provider.usage["openai.chat"]["prompt_tokens"] = 1000
    r = oai(mock_provider).chat.completions.create(model="gpt-4o", messages=MSGS)
    assert r.usage.prompt_tokens == 1000 == mock_provider.wire_usage("openai.chat")["prompt_tokens"]
    assert USAGE["openai.chat"]["prompt_tokens"] == 17
    assert httpx.get(mock_provider.url + "/health").json() == {"ok": True}
    assert httpx.post(mock_provider.url + "/nope", json={}).status_code == 404
