"""Upstream timeouts per provider: connect, first byte, idle between stream chunks, total.

Runs right after the Gateway, on the flows the Gateway forwards (those with PROVIDER_KEY in their
metadata, addons/proxy/flow_keys.py). The limits are `timeouts:` in the gateway settings, overridden phase by phase by a
provider's own `timeouts` (see addons.core.catalog.Timeouts), as the chain's shared config has them
(addons/proxy/gateway_config.py). Timers run on the event loop
(`loop.call_later`), nothing blocks:

    request            first_byte and total start: the request is about to be forwarded
    server_connect     connect starts; server_connected / server_connect_error stop it
    responseheaders    first_byte stops; a streamed response gets its stream callable (the
                       Gateway's StreamTap) wrapped, so every chunk restarts idle
    response, error    everything stops

When a limit runs out, the connection to the provider is closed with a "timed out" reason kept in
`flow.metadata[TIMEOUT_KEY]`. mitmproxy then fails the flow as for any provider that hangs up:
the `error` hook fires (the Gateway records the request, usage so far estimated), and a client with
no response headers yet gets 504 `upstream_timeout` (error_pages reads the reason); one in the middle
of a stream sees it break off.

Two things mitmproxy offers were not enough:
  * `flow.kill()` only marks the flow. mitmproxy looks for the mark when a hook returns, so a flow
    waiting for a silent provider is never actually stopped (mitmproxy issue #4711, noted at
    `Flow.kill`). It stays the fallback when no connection can be found.
  * mitmproxy 12 has no connect or read timeout towards servers (`asyncio.open_connection` without
    one); `tcp_timeout` (600 s) closes a *client* connection idle in both directions.
So the connection is closed the way mitmproxy itself closes one it cannot write to
(`ConnectionHandler.drain_writers`): by cancelling the task that owns it, found through the
Proxyserver addon's `connections` and the handler's `transports`. tests/test_upstream_faults.py
drives this end to end and fails loudly if a mitmproxy upgrade moves either.

Over HTTP/2 to the provider one connection carries all of one client connection's concurrent
requests, and closing it fails all of them; mitmproxy speaks HTTP/1.1 upstream to HTTP/1.1 clients,
which is what the SDKs are.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from mitmproxy import connection, ctx, http
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from addons.core.catalog import Timeouts
from addons.proxy import mitmproxy_internals
from addons.proxy.flow_keys import PROVIDER_KEY, TIMEOUT_KEY
from addons.proxy.gateway_config import SharedConfig

log = logging.getLogger(__name__)

_SLACK = 0.001  # a timer may fire up to a millisecond early (uvloop's clock)

Closer = Callable[[connection.Client, connection.Server, str], bool]


def cancel_connection_task(client: connection.Client, server: connection.Server, reason: str) -> bool:
    """Close `server` as mitmproxy does when it cannot write to it; False when it has no open task."""
    proxyserver = ctx.master.addons.get("proxyserver")
    return proxyserver is not None and mitmproxy_internals.cancel_server_task(proxyserver, client, server, reason)


class _Watch:
    """The timers of one forwarded flow."""

    __slots__ = ("flow", "limits", "server", "first_byte", "total", "idle", "connect", "last_chunk")

    def __init__(self, flow: http.HTTPFlow, limits: Timeouts):
        self.flow = flow
        self.limits = limits
        self.server: connection.Server | None = None  # the connection being opened for it, if any
        self.first_byte: asyncio.TimerHandle | None = None
        self.total: asyncio.TimerHandle | None = None
        self.idle: asyncio.TimerHandle | None = None
        self.connect: asyncio.TimerHandle | None = None
        self.last_chunk = 0.0

    def stop(self, *phases: str) -> None:
        for phase in phases or ("connect", "first_byte", "idle", "total"):
            handle = getattr(self, phase)
            if handle is not None:
                handle.cancel()
                setattr(self, phase, None)


class IdleClock:
    """The flow's stream callable, wrapped: each chunk is activity, then goes on to the Gateway's tap."""

    __slots__ = ("inner", "watch")

    def __init__(self, inner, watch: _Watch):
        self.inner = inner
        self.watch = watch

    def __call__(self, chunk: bytes):
        self.watch.last_chunk = time.monotonic()
        return self.inner(chunk) if callable(self.inner) else chunk


class UpstreamTimeouts:
    def __init__(self, config: SharedConfig | None = None, close: Closer = cancel_connection_task):
        """config: the chain's (alone: its own, loaded on configure); close: how a timed-out connection is closed."""
        self.config = config if config is not None else SharedConfig()
        self.close = close
        self.watches: dict[str, _Watch] = {}  # flow id ->
        self.by_client: dict[str, list[_Watch]] = {}  # client connection id -> its flows awaiting a connection
        self.connecting: dict[str, _Watch] = {}  # server connection id ->

    @property
    def limits(self) -> Mapping[str, Timeouts]:
        """Provider id -> its Timeouts; none until the config is loaded."""
        config = self.config.current
        return config.timeouts if config is not None else {}

    def configure(self, updated) -> None:
        self.config.load()

    def done(self) -> None:
        for watch in list(self.watches.values()):
            self._forget(watch)

    # -- hooks ---------------------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live or PROVIDER_KEY not in flow.metadata:
            return
        limits = self.limits.get(flow.metadata[PROVIDER_KEY], Timeouts())
        watch = self.watches[flow.id] = _Watch(flow, limits)
        self.by_client.setdefault(flow.client_conn.id, []).append(watch)
        watch.first_byte = self._arm(limits.first_byte, watch, "first_byte")
        watch.total = self._arm(limits.total, watch, "total")

    def server_connect(self, data: ServerConnectionHookData) -> None:
        if data.server.error:
            return
        for watch in self.by_client.get(data.client.id, ()):
            request = watch.flow.request
            if watch.server is None and (request.host, request.port) == tuple(data.server.address or ())[:2]:
                watch.server = data.server
                self.connecting[data.server.id] = watch
                watch.connect = self._arm(watch.limits.connect, watch, "connect")
                return

    def server_connected(self, data: ServerConnectionHookData) -> None:
        if watch := self.connecting.pop(data.server.id, None):
            watch.stop("connect")

    server_connect_error = server_connected

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        watch = self.watches.get(flow.id)
        if watch is None:
            return
        self._connected(watch)
        watch.stop("first_byte")
        if flow.response.stream and watch.limits.idle is not None:
            flow.response.stream = IdleClock(flow.response.stream, watch)
            watch.last_chunk = time.monotonic()
            watch.idle = self._arm(watch.limits.idle, watch, "idle")

    def response(self, flow: http.HTTPFlow) -> None:
        if watch := self.watches.get(flow.id):
            self._forget(watch)

    error = response

    # -- timers --------------------------------------------------------------------------

    def _arm(self, seconds: float | None, watch: _Watch, phase: str) -> asyncio.TimerHandle | None:
        if seconds is None:
            return None
        return asyncio.get_running_loop().call_later(seconds, self._expired, watch, phase)

    def _expired(self, watch: _Watch, phase: str) -> None:
        setattr(watch, phase, None)
        if self.watches.get(watch.flow.id) is not watch:
            return
        flow = watch.flow
        if flow.response is not None and flow.response.timestamp_end:
            return  # the provider has answered in full: time left is the later hooks' (a retry bounds its own)
        limit = getattr(watch.limits, phase)
        if phase == "idle" and (quiet := time.monotonic() - watch.last_chunk) < limit - _SLACK:
            watch.idle = self._arm(limit - quiet, watch, "idle")  # a chunk came meanwhile
            return
        server = watch.server or watch.flow.server_conn
        if watch.server is not None and server.timestamp_start is None:
            # Still queued behind mitmproxy's per-address connection limit: its task cannot be
            # cancelled cleanly before it starts connecting, and the connect clock has not started.
            setattr(watch, phase, self._arm(0.05 if phase != "connect" else limit, watch, phase))
            return
        reason = _REASONS[phase].format(seconds=f"{limit:g}")
        flow.metadata[TIMEOUT_KEY] = reason
        self._forget(watch)
        log.info("tollgate: %s, closing the connection to %s", reason, flow.request.host)
        if not self.close(flow.client_conn, server, reason) and flow.killable:
            flow.kill()

    def _connected(self, watch: _Watch) -> None:
        """The flow has its connection: stop matching it to new ones."""
        flows = self.by_client.get(watch.flow.client_conn.id)
        if flows is not None and watch in flows:
            flows.remove(watch)
            if not flows:
                del self.by_client[watch.flow.client_conn.id]

    def _forget(self, watch: _Watch) -> None:
        watch.stop()
        self.watches.pop(watch.flow.id, None)
        self._connected(watch)
        if watch.server is not None:
            self.connecting.pop(watch.server.id, None)


_REASONS = {
    "connect": "upstream connect timed out after {seconds} s",
    "first_byte": "upstream timed out: no response headers within {seconds} s",
    "idle": "upstream timed out: no data for {seconds} s",
    "total": "upstream timed out: response not complete within {seconds} s",
}
