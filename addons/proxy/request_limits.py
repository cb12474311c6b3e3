"""Bounds on what a client can make the gateway hold in memory: body, headers, metadata.

Request bodies. The gateway buffers a request's whole body (the meter reads it), and mitmproxy
has no limit by default. mitmproxy's `body_size_limit` would do, but it applies to responses as
well: a file download, a video or a large embeddings batch over the limit would be cut off. So
`tollgate_max_request_body` limits requests only. It acts where mitmproxy's own check does
(HttpStream.check_body_size): a declared Content-Length over the limit is refused
before any of the body is read, a chunked body as soon as what is buffered passes it. The client
gets 413 `request_too_large` (JSON, via addons.proxy.error_pages) and the connection is closed.

Request headers. mitmproxy's HTTP/1 server reads a request head of any size ("FIXME: protect
against header size DoS" in proxy/layers/http/_http1.py). With `tollgate_max_header_bytes`, a head
that grows past the limit without ending is answered 431 `request_headers_too_large` and the
connection closed, before it is parsed (Http1Server.read_headers). HTTP/2 and 3
heads, which their own decoders bound, are measured in `requestheaders` against the same limit.

Metadata. A metadata header over METADATA_MAX_BYTES is 431 `metadata_too_large` before its JSON is
parsed (addons.proxy.metadata then checks pairs and lengths: 400 `invalid_metadata`).

Ledger: these refusals happen before the gateway's `request` hook, so no request row is written
(as for every request refused before it is forwarded).

The HTTP/1 limits act inside mitmproxy, through the two wraps in addons/proxy/mitmproxy_internals.py;
this module says what they enforce (body_limit, body_refusal, header_limit, head_refusal).
"""

from __future__ import annotations

from dataclasses import dataclass

from mitmproxy import ctx, http
from mitmproxy.exceptions import OptionsError
from mitmproxy.utils import human

from addons.core.errors import HeadersTooLarge
from addons.proxy.error_pages import headers_too_large, json_error_response, new_request_id, refuse, tagged
from addons.proxy.flow_keys import METADATA_HEADERS, REQUEST_ID_KEY

METADATA_MAX_BYTES = 64 * 1024
BODY_TOO_LARGE = "Request body exceeds tollgate_max_request_body."
HEAD_TOO_LARGE = "request head over tollgate_max_header_bytes"  # logged, after the client's address


@dataclass(slots=True)
class Limits:
    body: int | None = None
    header_bytes: int | None = None


LIMITS = Limits()  # read by the wrapped mitmproxy internals (body_limit, header_limit); set by RequestLimits.configure


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


# -- what the two wraps in addons/proxy/mitmproxy_internals.py enforce -----------------------------


def body_limit() -> int | None:
    return LIMITS.body


def header_limit() -> int | None:
    return LIMITS.header_bytes


def body_refusal(flow: http.HTTPFlow) -> str:
    """The protocol error for a body over the limit (413 via error_pages), with the flow's request id."""
    return tagged(BODY_TOO_LARGE, flow.metadata.setdefault(REQUEST_ID_KEY, new_request_id()))


def head_refusal() -> bytes:
    """The 431 for an HTTP/1 head over the limit, sent before it is parsed (so no request id of its own)."""
    return json_error_response(431, "Request header fields too large")
