"""Make the errors mitmproxy itself answers with (upstream unreachable, bad request line, ...)
JSON in the gateway's error shape, carrying the request id when the flow had one. A provider
connection that addons.proxy.upstream_timeouts closed fails with its "timed out" reason, hence 504.

mitmproxy renders these as HTML deep inside its HTTP/1 layer with no hook to change them:
addons/proxy/mitmproxy_internals.py puts json_error_response and protocol_error_message there.
"""

from __future__ import annotations

import secrets

from mitmproxy import http
from mitmproxy.net.http import http1

from addons.core.errors import (
    BadRequest,
    GatewayError,
    HeadersTooLarge,
    PayloadTooLarge,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from addons.proxy.flow_keys import ADMIN_KEY, CLIENT_FORMAT_KEY, REQUEST_ID_HEADERS, REQUEST_ID_KEY, TIMEOUT_KEY
from addons.proxy.metrics_recorder import refused
from addons.rewrite.formats import CLIENT_FORMATS

_TAG = "\x00tollgate-request-id:"
_FORMAT_TAG = "\x00tollgate-client-format:"  # a /v1/rewrite request's: its error is answered in that shape
# What addons.proxy.upstream_guard puts in server.error; mitmproxy reports it as a 502 quoting it.
UPSTREAM_REFUSED = "tollgate refused the upstream address"
ADMIN_DOWN = "tollgate admin process unreachable"  # a request passed to the admin process found no listener


def new_request_id() -> str:
    return f"req_{secrets.token_hex(12)}"


def json_response(status: int, body: bytes, request_id: str | None = None) -> http.Response:
    headers = {"content-type": "application/json"}
    if request_id:
        headers.update(dict.fromkeys(REQUEST_ID_HEADERS, request_id))
    return http.Response.make(status, body, headers)


def tagged(message: str, request_id: str, client_format: str | None = None) -> str:
    """A protocol error message that carries the request id (and a rewrite's client format) to
    json_error_response."""
    return f"{message}{_TAG}{request_id}" + (f"{_FORMAT_TAG}{client_format}" if client_format else "")


def headers_too_large() -> HeadersTooLarge:
    """The 431 for a request head over tollgate_max_header_bytes, whether mitmproxy's HTTP/1 reader or the
    requestheaders check (HTTP/2 and 3) caught it."""
    return HeadersTooLarge("request_headers_too_large", "the request headers are larger than this gateway accepts")


def _error_for(status: int, message: str) -> GatewayError:
    """Fixed, generic messages: mitmproxy's text may quote client bytes or addresses."""
    if status == 502 and ADMIN_DOWN in message:
        error = UpstreamUnreachable("admin_unavailable", "the admin process is not answering (it is restarted "
                                                         "automatically); retry in a few seconds")
        error.status = 503
        return error
    if status == 502 and UPSTREAM_REFUSED in message:
        return UpstreamUnreachable("upstream_address_refused",
                                   "the provider's host resolved to a private or reserved address; not connecting")
    if status == 413:
        return PayloadTooLarge("request_too_large", "the request body is larger than this gateway accepts")
    if status == 431:
        return headers_too_large()
    if status == 502 and "timed out" in message.lower():
        return UpstreamTimeout("upstream_timeout", "the provider did not answer in time")
    if status == 502:
        return UpstreamUnreachable("upstream_unreachable", "the provider could not be reached")
    if 400 <= status < 500:
        error = BadRequest("bad_http_request", "the request could not be parsed or routed")
        error.status = status
        return error
    error = GatewayError("proxy_error", "the gateway could not complete the request")
    error.status = status
    return error


def json_error_response(status: int, message: str = "") -> bytes:
    message, _, request_id = message.partition(_TAG)
    request_id, _, client_format = request_id.partition(_FORMAT_TAG)
    error = _error_for(status, message)
    if not error.code.startswith("upstream_"):  # a provider's failure is the request's ledger row
        refused(error.status, error.code)
    headers = http.Headers(content_type="application/json", connection="close")
    request_id = request_id or new_request_id()  # a refusal before any hook ran gets one of its own
    for name in REQUEST_ID_HEADERS:
        headers[name] = request_id
    client = CLIENT_FORMATS.get(client_format)  # a rewrite's client reads its own error shape
    body = client.error_from_hub(error.status, error.message, error.code) if client else error.body()
    return http1.assemble_response(http.Response.make(error.status, body, headers))


def refuse(flow: http.HTTPFlow, error: GatewayError, headers: dict[str, str] | None = None) -> None:
    """Answer a flow with a gateway error from a hook that runs before the gateway's, request id included."""
    request_id = flow.metadata.setdefault(REQUEST_ID_KEY, new_request_id())
    refused(error.status, error.code)
    flow.response = json_response(error.status, error.body(), request_id)
    flow.response.headers.update(headers or {})


def protocol_error_message(metadata: dict, message: str) -> str:
    """A protocol error's message as json_error_response should read it: a connection closed for a
    timeout (it fails as "server closed connection") says why, and the request id goes along."""
    if _TAG in message:
        return message
    message = ADMIN_DOWN if metadata.get(ADMIN_KEY) else metadata.get(TIMEOUT_KEY, message)
    if request_id := metadata.get(REQUEST_ID_KEY):
        message = tagged(message, request_id, metadata.get(CLIENT_FORMAT_KEY))
    return message


def strip_tag(message: str) -> str:
    return message.partition(_TAG)[0]
