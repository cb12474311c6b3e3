import asyncio
import json
import re
from urllib.parse import quote

import pytest
from genai_prices import data_snapshot
from mitmproxy import http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.exceptions import OptionsError
from mitmproxy.test import taddons, tflow, tutils

from addons.billing.hold_stores import FailoverHolds
from addons.ledger.accounts import ensure_account, wallet_balance
from addons.ledger.models import RequestRow, database
from addons.proxy import error_pages
from addons.proxy.gateway_addon import Gateway, StreamTap
from addons.usage.readers import UsageReader, for_request
from tests.harness import shared_redis
from tests.inprocess_gateway import CHAT, PROVIDER_KEY, STREAM_CHAT, api_flow, run, secret_key


def error_of(flow):
    assert flow.response.headers["content-type"] == "application/json"
    assert flow.response.headers["x-lava-request-id"].startswith("req_")
    assert flow.response.headers["x-tollgate-request-id"] == flow.response.headers["x-lava-request-id"]
    return flow.response.status_code, json.loads(flow.response.content)["error"]["code"]


def test_configure_confines_interception(gw):
    """allow_hosts is the catalog's patterns as one alternation: a host is let in exactly when one of them matches."""
    [option] = gw.tctx.options.allow_hosts
    assert r"(?:^api\.openai\.com:\d+$)" in option
    patterns = gw.catalog.allow_hosts_patterns()
    for host in ("api.openai.com:443", "API.Anthropic.com:443", "myres.openai.azure.com:443", "example.com:443",
                 "api.openai.com.evil.test:443", "xapi.openai.com:443", "127.0.0.1:443"):
        assert bool(re.search(option, host, re.IGNORECASE)) == any(re.search(p, host, re.IGNORECASE) for p in patterns)
    assert re.search(option, "api.openai.com:443") and not re.search(option, "example.com:443")
    assert gw.tctx.options.connection_strategy == "lazy"


def test_configure_keeps_the_operators_own_host_filter(tmp_path, monkeypatch):
    monkeypatch.setenv("TOLLGATE_DATABASE_URL", f"sqlite:///{tmp_path}/l.db")
    monkeypatch.delenv("TOLLGATE_CONFIG", raising=False)
    gateway = Gateway()
    with taddons.context(Proxyserver(), gateway) as tctx:
        tctx.options.update(ignore_hosts=["^example\\.com:"])
        tctx.configure(gateway)
        assert tctx.options.allow_hosts == [] and tctx.options.ignore_hosts == ["^example\\.com:"]
        assert tctx.options.connection_strategy == "lazy"
        gateway.done()
    database.close()


def test_the_price_data_is_read_when_the_gateway_starts_not_by_its_first_request(tmp_path, monkeypatch):
    """genai-prices reads its bundled data on first use: about 110 ms of the event loop, in the first request's
    time."""
    monkeypatch.setenv("TOLLGATE_DATABASE_URL", f"sqlite:///{tmp_path}/l.db")
    monkeypatch.delenv("TOLLGATE_CONFIG", raising=False)
    data_snapshot._bundled_snapshot.cache_clear()
    gateway = Gateway()
    with taddons.context(Proxyserver(), gateway) as tctx:
        tctx.configure(gateway)
        assert data_snapshot._bundled_snapshot.cache_info().currsize == 1
        gateway.done()
    database.close()


@pytest.mark.parametrize(
    "options",
    [
        {"tollgate_cache_ttl_ms": -1},
        {"tollgate_database_url": "sqlit:///typo.db"},
        {"tollgate_database_url": "postgresql://postgres@127.0.0.1:1/nowhere"},
    ],
)
def test_bad_options_are_refused(gw, options):
    with pytest.raises(OptionsError):
        gw.tctx.configure(gw, **options)
    assert (gw.tctx.options.tollgate_cache_ttl_ms, gw.tctx.options.tollgate_database_url) == (1000, "")  # rolled back
    assert run(gw, api_flow([("authorization", f"Bearer {secret_key()}")])).response is None  # and still serving


@pytest.mark.parametrize("url, says", [("http://:hunter2@cache:6379/0", "starts with redis://"),
                                       ("redis://:hunter2@cache:port/0", "Port could not be cast")])
def test_a_redis_url_that_is_not_one_is_refused_without_echoing_it(gw, url, says):
    with pytest.raises(OptionsError, match=f"^tollgate_redis_url: .*{says}") as refused:
        gw.tctx.configure(gw, tollgate_redis_url=url)
    assert "hunter2" not in str(refused.value)
    assert gw.tctx.options.tollgate_redis_url == ""  # rolled back
    assert gw.cashier.keys is gw.keys and not isinstance(gw.cashier.holds, FailoverHolds)  # as before, in process
    assert run(gw, api_flow([("authorization", f"Bearer {secret_key()}")])).response is None  # and still serving


@pytest.mark.parametrize("kwargs", [{"resp": True}, {"err": True}, {"live": False}])
def test_already_handled(gw, kwargs):
    flow = tflow.tflow(req=api_flow().request, **kwargs)
    before = flow.get_state()
    run(gw, flow)
    assert flow.get_state() == before


def test_non_catalog_host_is_untouched(gw):
    flow = api_flow([("authorization", f"Bearer {secret_key()}")], host="example.com")
    before = flow.get_state()
    run(gw, flow)
    assert flow.get_state() == before and flow.id not in gw.pending


@pytest.mark.parametrize(
    "headers, status, code",
    [
        ([], 401, "missing_credential"),
        ([("authorization", "Bearer tg_sk_" + "x" * 43)], 401, "invalid_credential"),
        ([("authorization", "Bearer eyJnot-a-token")], 400, "invalid_forward_token"),
        ([("authorization", "Bearer not-a-token")], 401, "invalid_credential"),  # a provider key, unregistered
    ],
)
def test_refused_credentials(gw, headers, status, code):
    assert error_of(run(gw, api_flow(headers))) == (status, code)


@pytest.mark.parametrize(
    "balance, revoked, status, code",
    [(0, False, 402, "insufficient_balance"), (10**9, True, 403, "key_revoked")],
)
def test_refused_keys(gw, balance, revoked, status, code):
    flow = run(gw, api_flow([("x-api-key", secret_key(balance, revoked))]))
    assert error_of(flow) == (status, code)


def test_missing_provider_key_is_503(gw, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    flow = run(gw, api_flow([("authorization", f"Bearer {secret_key()}")]))
    assert error_of(flow) == (503, "provider_key_missing")
    assert b"tg_sk_" not in flow.response.content


def test_bad_metadata_is_400(gw):
    flow = run(gw, api_flow([("authorization", f"Bearer {secret_key()}"), ("x-lava-metadata", '{"k": 1}')]))
    assert error_of(flow) == (400, "invalid_metadata")


def test_valid_key_is_swapped_for_the_provider_key(gw):
    secret = secret_key()
    headers = [("authorization", f"Bearer {secret}"), ("x-api-key", secret), ("x-tollgate-metadata", '{"team":"a"}'),
               ("accept-encoding", "gzip, br"), ("openai-beta", "assistants=v2")]
    flow = run(gw, api_flow(headers, host="api.openai.com", port=80, scheme="http"))
    request = flow.request
    assert flow.response is None
    origin = ("https", "api.openai.com", 443)
    assert (request.scheme, request.host, request.port) == gw.catalog.by_id("openai").origin == origin
    assert request.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert b"tg_sk_" not in bytes(request.headers) and "tg_sk_" not in request.url
    assert "x-api-key" not in request.headers and "x-tollgate-metadata" not in request.headers
    assert (request.headers["accept-encoding"], request.headers["openai-beta"]) == ("identity", "assistants=v2")
    assert request.content == CHAT and gw.pending[flow.id].metadata == {"team": "a"}


def test_stream_request_asks_for_usage(gw):
    flow = run(gw, api_flow([("authorization", f"Bearer {secret_key()}")], content=STREAM_CHAT))
    body = json.loads(flow.request.content)
    assert body["stream_options"] == {"include_usage": True} and body["stream"] is True
    assert int(flow.request.headers["content-length"]) == len(flow.request.content)


@pytest.mark.parametrize("in_query", [False, True], ids=["authorization", "key-param"])
def test_forward_endpoint_routes_to_the_provider(gw, in_query):
    secret = secret_key()
    u = quote("https://api.openai.com/v1/chat/completions?x=1", safe="")
    path = f"/v1/forward?u={u}" + (f"&key={secret}" if in_query else "")
    flow = api_flow([] if in_query else [("authorization", f"Bearer {secret}")], host="127.0.0.1", port=8080,
                    scheme="http", path=path)
    flow.client_conn.sockname = ("127.0.0.1", 8080)
    run(gw, flow)
    assert flow.response is None, flow.response.content
    assert flow.request.url == "https://api.openai.com/v1/chat/completions?x=1"
    assert flow.request.headers["authorization"] == f"Bearer {PROVIDER_KEY}"


@pytest.mark.parametrize(
    "path, status, code",
    [
        ("/healthz", 200, None),
        ("/v1/nothing", 404, "not_found"),
        ("/v1/forward", 400, "invalid_forward_url"),
        ("/v1/forward/?u=https://example.com/", 400, "invalid_forward_url"),
    ],
)
def test_gateway_endpoints(gw, path, status, code):
    flow = api_flow(host="127.0.0.1", port=8080, scheme="http", path=path)
    flow.client_conn.sockname = ("127.0.0.1", 8080)
    run(gw, flow)
    assert flow.response.status_code == status
    assert json.loads(flow.response.content).get("error", {}).get("code") == code


def test_response_is_metered_and_charged(gw):
    flow = run(gw, api_flow([("authorization", f"Bearer {secret_key(balance=10**9)}")]))
    usage = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
    flow.response = tutils.tresp(headers=http.Headers(content_type="application/json"),
                                 content=json.dumps({"model": "gpt-4o-mini", "usage": usage}).encode())

    async def respond():  # hooks run on mitmproxy's event loop
        gw.responseheaders(flow)
        gw.response(flow)

    asyncio.run(respond())
    assert gw.writer.flush(timeout=10)
    row = RequestRow.get_by_id(flow.response.headers["x-lava-request-id"])
    assert (row.status, row.input_tokens, row.output_tokens, row.usage_source) == (200, 1000, 500, "reported")
    assert row.charged_nanos > 0 and wallet_balance(ensure_account()[1].id) == 10**9 - row.charged_nanos


def test_a_metering_failure_still_journals_and_records_the_request(gw, monkeypatch):
    flow = run(gw, api_flow([("authorization", f"Bearer {secret_key()}")]))
    flow.response = tutils.tresp(headers=http.Headers(content_type="application/json"), content=b"{}")
    monkeypatch.setattr(gw, "_usage_record", lambda *a: 1 / 0)

    async def respond():
        gw.responseheaders(flow)
        gw.response(flow)

    asyncio.run(respond())
    request_id = flow.response.headers["x-lava-request-id"]
    assert request_id.encode() in b"".join(p.read_bytes() for p in gw.journal.dir.glob("*.jsonl"))
    assert gw.writer.flush(timeout=10)
    row = RequestRow.get_by_id(request_id)
    assert (row.status, row.error, row.charged_nanos) == (200, "metering_failed", 0)
    assert gw.journal.unsettled == 0


def test_a_journal_that_cannot_write_still_lets_the_record_reach_the_ledger(gw, monkeypatch):
    flow = run(gw, api_flow([("authorization", f"Bearer {secret_key()}")]))
    flow.response = tutils.tresp(headers=http.Headers(content_type="application/json"), content=b"{}")

    def disk_full(record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gw.journal, "append", disk_full)

    async def respond():
        gw.responseheaders(flow)
        gw.response(flow)

    asyncio.run(respond())
    assert gw.writer.flush(timeout=10)
    assert RequestRow.get_by_id(flow.response.headers["x-lava-request-id"]).status == 200


def test_error_hook_strips_the_request_id_tag(gw):
    flow = tflow.tflow(err=tflow.terr(f"Connection refused{error_pages._TAG}req_1"))
    gw.error(flow)
    assert flow.error.msg == "Connection refused"


def stream_reader() -> UsageReader:
    reader = for_request("openai", "POST", "/v1/chat/completions", "", STREAM_CHAT)
    assert reader.request_body is not None  # usage was injected, so the reader filters events
    return reader


CONTENT = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}\n\n'
USAGE_ONLY = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\n'


@pytest.mark.parametrize(
    "chunks, outputs",
    [
        ([CONTENT[:20], CONTENT[20:]], [(), (CONTENT.replace(b',"usage":null', b""),)]),  # held back until whole
        ([USAGE_ONLY], [()]),  # the usage chunk the caller did not ask for is swallowed, not sent empty
        ([USAGE_ONLY[:-1], USAGE_ONLY[-1:]], [(), ()]),
        ([b"data: [DONE]\n\n"], [(b"data: [DONE]\n\n",)]),
        ([b""], [()]),  # end of stream with nothing held back
        ([b'data: {"id":"c","choices":[]}', b""], [(), (b'data: {"id":"c","choices":[]}',)]),
    ],
)
def test_stream_tap_never_returns_empty_bytes(chunks, outputs):
    tap = StreamTap(stream_reader())
    assert [tap(chunk) for chunk in chunks] == outputs


def test_stream_tap_passes_unmetered_chunks_through():
    tap = StreamTap(for_request("anthropic", "POST", "/v1/messages", "", b'{"stream":true}'))
    assert tap(b"event: ping\n") == (b"event: ping\n",)
    assert tap(b"") == ()


def test_a_cashier_replaced_by_new_options_lets_go_of_its_redis_connection(gw):
    shared_redis(5)
    url = "redis://127.0.0.1:6379/5"

    async def scenario():
        gw.running()
        gw.tctx.configure(gw, tollgate_redis_url=url)
        first = gw.cashier.holds.remote.wire
        assert await first.call("PING") == "PONG"
        gw.tctx.configure(gw, tollgate_cache_ttl_ms=2000)
        await asyncio.sleep(0.05)
        assert first._transport is None and gw.cashier.holds.remote.wire is not first
        await gw.cashier.close()

    asyncio.run(scenario())
