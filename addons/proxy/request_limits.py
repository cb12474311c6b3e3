"""Bounds on what a client can make the gateway hold in memory: body, headers, metadata.

Request bodies. The gateway buffers a request's whole body (the meter reads it), and mitmproxy
has no limit by default. mitmproxy's `body_size_limit` would do, but it applies to responses as
well: a file download, a video or a large embeddings batch over the limit would be cut off. So
`tollgate_max_request_body` limits requests only. It acts where mitmproxy's own check does
(HttpStream.check_body_size, wrapped here): a declared Content-Length over the limit is refused
before any of the body is read, a chunked body as soon as what is buffered passes it. The client
gets 413 `request_too_large` (JSON, via addons.proxy.error_pages) and the connection is closed.

Request headers. mitmproxy's HTTP/1 server reads a request head of any size ("FIXME: protect
against header size DoS" in proxy/layers/http/_http1.py). With `tollgate_max_header_bytes`, a head
that grows past the limit without ending is answered 431 `request_headers_too_large` and the
connection closed, before it is parsed (Http1Server.read_headers, wrapped here). HTTP/2 and 3
heads, which their own decoders bound, are measured in `requestheaders` against the same limit.

Metadata. A metadata header over METADATA_MAX_BYTES is 431 `metadata_too_large` before its JSON is
parsed (addons.proxy.metadata then checks pairs and lengths: 400 `invalid_metadata`).

Ledger: these refusals happen before the gateway's `request` hook, so no request row is written
(as for every request refused before it is forwarded).

The two wraps are installed once per process; the end-to-end tests fail loudly if a mitmproxy
upgrade moves what they wrap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mitmproxy import ctx, http
from mitmproxy.exceptions import OptionsError
from mitmproxy.flow import Error
from mitmproxy.net.http.http1 import expected_http_body_size
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.utils import human

from addons.core.errors import HeadersTooLarge
from addons.proxy.error_pages import headers_too_large, new_request_id, refuse, tagged
from addons.proxy.flow_keys import METADATA_HEADERS, REQUEST_ID_KEY

METADATA_MAX_BYTES = 64 * 1024
BODY_TOO_LARGE = "Request body exceeds tollgate_max_request_body."


@dataclass(slots=True)
class Limits:
    body: int | None = None
    header_bytes: int | None = None


LIMITS = Limits()  # read by the wrapped mitmproxy internals; set by RequestLimits.configure


def head_size(request: http.Request) -> int:
    """The request line and header fields as HTTP/1 would send them."""
    line = len(request.method) + len(request.path) + 12
    return line + sum(len(name) + len(value) + 4 for name, value in request.headers.fields)


def _size(option: str) -> int | None:
    try:
        size = human.parse_size(getattr(ctx.options, option))
    except ValueError:
        raise OptionsError(f"{option} must be a size such as 65536, 64k or 32m, or 0 for no limit") from None
    if size is None or size < 0:
        raise OptionsError(f"{option} must not be negative")
    return size or None


class RequestLimits:
    def load(self, loader):
        loader.add_option(
            "tollgate_max_request_body", str, "32m",
            "Largest request body the gateway accepts (bytes, or with a k/m/g suffix; 0 for no limit). "
            "Larger ones get 413 before the body is read. Responses are not limited (see mitmproxy's "
            "body_size_limit for that). Raise it for large file uploads.",
        )
        loader.add_option(
            "tollgate_max_header_bytes", str, "64k",
            "Largest request head (request line and headers) the gateway accepts (bytes, or with a k/m "
            "suffix; 0 for no limit). Larger ones get 431 and the connection is closed.",
        )
        install()

    def configure(self, updated):
        if "tollgate_max_request_body" in updated:
            LIMITS.body = _size("tollgate_max_request_body")
        if "tollgate_max_header_bytes" in updated:
            LIMITS.header_bytes = _size("tollgate_max_header_bytes")

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        if LIMITS.header_bytes and head_size(flow.request) > LIMITS.header_bytes:
            refuse(flow, headers_too_large())
        elif any(len(flow.request.headers.get(name, "")) > METADATA_MAX_BYTES for name in METADATA_HEADERS):
            refuse(flow, HeadersTooLarge("metadata_too_large",
                                         f"request metadata must be at most {METADATA_MAX_BYTES} bytes"))

    def done(self):
        LIMITS.body = LIMITS.header_bytes = None


# -- the two wraps of mitmproxy internals ------------------------------------------------------


def _declared_size(request: http.Request) -> int | None:
    try:
        return expected_http_body_size(request)
    except ValueError:
        return None  # mitmproxy answers an invalid Content-Length itself


def _head_ends_within(buf, limit: int) -> bool:
    head = bytes(buf)[: limit + 4]
    return b"\r\n\r\n" in head or b"\n\n" in head


def install() -> None:
    stream, server = http_layer.HttpStream, _http1.Http1Server
    if getattr(stream.check_body_size, "tollgate", False):
        return
    check_body_size, read_headers = stream.check_body_size, server.read_headers

    def limited_check_body_size(self, request: bool):
        limit = LIMITS.body
        if request and limit and self.flow is not None:
            size = len(self.request_body_buf) or _declared_size(self.flow.request)
            if size is not None and size > limit:
                # As mitmproxy's own body_size_limit refusal does (HttpStream.check_body_size).
                if not self.request_body_buf:
                    yield http_layer.HttpRequestHeadersHook(self.flow)
                self.flow.error = Error(BODY_TOO_LARGE)
                yield http_layer.HttpErrorHook(self.flow)
                too_large = http_layer.ErrorCode.REQUEST_TOO_LARGE
                message = tagged(BODY_TOO_LARGE, self.flow.metadata.setdefault(REQUEST_ID_KEY, new_request_id()))
                yield http_layer.SendHttp(
                    http_layer.ResponseProtocolError(self.stream_id, message, too_large), self.context.client
                )
                self.client_state = self.state_errored
                self.flow.live = False
                return True
        return (yield from check_body_size(self, request))

    def limited_read_headers(self, event):
        limit = LIMITS.header_bytes
        unfinished = isinstance(event, events.DataReceived) and limit and len(self.buf) > limit
        if unfinished and not _head_ends_within(self.buf, limit):
            peer = human.format_address(self.conn.peername)
            yield commands.Log(f"{peer}: request head over tollgate_max_header_bytes", logging.INFO)
            yield commands.SendData(self.conn, _http1.make_error_response(431, "Request header fields too large"))
            yield commands.CloseConnection(self.conn)
            self.state = self.done
            return
        return (yield from read_headers(self, event))

    limited_check_body_size.tollgate = True
    stream.check_body_size = limited_check_body_size
    server.read_headers = limited_read_headers
