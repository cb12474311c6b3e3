"""The timeout addon in-process (mitmproxy's taddons/tflow), with the connection closer faked; the
real proxy against a silent or stalling provider is tests/test_upstream_faults.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import yaml
from mitmproxy import connection
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.exceptions import OptionsError
from mitmproxy.proxy.server import ConnectionIO
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from mitmproxy.test import taddons, tflow

from addons.core.catalog import Catalog, Timeouts
from addons.core.settings import DEFAULT_TIMEOUTS, Settings
from addons.proxy.flow_keys import PROVIDER_KEY, TIMEOUT_KEY
from addons.proxy.gateway_config import GatewayConfig, SharedConfig
from addons.proxy.upstream_timeouts import IdleClock, UpstreamTimeouts, cancel_connection_task

TICK = 0.05  # the limits in these tests; each waits several of them for a timer to fire


class Closer:
    def __init__(self, works: bool = True):
        self.works = works
        self.calls: list[tuple[connection.Client, connection.Server, str]] = []

    def __call__(self, client, server, reason) -> bool:
        self.calls.append((client, server, reason))
        return self.works


def addon(closer=None, **limits) -> UpstreamTimeouts:
    config = GatewayConfig(Settings(database_url="sqlite:///:memory:"), Catalog(()), timeouts={"openai": Timeouts(**limits)})
    return UpstreamTimeouts(SharedConfig(config), close=closer or Closer())


def forwarded(provider: str = "openai"):
    flow = tflow.tflow()
    flow.metadata[PROVIDER_KEY] = provider
    return flow


def run(coro):
    return asyncio.run(coro)


def response_headers():
    """A response as mitmproxy has it at `responseheaders`: its body not read yet."""
    response = tflow.tresp()
    response.timestamp_end = None
    return response


def test_configure_reads_the_settings_and_the_providers_own(tmp_path, monkeypatch):
    config = tmp_path / "tollgate.yaml"
    config.write_text(yaml.safe_dump({"timeouts": {"idle": 30, "total": None},
                                      "providers": {"anthropic": {"timeouts": {"first_byte": 900}}}}))
    monkeypatch.setenv("TOLLGATE_CONFIG", str(config))
    timeouts = UpstreamTimeouts()
    with taddons.context(timeouts) as tctx:
        tctx.configure(timeouts)
    assert timeouts.limits["openai"] == Timeouts(DEFAULT_TIMEOUTS.connect, DEFAULT_TIMEOUTS.first_byte, 30, None)
    assert timeouts.limits["anthropic"] == Timeouts(DEFAULT_TIMEOUTS.connect, 900, 30, None)


@pytest.mark.parametrize("timeouts, message", [
    ({"idle": -1}, r"settings: timeouts\.idle must be a positive number of seconds or null"),
    ({"first_bite": 5}, r"settings: timeouts: unknown phase\(s\) first_bite"),
])
def test_bad_settings_are_an_options_error(tmp_path, monkeypatch, timeouts, message):
    config = tmp_path / "tollgate.yaml"
    config.write_text(yaml.safe_dump({"timeouts": timeouts}))
    monkeypatch.setenv("TOLLGATE_CONFIG", str(config))
    timeouts = UpstreamTimeouts()
    with taddons.context(timeouts) as tctx, pytest.raises(OptionsError, match=message):
        tctx.configure(timeouts)


@pytest.mark.parametrize("prepare", [
    lambda f: f.metadata.pop(PROVIDER_KEY),  # not AI traffic the Gateway forwards
    lambda f: setattr(f, "response", tflow.tresp()),  # answered by an addon ahead (a refusal)
    lambda f: setattr(f, "error", tflow.terr()),
    lambda f: setattr(f, "live", False),  # a replay or a loaded flow
])
def test_already_handled(prepare):
    async def go():
        timeouts, flow = addon(first_byte=TICK), forwarded()
        prepare(flow)
        timeouts.request(flow)
        return timeouts

    assert run(go()).watches == {}


@pytest.mark.parametrize("phase, reason", [
    ("first_byte", "upstream timed out: no response headers within 0.05 s"),
    ("total", "upstream timed out: response not complete within 0.05 s"),
])
def test_a_silent_provider_is_cut_off_with_a_timed_out_reason(phase, reason):
    async def go():
        closer, flow = Closer(), forwarded()
        timeouts = addon(closer, **{phase: TICK})
        timeouts.request(flow)
        await asyncio.sleep(4 * TICK)
        return closer, flow, timeouts

    closer, flow, timeouts = run(go())
    assert closer.calls == [(flow.client_conn, flow.server_conn, reason)]
    assert flow.metadata[TIMEOUT_KEY] == reason and timeouts.watches == {}


def test_response_headers_stop_the_first_byte_clock():
    async def go():
        closer, flow = Closer(), forwarded()
        timeouts = addon(closer, first_byte=TICK)
        timeouts.request(flow)
        flow.response = response_headers()
        timeouts.responseheaders(flow)
        await asyncio.sleep(4 * TICK)
        return closer

    assert run(go()).calls == []


def test_every_chunk_restarts_the_idle_clock_and_reaches_the_gateways_tap():
    async def go():
        closer, flow = Closer(), forwarded()
        timeouts = addon(closer, idle=2 * TICK)
        timeouts.request(flow)
        flow.response = response_headers()
        flow.response.stream = lambda chunk: (chunk.upper(),)  # the Gateway's StreamTap
        timeouts.responseheaders(flow)
        assert isinstance(flow.response.stream, IdleClock)
        for _ in range(6):  # 6 x TICK of streaming, no gap as long as the limit
            await asyncio.sleep(TICK)
            assert flow.response.stream(b"data") == (b"DATA",)
        assert closer.calls == []
        await asyncio.sleep(5 * TICK)  # the provider stalls
        return closer

    assert [reason for _, _, reason in run(go()).calls] == ["upstream timed out: no data for 0.1 s"]


def test_a_plain_stream_passes_chunks_as_they_are():
    watch = SimpleNamespace(last_chunk=0.0)
    assert IdleClock(True, watch)(b"data") == b"data" and watch.last_chunk > 0


def test_connect_clock_runs_from_server_connect_to_server_connected():
    async def go(connects: bool):
        closer, flow = Closer(), forwarded()
        timeouts = addon(closer, connect=TICK)
        timeouts.request(flow)
        server = connection.Server(address=(flow.request.host, flow.request.port))
        data = ServerConnectionHookData(server=server, client=flow.client_conn)
        timeouts.server_connect(data)
        server.timestamp_start = 1.0  # mitmproxy started connecting
        if connects:
            timeouts.server_connected(data)
        await asyncio.sleep(4 * TICK)
        return closer, server

    assert run(go(connects=True))[0].calls == []
    closer, server = run(go(connects=False))
    assert [(s, reason) for _, s, reason in closer.calls] == [(server, "upstream connect timed out after 0.05 s")]


def test_a_connection_to_another_address_is_not_the_flows():
    async def go():
        timeouts, flow = addon(connect=TICK), forwarded()
        timeouts.request(flow)
        other = connection.Server(address=("elsewhere.test", 443))
        timeouts.server_connect(ServerConnectionHookData(server=other, client=flow.client_conn))
        return timeouts.connecting

    assert run(go()) == {}


def test_without_a_connection_to_close_the_flow_is_killed():
    async def go():
        flow = forwarded()
        timeouts = addon(Closer(works=False), first_byte=TICK)
        timeouts.request(flow)
        await asyncio.sleep(4 * TICK)
        return flow

    flow = run(go())
    assert flow.error.msg == flow.error.KILLED_MESSAGE and not flow.live


def test_a_provider_that_has_answered_in_full_is_not_cut_off():
    """A retry (or any slow hook) after the last byte must not be mistaken for a silent provider."""
    async def go():
        closer, flow = Closer(), forwarded()
        timeouts = addon(closer, total=TICK)
        timeouts.request(flow)
        flow.response = tflow.tresp()  # timestamp_end set: mitmproxy has the whole response
        await asyncio.sleep(4 * TICK)
        return closer

    assert run(go()).calls == []


@pytest.mark.parametrize("end", ["response", "error", "done"])
def test_the_end_of_a_flow_stops_every_clock(end):
    async def go():
        closer, flow = Closer(), forwarded()
        timeouts = addon(closer, first_byte=TICK, total=TICK)
        timeouts.request(flow)
        timeouts.done() if end == "done" else getattr(timeouts, end)(flow)
        await asyncio.sleep(4 * TICK)
        return closer, timeouts

    closer, timeouts = run(go())
    assert closer.calls == [] and timeouts.watches == {} and timeouts.by_client == {}


def test_no_limit_arms_nothing():
    async def go():
        timeouts, flow = addon(), forwarded()
        timeouts.request(flow)
        watch = timeouts.watches[flow.id]
        return watch.first_byte, watch.total

    assert run(go()) == (None, None)


def test_cancel_connection_task_cancels_the_task_that_owns_the_connection():
    """The mitmproxy internals the real closer relies on: Proxyserver.connections and the handler's transports."""
    async def go():
        flow = tflow.tflow()
        task = asyncio.get_running_loop().create_task(asyncio.sleep(10))
        handler = type("Handler", (), {})()
        handler.transports = {flow.server_conn: ConnectionIO(handler=task)}
        proxyserver = Proxyserver()
        with taddons.context(proxyserver):
            assert not cancel_connection_task(flow.client_conn, flow.server_conn, "timed out")  # unknown client
            proxyserver.connections[flow.client_conn.id] = handler
            assert not cancel_connection_task(flow.client_conn, connection.Server(address=None), "timed out")
            assert cancel_connection_task(flow.client_conn, flow.server_conn, "timed out")
        with pytest.raises(asyncio.CancelledError, match="timed out"):
            await task

    run(go())
