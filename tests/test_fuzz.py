"""Fuzzing of the parsers that read untrusted input (issue 5), with hypothesis.

On any input each parser returns a result the gateway can use, or raises the GatewayError it
documents (a 4xx); anything else would be a 500. The check_* functions are the properties (also
driven by bench/fuzz_atheris.py). Every @example is an input that once broke a parser, kept as a
regression seed, with what it broke. Most were found by hypothesis; "review" and "atheris" mark the
others, and "why" one that shows where the bug above it would hurt.
"""

import base64
import hashlib
import hmac
import json
import re
import time
from unittest import mock
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mitmproxy import http

from addons.auth.credentials import CREDENTIAL_HEADERS, decode_forward_token, read_credential
from addons.auth.signed_tokens import SIGNED_PREFIX, issue_signed_token, verify_signed_token
from addons.core.catalog import load_catalog
from addons.core.errors import BadRequest, GatewayError, Unauthorized
from addons.core.secret_formats import hash_secret
from addons.proxy.forward import parse_forward_target
from addons.proxy.metadata import parse_metadata
from addons.usage import base, json_fields
from addons.usage.readers import UsageReading, for_request
from addons.usage.sse import SSEDecoder
from tests.mock_provider import Headers, MockProvider, RecordedRequest

FUZZ = settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SECRET = "Secret123"  # planted in credentials: no error message may show it
NOW = 1_700_000_000
KEY = b"k" * 32

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
any_text = st.text(st.characters(exclude_categories=()), max_size=40)  # surrogates and controls too
secretish = st.sampled_from([f"tg_sk_{SECRET}", f"sk-{SECRET}", f"tgt_{SECRET}.x", SECRET])


def clean(text: str) -> bool:
    """What a header, a URL or a database text column can carry as is."""
    return not re.search(r"[\x00-\x1f\x7f\ud800-\udfff]", text)


@st.composite
def mutated(draw, raw: bytes) -> bytes:
    """A few byte edits: near-valid input, the kind that reaches corner cases."""
    data = bytearray(raw)
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["delete", "insert", "replace"]))
        piece = draw(st.binary(min_size=1, max_size=3) | st.sampled_from([b"\n", b"\r", b"\\", b'"', b"\x00", b"\xff"]))
        end = at + (0 if edit == "insert" else len(piece) if edit == "replace" else 1)
        data[at:end] = b"" if edit == "delete" else piece
    return bytes(data)


def chunked(payload: bytes, cuts: list[int]) -> list[bytes]:
    edges = sorted({c % (len(payload) + 1) for c in cuts} | {0, len(payload)})
    return [payload[a:b] for a, b in zip(edges, edges[1:]) if b > a]


def refused(e: GatewayError, *codes: str) -> None:
    assert e.code in codes and 400 <= e.status < 500
    assert SECRET not in e.message and SECRET.encode() not in e.body()


# -- 1. credentials and forward tokens ---------------------------------------------------------

TOKEN_FIELDS = ["secret_key", "customer_id", "meter_slug", "provider_key", "disable_billing"]


def b64(raw: bytes, urlsafe: bool, padded: bool) -> str:
    text = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(raw).decode()
    return text if padded else text.rstrip("=")


@st.composite
def forward_tokens(draw) -> str:
    """Near-valid tokens: a working one with up to three fields changed or added."""
    fields = {"secret_key": f"tg_sk_{SECRET}"} | draw(st.dictionaries(
        st.sampled_from([*TOKEN_FIELDS, SECRET]) | st.text(max_size=4), secretish | json_values | any_text, max_size=3))
    raw = draw(mutated(json.dumps(fields).encode()) | st.just(json.dumps(fields).encode()))
    return b64(raw, draw(st.booleans()), draw(st.booleans())) + draw(st.sampled_from(["", " ", "\n", "=", "!"]))


def check_forward_token(text: str) -> None:
    try:
        token = decode_forward_token(text)
    except BadRequest as e:
        return refused(e, "invalid_forward_token")
    assert token.secret_key and isinstance(token.disable_billing, bool)
    fields = (token.secret_key, token.customer_id, token.meter_slug, token.provider_key)
    assert all(f is None or (isinstance(f, str) and f and clean(f)) for f in fields)
    hash_secret(token.secret_key)


@FUZZ
@given(forward_tokens() | any_text)
# {"secret_key": ..., "Secret123": ...}: unknown field names were echoed in the error
@example("eyJzZWNyZXRfa2V5IjogInRnX3NrX1NlY3JldDEyMyIsICJTZWNyZXQxMjMiOiAidGdfc2tfU2VjcmV0MTIzIn0")
@example("eyJzZWNyZXRfa2V5IjogIlx1MDAxZiJ9")  # {"secret_key": "\u001f"}: control characters were accepted
@example(b64(b'{"secret_key": "x", "provider_key": "sk\\r\\nX-Evil: 1"}', False, True))  # why: CR/LF split a header
@example(b64(b'{"secret_key": "x", "customer_id": "c\\u0000"}', False, True))  # why: NUL, a 500 from PostgreSQL
@example(b64(b'{"secret_key": "\\ud800"}', False, True))  # why: lone surrogate, hash_secret raised UnicodeEncodeError
def test_forward_token_decodes_or_is_refused(text):
    check_forward_token(text)


header_values = secretish.map(str.encode) | st.binary(max_size=30) | st.sampled_from(
    [b"Bearer tg_sk_\xff", b"Bearer  ", b"bearer tgt_a.b", b"Basic " + SECRET.encode()])


def check_read_credential(headers: list[tuple[str, bytes]], query_key: str | None) -> None:
    try:
        credential = read_credential(http.Headers([(n.encode(), v) for n, v in headers]), query_key)
    except (BadRequest, Unauthorized) as e:
        return refused(e, "missing_credential", "invalid_credential", "invalid_forward_token")
    assert [credential.secret_key, credential.signed_token, credential.provider_key].count(None) == 2
    if credential.provider_key:  # an app's own key: looked up by its hash, and put back into a header as is
        assert clean(credential.provider_key) and " " not in credential.provider_key
        hash_secret(credential.provider_key)
    if credential.secret_key:
        hash_secret(credential.secret_key)  # looked up by its hash: unknown is a 401, not a 500
    if credential.token:
        assert all(clean(f) for f in (credential.token.customer_id, credential.token.provider_key) if f)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from([*CREDENTIAL_HEADERS, "x-other"]), header_values), max_size=4),
       st.none() | secretish | any_text)
@example([("authorization", b"Bearer tg_sk_\x80")], None)  # invalid UTF-8 became \udc80: hash_secret raised
@example([], "tg_sk_\ud800")  # review: a lone surrogate in ?key=, the same
def test_read_credential_finds_one_usable_credential_or_refuses(headers, query_key):
    check_read_credential(headers, query_key)


# -- 1b. signed tokens -------------------------------------------------------------------------

CLAIM_NAMES = ["v", "jti", "kid", "iat", "exp", "dis", "prov", "mod", "cap", "cus", "met", "pk"]
caps = st.sampled_from(["0.5", "1e999999", "1e999990", "-1", "NaN", "Infinity", "0.0000000001", "1" * 40])


def claims_token(claims: bytes) -> str:
    """A token validly signed with KEY over any claims bytes."""
    body = b64(claims, urlsafe=True, padded=False)
    sig = base64.urlsafe_b64encode(hmac.new(KEY, (SIGNED_PREFIX + body).encode(), hashlib.sha256).digest())
    return f"{SIGNED_PREFIX}{body}.{sig.rstrip(b'=').decode()}"


@st.composite
def signed_tokens(draw) -> str:
    """Validly signed tokens over near-valid claims: only the claim checks stand in the way."""
    claims = {"v": 1, "jti": "ab" * 16, "kid": "key_x", "iat": NOW}
    claims |= draw(st.dictionaries(st.sampled_from([*CLAIM_NAMES, SECRET]), secretish | caps | json_values | any_text,
                                   max_size=3))
    for name in draw(st.lists(st.sampled_from(CLAIM_NAMES), max_size=2)):
        claims.pop(name, None)
    return claims_token(draw(mutated(json.dumps(claims).encode()) | st.just(json.dumps(claims).encode())))


ISSUED = issue_signed_token(KEY, key_id="key_x", customer_id="cus_1", provider_key=f"sk-{SECRET}", now=NOW)
tampered = st.builds(lambda at, c: ISSUED[:at] + c + ISSUED[at + 1:], st.integers(0, 200), st.characters())


def check_signed_token(token: str) -> None:
    try:
        claims = verify_signed_token(token, KEY, now=NOW)
    except (BadRequest, Unauthorized) as e:
        return refused(e, "invalid_signed_token", "token_signature_invalid", "token_expired")
    texts = (claims.token_id, claims.key_id, claims.customer_id, claims.meter_slug, claims.provider_key)
    assert claims.token_id and claims.key_id and all(t is None or (t and clean(t)) for t in texts)
    assert type(claims.issued_at) is int and (claims.expires_at is None or claims.expires_at > NOW)
    assert all(isinstance(p, str) and p for p in claims.allow_providers + claims.allow_models)
    assert claims.spend_cap_nanos is None or 0 < claims.spend_cap_nanos < 2**63  # a ledger BIGINT


@FUZZ
@given(signed_tokens() | tampered | any_text)
@example(claims_token(b'{"v":1,"jti":"j","kid":"k","iat":1,"Secret123":1}'))  # unknown claim names were echoed
@example(claims_token(b'{"v":1,"jti":"\\u001f","kid":"k","iat":1}'))  # control characters were accepted
@example(claims_token(b'{"v":1,"jti":"j","kid":"k","iat":1,"pk":"a\\r\\nb"}'))  # why: CR/LF split a header
@example(claims_token(b'{"v":1,"jti":"j","kid":"k\\u0000","iat":1}'))  # why: NUL, a 500 from PostgreSQL
@example(claims_token(b'{"v":1,"jti":"j","kid":"k","iat":1,"cap":"1e999999"}'))  # review: decimal.Overflow leaked
@example(claims_token(b'{"v":1,"jti":"j","kid":"k","iat":1,"cap":"1e999990"}'))  # review: parsing it took 30 s
@example(claims_token(b'{"v":1,"jti":"j","kid":"k","iat":1,"cap":"1e10"}'))  # review: more than a BIGINT holds
def test_signed_token_verifies_or_is_refused(token):
    check_signed_token(token)


# -- 2. metadata -------------------------------------------------------------------------------

metadata_keys = st.from_regex(r"[A-Za-z0-9_]{1,8}", fullmatch=True) | st.sampled_from(
    ["k" * 255, "k" * 256, "", "٣", "K", "a\n", "a-b", "ß"]) | st.text(max_size=6)
metadata_values = st.text(max_size=8) | st.sampled_from(["v" * 255, "v" * 256, "", "😀" * 255]) | json_values


@st.composite
def metadata_headers(draw) -> str:
    if draw(st.booleans()):
        value = {f"k{i}": "v" for i in range(draw(st.integers(98, 102)))}
    else:
        value = draw(st.dictionaries(metadata_keys, metadata_values, max_size=4) | json_values)
    text = json.dumps(value, ensure_ascii=draw(st.booleans()))
    return draw(mutated(text.encode()).map(lambda b: b.decode("utf-8", "surrogateescape")) | st.just(text))


def valid_metadata(raw: str) -> bool:
    """The documented contract, written out independently of metadata.py."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    ascii_word = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
    return isinstance(value, dict) and len(value) <= 100 and all(
        1 <= len(k) <= 255 and set(k) <= ascii_word and isinstance(v, str) and 1 <= len(v) <= 255
        for k, v in value.items())


def check_metadata(raw: str) -> None:
    try:
        value = parse_metadata(raw)
    except BadRequest as e:
        refused(e, "invalid_metadata")
        assert not valid_metadata(raw)
    else:
        assert valid_metadata(raw) and value == json.loads(raw)


@FUZZ
@given(metadata_headers() | any_text)
def test_metadata_is_accepted_exactly_when_valid(raw):
    check_metadata(raw)


# -- 3. the forward endpoint's u ---------------------------------------------------------------

CATALOG = load_catalog(overrides={"openai": {"upstream": "http://127.0.0.1:9999"}})
HOSTS = sorted(h for p in CATALOG.providers for h in p.hosts)
TRICKY_HOSTS = ["evil.com", "api.openai.com.evil.com", "api.openai.com@evil.com", "evil.com@api.openai.com",
                "api.openai.com\\@evil.com", "evil.com\\@api.openai.com", "api.openai.com%2eevil.com",
                "api.deepsee\u212a.com", "API.OpenAI.COM", "api.openai.com.", "127.0.0.1", "localhost", "[::1]",
                "api.openai.com\r\n", "xn--pi-openai-c6a.com", "api.openai.com#@evil.com"]
PORTS = ["", ":", ":443", ":0443", ":8443", ":9999", ":99999", ":٤٤٣", ":x", ":443@evil.com"]
url_text = st.text(st.sampled_from("/?#@:%.\\ \t\r\n\x00é\udcffaZ09-_~=&"), max_size=12)


@st.composite
def forward_urls(draw) -> str:
    """A working URL with up to two parts of its authority swapped for tricky ones, and any path."""
    parts = {"scheme": ["https", "http", "HTTPS", "ftp", ""], "sep": ["://", ":/", ":", "://\\", ":\\\\", "//"],
             "userinfo": ["", "user@", "user:pw@", "@", f"{SECRET}@"], "host": HOSTS + TRICKY_HOSTS, "port": PORTS}
    chosen = {"scheme": "https", "sep": "://", "userinfo": "", "host": draw(st.sampled_from(HOSTS)), "port": ""}
    for name in draw(st.sets(st.sampled_from(sorted(parts)), max_size=2)):
        chosen[name] = draw(st.sampled_from(parts[name]) | st.text(max_size=4))
    path = draw(st.sampled_from(["", "/", "/v1/chat/completions", "//evil.com/x"]) | url_text)
    return "".join(chosen[name] for name in ("scheme", "sep", "userinfo", "host", "port")) + path


def named_origin(u: str):
    """Scheme, host and port that u names as a browser reads it (WHATWG: '\\' ends the host too)."""
    m = re.match(r"(?i)(https?)://([^/?#\\]*)", u)
    if not m or "@" in m[2] or not m[2].isascii():
        return None
    host, _, port = m[2].partition(":")
    return m[1].lower(), host.lower().rstrip("."), port


def check_forward_target(u: str) -> None:
    try:
        target = parse_forward_target(u, CATALOG)
    except BadRequest as e:
        return refused(e, "invalid_forward_url")
    text = u.strip()
    assert not re.search(r"[\x00-\x20\x7f]", text) and named_origin(text)
    scheme, host, port = named_origin(text)
    if not (host in target.provider.hosts and scheme == "https" and int(port or 443) == 443):
        assert (scheme, host, int(port or {"https": 443, "http": 80}[scheme])) == target.provider.origin
    assert re.fullmatch(r"/[\x21-\x7e]*", target.path) and "#" not in target.path
    rest = text[len(re.match(r"(?i)https?://[^/?#]*", text)[0]):].partition("#")[0]
    expected = rest if rest.startswith("/") else "/" + rest
    expected = expected[:-1] if expected.find("?") == len(expected) - 1 else expected  # an empty query
    assert unquote_to_bytes(target.path) == unquote_to_bytes(expected.encode("utf-8", "surrogateescape"))
    http.Request.make("POST", "http://x/").path = target.path  # mitmproxy takes it


@FUZZ
@given(forward_urls() | any_text)
@example("https://api.anthropic.com/\x00")  # NUL went onto the upstream request line
@example("https://api.anthropic.com? 0")  # and so did a space
@example("https://api.anthropic.com\r/")  # urlsplit drops tab/CR/LF silently: refused now
@example("https://api.deepsee\u212a.com/v1")  # review: the Kelvin sign lower-cases to k, a non-ASCII host passed
@example("https://api.openai.com/\ud800")  # review: lone surrogate, mitmproxy's path setter raised
def test_forward_target_names_a_catalog_origin(u):
    check_forward_target(u)


plain_paths = st.from_regex(r"(/[A-Za-z0-9_.~:@!$&'()*+,;=-]*){0,4}(\?[A-Za-z0-9_=&%]*)?", fullmatch=True)


@FUZZ
@given(st.sampled_from(HOSTS), plain_paths)
def test_forward_target_accepts_every_catalog_host(host, path):
    target = parse_forward_target(f"https://{host}{path}", CATALOG)
    expected = path if path.startswith("/") else "/" + path
    assert host in target.provider.hosts and target.path == expected.removesuffix("?")


# -- 4. SSE framing and metering ---------------------------------------------------------------

sse_bytes = st.lists(st.sampled_from([b"data: ", b"data:", b"event: ", b"\n", b"\r", b"\r\n", b":", b" ", b"x",
                                      b"{}", b"\xef\xbb\xbf", b"\xff", "é".encode()]) | st.binary(max_size=4),
                     max_size=30).map(b"".join)
cut_points = st.lists(st.integers(0, 10_000), max_size=12)


def decode(chunks: list[bytes], max_event_size: int | None = None):
    decoder, events = SSEDecoder(max_event_size), []
    for chunk in chunks:
        events += decoder.feed(chunk)
        assert max_event_size is None or len(decoder._buf) <= max_event_size  # memory stays bounded
    return events + decoder.flush()


@FUZZ
@given(sse_bytes, cut_points, st.none() | st.integers(1, 16))
def test_sse_decoder_keeps_every_byte_under_any_chunking(payload, cuts, max_event_size):
    events = decode(chunked(payload, cuts), max_event_size)
    assert b"".join(e.raw for e in events) == payload
    if max_event_size is None:
        assert events == decode([payload])


def wire(path: str, body: dict, query: str = "") -> bytes:
    """What the mock provider streams for this request: each provider's real framing."""
    rec = RecordedRequest("POST", path, query, Headers([]), json.dumps(body).encode(), 1, 0.0)
    with mock.patch("tests.mock_provider.time.time", return_value=NOW):
        return b"".join(piece for _, piece in MockProvider()._plan(rec).items)


def stream_case(family, path, body, query="", injected=False):
    """(reader arguments, upstream bytes, what the client must get)."""
    if injected:  # the reader asks for usage and hides it again
        upstream = wire(path, {**body, "stream_options": {"include_usage": True}}, query)
        return (family, "POST", path, query, json.dumps(body).encode()), upstream, wire(path, body, query)
    payload = wire(path, body, query)
    return (family, "POST", path, query, json.dumps(body).encode()), payload, payload


USAGE_ON = {"stream": True, "stream_options": {"include_usage": True}}
STREAMS = {
    "chat_injected": stream_case("openai", "/v1/chat/completions", {"model": "m", "stream": True}, injected=True),
    "completions_injected": stream_case("openai", "/v1/completions", {"model": "m", "stream": True}, injected=True),
    "chat": stream_case("openai", "/openai/v1/chat/completions", {"model": "m", **USAGE_ON}),
    "responses": stream_case("openai", "/v1/responses", {"model": "m", "stream": True}),
    "anthropic": stream_case("anthropic", "/v1/messages", {"model": "m", "stream": True}),
    "gemini_sse": stream_case("gemini", "/v1beta/models/g:streamGenerateContent", {}, "alt=sse"),
    "gemini_array": stream_case("gemini", "/v1beta/models/g:streamGenerateContent", {}),
    "cohere": stream_case("cohere", "/v2/chat", {"model": "m", "stream": True}),
}
_args, _array, _ = STREAMS["gemini_array"]
NUMBERED = _array.replace(b"\n,", b"\n,1e5,", 1)  # a damaged array: a number between two items
STREAMS["gemini_array_number"] = (_args, NUMBERED, NUMBERED)


def run(args: tuple, chunks: list[bytes]) -> tuple[bytes, UsageReading]:
    reader = for_request(*args)
    out = b"".join(reader.feed(c) for c in chunks) + reader.feed(b"")
    result = reader.result()
    usage = result.usage
    assert min(usage.input_tokens, usage.cache_read_tokens, usage.cache_write_tokens, usage.output_tokens,
               usage.reasoning_tokens) >= 0
    return out, result


@pytest.mark.parametrize("name", STREAMS)
@FUZZ
@given(cuts=cut_points)
@example(cuts=[NUMBERED.index(b"1e5") + 1])  # "1" | "e5,{...}": a number taken whole stalled the items after it
@example(cuts=[NUMBERED.index(b"1e5") + 2])  # atheris: "1e" | "5,{...}", the same
def test_reader_is_blind_to_chunking(name, cuts):
    args, upstream, client = STREAMS[name]
    whole = run(args, [upstream])
    assert whole[0] == client and whole[1].source == "reported" and whole[1].usage.output_tokens > 0
    assert run(args, chunked(upstream, cuts)) == whole


@pytest.mark.parametrize("name", STREAMS)
@FUZZ
@given(data=st.data(), cuts=cut_points)
def test_reader_on_a_damaged_stream_is_still_blind_to_chunking(name, data, cuts):
    args, upstream, _ = STREAMS[name]
    payload = data.draw(mutated(upstream))
    out, result = run(args, chunked(payload, cuts))
    assert (out, result) == run(args, [payload])
    if not name.endswith("_injected"):
        assert out == payload


ENDPOINTS = [("openai", "/v1/chat/completions", b'{"stream":true}'), ("openai", "/v1/responses", b"{}"),
             ("openai", "/v1/embeddings", b"{}"), ("anthropic", "/v1/messages", b"{}"),
             ("gemini", "/v1beta/models/g:streamGenerateContent", b"{}"), ("cohere", "/v2/chat", b"{}")]


@pytest.mark.parametrize("family, path, body", ENDPOINTS)
@FUZZ
@given(payload=sse_bytes | st.binary(max_size=200), cuts=cut_points, content_type=st.sampled_from(
    [None, "text/event-stream", "application/json", ""]))
def test_reader_on_garbage_estimates_at_most(family, path, body, payload, cuts, content_type):
    out, result = run((family, "POST", path, "", body), chunked(payload, cuts))
    assert out == payload and result.source in ("estimated", "none")
    reader = for_request(family, "POST", path, "", body)
    reader.observe_body(payload, content_type)
    assert reader.result().source in ("estimated", "none")


@pytest.mark.parametrize("name", ["chat_injected", "gemini_sse", "gemini_array"])
def test_max_pending_bounds_a_stream_that_never_ends_an_event(name, monkeypatch):
    monkeypatch.setattr(base, "MAX_PENDING", 4096)
    args, upstream, _ = STREAMS[name]
    reader, sent, forwarded = for_request(*args), 0, 0
    for chunk in [upstream[:40], *[b'x"}]' * 250] * 40]:  # 40 kB inside one event, or one array item
        sent, forwarded = sent + len(chunk), forwarded + len(reader.feed(chunk))
        assert sent - forwarded <= 4096  # what the client has not got yet
        assert len(reader._sse._buf) <= 4096 and (reader._items is None or reader._items._size <= 4096)
    assert reader.result().source == "estimated"


def test_a_large_unfinished_array_item_costs_linear_time():
    """Review: each chunk holding a '}' re-parsed the whole pending item (16 MB in 4 kB chunks: minutes)."""
    reader, start = for_request(*STREAMS["gemini_array"][0]), time.perf_counter()
    reader.feed(b'[{"candidates": [{"content": {"parts": [{"text": "')
    for _ in range(2000):  # 8 MB: 9 s before, 0.02 s now
        reader.feed(b"x}" * 2048)
    assert time.perf_counter() - start < 2 and reader.result().source == "estimated"


def _json_loads_as_the_stdlib(data: bytes):
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _encoded(value, encoding: str, start: str) -> bytes:
    return (start + json.dumps(value, ensure_ascii=False)).encode(encoding, "surrogatepass")


@FUZZ
@given(st.one_of(
    st.binary(max_size=24),
    st.builds(_encoded, json_values, st.sampled_from(["utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32"]),
              st.sampled_from(["", " ", "\n", "\ufeff"])),  # a BOM, or whitespace first
))
@example(b'{"a": "\xed\xa0\x80"}')  # a lone surrogate, as surrogatepass writes it
@example(b'"\xff"')  # not UTF-8
def test_json_fields_loads_reads_bytes_as_json_loads_does(data):
    """json_fields.loads decodes plain UTF-8 itself (json.loads sniffs the encoding in Python, per call); any
    bytes read as json.loads reads them, or as None where json.loads raises."""
    assert repr(json_fields.loads(data)) == repr(_json_loads_as_the_stdlib(data))
