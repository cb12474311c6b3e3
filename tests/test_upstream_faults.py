"""Upstream and client faults, injected end to end through the real proxy (the shared gateway's
ledgers; the streams and cuts on both launchers too): what the client sees, the one ledger row the fault leaves, the paying customer's hold
released and `tollgate audit` clean. Then the timeouts (addons/proxy/upstream_timeouts.py) and retries
(addons/proxy/upstream_retries.py), on a second gateway with tight limits.

Ledger rows are read in this process (tests/ledger_reads.py), and the CLI's views run inside it: as a
subprocess the CLI costs about a second a call.
"""

from __future__ import annotations

import errno
import io
import json
import socket
import time
import uuid
from contextlib import redirect_stdout
from decimal import Decimal

import anthropic
import httpx
import httpx2  # the SDKs' transport
import openai
import pytest

from addons.auth.credentials import ForwardToken, encode_forward_token
from addons.cli import main as cli
from addons.ledger.models import database
from tests.conftest import MOCK_MODEL_PRICE
from tests.harness import GatewayProcess
from tests.ledger_reads import wait_for
from tests.mock_provider import GARBAGE_EVENTS, RETRY_AFTER

CHAT = "/v1/forward?u=https://api.openai.com/v1/chat/completions"
OPENAI_BASE = "/v1/forward?u=https://api.openai.com/v1/"
MESSAGES = [{"role": "user", "content": "hello there"}]  # 11 characters: 3 tokens when estimated
FEE = "0.01"  # what the test customers pay per billable request
BROKEN = (httpx.HTTPError, httpx2.HTTPError, openai.APIConnectionError, anthropic.APIConnectionError)
# The tight gateway's limits; anthropic there waits for its first byte as long as `total` allows.
LIMITS = {"connect": 0.5, "first_byte": 0.6, "idle": 0.6, "total": 1.5}


# -- the ledger, a paying customer, requests ------------------------------------------------------

def tollgate(gw, *args: str):
    """`tollgate ARGS --json` on the gateway's ledger, in this process."""
    out = io.StringIO()
    try:
        with redirect_stdout(out):
            cli.main([*args, "--json", "--database-url", gw.database_url])
    except SystemExit as e:
        raise AssertionError(f"tollgate {' '.join(args)} exited {e.code}: {out.getvalue()}") from None
    finally:
        database.close()
        database.initialize(None)
    return json.loads(out.getvalue())


def ledger_row(gw, request_id: str, timeout: float = 10.0) -> dict:
    """The request's one row (its id is the primary key), once the gateway's writer has committed it."""
    return gw.request_row(request_id, timeout)


_METERS: dict[str, str] = {}


class Customer:
    """A customer billed FEE per billable request, through a forward token of its own."""

    def __init__(self, gw, balance: str):
        if gw.database_url not in _METERS:
            _METERS[gw.database_url] = slug = f"per-request-{uuid.uuid4().hex[:8]}"
            tollgate(gw, "meters", "create", slug, "--rate-type", "fixed", "--unit", "requests", "--tier", f"0:{FEE}")
        self.gw, self.id = gw, f"cus-{uuid.uuid4().hex[:8]}"
        self.log_from = gw.log.stat().st_size
        tollgate(gw, "customers", "create", self.id, "--balance", balance)
        self.key = encode_forward_token(ForwardToken(gw.admin_key, self.id, _METERS[gw.database_url]))
        self.headers = {"authorization": f"Bearer {self.key}"}

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(api_key=self.key, base_url=self.gw.url + OPENAI_BASE, max_retries=0)

    def assert_settled(self) -> None:
        """The fault's hold is gone, in the ledger's mirror and in the proxy: a request that needs the whole
        balance left (one FEE) is admitted. Every balance still equals the sum of its entries, and no
        addon failed meanwhile."""
        shown = tollgate(self.gw, "customers", "show", self.id)
        assert shown["holds"] == {"count": 0, "amount": "0.00"} and Decimal(shown["balance"]) == Decimal(FEE)
        # the proxy drops the hold just after the ledger commits
        follow_up = wait_for(lambda: post(self.gw, CHAT, self.headers, "gpt-4o-mini"), 3, "the hold to be dropped",
                             until=lambda response: response.status_code != 402)
        assert follow_up.status_code == 200, follow_up.text
        # `tollgate audit` reads entries and balances in two statements: audit once nothing is being committed
        ledger_row(self.gw, follow_up.headers["x-lava-request-id"])
        assert self.gw.ledger.audit_ok()
        with self.gw.log.open("rb") as log:
            log.seek(self.log_from)
            written = log.read().decode(errors="replace")
        assert "Addon error" not in written and "Traceback" not in written, written


def post(gw, path, headers, model, **body) -> httpx.Response:
    with httpx.Client(base_url=gw.url, trust_env=False, timeout=15) as client:
        return client.post(path, json={"model": model, "messages": MESSAGES, **body}, headers=headers)


def stream(gw, path, headers, model, **body) -> tuple[str, bytes, Exception | None]:
    """(request id, the bytes the client got, how the stream broke off or None)."""
    received, broken = b"", None
    with httpx.Client(base_url=gw.url, trust_env=False, timeout=15) as client:
        with client.stream("POST", path, json={"model": model, "messages": MESSAGES, "stream": True, **body},
                           headers=headers) as response:
            assert response.status_code == 200, response.read()
            try:
                for chunk in response.iter_raw():
                    received += chunk
            except httpx.HTTPError as e:
                broken = e
    return response.headers["x-lava-request-id"], received, broken


def delivered_tokens(received: bytes) -> int:
    """Output tokens the meter estimates from the chat chunks the client received (4 characters a token)."""
    chars = 0
    for line in received.split(b"\n"):
        if line.startswith(b"data: {"):
            chars += sum(len(c["delta"].get("content") or "") for c in json.loads(line[6:]).get("choices", []))
    return -(-chars // 4)


def assert_gateway_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.headers["x-lava-request-id"].startswith("req_")


def assert_fields(row: dict, **expected) -> None:
    assert {k: row[k] for k in expected} == expected, row


def cost(row: dict) -> str:
    """Estimated usage priced at the mock models' $1 / $2 per million tokens."""
    return f"{Decimal(row['input_tokens'] * 1 + row['output_tokens'] * 2) / 10**6:f}"


def closed_by_gateway(rec, timeout: float = 5.0) -> bool:
    """The mock saw the gateway close the connection before its response was complete."""
    deadline = time.monotonic() + timeout
    while rec.peer_closed_at is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return rec.peer_closed_at is not None and not rec.complete


@pytest.fixture(autouse=True)
def _no_error_left(mock):
    yield
    mock.next_error = None  # a test that failed before its request used it


@pytest.fixture
def held(mock):
    """mock-slow and mock-hang wait for the test: nothing is released until it ends."""
    mock.release_stream.clear()
    yield
    mock.release_stream.set()


# -- 1, 3-8: faults on the shared gateway (default timeouts, no retries) --------------------------

def test_connect_failure_is_502_recorded_without_charge(gateway):
    payer = Customer(gateway, FEE)
    response = post(gateway, "/v1/forward?u=https://api.mistral.ai/v1/chat/completions", payer.headers,
                    "mistral-small-latest")  # the shared gateway's mistral is a port nothing listens on
    assert_gateway_error(response, 502, "upstream_unreachable")
    row = ledger_row(gateway, response.headers["x-lava-request-id"])
    assert_fields(row, status=None, streamed=False, usage_source="none", provider_cost="0.00", charged="0.00",
                  fee="0.00")
    assert row["error"].startswith(f"[Errno {errno.ECONNREFUSED}]")
    payer.assert_settled()


@pytest.mark.launchers
@pytest.mark.parametrize("model", ["mock-cut", "mock-reset"])  # FIN, RST
def test_provider_breaking_off_mid_stream_is_recorded_estimated_and_charged(gateway, model):
    payer, text = Customer(gateway, "0.02"), []
    with payer.openai().chat.completions.with_streaming_response.create(
            model=model, messages=MESSAGES, stream=True) as raw:
        request_id = raw.headers["x-lava-request-id"]
        with pytest.raises(BROKEN):
            for chunk in raw.parse():
                text += [c.delta.content or "" for c in chunk.choices]
    assert "".join(text) == "Hello from"  # what the provider sent before it broke off
    row = ledger_row(gateway, request_id)
    assert_fields(row, status=200, streamed=True, usage_source="estimated", input_tokens=3, output_tokens=3,
                  provider_cost="0.000009", charged="0.000009", fee=FEE)
    assert "peer closed connection" in row["error"]
    payer.assert_settled()


@pytest.mark.launchers
def test_malformed_sse_passes_through_untouched_and_is_estimated(gateway, mock):
    payer = Customer(gateway, "0.02")
    request_id, received, broken = stream(gateway, CHAT, payer.headers, "mock-garbage",
                                          stream_options={"include_usage": True})
    assert broken is None and received == mock.last.response_body  # junk and all, byte for byte
    assert all(junk in received for junk in GARBAGE_EVENTS)
    row = ledger_row(gateway, request_id)
    # "Hello from the mock." (20 characters) -> 5 tokens; the usage event's JSON is broken
    assert_fields(row, status=200, usage_source="estimated", input_tokens=3, output_tokens=5,
                  provider_cost="0.000013", charged="0.000013", fee=FEE, error=None)
    payer.assert_settled()


def test_truncated_json_body_passes_through_as_it_is(gateway, mock):
    payer = Customer(gateway, "0.02")
    response = post(gateway, CHAT, payer.headers, "mock-truncated")
    assert response.status_code == 200 and response.content == mock.last.response_body
    with pytest.raises(json.JSONDecodeError):
        response.json()
    row = ledger_row(gateway, response.headers["x-lava-request-id"])
    # a 200 is billable (the meter's fee); its usage cannot be read, so the provider cost is none
    assert_fields(row, status=200, usage_source="none", provider_cost="0.00", charged="0.00", fee=FEE, error=None)
    payer.assert_settled()


@pytest.mark.launchers
def test_body_cut_short_of_its_content_length_is_502_without_charge(gateway):
    payer = Customer(gateway, FEE)
    response = post(gateway, CHAT, payer.headers, "mock-cut")  # non-streamed: mitmproxy buffers it
    assert_gateway_error(response, 502, "upstream_unreachable")
    row = ledger_row(gateway, response.headers["x-lava-request-id"])
    assert_fields(row, status=None, usage_source="none", charged="0.00", fee="0.00")
    assert "expected" in row["error"]  # "... received N bytes, expected M"
    payer.assert_settled()


@pytest.mark.parametrize("status", [500, 503])
def test_provider_5xx_passes_through_without_charge(gateway, mock, status):
    payer = Customer(gateway, FEE)
    with pytest.raises(openai.InternalServerError) as raised:
        payer.openai().chat.completions.create(model=f"mock-error-{status}", messages=MESSAGES)
    response = raised.value.response
    assert response.status_code == status and response.content == mock.last.response_body
    row = ledger_row(gateway, response.headers["x-lava-request-id"])
    assert_fields(row, status=status, usage_source="none", charged="0.00", fee="0.00", error=None)
    payer.assert_settled()


def test_rate_limit_passes_through_with_retry_after_without_charge(gateway, mock):
    payer = Customer(gateway, FEE)
    with pytest.raises(openai.RateLimitError) as raised:
        payer.openai().chat.completions.create(model="mock-error-429", messages=MESSAGES)
    response = raised.value.response
    assert response.headers["retry-after"] == RETRY_AFTER and response.content == mock.last.response_body
    row = ledger_row(gateway, response.headers["x-lava-request-id"])
    assert_fields(row, status=429, usage_source="none", charged="0.00", fee="0.00")
    payer.assert_settled()


@pytest.mark.launchers
def test_client_leaving_mid_stream_cancels_the_provider_request(gateway, mock, held):
    payer = Customer(gateway, "0.02")
    with httpx.Client(base_url=gateway.url, trust_env=False, timeout=15) as client:
        with client.stream("POST", CHAT, json={"model": "mock-slow", "messages": MESSAGES, "stream": True},
                           headers=payer.headers) as response:
            request_id, received, chunks = response.headers["x-lava-request-id"], b"", response.iter_raw()
            while b"Hello" not in received:
                received += next(chunks)
    # the client is gone while the provider is between two events
    assert closed_by_gateway(mock.last)
    row = ledger_row(gateway, request_id)
    assert_fields(row, status=200, streamed=True, usage_source="estimated", input_tokens=3, output_tokens=2,
                  provider_cost="0.000007", charged="0.000007", fee=FEE, error="Client disconnected.")
    payer.assert_settled()


# -- 2 and the timeouts: a gateway with tight limits ----------------------------------------------

@pytest.fixture(scope="module")
def blackhole():
    """A port whose accept queue is full: a connect to it is never answered (the SYNs are dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname())
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    filler.close()
    listener.close()


@pytest.fixture(scope="module", params=["tollgate-proxy", "mitmdump"])
def strict(request, mock, blackhole, tmp_path_factory):
    """Timeouts of LIMITS, 2 retries waiting at most 600 ms; its mistral never answers a connect. Timeouts and
    retries are the hooks' work, so this runs on the launcher matrix (on SQLite), not the backend one."""
    tmp = tmp_path_factory.mktemp(f"strict-{request.param}")
    gw = GatewayProcess(
        tmp, f"sqlite:///{tmp}/ledger.db", {"openai": mock.url, "anthropic": mock.url, "mistral": blackhole},
        prices=[MOCK_MODEL_PRICE], launcher=request.param,
        settings={"timeouts": LIMITS}, providers={"anthropic": {"timeouts": {"first_byte": None}}},
        options={"tollgate_upstream_retries": 2, "tollgate_upstream_retry_max_wait_ms": 600},
    )
    gw.fund("100")
    gw.start()
    yield gw
    gw.stop()


def test_connect_timeout_is_504_without_charge(strict):
    payer = Customer(strict, FEE)
    started = time.monotonic()
    response = post(strict, "/v1/forward?u=https://api.mistral.ai/v1/chat/completions", payer.headers,
                    "mistral-small-latest")
    assert_gateway_error(response, 504, "upstream_timeout")
    assert time.monotonic() - started >= LIMITS["connect"]
    row = ledger_row(strict, response.headers["x-lava-request-id"])
    assert_fields(row, status=None, usage_source="none", charged="0.00", fee="0.00",
                  error="upstream connect timed out after 0.5 s")
    payer.assert_settled()


def test_no_response_headers_in_time_is_504_without_charge(strict, mock, held):
    payer = Customer(strict, FEE)
    response = post(strict, CHAT, payer.headers, "mock-hang")
    assert_gateway_error(response, 504, "upstream_timeout")
    assert closed_by_gateway(mock.last)
    row = ledger_row(strict, response.headers["x-lava-request-id"])
    assert_fields(row, status=None, usage_source="none", charged="0.00", fee="0.00",
                  error="upstream timed out: no response headers within 0.6 s")
    payer.assert_settled()


def test_stalled_stream_is_cut_after_the_idle_timeout(strict, mock, held):
    payer = Customer(strict, "0.02")
    request_id, received, broken = stream(strict, CHAT, payer.headers, "mock-slow")
    assert broken is not None and b"Hello" in received
    assert closed_by_gateway(mock.last)
    row = ledger_row(strict, request_id)
    assert_fields(row, status=200, streamed=True, usage_source="estimated", input_tokens=3, output_tokens=2,
                  provider_cost="0.000007", charged="0.000007", fee=FEE, error="upstream timed out: no data for 0.6 s")
    payer.assert_settled()


@pytest.fixture
def drip(mock):
    mock.chunk_delay = 0.25  # 9 events: the last content at 1.25 s, the usage at 1.75 s
    yield
    mock.chunk_delay = 0.0


def test_stream_running_past_the_total_timeout_is_cut(strict, mock, drip):
    payer = Customer(strict, "0.02")
    request_id, received, broken = stream(strict, CHAT, payer.headers, "mock-drip")
    assert broken is not None and b"[DONE]" not in received
    assert closed_by_gateway(mock.last)
    row = ledger_row(strict, request_id)
    assert_fields(row, status=200, streamed=True, usage_source="estimated", input_tokens=3,
                  output_tokens=delivered_tokens(received), charged=cost(row), fee=FEE,
                  error="upstream timed out: response not complete within 1.5 s")
    assert row["provider_cost"] == cost(row)
    payer.assert_settled()


def test_a_providers_own_timeouts_override_the_gateways(strict, mock, held):
    """anthropic has no first-byte limit there: a silent provider is cut by `total` instead."""
    payer = Customer(strict, FEE)
    client = anthropic.Anthropic(api_key=payer.key, base_url=f"{strict.url}/v1/forward?u=https://api.anthropic.com",
                                 max_retries=0)
    started = time.monotonic()
    with pytest.raises(anthropic.APIStatusError) as raised:
        client.messages.create(model="mock-hang", max_tokens=8, messages=MESSAGES)
    assert time.monotonic() - started >= LIMITS["total"]
    assert_gateway_error(raised.value.response, 504, "upstream_timeout")
    assert closed_by_gateway(mock.last)
    row = ledger_row(strict, raised.value.response.headers["x-lava-request-id"])
    assert_fields(row, status=None, charged="0.00", fee="0.00",
                  error="upstream timed out: response not complete within 1.5 s")
    payer.assert_settled()


# -- retries (the tight gateway retries twice) ----------------------------------------------------

def admin(gw) -> openai.OpenAI:
    return openai.OpenAI(api_key=gw.admin_key, base_url=gw.url + OPENAI_BASE, max_retries=0)


@pytest.mark.parametrize("error", [(500,), (503,), (429, None, {"retry-after": "0.1"})])
def test_a_provider_error_is_retried_before_the_client_sees_it(strict, mock, error):
    before = len(mock.requests)
    mock.next_error = error  # the next request only: the retry gets the real answer
    raw = admin(strict).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == "Hello from the mock."
    assert [r.status for r in mock.requests[before:]] == [error[0], 200]
    row = ledger_row(strict, raw.headers["x-lava-request-id"])
    assert_fields(row, status=200, usage_source="reported", input_tokens=17, output_tokens=9, error=None)
    assert tollgate(strict, "audit")["ok"]


def test_retries_give_up_with_the_providers_last_answer(strict, mock):
    before = len(mock.requests)
    with pytest.raises(openai.InternalServerError) as raised:
        admin(strict).chat.completions.create(model="mock-error-503", messages=MESSAGES)
    assert raised.value.status_code == 503 and len(mock.requests) - before == 3  # 1 + 2 retries
    row = ledger_row(strict, raised.value.response.headers["x-lava-request-id"])
    assert_fields(row, status=503, charged="0.00")
    assert tollgate(strict, "audit")["ok"]


def test_a_longer_retry_after_than_the_max_wait_is_passed_on_at_once(strict, mock):
    before = len(mock.requests)
    with pytest.raises(openai.RateLimitError) as raised:  # the mock asks for 1 s, more than 600 ms
        admin(strict).chat.completions.create(model="mock-error-429", messages=MESSAGES)
    assert raised.value.response.headers["retry-after"] == RETRY_AFTER and len(mock.requests) - before == 1


def test_a_stream_is_never_retried(strict, mock):
    before = len(mock.requests)
    mock.next_error = (500,)
    with pytest.raises(openai.InternalServerError):
        admin(strict).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert len(mock.requests) - before == 1
