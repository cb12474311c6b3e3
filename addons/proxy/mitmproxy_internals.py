"""Every place Tollgate reaches into mitmproxy's private parts, checked against the mitmproxy it runs on.

mitmproxy offers no hook for these, so each one replaces or wraps a private function or method, or
reads private state. They live here and nowhere else: this module is the mechanism, the addons named
in each patch are the policy (what the error body says, which limit applies, what counts as a
credential), handed in by `install`. Why each patch exists and what it buys is said once, at its
function below.

`install()` checks the version first and refuses an unknown one (`check_version`): a patch whose target
moved would fail silently (an HTML error page, no size limit, a provider key shown in mitmweb), so an
unchecked mitmproxy does not run at all. It is called explicitly, before anything runs, by the two ways
to run the gateway: addons/runtime/launcher.py (tollgate-proxy; `lean=True`) and addons/gateway.py (the
script for mitmdump and mitmweb; `web=True` under mitmweb). It is idempotent: a script reload calls it
again and nothing stacks.

Not here, because it uses only mitmproxy's public API: addons/runtime/hook_index.py's AddonManager
subclass (each hook sent only to the addons that handle it, about a fifth of the lean process's CPU).

To support a new mitmproxy: read each patch's target in the new version (the names and signatures
below, and the e2e tests named at each patch), then add the version to SUPPORTED.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import os
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

import wsproto
import wsproto.events
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from mitmproxy import certs, connection, ctx, hooks, http, optmanager, tls, version
from mitmproxy import flow as mitmproxy_flow
from mitmproxy.addons import next_layer, proxyauth
from mitmproxy.flow import Error
from mitmproxy.net import check
from mitmproxy.net.http import url
from mitmproxy.net.http.http1 import expected_http_body_size
from mitmproxy.proxy import commands, context, events, server
from mitmproxy.proxy.layer import Layer
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.proxy.layers import modes
from mitmproxy.proxy.layers import tls as tls_layer
from mitmproxy.proxy.layers import websocket as websocket_layer
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.utils import asyncio_utils, human

from addons.proxy import error_pages, proxyauth_compare, request_limits

SUPPORTED = ((12, 2), (12, 3))  # major.minor; read on 12.2.3, run and tested on 12.3.1


class UnsupportedMitmproxy(RuntimeError):
    """The installed mitmproxy is not one these patches were checked against."""


def check_version(text: str | None = None) -> None:
    """Raise UnsupportedMitmproxy unless mitmproxy `text` (default: the installed one) is in SUPPORTED."""
    text = version.VERSION if text is None else text
    major_minor = tuple(int(part) for part in text.split(".")[:2] if part.isdigit())
    if major_minor not in SUPPORTED:
        supported = ", ".join("%d.%d" % v for v in SUPPORTED)
        raise UnsupportedMitmproxy(
            f"mitmproxy {text} is not supported (Tollgate patches mitmproxy internals checked on {supported} only): "
            f"install mitmproxy {supported}, or check each patch in addons/proxy/mitmproxy_internals.py "
            f"against {text} and add it to SUPPORTED."
        )


# -- patching, once --------------------------------------------------------------------------------

_placed: dict[str, tuple[object, str, object]] = {}  # patch label -> (owner, name, what we put there)


def _get(owner, name: str):
    return owner[name] if isinstance(owner, dict) else getattr(owner, name)


def _replace(label: str, owner, name: str, make: Callable[[object], object]) -> None:
    """Put make(current) at owner.name (or owner[name]) unless our replacement is there already."""
    if label in _placed and _get(owner, name) is _placed[label][2]:
        return
    replacement = make(_get(owner, name))
    if isinstance(owner, dict):
        owner[name] = replacement
    else:
        setattr(owner, name, replacement)
    _placed[label] = (owner, name, replacement)


def patched() -> set[str]:
    """The patches in place now, by label (`module.name` or `Class.method`)."""
    return {label for label, (owner, name, replacement) in _placed.items() if _get(owner, name) is replacement}


# -- the patches -----------------------------------------------------------------------------------


def answer_errors_with(render: Callable[[int, str], bytes]) -> None:
    """The errors mitmproxy answers itself (provider unreachable, bad request line, body or head too
    large, ...) in the gateway's JSON error shape instead of mitmproxy's HTML page, which quotes client
    bytes and addresses and which no API client can parse. mitmproxy renders them in its HTTP/1 layer
    with no hook to change them: this replaces `_http1.make_error_response(status, message) -> bytes`.
    Policy: addons.proxy.error_pages.json_error_response. Covered end to end by tests/test_gateway_errors.py."""
    _replace("_http1.make_error_response", _http1, "make_error_response", lambda original: render)


def reword_protocol_errors(reword: Callable[[dict, str], str]) -> None:
    """A provider connection closed for a timeout (addons.proxy.upstream_timeouts) fails in mitmproxy as
    "server closed connection"; the client should get 504 with the reason, and every error page the
    request id its flow already has. The message of a ResponseProtocolError is the only thing that reaches
    make_error_response, so this wraps `HttpStream.handle_protocol_error` and rewrites it first with
    reword(flow metadata, message). Policy: addons.proxy.error_pages.protocol_error_message."""

    def wrap(original):
        def handle_protocol_error(self, event):
            if isinstance(event, http_layer.ResponseProtocolError):
                event.message = reword(self.flow.metadata if self.flow else {}, event.message)
            return (yield from original(self, event))

        return handle_protocol_error

    _replace("HttpStream.handle_protocol_error", http_layer.HttpStream, "handle_protocol_error", wrap)


def _declared_size(request: http.Request) -> int | None:
    try:
        return expected_http_body_size(request)
    except ValueError:
        return None  # mitmproxy answers an invalid Content-Length itself


def limit_request_bodies(limit: Callable[[], int | None], error: str, message: Callable[[http.HTTPFlow], str]) -> None:
    """A request body limit that leaves responses alone (mitmproxy's body_size_limit cuts both, so a large
    download or embeddings batch would break): the gateway buffers each request body whole, and mitmproxy
    has no limit by default. It acts where mitmproxy's own body_size_limit refusal does, the same way, by
    wrapping `HttpStream.check_body_size`: a declared Content-Length over limit() is refused before any
    of the body is read, a chunked body once what is buffered passes it; flow.error is `error`, the client
    gets the protocol error `message(flow)` (413 via answer_errors_with) and the connection is closed.
    Policy: addons.proxy.request_limits. Covered end to end by tests/test_security.py."""

    def wrap(original):
        def check_body_size(self, request: bool):
            most = limit()
            if request and most and self.flow is not None:
                size = len(self.request_body_buf) or _declared_size(self.flow.request)
                if size is not None and size > most:
                    if not self.request_body_buf:
                        yield http_layer.HttpRequestHeadersHook(self.flow)
                    self.flow.error = Error(error)
                    yield http_layer.HttpErrorHook(self.flow)
                    too_large = http_layer.ErrorCode.REQUEST_TOO_LARGE
                    yield http_layer.SendHttp(
                        http_layer.ResponseProtocolError(self.stream_id, message(self.flow), too_large),
                        self.context.client,
                    )
                    self.client_state = self.state_errored
                    self.flow.live = False
                    return True
            return (yield from original(self, request))

        return check_body_size

    _replace("HttpStream.check_body_size", http_layer.HttpStream, "check_body_size", wrap)


def _head_ends_within(buf, limit: int) -> bool:
    head = bytes(buf)[: limit + 4]
    return b"\r\n\r\n" in head or b"\n\n" in head


def limit_request_heads(limit: Callable[[], int | None], answer: Callable[[], bytes], reason: str) -> None:
    """mitmproxy's HTTP/1 server reads a request head of any size ("FIXME: protect against header size
    DoS" in proxy/layers/http/_http1.py). This wraps `Http1Server.read_headers`: a head that grows past
    limit() without ending is answered with answer() (431), logged at INFO as "<peer>: <reason>", and its
    connection closed, before it is parsed. HTTP/2 and 3 heads are bounded by their own decoders.
    Policy: addons.proxy.request_limits. Covered end to end by tests/test_security.py."""

    def wrap(original):
        def read_headers(self, event):
            most = limit()
            unfinished = isinstance(event, events.DataReceived) and most and len(self.buf) > most
            if unfinished and not _head_ends_within(self.buf, most):
                yield commands.Log(f"{human.format_address(self.conn.peername)}: {reason}", logging.INFO)
                yield commands.SendData(self.conn, answer())
                yield commands.CloseConnection(self.conn)
                self.state = self.done
                return
            return (yield from original(self, event))

        return read_headers

    _replace("Http1Server.read_headers", _http1.Http1Server, "read_headers", wrap)


def compare_single_user_with(same: Callable[[str, str, str, str], bool]) -> None:
    """`--proxyauth user:pass`: mitmproxy's SingleUser validator compares with `==`, which returns at the
    first differing character, so how long a refusal takes tells an attacker how much of a guess was
    right. This replaces `proxyauth.SingleUser.__call__` with same(expected user, expected password, user,
    password). htpasswd and LDAP validators are left alone (they compare hashes or ask the server).
    Policy: addons.proxy.proxyauth_compare.same_credentials (hmac.compare_digest on both fields)."""

    def make(original):
        def single_user(self, username: str, password: str) -> bool:
            return same(self.username, self.password, username, password)

        return single_user

    _replace("proxyauth.SingleUser.__call__", proxyauth.SingleUser, "__call__", make)


def ecdsa_certificate_authority() -> None:
    """The CA mitmproxy creates on its first start (confdir's mitmproxy-ca.pem) gets an ECDSA P-256 key, not RSA
    2048. mitmproxy signs every intercepted TLS handshake with the CA's own key (its generated certificates carry
    the CA's public key): an RSA-2048 signature is about 10M instructions, as much as two or three whole requests;
    a P-256 signature is a small fraction of that (bench/instructions.py --proxy).
    Every TLS client of the last fifteen years accepts P-256. The certificate is mitmproxy's own (its names,
    validity and extensions), signed anew with the EC key. A CA already in confdir is kept, whatever its key: clients
    trust it. Covered by tests/test_internals.py and every HTTPS_PROXY test."""

    def wrap(original):
        def create_ca(organization: str, cn: str, key_size: int):
            _, template = original(organization=organization, cn=cn, key_size=key_size)
            key = ec.generate_private_key(ec.SECP256R1())
            builder = x509.CertificateBuilder(
                issuer_name=template.issuer, subject_name=template.subject, public_key=key.public_key(),
                serial_number=template.serial_number, not_valid_before=template.not_valid_before_utc,
                not_valid_after=template.not_valid_after_utc)
            for extension in template.extensions:
                value = extension.value
                if isinstance(value, x509.SubjectKeyIdentifier):
                    value = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
                builder = builder.add_extension(value, extension.critical)
            return key, builder.sign(private_key=key, algorithm=hashes.SHA256())

        return create_ca

    _replace("certs.create_ca", certs, "create_ca", wrap)


def close_connections_cancelled_mid_event() -> None:
    """mitmproxy closes a connection by command (CloseConnection: a WebSocket the gateway closed, a killed flow)
    by cancelling the task reading it. Where that task is waiting for the server-event lock, because the event
    that closed it was being handled when the connection's next data arrived (a client still sending, as a
    Realtime client streaming audio), the cancellation lands in `await self.server_event(DataReceived)`, outside
    the read loop's CancelledError handling: `ConnectionHandler.handle_connection` ends without closing its
    writer or forgetting its transport. The socket then stays open and unread: the client never gets its close
    frame nor EOF, and waits. This wraps it to close what it left. Covered by tests/test_realtime.py (a client
    sending audio in a burst when its session is refused)."""

    def wrap(original):
        async def handle_connection(self, connection):
            try:
                await original(self, connection)
            except asyncio.CancelledError:
                io = self.transports.pop(connection, None)  # None: handle_connection closed it itself
                if io is not None and io.writer is not None:
                    io.writer.close()
                raise

        return handle_connection

    _replace("ConnectionHandler.handle_connection", server.ConnectionHandler, "handle_connection", wrap)


def _no_type_check(self) -> None:
    pass


def drop_debug_type_checks() -> None:
    """mitmproxy type-checks every field of each request and response it builds (`MessageData.__post_init__`),
    but only `if __debug__`: a development aid that `python -O` removes, and about 6% of the gateway's CPU
    (bench/profile.md). The lean launcher drops it the same way, without -O's other effects; mitmdump and
    mitmweb keep it. A no-op if mitmproxy has no such check. Checked by tests/test_hook_index.py."""
    if "__post_init__" in vars(http.MessageData):  # its dataclass __init__s call it: keep a callable
        _replace("MessageData.__post_init__", http.MessageData, "__post_init__", lambda original: _no_type_check)


_header_keys: dict[str | bytes, bytes] = {}  # a looked-up name -> its lowered bytes: names come from code


def _header_key(name: str | bytes) -> bytes:
    key = _header_keys.get(name)
    if key is None:
        key = (name.encode("utf-8", "surrogateescape") if isinstance(name, str) else http._always_bytes(name)).lower()
        if len(_header_keys) < 1024:
            _header_keys[name] = key
    return key


def _header_values(self, name: str | bytes) -> list[str]:
    key = _header_key(name)
    size = len(key)  # bytes.lower() keeps the length: most fields are passed over without lowering them
    return [value.decode("utf-8", "surrogateescape") for field, value in self.fields
            if len(field) == size and field.lower() == key]


def _header_get(self, name: str | bytes, default=None):
    values = _header_values(self, name)
    return ", ".join(values) if values else default  # folded as Headers._reduce_values folds them


def _header_in(self, name: str | bytes) -> bool:
    key = _header_key(name)
    size = len(key)
    for field, _ in self.fields:  # a loop, not any() over a generator: most lookups walk every field
        if len(field) == size and field.lower() == key:
            return True
    return False


def quicker_header_lookups() -> None:
    """Every header lookup (`headers.get`, `headers[...]`, `in`) goes through `Headers.get_all`, which lowercases
    each field's name through a static method call per field (`_MultiDict.get_all` -> `self._kconv`), and `get`
    and `in` are the Mapping mixin's, which raise and catch a KeyError for every absent header; mitmproxy and the
    gateway make dozens of lookups per request, most for headers a request lacks, several % of the lean
    gateway's CPU (bench/profile.md). The same lookups written out: the values, as str, of the fields whose
    name equals `name` ignoring case, a field of another length passed over without lowering it (`get` folds
    them with ", " as `headers[name]` does). Checked against mitmproxy's own by tests/test_hook_index.py."""
    if "get_all" in vars(http.Headers):
        _replace("Headers.get_all", http.Headers, "get_all", lambda original: _header_values)
    for name, fast in (("get", _header_get), ("__contains__", _header_in)):
        if getattr(http.Headers, name) in (getattr(Mapping, name), fast):  # else mitmproxy has its own now
            _replace(f"Headers.{name}", http.Headers, name, lambda original, fast=fast: fast)


class _CheaperIds:
    """What mitmproxy.connection and mitmproxy.flow see as `uuid`: their one use is `str(uuid.uuid4())`."""

    def __init__(self) -> None:
        self._random = random.Random(os.urandom(32))

    def uuid4(self) -> str:
        bits = self._random.getrandbits(128) & ~(0xF000 << 64) & ~(0xC000 << 48) | (0x4000 << 64) | (0x8000 << 48)
        h = "%032x" % bits
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def cheaper_flow_ids() -> None:
    """Every flow and every connection gets an id, `str(uuid.uuid4())`: os.urandom, a UUID object and its str,
    about 2% of the lean gateway's CPU (bench/profile.md). The ids name flows and connections within one process
    (and in mitmweb's URLs, behind its login token): they must be unique, not secret. The same version-4 UUID
    strings from a per-process generator seeded by os.urandom. Request ids (`req_...`) stay secrets-made."""
    ids = _CheaperIds()
    for module in (connection, mitmproxy_flow):
        if getattr(module, "uuid", None) is uuid:
            _replace(f"{module.__name__}.uuid", module, "uuid", lambda original: ids)


_hook_fields: dict[type, tuple[str, ...]] = {}  # a hook class -> its dataclass fields' names, in order


def _hook_args(self) -> list:
    names = _hook_fields.get(type(self))
    if names is None:
        names = _hook_fields[type(self)] = tuple(field.name for field in dataclasses.fields(self))
    return [getattr(self, name) for name in names]


def cheaper_hook_args() -> None:
    """Every hook call reads its arguments with `Hook.args`, which walks `dataclasses.fields` anew (0.6 us, about
    ten times a request). The same names, read once per hook class. Checked by tests/test_hook_index.py."""
    if "args" in vars(hooks.Hook):
        _replace("Hook.args", hooks.Hook, "args", lambda original: _hook_args)


def _task_debug_info(task: asyncio.Task, *, name: str, client: tuple | None = None) -> None:
    task.created = time.time()  # type: ignore[attr-defined]
    task.set_name(name)
    if client:
        task.client = client  # type: ignore[attr-defined]


def plainer_task_names() -> None:
    """mitmproxy names every task it starts (several a request) and, unless run with -O, looks PYTEST_CURRENT_TEST
    up in os.environ each time to add the test's name: 1.1 us a task, for its own test suite. The same name,
    creation time and client, without the lookup. Checked by tests/test_hook_index.py."""
    _replace("asyncio_utils.set_task_debug_info", asyncio_utils, "set_task_debug_info",
             lambda original: _task_debug_info)


_VALID_HOSTS_KEPT = 1024  # hosts remembered; beyond, checked each time (clients choose hosts: memory stays bound)


def _remembering(is_valid_host: Callable[[str | bytes], bool]) -> Callable[[str | bytes], bool]:
    known: dict[str | bytes, bool] = {}

    def remembered(host: str | bytes) -> bool:
        valid = known.get(host)
        if valid is None:
            valid = is_valid_host(host)
            if len(known) < _VALID_HOSTS_KEPT:
                known[host] = valid
        return valid

    return remembered


def remembered_valid_hosts() -> None:
    """Every request's host is checked as a DNS name or an IP address (`check.is_valid_host`: an IDNA decode in
    pure Python, 2.6 us) though a gateway sees the same few hosts again and again. The answer, remembered per
    host. Checked by tests/test_hook_index.py."""
    remembered = _remembering(check.is_valid_host)
    _replace("check.is_valid_host", check, "is_valid_host", lambda original: remembered)
    _replace("url.is_valid_host", url, "is_valid_host", lambda original: remembered)


_HELLOS_WAITING = 64  # ClientHellos parsed once and not asked for again yet, at most


def _parsed_once(parse: Callable[[bytes], tls.ClientHello | None]) -> Callable[[bytes], tls.ClientHello | None]:
    waiting: dict[bytes, tls.ClientHello] = {}

    def parse_client_hello(data: bytes) -> tls.ClientHello | None:
        key = bytes(data)
        if (hello := waiting.pop(key, None)) is not None:
            return hello
        hello = parse(data)
        if hello is not None:
            if len(waiting) >= _HELLOS_WAITING:  # connections ignored after the first parse never ask again
                del waiting[next(iter(waiting))]
            waiting[key] = hello
        return hello

    return parse_client_hello


def parse_each_client_hello_once() -> None:
    """Every intercepted TLS connection's ClientHello is parsed twice from the same bytes: by the next_layer addon
    (its SNI, for allow_hosts) and by the ClientTLSLayer it decides on (for the tls_clienthello hook), each a
    Kaitai parse in pure Python of about 150 reads. The second parse of the same bytes gets the first's
    ClientHello: the parse is a function of the bytes alone, and nothing changes a ClientHello. Checked by
    tests/test_internals.py."""
    _replace("tls.parse_client_hello", tls_layer, "parse_client_hello", _parsed_once)
    once = tls_layer.parse_client_hello
    _replace("next_layer.parse_client_hello", next_layer, "parse_client_hello", lambda original: once)


_ATOMIC = frozenset({type(None), bool, int, float, str, bytes})  # deepcopy gives these back as they are


def _option_current(self) -> object:
    value = self._default if self.value is optmanager.unset else self.value
    return value if type(value) in _ATOMIC else copy.deepcopy(value)


def cheaper_option_reads() -> None:
    """Every `ctx.options.name` read deep-copies the option's value, twice where it was never set (its default
    is a deep copy too): 0.5 us for a flag, 2.5 us for a list, read by mitmproxy and the addons several times a
    request. The same values: a number, string or None as it is (deepcopy returns those unchanged), anything else
    copied once. Checked by tests/test_hook_index.py."""
    _replace("_Option.current", optmanager._Option, "current", lambda original: _option_current)


def _fork(self: context.Context) -> context.Context:
    forked = object.__new__(type(self))
    forked.client, forked.options, forked.server = self.client, self.options, self.server
    forked.layers = self.layers.copy()
    return forked


def thriftier_context_forks() -> None:
    """Every request's stream (and every new connection's layer) starts from `Context.fork`, which runs
    `Context.__init__` and so builds a `Server` (about twenty checked attribute writes and an id) only to
    replace it with the parent's at once: 5.8 us a fork. The same context, made without the Server nobody sees.
    Checked by tests/test_hook_index.py."""
    _replace("Context.fork", context.Context, "fork", lambda original: _fork)


def _tunnel_events(client: connection.Client, tunnel: Layer) -> Callable[[events.Event], Iterator[commands.Command]]:
    """What the HTTP/1 CONNECT stream's outer layers make of the tunnel's events and commands, without them."""

    def handle_event(event: events.Event):
        for command in tunnel.handle_event(event):  # the tunnel's NextLayer: its handle_event moves once decided
            if isinstance(command, commands.CloseConnection) and command.connection == client:
                # HttpStream.passthrough and Http1Server.send: a full close, and none once the client can't write
                if not client.state & connection.ConnectionState.CAN_WRITE:
                    continue
                if type(command) is not commands.CloseConnection:  # a half-close of a CloseTcpConnection
                    command = commands.CloseConnection(client)
            yield command

    return handle_event


def shorter_connect_tunnels() -> None:
    """An HTTPS_PROXY client's requests travel in a CONNECT tunnel, and every event and command of every
    request crossed three layers that do nothing for it once the tunnel is up: the HttpLayer that took the
    CONNECT, its Http1Server (client bytes turned into RequestData) and the CONNECT's HttpStream (turned back
    into DataReceived for the tunnel; outgoing bytes the same way round). With an HTTP/1 client the connection
    carries nothing else from then on, so once the CONNECT is answered 2xx the mode layer hands events straight
    to the tunnel and commands pass as those layers would have passed them. HTTP/2 clients (other streams on
    the connection) and proxy_debug (each layer logs) keep the full stack. 0.3 M instructions a request.
    Checked by tests/test_internals.py (the stack taken) and every HTTPS_PROXY test."""

    def wrap(original):
        def handle_connect_finish(self):
            yield from original(self)
            layers = self.context.layers
            if (self._handle_event == self.passthrough and self.debug is None and len(layers) == 3
                    and type(layers[0]) is modes.HttpProxy and type(layers[1]) is http_layer.HttpLayer
                    and type(layers[1].connections.get(self.context.client)) is _http1.Http1Server):
                layers[0]._handle_event = _tunnel_events(self.context.client, self.child_layer)

        return handle_connect_finish

    _replace("HttpStream.handle_connect_finish", http_layer.HttpStream, "handle_connect_finish", wrap)


def _finished(event: events.Event) -> Iterator[commands.Command]:
    """A dropped stream's state: nothing routes events to it any more, and none would be answered."""
    yield from ()


def _unlink(stream: http_layer.HttpStream) -> None:
    """Break the two reference cycles every HttpStream is in, so that reference counting frees it, its flow and
    its context at once: its states are its own bound methods, and its context's layers list holds it."""
    stream.client_state = stream.server_state = _finished
    layers = stream.context.layers
    if stream in layers:
        layers.remove(stream)


class _Streams(dict):
    """HttpLayer.streams, which unlinks a stream once it is dropped (DropStream pops it), after the event in
    which it was dropped has run its course (the stream's own generator may still be finishing then)."""

    __slots__ = ()

    def pop(self, stream_id, *default):
        stream = dict.pop(self, stream_id, *default)
        if type(stream) is http_layer.HttpStream and (loop := asyncio.events._get_running_loop()) is not None:
            loop.call_soon(_unlink, stream)  # no loop: a layer test, left to the collector
        return stream


def free_finished_streams() -> None:
    """Every request's HttpStream was left in reference cycles when it finished, with its flow, request,
    response, headers and context (37 objects a request through the forward endpoint), for the cyclic garbage
    collector to find: its young collections ran every 50 requests or so and cost 18 us of CPU a request. A
    dropped stream is unlinked instead, and freed by reference counting. Checked by tests/test_internals.py."""

    def wrap(original):
        def __init__(self, context, mode):
            original(self, context, mode)
            self.streams = _Streams()

        __init__.__wrapped__ = original  # mitmproxy's own, for tests/test_internals.py to compare
        return __init__

    _replace("HttpLayer.__init__", http_layer.HttpLayer, "__init__", wrap)


def aim(request: http.Request, scheme: str, host: str, port: int) -> None:
    """`request.scheme, request.host, request.port = scheme, host, port`, with its Host header and authority
    written once instead of twice (the host and the port setters each rewrite them: 2 us). `host` is a str."""
    request.scheme = scheme
    request.data.host, request.data.port = host, port
    request._update_host_and_authority()


def cancel_server_task(proxyserver, client: connection.Client, server: connection.Server, reason: str) -> bool:
    """Close `server` as mitmproxy does when it cannot write to it (`ConnectionHandler.drain_writers`): by
    cancelling the task that owns it, found through the Proxyserver addon's `connections` and the handler's
    `transports`. mitmproxy 12 has no connect or read timeout towards servers, and `flow.kill()` does not
    stop a flow waiting on a silent provider (mitmproxy issue #4711); addons.proxy.upstream_timeouts needs
    this to enforce its timeouts. False when the connection has no open task. Covered end to end by
    tests/test_upstream_faults.py."""
    handler = proxyserver.connections.get(client.id)
    transport = handler.transports.get(server) if handler else None
    if transport is None or transport.handler is None or transport.handler.done():
        return False
    transport.handler.cancel(reason)
    return True


def close_websocket(proxyserver, flow: http.HTTPFlow, code: int, reason: str) -> bool:
    """Close `flow`'s WebSocket on both sides with `code` and `reason`, as if the server had sent that close
    frame: the WebsocketLayer sends it on to the client, closes towards the server, and `websocket_end`
    follows. mitmproxy has no command for this (`flow.kill()` drops both connections with no close frame,
    which clients read as 1006 abnormal closure). The close event is queued on the layer's server-side wsproto
    connection, so it must be called from the `websocket_message` hook of a message from the server (or one
    injected towards the client): the layer then relays that message and takes the close next, in order.
    The layer is found through the Proxyserver addon's `connections` and the layer tree. False where there is
    none open (the caller then kills the flow). Covered end to end by tests/test_realtime.py."""
    handler = proxyserver.connections.get(flow.client_conn.id)
    stack = [handler.layer] if handler is not None else []
    seen: set[int] = set()
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, websocket_layer.WebsocketLayer) and layer.flow is flow:
            server_ws = getattr(layer, "server_ws", None)
            if server_ws is None or server_ws.state is not wsproto.ConnectionState.OPEN:
                return False
            server_ws._events.append(wsproto.events.CloseConnection(code=code, reason=reason))
            return True
        # children: NextLayer.layer, child_layer, HttpLayer.streams, and a layer that handed its events on to
        # a child it keeps no reference to but its bound `_handle_event` (HttpProxy)
        stack.extend(child for child in (getattr(layer, "layer", None), getattr(layer, "child_layer", None),
                                         getattr(getattr(layer, "_handle_event", None), "__self__", None))
                     if isinstance(child, Layer))
        if isinstance(streams := getattr(layer, "streams", None), dict):
            stack.extend(streams.values())
    return False


# -- mitmweb -----------------------------------------------------------------------------------------


class WebView(Protocol):
    """What mitmweb may show (addons.proxy.web_redaction.Masker): the object itself, or a masked copy."""

    def request(self, request: http.Request) -> http.Request: ...

    def flow(self, flow): ...

    def options(self, dumped: dict) -> dict: ...


_web_view: WebView | None = None
_WEB_VIEWS = "app.flow_to_json"  # the label of the first web patch: whether they are installed


def under_mitmweb() -> bool:
    web = sys.modules.get("mitmproxy.tools.web.master")
    return web is not None and isinstance(getattr(ctx, "master", None), web.WebMaster)


def show_web_through(view: WebView) -> None:
    """Let mitmweb show flows and options only as `view` shows them; refuses when mask_web_views is not
    installed, rather than run a mitmweb that shows provider keys."""
    global _web_view
    if _WEB_VIEWS not in patched():
        raise RuntimeError("mitmweb's views are not masked: run the gateway with -s addons/gateway.py, which "
                           "calls addons.proxy.mitmproxy_internals.install(web=True). Refusing to show provider keys.")
    _web_view = view


def stop_showing_web_through(view: WebView) -> None:
    global _web_view
    if _web_view is view:
        _web_view = None


def mask_web_views() -> None:
    """Keep credentials out of everything mitmweb shows, also while a request is in flight. The provider
    key has to be on the live `flow.request` until the request is sent, and a non-streamed answer can take
    minutes to start; mitmweb reads the live flow whenever it serializes one, so what it shows is masked at
    serialization (the flow that goes upstream is untouched). Each of mitmweb's ways out is wrapped to go
    through the view that addons.proxy.web_redaction.WebRedaction hands to show_web_through (unmasked while
    none is): /flows and the /updates websocket (`app.flow_to_json`), request content views
    (`app.FlowContentView.message_to_json`; the `query` view shows `?key=`), /flows/dump and save.file
    (`io.FlowWriter.add`), "Copy as cURL/HTTPie/raw" (`export.formats`), the command bar's cut
    (`cut.extract`), save.har and hardump (`savehar.SaveHar.flow_entry`), and the Options view
    (`optmanager.dump_dicts`). Covered end to end by tests/test_mitmweb.py."""
    from mitmproxy import io, optmanager
    from mitmproxy.addons import cut, export, savehar
    from mitmproxy.tools.web import app

    def shown_flow(flow):
        return flow if _web_view is None else _web_view.flow(flow)

    def flow_to_json(original):
        def shown(flow):
            data = original(flow)
            if _web_view is not None and isinstance(flow, http.HTTPFlow) and "request" in data:
                request = _web_view.request(flow.request)
                if request is not flow.request:
                    data["request"]["headers"] = tuple(request.headers.items(True))
                    data["request"]["path"] = request.path
            return data
        return shown

    def message_to_json(original):
        def shown(handler, view_name, message, flow, *args, **kwargs):
            if isinstance(flow, http.HTTPFlow) and message is flow.request:
                flow = shown_flow(flow)
                message = flow.request
            return original(handler, view_name, message, flow, *args, **kwargs)
        return shown

    def dump_dicts(original):
        def shown(opts, keys=None):
            dumped = original(opts, keys)
            return dumped if _web_view is None else _web_view.options(dumped)
        return shown

    def takes_flow(original):  # f(flow) -> ...
        return lambda flow, *args, **kwargs: original(shown_flow(flow), *args, **kwargs)

    def method_takes_flow(original):  # self.f(flow, ...) -> ...
        return lambda self, flow, *args, **kwargs: original(self, shown_flow(flow), *args, **kwargs)

    _replace(_WEB_VIEWS, app, "flow_to_json", flow_to_json)
    _replace("app.FlowContentView.message_to_json", app.FlowContentView, "message_to_json", message_to_json)
    _replace("io.FlowWriter.add", io.FlowWriter, "add", method_takes_flow)
    for name in list(export.formats):
        _replace(f"export.formats[{name}]", export.formats, name, takes_flow)
    _replace("cut.extract", cut, "extract", lambda original: lambda spec, flow: original(spec, shown_flow(flow)))
    _replace("savehar.SaveHar.flow_entry", savehar.SaveHar, "flow_entry", method_takes_flow)
    _replace("optmanager.dump_dicts", optmanager, "dump_dicts", dump_dicts)


# -- the one entry point -----------------------------------------------------------------------------


def install(*, lean: bool = False, web: bool = False) -> None:
    """Check the version, then put every patch in place (again: a no-op). `lean`: the tollgate-proxy
    process (drop_debug_type_checks, quicker_header_lookups, cheaper_flow_ids, cheaper_hook_args,
    plainer_task_names, remembered_valid_hosts, cheaper_option_reads, thriftier_context_forks,
    shorter_connect_tunnels, free_finished_streams, parse_each_client_hello_once); `web`: under
    mitmweb (mask_web_views)."""
    check_version()
    answer_errors_with(error_pages.json_error_response)
    reword_protocol_errors(error_pages.protocol_error_message)
    limit_request_bodies(request_limits.body_limit, request_limits.BODY_TOO_LARGE, request_limits.body_refusal)
    limit_request_heads(request_limits.header_limit, request_limits.head_refusal, request_limits.HEAD_TOO_LARGE)
    compare_single_user_with(proxyauth_compare.same_credentials)
    close_connections_cancelled_mid_event()
    ecdsa_certificate_authority()
    if lean:
        drop_debug_type_checks()
        quicker_header_lookups()
        cheaper_flow_ids()
        cheaper_hook_args()
        plainer_task_names()
        remembered_valid_hosts()
        cheaper_option_reads()
        thriftier_context_forks()
        shorter_connect_tunnels()
        free_finished_streams()
        parse_each_client_hello_once()
    if web:
        mask_web_views()
