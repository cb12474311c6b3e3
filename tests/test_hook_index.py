"""IndexedAddonManager dispatches a hook exactly as mitmproxy's AddonManager would, skipping only
addons that cannot handle it."""

import asyncio
import logging
import time
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import connection, exceptions, hooks, http, master, options, optmanager
from mitmproxy.coretypes import multidict
from mitmproxy.net import check
from mitmproxy.net.http import url
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import HttpErrorHook, HttpRequestHook, HttpResponseHook
from mitmproxy.proxy.server_hooks import ClientConnectedHook, ServerConnectHook, ServerConnectionHookData
from mitmproxy.test import tflow
from mitmproxy.utils import asyncio_utils

from addons.proxy import mitmproxy_internals
from addons.runtime.hook_index import IndexedAddonManager
from addons.runtime.launcher import GatewayMaster


class Recorder:
    def __init__(self, name, calls, *, halt=False, fail=False):
        self.name, self.calls, self.halt, self.fail = name, calls, halt, fail

    def request(self, flow):
        self.calls.append(self.name)
        if self.fail:
            raise RuntimeError("boom")
        if self.halt:
            raise exceptions.AddonHalt


class AsyncRecorder:
    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    async def request(self, flow):
        self.calls.append(self.name)


class Bystander:
    """Has no request hook; counts how often mitmproxy asks for one."""

    def __init__(self, name):
        self.name, self.lookups = name, 0

    def __getattr__(self, attr):
        if attr == "request":
            self.lookups += 1
        raise AttributeError(attr)


class Container:
    """Like mitmproxy's script loader: children that change while running."""

    def __init__(self, name):
        self.name, self.addons = name, []


def indexed(test):
    """Run an async test body with a fresh IndexedAddonManager (a Master needs a running loop)."""

    def run(*args):
        async def body():
            m = master.Master(options.Options())
            m.addons = IndexedAddonManager(m)
            await test(m.addons, *args)

        asyncio.run(body())

    run.__name__ = test.__name__
    return run


async def fire(addons):
    await addons.trigger_event(HttpRequestHook(tflow.tflow()))


@indexed
async def test_only_handlers_are_called_in_chain_order(manager):
    calls = []
    bystander = Bystander("bystander")
    manager.add(Recorder("a", calls), bystander, AsyncRecorder("b", calls), Recorder("c", calls))
    await fire(manager)
    await fire(manager)
    assert calls == ["a", "b", "c"] * 2
    assert bystander.lookups == 1  # looked at when the index was built, never per hook


@indexed
async def test_halt_stops_and_errors_are_logged_without_stopping_the_chain(manager):
    calls = []
    manager.add(Recorder("a", calls, fail=True), Recorder("b", calls, halt=True), Recorder("c", calls))
    errors = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = errors.append
    logging.getLogger("mitmproxy.addonmanager").addHandler(handler)
    try:
        await fire(manager)
    finally:
        logging.getLogger("mitmproxy.addonmanager").removeHandler(handler)
    assert calls == ["a", "b"]
    assert [r.getMessage() for r in errors] == ["Addon error: boom"]


@indexed
async def test_index_follows_add_and_remove(manager):
    calls = []
    a = Recorder("a", calls)
    manager.add(a)
    await fire(manager)
    manager.add(Recorder("b", calls))
    await fire(manager)
    manager.remove(a)
    await fire(manager)
    assert calls == ["a", "a", "b", "b"]


@indexed
async def test_children_added_at_run_time_are_called(manager):
    calls = []
    box = Container("box")
    manager.add(box)
    await fire(manager)
    child = Recorder("child", calls)
    box.addons.append(child)  # as mitmproxy's script loader adds a script: into its list, then registered
    manager.register(child)
    await fire(manager)
    box.addons.remove(child)
    manager.remove(child)
    await fire(manager)
    assert calls == ["child"]


def test_the_lean_launcher_dispatches_through_the_index():
    async def make():
        return GatewayMaster(options.Options())

    m = asyncio.run(make())
    assert isinstance(m.addons, IndexedAddonManager)
    assert m.addons.get("termlog") is not None
    handlers = {type(a).__name__ for a, _ in m.addons.handlers("request")}
    # DisableH2C and TlsConfig have request hooks; the script loader has no script to walk; no one else.
    assert handlers == {"DisableH2C", "TlsConfig"}
    assert m.addons.handlers("update") == []


def test_the_lean_launcher_drops_mitmproxys_debug_only_type_checks(monkeypatch):
    """mitmproxy checks message field types only `if __debug__`; tollgate-proxy drops that as -O would.
    Fails if mitmproxy's check moves, so the saving is not silently lost."""
    monkeypatch.setattr(http.MessageData, "__post_init__", http.MessageData.__post_init__)  # restored after

    def request_with_a_str_port():
        return http.Request("example.com", "80", b"GET", b"http", b"", b"/", b"HTTP/1.1", http.Headers(), b"", None,
                            0.0, None)

    with pytest.raises(TypeError):
        request_with_a_str_port()
    mitmproxy_internals.drop_debug_type_checks()
    assert request_with_a_str_port().data.port == "80"


HEADER_NAMES = st.sampled_from([b"Content-Type", b"content-type", b"X-Api-Key", b"x-API-key", b"Host", b"\xff\xfe",
                                b"Set-Cookie", b"set-cookie"])


@settings(max_examples=300, deadline=None)
@given(fields=st.lists(st.tuples(HEADER_NAMES, st.binary(max_size=8)), max_size=8),
       asked=st.one_of(HEADER_NAMES, HEADER_NAMES.map(lambda name: name.decode("utf-8", "surrogateescape"))))
def test_quicker_header_lookups_answer_as_mitmproxys_own(fields, asked):
    """tollgate-proxy's header lookup (mitmproxy_internals.quicker_header_lookups) gives what mitmproxy's gives,
    for any fields, names in any case, bytes or str, undecodable bytes included."""
    headers = http.Headers(fields)
    mitmproxys = [http._native(value) for value in multidict._MultiDict.get_all(headers, http._always_bytes(asked))]
    assert mitmproxy_internals._header_values(headers, asked) == mitmproxys
    folded = ", ".join(mitmproxys) if mitmproxys else None  # what Mapping.get gives through Headers.__getitem__
    assert mitmproxy_internals._header_get(headers, asked) == folded
    assert mitmproxy_internals._header_get(headers, asked, "x") == (folded if mitmproxys else "x")
    assert mitmproxy_internals._header_in(headers, asked) is bool(mitmproxys)


def test_the_lean_launcher_looks_headers_up_and_names_flows_its_own_way(monkeypatch):
    """Both patches are in place under tollgate-proxy (fails if mitmproxy's targets move), and flow and connection
    ids stay distinct version-4 UUID strings."""
    from mitmproxy import connection
    from mitmproxy import flow as mitmproxy_flow

    monkeypatch.setattr(http.Headers, "get_all", http.Headers.get_all)  # restored after
    monkeypatch.setattr(http.Headers, "get", http.Headers.get)
    monkeypatch.setattr(http.Headers, "__contains__", http.Headers.__contains__)
    monkeypatch.setattr(connection, "uuid", connection.uuid)
    monkeypatch.setattr(mitmproxy_flow, "uuid", mitmproxy_flow.uuid)
    mitmproxy_internals.quicker_header_lookups()
    mitmproxy_internals.cheaper_flow_ids()
    assert {"Headers.get_all", "Headers.get", "Headers.__contains__", "mitmproxy.connection.uuid",
            "mitmproxy.flow.uuid"} <= mitmproxy_internals.patched()
    headers = http.Headers([(b"X-Key", b"v"), (b"x-key", b"w")])
    assert (headers["x-key"], headers.get("X-KEY"), headers.get("nope", "-"), "x-KEY" in headers, "nope" in headers) == (
        "v, w", "v, w", "-", True, False)
    ids = [tflow.tflow().id for _ in range(500)] + [tflow.tclient_conn().id for _ in range(500)]
    assert len(set(ids)) == 1000 and {uuid.UUID(i).version for i in ids} == {4}
    assert all(str(uuid.UUID(i)) == i for i in ids)


def test_the_lean_launchers_hook_arguments_task_names_and_host_checks_are_mitmproxys(monkeypatch):
    """cheaper_hook_args, plainer_task_names and remembered_valid_hosts are in place under tollgate-proxy (fails if
    mitmproxy's targets move) and answer as mitmproxy's own: every hook's arguments, a task's name, creation time
    and client, and whether a host is valid, asked once or again."""
    monkeypatch.setattr(hooks.Hook, "args", hooks.Hook.args)  # restored after
    monkeypatch.setattr(asyncio_utils, "set_task_debug_info", asyncio_utils.set_task_debug_info)
    monkeypatch.setattr(check, "is_valid_host", check.is_valid_host)
    monkeypatch.setattr(url, "is_valid_host", url.is_valid_host)
    mitmproxys_valid = check.is_valid_host
    flow = tflow.tflow(resp=True)
    every_hook = [HttpRequestHook(flow), HttpResponseHook(flow), HttpErrorHook(flow),
                  ClientConnectedHook(flow.client_conn),
                  ServerConnectHook(ServerConnectionHookData(flow.server_conn, flow.client_conn)), hooks.RunningHook(),
                  hooks.UpdateHook([flow])]
    mitmproxys_args = [hook.args() for hook in every_hook]

    mitmproxy_internals.cheaper_hook_args()
    mitmproxy_internals.plainer_task_names()
    mitmproxy_internals.remembered_valid_hosts()
    assert {"Hook.args", "asyncio_utils.set_task_debug_info", "check.is_valid_host",
            "url.is_valid_host"} <= mitmproxy_internals.patched()
    assert [hook.args() for hook in every_hook] == mitmproxys_args
    hosts = [b"api.openai.com", "api.openai.com", b"127.0.0.1", b"::1", b"-bad-", b"a..b", b"x" * 300, "b\u00fccher.de",
             b"api.openai.com.", b""]
    assert [check.is_valid_host(host) for host in hosts * 2] == [mitmproxys_valid(host) for host in hosts * 2]
    assert url.parse_authority("api.openai.com:443", check=True) == ("api.openai.com", 443)
    with pytest.raises(ValueError):
        url.parse_authority("bad host:443", check=True)

    async def named() -> asyncio.Task:
        task = asyncio_utils.create_task(asyncio.sleep(0), name="tollgate-test", keep_ref=False, client=("10.0.0.1", 5))
        await task
        return task

    before = time.time()
    task = asyncio.run(named())
    assert (task.get_name(), task.client, before <= task.created <= time.time()) == (
        "tollgate-test", ("10.0.0.1", 5), True)


def test_a_remembered_host_check_keeps_a_bounded_number_of_hosts():
    """Clients choose the hosts they send: beyond _VALID_HOSTS_KEPT, hosts are checked each time, not remembered."""
    asked = []
    remembered = mitmproxy_internals._remembering(lambda host: asked.append(host) or True)
    hosts = [f"h{i}.test" for i in range(mitmproxy_internals._VALID_HOSTS_KEPT + 10)]
    assert all(remembered(host) for host in hosts * 2)
    assert len(asked) == len(hosts) + 10  # the first 1,024 once, the 10 beyond twice


def test_the_lean_launchers_option_reads_give_what_mitmproxys_give(monkeypatch):
    """cheaper_option_reads answers every option as mitmproxy does: numbers, strings and None as they are, anything
    else a copy the reader may change without changing the option."""
    monkeypatch.setattr(optmanager._Option, "current", optmanager._Option.current)  # restored after
    opts = options.Options()
    opts.update(ignore_hosts=["^example\\.com:443$"], listen_port=8081)
    mitmproxys = {name: getattr(opts, name) for name in opts._options}
    mitmproxy_internals.cheaper_option_reads()
    assert "_Option.current" in mitmproxy_internals.patched()
    assert {name: getattr(opts, name) for name in opts._options} == mitmproxys
    opts.ignore_hosts.append("changed")
    opts.mode.append("changed")
    assert (opts.ignore_hosts, opts.mode) == (["^example\\.com:443$"], mitmproxys["mode"])


def test_the_lean_launchers_context_forks_are_mitmproxys(monkeypatch):
    """thriftier_context_forks gives a fork with exactly the attributes mitmproxy's fork gives (fails if
    Context.__init__ gains one), the parent's client, options and server, and a copy of its layers."""
    monkeypatch.setattr(Context, "fork", Context.fork)  # restored after
    parent = Context(tflow.tclient_conn(), options.Options())
    parent.server = connection.Server(address=("api.openai.com", 443))
    parent.layers = [object(), object()]
    mitmproxys = parent.fork()
    mitmproxy_internals.thriftier_context_forks()
    assert "Context.fork" in mitmproxy_internals.patched()
    forked = parent.fork()
    assert type(forked) is Context and vars(forked).keys() == vars(mitmproxys).keys()
    assert all(getattr(forked, name) is getattr(parent, name) for name in ("client", "options", "server"))
    assert forked.layers == parent.layers and forked.layers is not parent.layers
    forked.layers.append(object())
    assert len(parent.layers) == 2


@pytest.mark.parametrize("http_version", ["HTTP/1.1", "HTTP/2.0"])
def test_aiming_a_request_rewrites_its_host_header_and_authority_as_mitmproxys_setters_do(http_version):
    """mitmproxy_internals.aim gives the request the target, Host header and authority that setting scheme, host
    and port one by one gives (fails if mitmproxy's setters come to do more than the one update aim makes)."""
    def made():
        request = tflow.treq(host="127.0.0.1", port=8080, scheme="http", http_version=http_version,
                             authority=b"127.0.0.1:8080" if http_version == "HTTP/2.0" else b"")
        request.headers["Host"] = "127.0.0.1:8080"
        return request

    for target in (("https", "api.openai.com", 443), ("http", "mock.local", 8081), ("https", "10.0.0.1", 8443)):
        mitmproxys, ours = made(), made()
        mitmproxys.scheme, mitmproxys.host, mitmproxys.port = target
        mitmproxy_internals.aim(ours, *target)
        assert ours.get_state() == mitmproxys.get_state()
        assert (ours.url, ours.headers["Host"]) == (mitmproxys.url, mitmproxys.headers["Host"])
