import json

import pytest

from addons.core.catalog import load_catalog
from addons.core.errors import BadRequest
from addons.proxy.forward import parse_forward_target, sdk_query, sdk_target
from addons.proxy.metadata import parse_metadata


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(overrides={"openai": {"upstream": "http://127.0.0.1:9999"}})


@pytest.mark.parametrize(
    "u, provider, path",
    [
        ("https://api.openai.com/v1/chat/completions", "openai", "/v1/chat/completions"),
        ("https://api.openai.com/v1/models?limit=2&after=x", "openai", "/v1/models?limit=2&after=x"),
        ("https://api.openai.com", "openai", "/"),
        ("https://API.OpenAI.com:443/v1/files#frag", "openai", "/v1/files"),
        ("https://api.anthropic.com/v1/messages", "anthropic", "/v1/messages"),
        (
            "https://generativelanguage.googleapis.com/v1beta/models/g:generateContent?alt=sse",
            "gemini",
            "/v1beta/models/g:generateContent?alt=sse",
        ),
        # the upstream origin configured for a provider (a test double, a regional endpoint)
        ("http://127.0.0.1:9999/v1/chat/completions?x=1", "openai", "/v1/chat/completions?x=1"),
    ],
)
def test_forward_target_accepted(catalog, u, provider, path):
    target = parse_forward_target(u, catalog)
    assert (target.provider.id, target.path) == (provider, path)


@pytest.mark.parametrize(
    "u, path, params, meant",
    [
        # the OpenAI SDK: a slash after /v1/forward, its path glued onto u
        ("https://api.openai.com/v1chat/completions", "/v1/forward/", [], "https://api.openai.com/v1/chat/completions"),
        ("https://api.openai.com/v1/chat/completions", "/v1/forward/", [], "https://api.openai.com/v1/chat/completions"),
        ("https://api.groq.com/openai/v1chat/completions", "/v1/forward/", [],
         "https://api.groq.com/openai/v1/chat/completions"),
        ("https://g.googleapis.com/v1betamodels/m", "/v1/forward/", [], "https://g.googleapis.com/v1beta/models/m"),
        ("https://g.googleapis.com/v1beta/models/m", "/v1/forward/", [], "https://g.googleapis.com/v1beta/models/m"),
        ("https://api.openai.com/v1/models", "/v1/forward/", [("limit", "2")], "https://api.openai.com/v1/models?limit=2"),
        # google-genai: its path after /v1/forward, alt=sse beside u
        ("https://g.googleapis.com/", "/v1/forward/v1beta/models/m:streamGenerateContent", [("alt", "sse")],
         "https://g.googleapis.com/v1beta/models/m:streamGenerateContent?alt=sse"),
        # a plain /v1/forward?u=<full URL> is taken as it is
        ("https://api.openai.com/v1chat/completions", "/v1/forward", [], "https://api.openai.com/v1chat/completions"),
    ],
)
def test_sdk_target(u, path, params, meant):
    assert sdk_target(u, path, params) == meant


def test_sdk_query_finds_u_behind_a_second_question_mark():
    assert sdk_query((("alt", "sse?u=https://g.googleapis.com"),)) == [("alt", "sse"), ("u", "https://g.googleapis.com")]
    kept = (("u", "https://api.openai.com/v1/models?limit=2"),)
    assert sdk_query(kept) == list(kept)  # u found: values are never split


@pytest.mark.parametrize(
    "u",
    [
        None,
        "",
        "http://api.openai.com/v1/chat/completions",  # catalog host, not https
        "https://example.com/v1/chat/completions",
        "https://openai.com/v1",
        "https://api.openai.com.evil.test/v1",  # look-alikes
        "https://evil-api.openai.com/v1",
        "https://api-openai.com/v1",
        "https://user:pw@api.openai.com/v1",  # userinfo
        "https://api.openai.com@evil.test/v1",
        "https://user@api.openai.com/v1",
        "https://api.openai.com:8443/v1",  # non-443 port on a catalog host
        "https://api.openai.com:99999/v1",
        "https://api.openai.com:port/v1",
        "https://1.2.3.4/v1",  # IP literals
        "https://[::1]/v1",
        "http://127.0.0.1/v1",  # the upstream's host on another port
        "http://127.0.0.1:9998/v1",
        "https://127.0.0.1:9999/v1",  # the upstream over the wrong scheme
        "http://localhost:9999/v1",
        "ftp://api.openai.com/v1",
        "//api.openai.com/v1",
        "api.openai.com/v1",
        "not a url",
        "https://",
        "https://[::1/v1",
    ],
)
def test_forward_target_refused(catalog, u):
    with pytest.raises(BadRequest) as e:
        parse_forward_target(u, catalog)
    assert (e.value.status, e.value.code) == (400, "invalid_forward_url")


def pairs(n: int) -> str:
    return json.dumps({f"k{i}": "v" for i in range(n)})


@pytest.mark.parametrize(
    "raw",
    [
        "{}",
        '{"user_id": "u_1", "Feature_2": "chat"}',
        pairs(100),
        json.dumps({"k" * 255: "v" * 255}),
        json.dumps({"team": "données"}),  # values are any text
    ],
)
def test_metadata_accepted(raw):
    assert parse_metadata(raw) == json.loads(raw)


@pytest.mark.parametrize(
    "raw",
    [
        pairs(101),
        json.dumps({"k" * 256: "v"}),
        json.dumps({"k": "v" * 256}),
        '{"": "v"}',
        '{"k": ""}',
        json.dumps({"clé": "v"}),
        json.dumps({"٣": "v"}),  # a non-ASCII digit
        json.dumps({"a-b": "v"}),
        json.dumps({"a b": "v"}),
        json.dumps({"a\n": "v"}),
        '{"k": 1}',
        '{"k": null}',
        '{"k": true}',
        '{"k": ["v"]}',
        '{"k": {"nested": "v"}}',
        '["k", "v"]',
        '"k=v"',
        "null",
        "",
        "k=v",
        "{'k': 'v'}",
        "[" * 100_000,
    ],
)
def test_metadata_refused(raw):
    with pytest.raises(BadRequest) as e:
        parse_metadata(raw)
    assert (e.value.status, e.value.code) == (400, "invalid_metadata")
