"""OpenAI Realtime through the gateway, end to end: the official `openai` SDK's realtime client (and, for the
browser's subprotocol credential, the `websockets` package it uses) as the caller, the real gateway process,
and tests/realtime_mock.py speaking the Realtime event protocol. Each response must be its own ledger row,
priced here straight from genai-prices (its own Realtime usage extractor on the mock's response.done event),
never through Tollgate's pricing; frames must pass in order and unchanged; a customer balance that cannot
hold the next response cuts the session with an error event and a close code."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
import uuid
from decimal import Decimal

import openai
import pytest
import websockets
from genai_prices import Usage, calc_price, extract_usage
from mitmproxy import http
from websockets.exceptions import ConnectionClosed

from addons.billing.cashier import Cashier
from addons.core.errors import PaymentRequired, TooManyRequests
from addons.core.settings import BillingSettings
from addons.ledger.writer import CommitReport
from addons.proxy.realtime import (
    TOP_UP_CHARS,
    RealtimeSessions,
    Session,
    close_code,
    error_event,
    take_subprotocol_key,
)
from addons.proxy.redaction import HEADERS, REDACTED, redact_request
from addons.proxy.usage_record import Pending
from addons.usage.readers import for_request
from addons.usage.realtime import RealtimeReader, input_chars
from pricing.money import format_usd, to_nanos
from pricing.usage import MediaUsage, TokenUsage
from tests.harness import PROVIDER_KEYS, GatewayProcess, gateways_by_backend
from tests.ledger_reads import wait_for
from tests.realtime_mock import USAGES, RealtimeMock

MODEL = "gpt-realtime"
MAX_OUTPUT = 500  # billing.default_max_output_tokens of the module's gateways: each response's output hold
OPERATOR_KEY = PROVIDER_KEYS["OPENAI_API_KEY"]
AZURE_KEY = "azure-operator-key-0123456789abcdef"


@pytest.fixture(scope="module")
def mock():
    with RealtimeMock() as server:
        yield server


@pytest.fixture(scope="module")
def gateways(mock, tmp_path_factory):
    def make(tmp, url):
        gateway = GatewayProcess(tmp, url, {"openai": mock.url, "azure": mock.url},
                                 billing={"default_max_output_tokens": MAX_OUTPUT},
                                 providers={"azure": {"resources": ["myres"], "deployments": {"rt-prod": MODEL}}})
        gateway.env["AZURE_OPENAI_API_KEY"] = AZURE_KEY
        return gateway

    with gateways_by_backend(tmp_path_factory, "realtime", make) as get:
        yield get


def within(coro, seconds: float = 20):
    """Run a client coroutine, failing (not hanging) if the session stalls."""
    return asyncio.run(asyncio.wait_for(coro, seconds))


def forward(gw) -> str:
    return f"{gw.url}/v1/forward?u=https://api.openai.com/v1"


def price(done_event: dict) -> Decimal:
    """What a response costs, from genai-prices alone: its Realtime extractor, then calc_price."""
    usage = extract_usage(done_event, provider_id="openai", api_flavor="realtime").usage
    return calc_price(usage, MODEL, provider_id="openai").total_price


def worst(context_tokens: int) -> Decimal:
    """A response's hold as the README states it: the conversation so far as input and MAX_OUTPUT as output,
    every token at the model's audio rates."""
    usage = Usage(input_tokens=context_tokens, input_audio_tokens=context_tokens, output_tokens=MAX_OUTPUT,
                  output_audio_tokens=MAX_OUTPUT)
    return calc_price(usage, MODEL, provider_id="openai").total_price


def user_item(text: str) -> dict:
    return {"type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}


async def converse(conn, responses: int, sent: list[str], received: list[bytes], **response) -> None:
    """`responses` turns: a user item and response.create, read through response.done and rate_limits.updated."""
    for turn in range(responses):
        for event in (user_item(f"turn {turn}: say hello"), {"type": "response.create", **response}):
            sent.append(json.dumps(event))
            await conn.send_raw(sent[-1])
        while True:
            received.append(await conn.recv_bytes())
            if json.loads(received[-1])["type"] in ("rate_limits.updated", "error"):
                break


def session_rows(gw, session_id: str, count: int) -> list[dict]:
    rows = wait_for(lambda: [r for r in gw.ledger.requests() if r["session_id"] == session_id],
                    what=f"{count} rows of session {session_id}", until=lambda rows: len(rows) >= count)
    return sorted(rows, key=lambda r: r["created_at"])


def assert_charged_per_response(rows: list[dict], done_events: list[dict]) -> None:
    assert len(rows) == len(done_events) and len({r["id"] for r in rows}) == len(rows)
    for row, done in zip(rows, done_events, strict=True):
        usage = done["response"]["usage"]
        assert (row["endpoint"], row["model"], row["status"], row["usage_source"], row["price_source"]) == (
            "realtime", MODEL, 200, "reported", "catalog")
        assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (
            usage["input_tokens"], usage["input_token_details"]["cached_tokens"], usage["output_tokens"])
        assert row["provider_cost"] == format_usd(to_nanos(price(done))) and to_nanos(price(done)) > 0


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_session_of_several_responses_is_charged_per_response_and_frames_pass_unchanged(gateways, mock, backend):
    gw = gateways(backend)
    sent: list[str] = []
    received: list[bytes] = []

    async def run():
        client = openai.AsyncOpenAI(api_key=gw.admin_key, base_url=forward(gw))
        async with client.realtime.connect(model=MODEL) as conn:
            received.append(await conn.recv_bytes())  # session.created
            await converse(conn, 3, sent, received)

    within(run())
    upstream = mock.sessions[-1]
    assert upstream.received == sent  # the client's frames, in order and unchanged
    assert received == [text.encode() for text in upstream.sent]  # and the provider's
    assert upstream.headers["authorization"] == f"Bearer {OPERATOR_KEY}"
    assert gw.admin_key not in json.dumps(upstream.headers)
    session_id = json.loads(received[0])["session"]["id"]
    assert_charged_per_response(session_rows(gw, session_id, 3), upstream.done_events)


def test_https_proxy_session_is_metered(gateways, mock, monkeypatch):
    """websockets >= 15 reads HTTPS_PROXY from the environment: the SDK's default wss://api.openai.com URL
    goes through the gateway as an unmodified app's would."""
    gw = gateways("sqlite")
    monkeypatch.setenv("HTTPS_PROXY", gw.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(gw.ca))
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    received: list[bytes] = []

    async def run():
        client = openai.AsyncOpenAI(api_key=gw.admin_key)
        async with client.realtime.connect(model=MODEL) as conn:
            received.append(await conn.recv_bytes())
            await converse(conn, 1, [], received)

    within(run())
    upstream = mock.sessions[-1]
    assert upstream.headers["authorization"] == f"Bearer {OPERATOR_KEY}" and upstream.path.startswith("/v1/realtime")
    assert_charged_per_response(session_rows(gw, json.loads(received[0])["session"]["id"], 1), upstream.done_events)


def test_azure_session_through_https_proxy_is_priced_as_its_deployments_model(gateways, mock, monkeypatch):
    """The SDK's Azure client: /openai/realtime?deployment=..., the key in `api-key`, which the gateway swaps."""
    gw = gateways("sqlite")
    monkeypatch.setenv("HTTPS_PROXY", gw.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(gw.ca))
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    received: list[bytes] = []

    async def run():
        client = openai.AsyncAzureOpenAI(azure_endpoint="https://myres.openai.azure.com", api_key=gw.admin_key,
                                         api_version="2025-04-01-preview")
        async with client.realtime.connect(model="rt-prod") as conn:
            received.append(await conn.recv_bytes())
            await converse(conn, 1, [], received)

    within(run())
    upstream = mock.sessions[-1]
    assert upstream.path.startswith("/openai/") and "deployment=rt-prod" in upstream.path
    assert upstream.headers["api-key"] == AZURE_KEY and gw.admin_key not in json.dumps(upstream.headers)
    [row] = session_rows(gw, json.loads(received[0])["session"]["id"], 1)
    assert (row["provider"], row["model"]) == ("azure", MODEL)
    expected = calc_price(extract_usage(upstream.done_events[0], provider_id="openai", api_flavor="realtime").usage,
                          MODEL, provider_id="azure").total_price
    assert row["provider_cost"] == format_usd(to_nanos(expected)) and to_nanos(expected) > 0


def test_browser_subprotocol_key_is_taken_out_and_the_operator_key_sent(gateways, mock):
    gw = gateways("sqlite")
    url = f"ws{gw.url[4:]}/v1/forward/realtime?u=https://api.openai.com/v1&model={MODEL}"

    async def run():
        async with websockets.connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{gw.admin_key}"],
                                      proxy=None) as ws:
            assert ws.subprotocol == "realtime"
            assert json.loads(await ws.recv())["type"] == "session.created"

    within(run())
    upstream = mock.sessions[-1]
    assert upstream.headers["sec-websocket-protocol"] == "realtime" and upstream.subprotocol == "realtime"
    assert upstream.headers["authorization"] == f"Bearer {OPERATOR_KEY}"
    assert gw.admin_key not in json.dumps(upstream.headers)


BROWSER_SESSION = """new Promise((resolve, reject) => {
  const ws = new WebSocket(%(url)s, ["realtime", "openai-insecure-api-key." + %(key)s]);
  const types = [];
  ws.onmessage = (message) => {
    const event = JSON.parse(message.data);
    types.push(event.type);
    if (event.type === "session.created") {
      ws.send(JSON.stringify(%(item)s));
      ws.send(JSON.stringify({type: "response.create"}));
    } else if (event.type === "response.done") {
      resolve({protocol: ws.protocol, types: types});
      ws.close(1000);
    }
  };
  ws.onerror = () => reject(new Error("the WebSocket failed"));
})"""


def test_a_browser_session_authenticates_with_its_subprotocol_and_is_metered(gateways, mock, tmp_path):
    """Chromium's own WebSocket (browsers cannot set Authorization): the key travels as a subprotocol."""
    from tests.chromium import Browser, chromium_or_skip

    chromium = chromium_or_skip()
    gw = gateways("sqlite")
    url = f"ws{gw.url[4:]}/v1/forward/realtime?u=https://api.openai.com/v1&model={MODEL}"
    with Browser(chromium, tmp_path / "profile") as browser:
        browser.goto(f"{gw.url}/healthz")
        answer = browser.evaluate(BROWSER_SESSION % {"url": json.dumps(url), "key": json.dumps(gw.admin_key),
                                                      "item": json.dumps(user_item("hello"))})
    assert answer["protocol"] == "realtime" and answer["types"][-1] == "response.done"
    upstream = mock.sessions[-1]
    assert upstream.headers["authorization"] == f"Bearer {OPERATOR_KEY}"
    assert upstream.headers["sec-websocket-protocol"] == "realtime" and gw.admin_key not in json.dumps(upstream.headers)
    session_id = json.loads(upstream.sent[0])["session"]["id"]
    assert_charged_per_response(session_rows(gw, session_id, 1), upstream.done_events)


def billed_customer(gw, balance_nanos: int) -> tuple[str, str]:
    """A new customer with the balance, billed at provider cost (a 0 % markup meter): (its id, a signed token)."""
    suffix = uuid.uuid4().hex[:8]
    gw.cli("customers", "create", f"cus-{suffix}", "--balance", format_usd(balance_nanos))
    gw.cli("meters", "create", f"m-{suffix}", "--rate-type", "percentage", "--unit", "tokens_1m",
           "--percentage", "0")
    token = gw.cli_json("token", "--secret-key", gw.admin_key, "--customer", f"cus-{suffix}", "--meter", f"m-{suffix}")
    return f"cus-{suffix}", token["token"]


async def cut_after_two_responses(gw, credential: str, received: list[bytes]):
    """A session that converses twice, then is closed by the gateway: the close frame it got."""
    client = openai.AsyncOpenAI(api_key=credential, base_url=forward(gw))
    async with client.realtime.connect(model=MODEL) as conn:
        received.append(await conn.recv_bytes())
        await converse(conn, 2, [], received)
        with pytest.raises(ConnectionClosed) as closed:
            await conn.recv_bytes()
        return closed.value.rcvd


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_session_is_cut_when_the_balance_cannot_hold_its_third_response(gateways, mock, backend):
    gw = gateways(backend)
    first, second = (to_nanos(price({"response": {"usage": usage}})) for usage in USAGES[:2])
    holds = [to_nanos(worst(u["input_tokens"] + u["output_tokens"])) for u in USAGES[:2]]  # of responses 2 and 3
    assert holds[0] < holds[1]
    balance = first + second + (holds[0] + holds[1]) // 2  # holds the second response, not the third
    customer, token = billed_customer(gw, balance)
    received: list[bytes] = []

    close = within(cut_after_two_responses(gw, token, received))
    error = json.loads(received[-1])
    assert error["type"] == "error" and error["error"]["code"] == "insufficient_balance"
    assert json.loads(received[-2])["type"] == "response.done"
    assert (close.code, close.reason) == (4402, "insufficient_balance")
    upstream = mock.sessions[-1]
    assert upstream.closed.wait(5) and upstream.close_code == 4402  # the provider's side is closed too
    rows = session_rows(gw, json.loads(received[0])["session"]["id"], 2)
    assert_charged_per_response(rows, upstream.done_events)
    assert [r["fee"] for r in rows] == [r["provider_cost"] for r in rows]
    assert gw.ledger.balance(customer) == format_usd(balance - first - second)
    assert len(gw.ledger.requests(customer=customer)) == 2


def audio_price(audio_tokens: int) -> Decimal:
    """What that much of the client's audio costs as input, by genai-prices."""
    usage = Usage(input_tokens=audio_tokens, input_audio_tokens=audio_tokens)
    return calc_price(usage, MODEL, provider_id="openai").total_price


SECOND_OF_AUDIO = base64.b64encode(bytes(48_000)).decode()  # 24 kHz pcm16: 10 input tokens


async def speak_until_cut(gw, credential: str, seconds: int, received: list[bytes]):
    """A session that appends `seconds` of audio a second at a time, commits it, asks for a response and reads till
    the gateway closes it: the close frame it sent."""
    client = openai.AsyncOpenAI(api_key=credential, base_url=forward(gw))
    async with client.realtime.connect(model=MODEL) as conn:
        received.append(await conn.recv_bytes())
        try:
            for _ in range(seconds):  # paced, as a client streaming speech: a burst may lose the close frame
                await conn.send_raw(json.dumps({"type": "input_audio_buffer.append", "audio": SECOND_OF_AUDIO}))
                await asyncio.sleep(0.02)
            await conn.send_raw(json.dumps({"type": "input_audio_buffer.commit"}))
            await conn.send_raw(json.dumps({"type": "response.create"}))
            while True:
                received.append(await conn.recv_bytes())
        except ConnectionClosed as closed:
            return closed.rcvd


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("payer", ["customer balance", "key spend limit"])
def test_audio_the_balance_or_spend_limit_cannot_hold_never_reaches_the_provider(gateways, mock, backend, payer):
    """The client's audio is held before it passes (the waiting hold topped up a few seconds ahead): once what is
    left cannot hold more, the append is dropped and the session closed with 4402, before any response could read
    it. Room is left for 275 tokens (27.5 s) of audio; the client sends 60 s."""
    gw = gateways(backend)
    room = 275
    first_hold = to_nanos(worst(0))  # the upgrade's: no conversation yet, MAX_OUTPUT of output
    allowed = first_hold + to_nanos(audio_price(room))
    if payer == "customer balance":
        customer, credential = billed_customer(gw, allowed)
        code = "insufficient_balance"
    else:
        credential = gw.cli_json("keys", "create", "--name", f"rt-{uuid.uuid4().hex[:8]}", "--spend-limit",
                                 format_usd(allowed), "--period", "total")["secret_key"]
        code = "spend_limit_reached"
    received: list[bytes] = []

    close = within(speak_until_cut(gw, credential, 60, received))
    assert (close.code, close.reason) == (4402, code)
    upstream = mock.sessions[-1]
    assert upstream.closed.wait(5) and upstream.close_code == 4402 and not upstream.done_events
    heard = upstream.audio_bytes // 4_800  # input tokens of the audio the provider got
    assert room - TOP_UP_CHARS // 4 < heard <= room  # all the room held (to one top-up's worth), and no more
    session_id = json.loads(received[0])["session"]["id"]
    assert not [r for r in gw.ledger.requests() if r["session_id"] == session_id]  # no response: nothing charged
    if payer == "customer balance":
        assert gw.ledger.balance(customer) == format_usd(allowed)


def test_session_is_cut_when_its_key_is_out_of_requests_per_minute(gateways, mock):
    """Every response is a request to the key's limits: with 2 a minute, the upgrade holds the first and the
    second takes the other; the third cannot be held."""
    gw = gateways("sqlite")
    key = gw.cli_json("keys", "create", "--name", f"rt-{uuid.uuid4().hex[:8]}", "--rpm", "2")["secret_key"]
    received: list[bytes] = []

    close = within(cut_after_two_responses(gw, key, received))
    assert json.loads(received[-1])["error"]["type"] == "rate_limit_error" and (close.code, close.reason) == (
        4429, json.loads(received[-1])["error"]["code"])
    assert len(session_rows(gw, json.loads(received[0])["session"]["id"], 2)) == 2


def test_a_client_sending_a_burst_when_its_session_is_refused_is_not_left_waiting(gateways, mock):
    """The refusal's close lands while the client's audio is still arriving (mitmproxy cancels the connection's
    reader mid-event: addons/proxy/mitmproxy_internals.py close_connections_cancelled_mid_event): the connection
    is closed, with the close frame or (its frame overtaken by the reset of unread data) without, never left
    open and unread."""
    gw = gateways("sqlite")

    async def burst():
        key = gw.cli_json("keys", "create", "--name", f"rt-{uuid.uuid4().hex[:8]}", "--rpm", "1")["secret_key"]
        client = openai.AsyncOpenAI(api_key=key, base_url=forward(gw))
        async with client.realtime.connect(model=MODEL) as conn:
            await conn.recv_bytes()
            with pytest.raises(ConnectionClosed) as closed:
                await conn.send_raw(json.dumps({"type": "response.create"}))  # its renewal is refused: 1 a minute
                for _ in range(40):
                    await conn.send_raw(json.dumps({"type": "input_audio_buffer.append", "audio": SECOND_OF_AUDIO}))
                while True:
                    await conn.recv_bytes()
            return closed.value.rcvd

    for _ in range(3):
        close = within(burst(), 15)
        assert close is None or (close.code, close.reason) == (4429, "rate_limited")


def test_response_cut_by_the_provider_is_recorded_as_estimated(gateways, mock):
    gw = gateways("sqlite")
    received: list[bytes] = []

    async def run():
        client = openai.AsyncOpenAI(api_key=gw.admin_key, base_url=forward(gw))
        async with client.realtime.connect(model=MODEL) as conn:
            received.append(await conn.recv_bytes())
            await converse(conn, 1, [], received)
            with pytest.raises(ConnectionClosed):
                await converse(conn, 1, [], received, response={"metadata": {"mock": "cut"}})

    within(run())
    rows = session_rows(gw, json.loads(received[0])["session"]["id"], 2)
    assert [r["usage_source"] for r in rows] == ["reported", "estimated"]
    cut = rows[1]
    assert cut["output_tokens"] > 0 and cut["error"] == "session closed before response.done"
    assert to_nanos(Decimal(cut["provider_cost"])) > 0


def test_a_client_leaving_mid_response_has_the_finished_ones_charged_and_the_cut_one_estimated(gateways, mock):
    gw = gateways("postgresql")
    received: list[bytes] = []

    async def run():
        client = openai.AsyncOpenAI(api_key=gw.admin_key, base_url=forward(gw))
        async with client.realtime.connect(model=MODEL) as conn:
            received.append(await conn.recv_bytes())
            await converse(conn, 1, [], received)
            await conn.send_raw(json.dumps({"type": "response.create", "response": {"metadata": {"mock": "stall"}}}))
            while json.loads(await conn.recv_bytes())["type"] != "response.output_audio_transcript.delta":
                pass
        # leaving the block closes the session (1000) before the response is done

    within(run())
    rows = session_rows(gw, json.loads(received[0])["session"]["id"], 2)
    assert_charged_per_response(rows[:1], mock.sessions[-1].done_events)
    assert (rows[1]["usage_source"], rows[1]["status"]) == ("estimated", None) and rows[1]["output_tokens"] > 0


# -- the parts, as units ---------------------------------------------------------------------------------


@pytest.mark.parametrize("offered, key, left", [
    ("realtime, openai-insecure-api-key.tg_sk_abc, openai-beta.realtime-v1", "tg_sk_abc",
     "realtime, openai-beta.realtime-v1"),
    ("openai-insecure-api-key.tg_sk_abc", "tg_sk_abc", None),
    ("realtime", None, "realtime"),
])
def test_subprotocol_key_is_taken_out_of_the_offered_subprotocols(offered, key, left):
    headers = http.Headers(sec_websocket_protocol=offered)
    assert take_subprotocol_key(headers) == key
    assert headers.get("sec-websocket-protocol") == left


@pytest.mark.parametrize("path, query, model", [
    ("/v1/realtime", "model=gpt-realtime", "gpt-realtime"),
    ("/openai/realtime", "api-version=2025-04-01-preview&deployment=rt-prod", "rt-prod"),  # Azure
    ("/openai/v1/realtime", "model=rt-prod", "rt-prod"),
])
def test_realtime_upgrades_are_read_per_response(path, query, model):
    reader = for_request("openai", "GET", path, query, b"", upgrade=True)
    assert isinstance(reader, RealtimeReader) and (reader.endpoint, reader.model, reader.basis) == (
        "realtime", model, "metered")
    assert not isinstance(for_request("openai", "GET", path, query, b""), RealtimeReader)  # no upgrade


def test_response_usage_is_read_from_response_done_with_its_audio_and_cached_tokens():
    session = RealtimeReader.from_upgrade("openai", "model=gpt-realtime")
    session.session_configured({"model": "gpt-realtime", "max_output_tokens": 300})
    reader = session.response(None)
    assert reader.max_output_tokens == 300
    reader.done({"id": "resp_1", "status": "completed", "usage": USAGES[1]})
    result = reader.result()
    assert (result.source, result.usage) == ("reported", TokenUsage(input_tokens=1600, cache_read_tokens=1088,
                                                                    output_tokens=300))
    assert result.media == MediaUsage(input_audio_tokens=1200, cache_audio_read_tokens=832, output_audio_tokens=240)
    session.context_after(result.usage)
    assert session.response(None).prompt_chars == (1600 + 300) * 4  # the next response reads all of it again


def test_a_response_cut_before_response_done_is_estimated_from_its_text_and_audio():
    reader = RealtimeReader.from_upgrade("openai", "model=gpt-realtime").response(None)
    assert reader.result().source == "none"
    reader.delta({"type": "response.output_text.delta", "delta": "Hello there"})  # 11 characters: 3 tokens
    reader.delta({"type": "response.output_audio.delta", "delta": base64.b64encode(bytes(48_000)).decode()})
    result = reader.result()  # one second of 24 kHz PCM16: 20 tokens
    assert (result.source, result.usage.output_tokens, result.media.output_audio_tokens) == ("estimated", 23, 20)


@pytest.mark.parametrize("error, code", [(PaymentRequired("insufficient_balance", "m"), 4402),
                                         (TooManyRequests("rate_limited", "m"), 4429)])
def test_a_refusal_is_an_openai_shaped_error_event_and_a_close_code_saying_why(error, code):
    event = json.loads(error_event(error))
    assert event["type"] == "error" and event["error"]["code"] == error.code and event["error"]["message"] == "m"
    assert close_code(error) == code


def test_a_subprotocol_key_is_redacted_from_shown_flows_the_other_subprotocols_kept():
    request = http.Request.make("GET", "https://api.openai.com/v1/realtime?model=gpt-realtime", headers={
        "sec-websocket-protocol": "realtime, openai-insecure-api-key.tg_sk_0123456789abcdef"})
    found = redact_request(request, frozenset(HEADERS), frozenset())
    assert found == ["tg_sk_0123456789abcdef"]
    assert request.headers["sec-websocket-protocol"] == f"realtime, openai-insecure-api-key.{REDACTED}"
    assert redact_request(request, frozenset(HEADERS), frozenset()) == []  # once only


class _Writer:
    failing = False

    def submit(self, record) -> None:
        pass


@pytest.fixture
def cashier(monkeypatch):
    """A Cashier on in-process holds whose `admit` only notes the request it admits."""
    teller = Cashier(BillingSettings(), keys=None, writer=_Writer(), freshness=1.0)
    teller.admitted = []

    async def admit(request_id, *args, **kwargs):
        teller.admitted.append(request_id)

    monkeypatch.setattr(teller, "admit", admit)
    return teller


def test_renew_holds_the_next_response_once_the_last_ones_charge_is_committed(cashier):
    async def scenario():
        cashier.open_holds["req_1"] = (100, math.inf)
        renewal = asyncio.ensure_future(cashier.renew("req_1", "req_2", None, None, None))
        await asyncio.sleep(0.05)
        assert cashier.admitted == []  # its hold and charge would both count against the balance
        cashier.settled(CommitReport(request_ids=["req_1"]))
        await asyncio.wait_for(renewal, 1)
        assert cashier.admitted == ["req_2"] and not cashier._commit_waits

    asyncio.run(scenario())


@pytest.mark.parametrize("failing, held", [(True, True), (False, False)])
def test_renew_waits_for_no_commit_in_a_ledger_outage_or_without_a_hold(cashier, failing, held):
    cashier.writer.failing = failing
    if held:
        cashier.open_holds["req_1"] = (100, math.inf)
    asyncio.run(asyncio.wait_for(cashier.renew("req_1", "req_2", None, None, None, wait=30), 1))
    assert cashier.admitted == ["req_2"]


class _Teller:
    """What RealtimeSessions asks of the Cashier, noted."""

    settings = BillingSettings(hold_ttl_seconds=600)

    def __init__(self):
        self.calls = []

    async def admit(self, request_id, *args):
        self.calls.append(("admit", request_id))

    def release(self, request_id):
        self.calls.append(("release", request_id))
        return asyncio.ensure_future(asyncio.sleep(0))


def test_a_hold_left_idle_for_half_its_life_is_given_back_and_taken_afresh_when_a_response_starts():
    teller = _Teller()
    sessions = RealtimeSessions(lambda: teller, record=None, cost_of=lambda upgrade: None, keep_messages=lambda: True)
    upgrade = Pending("req_upgrade", 0.0, None, None, RealtimeReader.from_upgrade("openai", "model=gpt-realtime"), None)

    async def scenario():
        fresh = Session(upgrade, "sess_1", "req_upgrade")
        await sessions._response_started(None, fresh, {"id": "resp_1"})
        idle = Session(upgrade, "sess_2", "req_idle", held_since=time.monotonic() - 301)
        await sessions._response_started(None, idle, {"id": "resp_2"})
        return fresh, idle

    fresh, idle = asyncio.run(scenario())
    assert fresh.responses["resp_1"].request_id == "req_upgrade"  # the hold the upgrade took
    [release, (verb, renewed)] = teller.calls
    assert release == ("release", "req_idle") and verb == "admit" and idle.responses["resp_2"].request_id == renewed


def append(seconds: float) -> dict:
    return {"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(int(48_000 * seconds))).decode()}


@pytest.mark.parametrize("event, chars", [
    (append(1), 40),  # 10 input tokens a second of 24 kHz pcm16, four characters each
    (append(0.05), 4),  # half a token: one
    (user_item("hello"), 5),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_audio", "audio": append(2)["audio"]}, {"type": "input_text", "text": "and this"}]}}, 88),
    ({"type": "conversation.item.create", "item": {"type": "function_call_output", "output": "{\"t\": 21}"}}, 9),
    ({"type": "response.create", "response": {"instructions": "be brief", "input": [user_item("hi")["item"]]}}, 10),
    ({"type": "response.create", "response": {"tools": [{"type": "function", "name": "f"}]}}, 32),
    ({"type": "session.update", "session": {"instructions": "x" * 100}}, 100),  # every response reads them
    ({"type": "session.update", "session": {"instructions": "be brief", "tools": [
        {"type": "function", "name": "weather", "parameters": {"type": "object"}}]}}, 8 + 69),
    ({"type": "session.update", "session": {"voice": "marin", "tools": []}}, 0),
    ({"type": "input_audio_buffer.append", "audio": 7}, 0),  # junk adds nothing
])
def test_client_events_add_their_input_as_the_cashier_counts_it(event, chars):
    assert input_chars(event, 48_000) == chars


def test_g711_audio_is_counted_at_its_own_byte_rate():
    reader = RealtimeReader.from_upgrade("openai", "model=gpt-realtime")
    reader.session_configured({"audio": {"input": {"format": {"type": "audio/pcmu"}}}})
    assert input_chars({"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(8_000)).decode()},
                       reader.input_audio_bytes_per_second) == 40  # a second of G.711: 8,000 bytes


class _ToppingTeller(_Teller):
    def __init__(self, refuse_after: int | None = None):
        super().__init__()
        self.refuse_after = refuse_after

    async def top_up(self, request_id, plan, reader, cost_of, extra_tokens):
        if self.refuse_after is not None and len([c for c in self.calls if c[0] == "top_up"]) >= self.refuse_after:
            raise PaymentRequired("insufficient_balance", "customer balance available is 0.00 USD")
        self.calls.append(("top_up", request_id, extra_tokens))


class _Message:
    def __init__(self):
        self.dropped = False

    def drop(self):
        self.dropped = True


def test_input_is_held_under_the_waiting_hold_then_under_the_running_response_and_read_by_the_next():
    """Appended audio tops up the waiting hold a few seconds ahead; while a response runs, that response's hold,
    and the response after it reads the audio as input (context_after keeps it)."""
    teller = _ToppingTeller()
    sessions = RealtimeSessions(lambda: teller, record=lambda *a: None, cost_of=lambda upgrade: None,
                                keep_messages=lambda: True)
    upgrade = Pending("req_upgrade", 0.0, None, None, RealtimeReader.from_upgrade("openai", "model=gpt-realtime"), None)
    session = Session(upgrade, "sess_1", "req_upgrade")
    reader = session.reader
    ahead = TOP_UP_CHARS // 4  # tokens a top-up holds at least

    async def scenario():
        for _ in range(3):  # 3 s: 30 tokens, within the first top-up
            await sessions._client_event(None, session, _Message(), append(1))
        assert teller.calls == [("top_up", "req_upgrade", ahead)] and reader.prompt_chars == 120
        await sessions._client_event(None, session, _Message(), append(ahead / 10))  # past it: topped up again
        assert teller.calls[-1] == ("top_up", "req_upgrade", ahead) and reader.prompt_chars == 120 + ahead * 4
        await sessions._response_started(None, session, {"id": "resp_1"})
        await sessions._client_event(None, session, _Message(), append(10))  # 100 tokens while resp_1 runs
        assert teller.calls[-1] == ("top_up", "req_upgrade", 100 - (2 * ahead - 30 - ahead))
        assert reader.pending_chars == 400
        reader.context_after(TokenUsage(input_tokens=1_000, output_tokens=200))
        assert (reader.prompt_chars, reader.pending_chars) == (1_200 * 4 + 400, 0)

    asyncio.run(scenario())


def test_input_a_top_up_cannot_hold_is_dropped_and_the_session_refused(monkeypatch):
    teller = _ToppingTeller(refuse_after=1)
    sessions = RealtimeSessions(lambda: teller, record=lambda *a: None, cost_of=lambda upgrade: None,
                                keep_messages=lambda: True)
    refused = []
    monkeypatch.setattr(sessions, "_refuse", lambda flow, session, error: refused.append(error.code))
    upgrade = Pending("req_upgrade", 0.0, None, None, RealtimeReader.from_upgrade("openai", "model=gpt-realtime"), None)
    session = Session(upgrade, "sess_1", "req_upgrade")
    kept, dropped = _Message(), _Message()

    async def scenario():
        await sessions._client_event(None, session, kept, append(5))
        await sessions._client_event(None, session, dropped, append(1))

    asyncio.run(scenario())
    assert (kept.dropped, dropped.dropped, refused) == (False, True, ["insufficient_balance"])
    assert session.reader.prompt_chars == 200  # the dropped audio is not in the conversation
