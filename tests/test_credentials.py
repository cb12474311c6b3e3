import base64
import hashlib
import json
import re

import pytest
from mitmproxy import http

from addons.auth.credentials import (
    CREDENTIAL_HEADERS,
    GATEWAY_HEADER_PREFIXES,
    CallerCredential,
    ForwardToken,
    _credential_headers,
    decode_forward_token,
    encode_forward_token,
    forwarded_headers,
    read_credential,
)
from addons.core.errors import BadRequest, Unauthorized
from addons.core.secret_formats import hash_secret, new_secret_key

SECRET = "tg_sk_" + "A" * 43
# Chosen so the standard encoding holds '+', '/' and '=' padding, which URL-safe forms replace.
TOKEN = ForwardToken(secret_key="tg_sk_ab??>>~~", provider_key="sk-p??~")
STANDARD = encode_forward_token(TOKEN)


def b64(obj) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    "headers, query_key",
    [
        ({"authorization": f"Bearer {SECRET}"}, None),  # OpenAI & co
        ({"Authorization": f"bearer  {SECRET} "}, None),
        ({"x-api-key": SECRET}, None),  # Anthropic
        ({"x-goog-api-key": SECRET}, None),  # Gemini
        ({"api-key": SECRET}, None),  # Azure
        ({"xi-api-key": SECRET}, None),  # ElevenLabs
        ({}, SECRET),  # ?key= (Gemini REST)
    ],
)
def test_read_credential_from_every_sdk_header(headers, query_key):
    assert read_credential(http.Headers(**headers), query_key) == CallerCredential(secret_key=SECRET)


@pytest.mark.parametrize(
    "headers, query_key",
    [
        ({"authorization": f"Bearer {STANDARD}", "x-api-key": SECRET}, None),
        ({"authorization": "Bearer sk-openai-provider-key", "x-goog-api-key": SECRET}, None),
        ({"x-api-key": STANDARD}, SECRET),
    ],
)
def test_secret_key_wins_over_other_credentials(headers, query_key):
    assert read_credential(http.Headers(**headers), query_key) == CallerCredential(secret_key=SECRET)


def test_forward_token_credential_carries_the_token():
    credential = read_credential(http.Headers(authorization=f"Bearer {STANDARD}"), None)
    assert credential == CallerCredential(secret_key=TOKEN.secret_key, token=TOKEN)


@pytest.mark.parametrize(
    "headers, query_key",
    [({}, None), ({"authorization": "Bearer "}, None), ({"x-api-key": "  "}, ""), ({"other": SECRET}, None)],
)
def test_missing_credential(headers, query_key):
    with pytest.raises(Unauthorized) as e:
        read_credential(http.Headers(**headers), query_key)
    assert (e.value.status, e.value.code) == (401, "missing_credential")


@pytest.mark.parametrize(
    "text",
    [
        STANDARD,
        STANDARD.rstrip("="),
        STANDARD.translate(str.maketrans("+/", "-_")),
        STANDARD.translate(str.maketrans("+/", "-_")).rstrip("="),
        f"  {STANDARD}\n",
    ],
)
def test_decode_forward_token_alphabets_and_padding(text):
    assert set("+/=") <= set(STANDARD)  # the cases above really differ
    assert decode_forward_token(text) == TOKEN


@pytest.mark.parametrize("token", [ForwardToken("tg_sk_x"), ForwardToken("tg_sk_x", provider_key="sk-1")])
def test_forward_token_round_trip(token):
    assert decode_forward_token(encode_forward_token(token)) == token


@pytest.mark.parametrize(
    "text",
    [
        "not base64!!",
        "e30",  # "{}" unpadded: no secret_key
        b64(b"hello"),
        b64(b"\xff\xfe"),
        b64([SECRET]),
        b64("tg_sk_x"),
        b64(None),
        b64({"provider_key": "sk-1"}),
        b64({"secret_key": ""}),
        b64({"secret_key": "tg_sk_x", "customer": "c"}),
        b64({"secret_key": 42}),
        b64({"secret_key": "tg_sk_x", "provider_key": 1}),
        b64({"secret_key": "tg_sk_x", "customer_id": ["c"]}),
        b64({"secret_key": "tg_sk_x", "disable_billing": "yes"}),
        b64(b"[" * 100_000),
    ],
)
def test_malformed_forward_token(text):
    with pytest.raises(BadRequest) as e:
        decode_forward_token(text)
    assert (e.value.status, e.value.code) == (400, "invalid_forward_token")


@pytest.mark.parametrize(
    "fields", [{"customer_id": "cus_1"}, {"meter_slug": "chat"}, {"disable_billing": True}]
)
def test_billing_fields_are_decoded(fields):
    token = decode_forward_token(b64({"secret_key": "tg_sk_x", **fields}))
    assert {k: getattr(token, k) for k in fields} == fields


@pytest.mark.parametrize(
    "credential",
    [
        "eyJsk-live-provider-Secret123",
        b64({"secret_key": "tg_sk_Secret123", "provider_key": 5}),
        b64({"secret_key": "tg_sk_Secret123", "customer_id": 123}),
        b64({"secret_key": "tg_sk_Secret123", "extra": "Secret123"}),
    ],
)
def test_error_messages_never_echo_the_credential(credential):
    with pytest.raises(BadRequest) as e:
        read_credential(http.Headers(authorization=f"Bearer {credential}"), None)
    assert "Secret123" not in str(e.value) and b"Secret123" not in e.value.body()


def test_forwarded_headers_lose_every_credential_and_take_the_providers():
    headers = http.Headers(
        [
            (b"Authorization", b"Bearer a"),
            (b"authorization", b"Bearer b"),  # a repeated header goes too
            *[(name.encode(), SECRET.encode()) for name in ("x-api-key", "x-goog-api-key", "api-key", "xi-api-key")],
            (b"X-Lava-Metadata", b"{}"),
            (b"x-tollgate-request-id", b"r"),
            (b"content-type", b"application/json"),
            (b"anthropic-version", b"2023-06-01"),
            (b"x-lavalamp", b"kept"),
            (b"Accept-Encoding", b"gzip"),  # replaced, not doubled
        ]
    )
    forwarded_headers(headers, ((b"accept-encoding", b"identity"), (b"x-api-key", b"sk-provider")))
    assert headers.fields == (
        (b"content-type", b"application/json"),
        (b"anthropic-version", b"2023-06-01"),
        (b"x-lavalamp", b"kept"),
        (b"accept-encoding", b"identity"),
        (b"x-api-key", b"sk-provider"),
    )


def _by_mitmproxy_lookups(headers: http.Headers) -> tuple[dict, tuple]:
    """What read_credential saw and forwarded_headers left when they used Headers' own lookups."""
    seen = {name: headers[name] for name in CREDENTIAL_HEADERS if name in headers}
    copy = http.Headers(headers.fields)
    for name in CREDENTIAL_HEADERS:
        copy.pop(name, None)
    for name in list(copy.keys()):
        if name.lower().startswith(GATEWAY_HEADER_PREFIXES):
            copy.pop(name, None)
    return seen, copy.fields


@pytest.mark.parametrize("fields", [
    [(b"Authorization", b"Bearer a"), (b"AUTHORIZATION", b"Bearer b"), (b"content-type", b"application/json")],
    [(b"X-Api-Key", SECRET.encode()), (b"x-api-key", b""), (b"X-Lava-Forward-Token", b"t"), (b"accept", b"*/*")],
    [("x-api-\u212aey".encode(), SECRET.encode()), (b"x-goog-api-key", b"\xff\xfe"), (b"X-TOLLGATE-x", b"1")],
    [(b"api-key", b" padded "), (b"xi-api-key", b"x"), (b"x-lavalamp", b"kept"), (b"x-lava", b"kept")],
], ids=["repeated", "empty-and-case", "kelvin-and-bytes", "others"])
def test_one_pass_header_scans_match_mitmproxys_lookups(fields):
    """The credential scan and the strip walk the raw fields once; they must find and remove exactly what
    lookups through mitmproxy's Headers would (same case folding, same joining of repeats)."""
    seen, left = _by_mitmproxy_lookups(http.Headers(fields))
    headers = http.Headers(fields)
    assert _credential_headers(headers) == seen
    forwarded_headers(headers)
    assert headers.fields == left


def test_hash_secret_is_stable_sha256_hex():
    assert hash_secret("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert hash_secret(SECRET) == hash_secret(SECRET) == hashlib.sha256(SECRET.encode()).hexdigest()
    assert hash_secret(SECRET) != hash_secret(SECRET + "x")


def test_new_secret_key():
    first, second = new_secret_key(), new_secret_key()
    assert re.fullmatch(r"tg_sk_[A-Za-z0-9_-]{43,}", first)
    assert first != second


def test_signed_token_is_recognised_by_its_prefix():
    credential = read_credential(http.Headers(authorization="Bearer tgt_abc.def"), None)
    assert credential == CallerCredential(signed_token="tgt_abc.def")
