"""Google Vertex AI through the gateway, and the access tokens it mints from the operator's service account.

A service account with a freshly generated RSA key points its `token_uri` at a local token endpoint that
checks the JWT assertion's signature with the account's public key (and its issuer, audience and scope)
before it issues a short-lived token, as Google's does. In-process: a token is minted, reused while valid,
refreshed ahead of its expiry in the background, refreshed on expiry, shared by concurrent requests, and
minted without blocking the event loop. End to end (one gateway for the module, SQLite): the official
google-genai SDK in Vertex mode (the caller's Tollgate key as its OAuth access token) through HTTPS_PROXY and
through the forward endpoint, the mock Vertex endpoint seeing `Bearer <minted token>` and nothing of Tollgate's;
usage and cost (straight from genai-prices) in the ledger."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import time
from datetime import datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import anthropic
import genai_prices
import google.oauth2.credentials
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from google import genai

from addons.auth.vertex_tokens import ServiceAccountTokens, TokenError, mint, utcnow
from pricing.money import to_nanos
from tests.harness import ANTHROPIC, GEMINI, GatewayProcess
from tests.inprocess_gateway import api_flow, run, secret_key
from tests.mock_provider import FULL_TEXT, MockProvider

PROJECT, LOCATION, MODEL = "tollgate-test", "europe-west4", "gemini-2.0-flash"
CLAUDE = "claude-3-5-haiku@20241022"  # Vertex names Claude versions with an @
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"  # what google-auth signs for, whatever token_uri is


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


class TokenEndpoint:
    """Google's OAuth token endpoint, for one service account: a jwt-bearer grant signed by its key gets a token."""

    def __init__(self, public_key, email: str, expires_in: int = 3600, delay: float = 0.0):
        self.public_key, self.email, self.expires_in, self.delay = public_key, email, expires_in, delay
        self.issued: list[str] = []
        self.refused = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                form = parse_qs(self.rfile.read(int(self.headers["content-length"])).decode())
                status, body = endpoint.grant(form)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/token"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def grant(self, form: dict) -> tuple[int, dict]:
        time.sleep(self.delay)
        try:
            assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
            header, claims, signature = form["assertion"][0].split(".")
            assert json.loads(_b64(header))["alg"] == "RS256"
            self.public_key.verify(_b64(signature), f"{header}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256())
            claims = json.loads(_b64(claims))
            assert (claims["iss"], claims["aud"], claims["scope"]) == (self.email, GOOGLE_TOKEN_AUDIENCE, SCOPE)
            assert claims["iat"] <= time.time() + 5 < claims["exp"] + 5
        except Exception:  # noqa: BLE001 - a bad signature, claim or grant: Google's own refusal
            self.refused += 1
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        token = f"ya29.minted-{len(self.issued) + 1}"
        self.issued.append(token)
        return 200, {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def service_account_file(path, token_uri: str, private_key) -> str:
    pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": PROJECT, "private_key_id": "k1", "private_key": pem,
        "client_email": f"tollgate@{PROJECT}.iam.gserviceaccount.com", "client_id": "1", "token_uri": token_uri}))
    return str(path)


@pytest.fixture(scope="module")
def account_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def endpoint(account_key):
    server = TokenEndpoint(account_key.public_key(), f"tollgate@{PROJECT}.iam.gserviceaccount.com")
    yield server
    server.close()


@pytest.fixture
def key_file(tmp_path, endpoint, account_key):
    return service_account_file(tmp_path / "sa.json", endpoint.url, account_key)


class Clock:
    def __init__(self):
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


# -- the token cache, in-process ----------------------------------------------------------------------------


def test_a_token_is_minted_once_and_reused_while_valid(key_file, endpoint):
    tokens = ServiceAccountTokens()

    async def twice():
        return await tokens.token(key_file), await tokens.token(key_file)

    assert asyncio.run(twice()) == ("ya29.minted-1", "ya29.minted-1")
    assert endpoint.issued == ["ya29.minted-1"] and endpoint.refused == 0


def test_concurrent_requests_share_one_refresh_and_the_loop_keeps_running(key_file, endpoint):
    endpoint.delay = 0.3
    tokens = ServiceAccountTokens()
    ticks = []

    async def ticker():
        for _ in range(5):
            ticks.append(time.monotonic())
            await asyncio.sleep(0.02)

    async def main():
        return await asyncio.gather(*(tokens.token(key_file) for _ in range(5)), ticker())

    assert asyncio.run(main())[:5] == ["ya29.minted-1"] * 5
    assert len(endpoint.issued) == 1
    assert len(ticks) == 5 and ticks[-1] - ticks[0] < 0.25, "the event loop waited for the token endpoint"


def test_refreshed_ahead_of_expiry_in_the_background_then_on_expiry(key_file, endpoint):
    endpoint.expires_in = 600
    clock = Clock()
    tokens = ServiceAccountTokens(refresh_ahead_s=300, min_valid_s=30, now=clock)

    async def main():
        first = await tokens.token(key_file)
        clock.now += timedelta(seconds=400)  # 200 s left: still served, a refresh starts behind it
        ahead = await tokens.token(key_file)
        await asyncio.sleep(0)
        while tokens._tokens[key_file].refreshing is not None:
            await asyncio.sleep(0.01)
        renewed = await tokens.token(key_file)
        clock.now += timedelta(seconds=1200)  # expired: this request waits for a new one
        expired = await tokens.token(key_file)
        return first, ahead, renewed, expired

    assert asyncio.run(main()) == ("ya29.minted-1", "ya29.minted-1", "ya29.minted-2", "ya29.minted-3")
    assert len(endpoint.issued) == 3


def test_a_short_lived_token_is_reused_for_half_its_life(key_file, endpoint):
    """Tokens shorter-lived than refresh_ahead_s are not minted again at every request."""
    endpoint.expires_in = 120
    clock = Clock()
    tokens = ServiceAccountTokens(refresh_ahead_s=300, min_valid_s=10, now=clock)

    async def main():
        first = await tokens.token(key_file)
        clock.now += timedelta(seconds=50)
        reused = await tokens.token(key_file)
        await asyncio.sleep(0.05)
        return first, reused, tokens._tokens[key_file].refreshing

    assert asyncio.run(main()) == ("ya29.minted-1", "ya29.minted-1", None)
    assert endpoint.issued == ["ya29.minted-1"]


def test_a_refused_grant_is_a_token_error_that_names_no_secret(tmp_path, endpoint):
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # not the account's key
    key_file = service_account_file(tmp_path / "wrong.json", endpoint.url, other_key)
    with pytest.raises(TokenError, match="invalid_grant") as failed:
        mint(key_file)
    assert endpoint.refused == 1 and "PRIVATE KEY" not in str(failed.value)
    with pytest.raises(TokenError, match="FileNotFoundError"):
        mint(str(tmp_path / "missing.json"))


# -- end to end: google-genai in Vertex mode through a gateway ----------------------------------------------


class VertexMock(MockProvider):
    """The mock provider plus Vertex's Anthropic publisher: Anthropic's Messages wire format (JSON and SSE, its
    usage blocks) at publishers/anthropic/models/{model}:rawPredict and :streamRawPredict, the model in the URL."""

    def _route(self, method, path, rec, body):
        found = re.search(r"/publishers/anthropic/models/([^/:]+):(rawPredict|streamRawPredict)$", path)
        if method == "POST" and found:
            rec.model, rec.stream = found[1], bool(body.get("stream"))
            return "anthropic.messages", self._anthropic
        return super()._route(method, path, rec, body)


@pytest.fixture(scope="module")
def vertex_mock():
    with VertexMock() as server:
        yield server


@pytest.fixture(scope="module")
def vertex_gateway(vertex_mock, account_key, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vertex")
    server = TokenEndpoint(account_key.public_key(), f"tollgate@{PROJECT}.iam.gserviceaccount.com")
    key_file = service_account_file(tmp / "sa.json", server.url, account_key)
    gw = GatewayProcess(tmp, f"sqlite:///{tmp}/l.db", {"vertex": vertex_mock.url},
                        providers={"vertex": {"service_account_file": key_file}})
    gw.token_endpoint = server
    gw.fund("10")
    gw.start()
    yield gw
    gw.stop()
    server.close()


@pytest.fixture
def proxied(vertex_gateway, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", vertex_gateway.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(vertex_gateway.ca))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    return vertex_gateway


def vertex_client(gw, **http_options) -> genai.Client:
    """The caller's Tollgate key as the OAuth access token google-genai sends as `Authorization: Bearer`."""
    return genai.Client(vertexai=True, project=PROJECT, location=LOCATION,
                        credentials=google.oauth2.credentials.Credentials(token=gw.admin_key),
                        http_options=http_options or None)


def expected_cost(model: str, usage) -> Decimal:
    calc = genai_prices.calc_price(genai_prices.Usage(input_tokens=usage.input_tokens,
                                                      cache_read_tokens=usage.cache_read_tokens,
                                                      cache_write_tokens=usage.cache_write_tokens,
                                                      output_tokens=usage.output_tokens), model, provider_id="google")
    return Decimal(to_nanos(calc.total_price)) / 10**9


def assert_vertex_call(gw, mock, stream: bool, *, publisher="google", model=MODEL, usage=GEMINI):
    seen = mock.last
    verb = {"google": "streamGenerateContent" if stream else "generateContent",
            "anthropic": "streamRawPredict" if stream else "rawPredict"}[publisher]
    assert seen.path.endswith(f"/projects/{PROJECT}/locations/{LOCATION}/publishers/{publisher}/models/{model}:{verb}")
    assert seen.headers["authorization"] == f"Bearer {gw.token_endpoint.issued[-1]}"
    raw = " ".join(f"{k}: {v}" for k, v in seen.headers.items_raw())
    assert gw.admin_key not in raw and "tg_sk_" not in raw
    row = gw.ledger.requests(limit=1)[0]
    row = gw.request_row(row["id"])
    endpoint = verb if publisher == "google" else "messages"
    assert (row["provider"], row["model"], row["endpoint"], row["status"], row["streamed"]) == (
        "vertex", model, endpoint, 200, stream)
    assert (row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"], row["output_tokens"]) == (
        usage.input_tokens, usage.cache_read_tokens, usage.cache_write_tokens, usage.output_tokens)
    assert row["usage_source"] == "reported"
    assert Decimal(row["provider_cost"]) == expected_cost(model, usage) > 0


def wait_for_new_row(gw, count_before: int):
    deadline = time.monotonic() + 10
    while len(gw.ledger.requests()) <= count_before:
        assert time.monotonic() < deadline, "no new ledger row"
        time.sleep(0.05)


@pytest.mark.e2e
@pytest.mark.parametrize("stream", [False, True])
def test_genai_vertex_mode_through_https_proxy(proxied, vertex_gateway, vertex_mock, stream):
    mock = vertex_mock
    mock.reset()
    before = len(vertex_gateway.ledger.requests())
    client = vertex_client(vertex_gateway)
    if stream:
        text = "".join(c.text or "" for c in client.models.generate_content_stream(model=MODEL, contents="hi"))
    else:
        text = client.models.generate_content(model=MODEL, contents="hi").text
    assert text == FULL_TEXT
    wait_for_new_row(vertex_gateway, before)
    assert_vertex_call(vertex_gateway, mock, stream)
    assert vertex_gateway.token_endpoint.issued == ["ya29.minted-1"], "the token is reused while it is valid"


@pytest.mark.e2e
@pytest.mark.parametrize("stream", [False, True])
def test_forward_endpoint(vertex_gateway, vertex_mock, stream):
    """google-genai appends its path (/v1beta1/projects/...) to the forward path; the host in u picks the region."""
    mock = vertex_mock
    mock.reset()
    before = len(vertex_gateway.ledger.requests())
    client = vertex_client(vertex_gateway, base_url=f"{vertex_gateway.url}/v1/forward?u=https://{LOCATION}-aiplatform.googleapis.com",
                           client_args={"trust_env": False})
    if stream:
        text = "".join(c.text or "" for c in client.models.generate_content_stream(model=MODEL, contents="hi"))
    else:
        text = client.models.generate_content(model=MODEL, contents="hi").text
    assert text == FULL_TEXT
    wait_for_new_row(vertex_gateway, before)
    assert_vertex_call(vertex_gateway, mock, stream)


@pytest.mark.e2e
@pytest.mark.parametrize("stream", [False, True])
def test_claude_on_vertex_through_https_proxy(proxied, vertex_gateway, vertex_mock, stream):
    """anthropic's AnthropicVertex client, its access token the caller's Tollgate key: Anthropic's wire format,
    the model from the URL, priced at Vertex's (Google's) Claude prices."""
    vertex_mock.reset()
    before = len(vertex_gateway.ledger.requests())
    client = anthropic.AnthropicVertex(project_id=PROJECT, region=LOCATION, access_token=vertex_gateway.admin_key,
                                       max_retries=0)
    args = dict(model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    if stream:
        with client.messages.stream(**args) as events:
            text = "".join(events.text_stream)
    else:
        text = client.messages.create(**args).content[0].text
    assert text == FULL_TEXT
    assert "model" not in vertex_mock.last.json and "anthropic_version" in vertex_mock.last.json  # the model is in the URL
    wait_for_new_row(vertex_gateway, before)
    assert_vertex_call(vertex_gateway, vertex_mock, stream, publisher="anthropic", model=CLAUDE, usage=ANTHROPIC)


def test_a_token_endpoint_that_refuses_is_a_502_naming_no_secret(gw, tmp_path, endpoint, monkeypatch):
    """In-process: the gateway answers upstream_auth_failed itself, before any hold or connection."""
    wrong = service_account_file(tmp_path / "wrong.json", endpoint.url,
                                 rsa.generate_private_key(public_exponent=65537, key_size=2048))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", wrong)
    key = secret_key()
    flow = run(gw, api_flow([("authorization", f"Bearer {key}")], content=b'{"contents": []}',
                            host=f"{LOCATION}-aiplatform.googleapis.com",
                            path=f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/{MODEL}:generateContent"))
    assert flow.response.status_code == 502 and json.loads(flow.response.content)["error"]["code"] == "upstream_auth_failed"
    assert key not in flow.response.text and "PRIVATE" not in flow.response.text
    assert endpoint.refused == 1 and endpoint.issued == []


def test_a_request_goes_to_the_region_it_named_with_the_minted_token(gw, key_file, endpoint, monkeypatch):
    """In-process, no upstream configured: the flow is aimed at the regional host the client named."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", key_file)
    key = secret_key()
    host = f"{LOCATION}-aiplatform.googleapis.com"
    flow = run(gw, api_flow([("authorization", f"Bearer {key}")], content=b'{"contents": []}', host=host,
                            path=f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/{MODEL}:generateContent"))
    assert flow.response is None
    assert (flow.request.scheme, flow.request.host, flow.request.port) == ("https", host, 443)
    assert flow.request.headers["authorization"] == "Bearer ya29.minted-1" == f"Bearer {endpoint.issued[0]}"
