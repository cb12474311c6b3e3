import json
import math
from decimal import Decimal

import pytest

from addons.core.catalog import API_FAMILIES, load_catalog
from addons.usage.readers import READERS, UsageReader, UsageReading, for_request
from pricing.usage import TokenUsage
from tests.chunkings import SPLITS, split


def sse(*datas: str, eol: str = "\n") -> bytes:
    return "".join(f"data: {d}{eol}{eol}" for d in datas).encode()


def events(*pairs: tuple[str, str]) -> bytes:
    return "".join(f"event: {name}\ndata: {data}\n\n" for name, data in pairs).encode()


def run(reader: UsageReader, chunks: list[bytes]) -> bytes:
    return b"".join(reader.feed(c) for c in chunks) + reader.feed(b"")


def chat_request(**extra) -> bytes:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello to the wörld"}], **extra}
    return json.dumps(body).encode()


def openai_reader(body: bytes, path: str = "/v1/chat/completions") -> UsageReader:
    return for_request("openai", "POST", path, "", body)


# What OpenAI streams for a chat completion; {U} marks where include_usage adds "usage":null.
_HEAD = '{"id":"chatcmpl-B9x","object":"chat.completion.chunk","created":1741000000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":'
CHAT_CHUNKS = [
    _HEAD + '[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]{U},"obfuscation":"4zWx"}',
    _HEAD + '[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]{U},"obfuscation":"k"}',
    _HEAD + '[{"index":0,"delta":{"content":", wörld 👋"},"logprobs":null,"finish_reason":null}]{U},"obfuscation":"Qd"}',
    _HEAD + '[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]{U},"obfuscation":"pT1"}',
]
CHAT_USAGE_CHUNK = _HEAD + '[],"usage":{"prompt_tokens":19,"completion_tokens":6,"total_tokens":25,"prompt_tokens_details":{"cached_tokens":3,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"obfuscation":"mQ"}'
CHAT_WITH_USAGE = sse(*(c.replace("{U}", ',"usage":null') for c in CHAT_CHUNKS), CHAT_USAGE_CHUNK, "[DONE]")
CHAT_WITHOUT_USAGE = sse(*(c.replace("{U}", "") for c in CHAT_CHUNKS), "[DONE]")
CHAT_USAGE = TokenUsage(input_tokens=19, cache_read_tokens=3, output_tokens=6)


@pytest.mark.parametrize("how", SPLITS)
def test_injected_usage_is_invisible_to_the_client(how):
    reader = openai_reader(chat_request(stream=True))
    assert json.loads(reader.request_body)["stream_options"] == {"include_usage": True}
    assert run(reader, split(CHAT_WITH_USAGE, how)) == CHAT_WITHOUT_USAGE
    assert reader.result() == UsageReading("gpt-4o-mini-2024-07-18", CHAT_USAGE, "reported")


@pytest.mark.parametrize("how", SPLITS)
def test_client_requested_usage_passes_through_chunk_by_chunk(how):
    reader = openai_reader(chat_request(stream=True, stream_options={"include_usage": True}))
    chunks = split(CHAT_WITH_USAGE, how)
    assert reader.request_body is None
    assert [reader.feed(c) for c in chunks] == chunks
    assert reader.feed(b"") == b""
    assert (reader.result().source, reader.result().usage) == ("reported", CHAT_USAGE)


@pytest.mark.parametrize(
    "extra, expected",
    [
        ({"stream": True}, {"include_usage": True}),
        ({"stream": True, "stream_options": None}, {"include_usage": True}),
        ({"stream": True, "stream_options": {"include_obfuscation": False}}, {"include_obfuscation": False, "include_usage": True}),
        ({"stream": True, "stream_options": {"include_usage": False}}, {"include_usage": True}),
        ({"stream": True, "stream_options": {"include_usage": True}}, None),
        ({"stream": True, "stream_options": "bogus"}, None),
        ({"stream": False}, None),
        ({}, None),
    ],
)
def test_request_rewrite(extra, expected):
    reader = openai_reader(chat_request(**extra))
    if expected is None:
        assert reader.request_body is None
        return
    rewritten = json.loads(reader.request_body)
    assert rewritten == {**json.loads(chat_request(**extra)), "stream_options": expected}
    if "stream_options" not in extra:  # the client's bytes as they are, the one member added
        assert reader.request_body == b'{"stream_options":{"include_usage":true},' + chat_request(**extra)[1:]
    else:  # encoded anew, compact
        assert 'wörld"'.encode() in reader.request_body and b", " not in reader.request_body


@pytest.mark.parametrize("body", [
    b' \r\n\t{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}',
    '{"model":"m","stream":true,"messages":[{"role":"user","content":"wörld \\ud800"}]}'.encode(),
    '{"model":"m","stream":true,"messages":[]}'.encode("utf-16-le"),
])
def test_usage_is_asked_for_in_whatever_json_the_client_sent(body):
    """Leading whitespace, escapes and lone surrogates, UTF-16: the rewritten body is JSON the provider can read,
    the client's request with stream_options.include_usage set."""
    reader = openai_reader(body)
    rewritten = json.loads(reader.request_body)
    assert rewritten == {**json.loads(body), "stream_options": {"include_usage": True}}


def test_rewrite_keeps_lone_surrogates_as_escapes():
    reader = openai_reader(b'{"model":"m","stream":true,"messages":[{"role":"user","content":"\\ud800"}]}')
    assert b'"\\ud800"' in reader.request_body


def test_held_back_bytes_are_only_the_incomplete_event():
    reader = openai_reader(chat_request(stream=True))
    first = CHAT_WITH_USAGE.index(b"\n\n") + 2
    assert reader.feed(CHAT_WITH_USAGE[: first + 5]) == CHAT_WITHOUT_USAGE[: CHAT_WITHOUT_USAGE.index(b"\n\n") + 2]


@pytest.mark.parametrize(
    "upstream, client",
    [
        ('{"id": "a", "choices": [{"delta": {}}], "usage": null}', '{"id": "a", "choices": [{"delta": {}}]}'),
        ('{"usage":null,"id":"a","choices":[]}', '{"id":"a","choices":[]}'),
        ('{"choices":[],"prompt_filter_results":[],"usage":null}', '{"choices":[],"prompt_filter_results":[]}'),
        ('{"choices":[{"delta":{"content":"usage"}}],"usage":null}', '{"choices":[{"delta":{"content":"usage"}}]}'),
        ('{"choices":[{"delta":{"x":1,"usage":null}}],"usage":null}', None),  # ambiguous: left as is
    ],
)
def test_null_usage_member_is_removed_exactly(upstream, client):
    reader = openai_reader(chat_request(stream=True))
    assert run(reader, [sse(upstream)]) == sse(client or upstream)


def test_json_error_fed_as_stream_meters_nothing():
    reader = openai_reader(chat_request(stream=True))
    body = b'{\n  "error": {\n    "message": "Rate limit reached",\n    "type": "requests"\n  }\n}\n'
    assert run(reader, [body]) == body
    assert reader.result().source == "none"


ANTHROPIC_STREAM = events(
    ("message_start", '{"type":"message_start","message":{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"output_tokens":1,"service_tier":"standard"}}}'),
    ("content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}'),
    ("ping", '{"type": "ping"}'),
    ("content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Greet them."}}'),
    ("content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM"}}'),
    ("content_block_stop", '{"type":"content_block_stop","index":0}'),
    ("content_block_delta", '{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hello there, friend!"}}'),
    ("message_delta", '{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":42,"output_tokens_details":{"thinking_tokens":30}}}'),
    ("message_stop", '{"type":"message_stop"}'),
)
RESPONSES_STREAM = events(
    ("response.created", '{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","object":"response","status":"in_progress","model":"o4-mini-2025-04-16","output":[],"usage":null}}'),
    ("response.output_item.added", '{"type":"response.output_item.added","sequence_number":1,"output_index":0,"item":{"id":"msg_1","type":"message","status":"in_progress","content":[],"role":"assistant"}}'),
    ("response.output_text.delta", '{"type":"response.output_text.delta","sequence_number":2,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hi there","logprobs":[]}'),
    ("response.output_text.done", '{"type":"response.output_text.done","sequence_number":3,"item_id":"msg_1","output_index":0,"content_index":0,"text":"Hi there","logprobs":[]}'),
    ("response.completed", '{"type":"response.completed","sequence_number":4,"response":{"id":"resp_1","object":"response","status":"completed","model":"o4-mini-2025-04-16","output":[{"id":"msg_1","type":"message","status":"completed","content":[{"type":"output_text","annotations":[],"text":"Hi there"}],"role":"assistant"}],"usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":16},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":64},"total_tokens":123}}}'),
)
GEMINI_SSE = sse(
    '{"candidates": [{"content": {"parts": [{"text": "Hel"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 9,"totalTokenCount": 49,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 9}],"thoughtsTokenCount": 40},"modelVersion": "gemini-2.5-flash","responseId": "x1"}',
    '{"candidates": [{"content": {"parts": [{"text": "lo!"}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 9,"candidatesTokenCount": 12,"totalTokenCount": 61,"cachedContentTokenCount": 4,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 9}],"thoughtsTokenCount": 40},"modelVersion": "gemini-2.5-flash","responseId": "x1"}',
    eol="\r\n",
)
GEMINI_ARRAY = (
    b'[{\n  "candidates": [\n    {\n      "content": {\n        "parts": [\n          {\n            "text": "Hel"\n          }\n        ],\n        "role": "model"\n      }\n    }\n  ],\n'
    b'  "usageMetadata": {\n    "promptTokenCount": 7,\n    "totalTokenCount": 7\n  },\n  "modelVersion": "gemini-2.0-flash"\n}\n,\r\n'
    b'{\n  "candidates": [\n    {\n      "content": {\n        "parts": [\n          {\n            "text": "lo"\n          }\n        ],\n        "role": "model"\n      },\n      "finishReason": "STOP"\n    }\n  ],\n'
    b'  "usageMetadata": {\n    "promptTokenCount": 7,\n    "candidatesTokenCount": 2,\n    "totalTokenCount": 9\n  },\n  "modelVersion": "gemini-2.0-flash"\n}\n]'
)
COHERE_STREAM = events(
    ("message-start", '{"id":"29f14a5a-11de-4cae-9800-25e4747408ea","type":"message-start","delta":{"message":{"role":"assistant","content":[],"tool_plan":"","tool_calls":[],"citations":[]}}}'),
    ("content-start", '{"type":"content-start","index":0,"delta":{"message":{"content":{"type":"text","text":""}}}}'),
    ("content-delta", '{"type":"content-delta","index":0,"delta":{"message":{"content":{"text":"Hello"}}}}'),
    ("content-end", '{"type":"content-end","index":0}'),
    ("message-end", '{"type":"message-end","delta":{"finish_reason":"COMPLETE","usage":{"billed_units":{"input_tokens":5,"output_tokens":2},"tokens":{"input_tokens":71,"output_tokens":2}}}}'),
)
GROQ_STREAM = sse(
    '{"id":"chatcmpl-3c","object":"chat.completion.chunk","created":1741000000,"model":"llama-3.3-70b-versatile","system_fingerprint":"fp_c0","choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}],"x_groq":{"id":"req_01"}}',
    '{"id":"chatcmpl-3c","object":"chat.completion.chunk","created":1741000000,"model":"llama-3.3-70b-versatile","system_fingerprint":"fp_c0","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"x_groq":{"id":"req_01","usage":{"queue_time":0.02,"prompt_tokens":40,"prompt_time":0.002,"completion_tokens":8,"completion_time":0.02,"total_tokens":48,"total_time":0.022}}}',
    "[DONE]",
)

STREAMS = {
    "anthropic": ("anthropic", "/v1/messages", "", b'{"model":"claude-sonnet-4-0","stream":true}', ANTHROPIC_STREAM,
                  TokenUsage(2125, 2000, 100, 42, 30), "claude-sonnet-4-20250514"),
    "responses": ("openai", "/v1/responses", "", b'{"model":"o4-mini","stream":true,"input":"hi"}', RESPONSES_STREAM,
                  TokenUsage(36, 16, 0, 87, 64), "o4-mini-2025-04-16"),
    "gemini_sse": ("gemini", "/v1beta/models/gemini-2.5-flash:streamGenerateContent", "alt=sse", b"{}", GEMINI_SSE,
                   TokenUsage(9, 4, 0, 52, 40), "gemini-2.5-flash"),
    "gemini_array": ("gemini", "/v1beta/models/gemini-2.0-flash:streamGenerateContent", "", b"{}", GEMINI_ARRAY,
                     TokenUsage(7, 0, 0, 2, 0), "gemini-2.0-flash"),
    "cohere": ("cohere", "/v2/chat", "", b'{"model":"command-a-03-2025","stream":true}', COHERE_STREAM,
               TokenUsage(5, 0, 0, 2, 0), "command-a-03-2025"),
    "groq": ("openai", "/openai/v1/chat/completions", "", b'{"model":"llama-3.3-70b-versatile","stream":true,"stream_options":{"include_usage":true}}',
             GROQ_STREAM, TokenUsage(40, 0, 0, 8, 0), "llama-3.3-70b-versatile"),
}


@pytest.mark.parametrize("how", SPLITS)
@pytest.mark.parametrize("name", STREAMS)
def test_stream_usage(name, how):
    family, path, query, body, payload, usage, model = STREAMS[name]
    reader = for_request(family, "POST", path, query, body)
    assert reader.stream_requested and reader.request_body is None
    assert run(reader, split(payload, how)) == payload
    assert reader.result() == UsageReading(model, usage, "reported")


@pytest.mark.parametrize("name", STREAMS)
def test_buffered_stream_body(name):
    family, path, query, body, payload, usage, model = STREAMS[name]
    reader = for_request(family, "POST", path, query, body)
    reader.observe_body(payload, "application/json" if name == "gemini_array" else "text/event-stream")
    assert (reader.result().usage, reader.result().source) == (usage, "reported")


BODIES = {
    "chat": ("openai", "/v1/chat/completions", {"model": "gpt-4o", "choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": 10, "completion_tokens": 25, "total_tokens": 35, "completion_tokens_details": {"reasoning_tokens": 20}, "prompt_tokens_details": {"cached_tokens": 4}}}, TokenUsage(10, 4, 0, 25, 20)),
    "reasoning_outside": ("openai", "/v1/chat/completions", {"model": "grok-3-mini", "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 35, "completion_tokens_details": {"reasoning_tokens": 20}}}, TokenUsage(10, 0, 0, 25, 20)),
    "embeddings": ("openai", "/v1/embeddings", {"object": "list", "data": [], "model": "text-embedding-3-small", "usage": {"prompt_tokens": 8, "total_tokens": 8}}, TokenUsage(8)),
    "responses": ("openai", "/v1/responses", {"object": "response", "model": "gpt-4.1", "error": None, "usage": {"input_tokens": 30, "input_tokens_details": {"cached_tokens": 10}, "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 35}}, TokenUsage(30, 10, 0, 5)),
    "anthropic": ("anthropic", "/v1/messages", {"type": "message", "model": "claude-3-5-haiku-20241022", "content": [{"type": "text", "text": "Hi"}], "usage": {"input_tokens": 3, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 7, "output_tokens": 9}}, TokenUsage(10, 7, 0, 9)),
    "gemini": ("gemini", "/v1beta/models/gemini-2.5-pro:generateContent", {"candidates": [], "usageMetadata": {"promptTokenCount": 11, "candidatesTokenCount": 3, "thoughtsTokenCount": 5, "toolUsePromptTokenCount": 2, "totalTokenCount": 21}}, TokenUsage(13, 0, 0, 8, 5)),
    "cohere_chat": ("cohere", "/v2/chat", {"id": "c1", "finish_reason": "COMPLETE", "message": {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]}, "usage": {"billed_units": {"input_tokens": 6, "output_tokens": 2}, "tokens": {"input_tokens": 70, "output_tokens": 2}}}, TokenUsage(6, 0, 0, 2)),
    "cohere_tokens_only": ("cohere", "/v2/chat", {"id": "c1", "message": {"content": []}, "usage": {"tokens": {"input_tokens": 70, "output_tokens": 2}}}, TokenUsage(70, 0, 0, 2)),
    "cohere_embed": ("cohere", "/v2/embed", {"id": "e1", "embeddings": {"float": [[0.1]]}, "texts": ["a"], "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 4}}}, TokenUsage(4)),
}


@pytest.mark.parametrize("name", BODIES)
def test_body_usage(name):
    family, path, body, usage = BODIES[name]
    reader = for_request(family, "POST", path, "", b"{}")
    reader.observe_body(json.dumps(body).encode(), "application/json")
    assert (reader.result().usage, reader.result().source) == (usage, "reported")


def test_cut_stream_without_usage_is_estimated_from_text():
    reader = openai_reader(chat_request(stream=True))
    cut = CHAT_WITH_USAGE[: CHAT_WITH_USAGE.index(b'"finish_reason":"stop"')]
    reader.feed(cut)  # the client went away: no feed(b"")
    prompt, streamed = len("Say hello to the wörld"), len("Hello, wörld 👋")
    expected = TokenUsage(input_tokens=math.ceil(prompt / 4), output_tokens=math.ceil(streamed / 4))
    assert (reader.result().usage, reader.result().source) == (expected, "estimated")


def test_cut_stream_keeps_partial_reported_usage():
    reader = for_request("anthropic", "POST", "/v1/messages", "", b'{"stream":true}')
    reader.feed(ANTHROPIC_STREAM[: ANTHROPIC_STREAM.index(b"event: message_delta")])
    chars = len("Greet them.") + len("Hello there, friend!")
    assert reader.result().usage == TokenUsage(2125, 2000, 100, math.ceil(chars / 4))
    assert reader.result().source == "estimated"


def test_gemini_embed_without_usage_estimates_input_only():
    body = b'{"content": {"parts": [{"text": "twelve chars"}]}}'
    reader = for_request("gemini", "POST", "/v1beta/models/text-embedding-004:embedContent", "", body)
    reader.observe_body(b'{"embedding": {"values": [0.1, 0.2]}}', "application/json")
    assert (reader.result().usage, reader.result().source) == (TokenUsage(input_tokens=3), "estimated")


@pytest.mark.parametrize(
    "family, path, body",
    [
        ("openai", "/v1/chat/completions", b'{"error": {"message": "Invalid model", "type": "invalid_request_error"}}'),
        ("anthropic", "/v1/messages", b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'),
        ("gemini", "/v1beta/models/x:streamGenerateContent", b'[{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}]'),
        ("cohere", "/v2/chat", b'{"id":"e","message":"invalid request: model is required"}'),
        ("openai", "/v1/chat/completions", b"<html>502 Bad Gateway</html>"),
        ("openai", "/v1/batches", b'{"usage": {"input_tokens": 5}}'),  # an endpoint no reader reads
    ],
)
def test_errors_and_other_endpoints_meter_nothing(family, path, body):
    reader = for_request(family, "POST", path, "", b'{"model":"m"}')
    reader.observe_body(body, "application/json")
    assert (reader.result().usage, reader.result().source) == (TokenUsage(), "none")


@pytest.mark.parametrize(
    "family, method, path, query, body, expected",
    [
        ("openai", "POST", "/v1/chat/completions", "", b'{"model":"gpt-4o","stream":true}', ("chat.completions", "gpt-4o", True)),
        ("openai", "POST", "/v1/completions", "", b'{"model":"gpt-3.5-turbo-instruct"}', ("completions", "gpt-3.5-turbo-instruct", False)),
        ("openai", "POST", "/openai/deployments/my-gpt/chat/completions", "api-version=2024-10-21", b"{}", ("chat.completions", "my-gpt", False)),
        ("openai", "GET", "/v1/responses", "", b"", ("other", None, False)),
        ("openai", "POST", "/v1/models", "", b"{}", ("other", None, False)),
        ("anthropic", "POST", "/v1/messages", "", b'{"model":"claude-opus-4-1"}', ("messages", "claude-opus-4-1", False)),
        ("anthropic", "POST", "/v1/messages/count_tokens", "", b"{}", ("other", None, False)),
        ("gemini", "POST", "/v1beta/models/gemini-2.0-flash:generateContent", "", b"{}", ("generateContent", "gemini-2.0-flash", False)),
        ("gemini", "POST", "/v1beta/models/gemini-2.0-flash%3AstreamGenerateContent", "alt=sse", b"{}", ("streamGenerateContent", "gemini-2.0-flash", True)),
        ("gemini", "POST", "/v1beta/models/gemini-embedding-001:batchEmbedContents", "", b"{}", ("embedContent", "gemini-embedding-001", False)),
        ("cohere", "POST", "/v2/embed", "", b'{"model":"embed-v4.0"}', ("cohere.embed", "embed-v4.0", False)),
    ],
)
def test_request_classification(family, method, path, query, body, expected):
    reader = for_request(family, method, path, query, body)
    assert (reader.endpoint, reader.model, reader.stream_requested) == expected


NASTY = [b"", b"null", b"[]", b'"str"', b"42", b"\xff\xfe\x00garbage", b"{", b'{"stream": true',
         b"[" * 100_000, b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
         b'{"model": 5, "stream": "yes", "messages": {"content": null}, "stream_options": []}',
         b'{"stream": true, "messages": [{"content": [1, 2, {"text": 3}]}], "prompt": [[1, 2]]}',
         b'{"stream": true, "model": "m", "max_tokens": NaN, "temperature": 1e999}']


@pytest.mark.parametrize("body", NASTY)
@pytest.mark.parametrize("family, path", [("openai", "/v1/chat/completions"), ("anthropic", "/v1/messages"),
                                          ("gemini", "/v1beta/models/g:streamGenerateContent"), ("cohere", "/v2/chat"),
                                          ("bogus", "/\x00")])
def test_garbage_never_raises(family, path, body):
    reader = for_request(family, "POST", path, "alt=sse&&=%zz", body)
    for chunk in (body, b"data: {\n\n", b"data: [1]\n\nevent: message_delta\ndata: {\"usage\": 5}\n\n"):
        reader.feed(chunk)
    reader.finish()
    reader.observe_body(body, None)
    assert reader.result().source in ("none", "estimated")


def test_every_family_in_the_catalog_has_its_reader():
    assert {p.api_family for p in load_catalog().providers} <= READERS.keys()
    assert READERS.keys() == API_FAMILIES  # what the catalog accepts is what the table reads


@pytest.mark.parametrize("family", sorted(READERS))
def test_the_table_picks_the_familys_reader(family):
    assert type(for_request(family, "GET", "/v1/models", "", b"")) is READERS[family]


def test_an_unknown_family_gets_the_reader_that_reads_nothing():
    reader = for_request("bogus", "POST", "/v1/chat/completions", "", b'{"model":"m","stream":true}')
    assert type(reader) is UsageReader
    assert (reader.endpoint, reader.model, reader.stream_requested, reader.request_body) == ("other", "m", True, None)
    assert run(reader, [CHAT_WITH_USAGE]) == CHAT_WITH_USAGE
    assert reader.result() == UsageReading("m", TokenUsage(), "none")


@pytest.mark.parametrize(("body", "seconds"), [
    ({"text": "hi", "usage": {"type": "duration", "seconds": 90}}, "90"),  # gpt-4o-transcribe and whisper-1 json
    ({"task": "transcribe", "duration": 12.5, "text": "hi"}, "12.5"),  # verbose_json
    ({"text": "hi"}, None),  # not reported: a minute meter counts nothing
])
def test_transcription_measures_audio_for_minute_meters(body, seconds):
    reader = for_request("openai", "POST", "/v1/audio/transcriptions", "", b"")
    reader.observe_body(json.dumps(body).encode(), "application/json")
    measured = reader.measured(TokenUsage(output_tokens=3))
    assert measured.audio_seconds == (Decimal(seconds) if seconds else None)
    assert measured.tokens == TokenUsage(output_tokens=3)
