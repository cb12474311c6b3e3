"""Optional retries of a provider's 429 / 5xx answer to a non-streamed request, before the client
has any of it. Off by default (`tollgate_upstream_retries=0`).

mitmproxy cannot send a request again over its own server connection: an HTTP flow is one exchange,
and no hook can restart it. What an addon can do is hold the flow in its `response` hook, which
mitmproxy awaits before it sends the response on, and resend the request itself. Here that is the
request as the Gateway forwarded it (the provider's URL, the operator's key, the gateway's body),
resent with httpx; the last answer replaces flow.response. This addon runs *before* the Gateway in
the chain, so the Gateway meters and records only the answer the client gets: one ledger row, one
charge. The answer waited for comes from the provider's `retry-after-ms` / `retry-after`, else 0.25 s
doubled per attempt; a longer wait than `tollgate_upstream_retry_max_wait_ms`, or than what is left
of the provider's `total` timeout, ends the retries, and the answer is passed on as it is. A
provider's `x-should-retry: false` is honoured.

Retried: a 429, 500, 502, 503, 504 or 529 answer to a model call (an endpoint the meter knows) that
the caller did not ask to stream, through the proxy's own connection to the provider.

Not retried, and why:
  * a stream: its response goes on to the client chunk by chunk as it arrives; a resent one would
    have to be held back whole (and the usage the gateway asked for would reach the client).
  * an answer whose bytes the client has started to receive: nothing can be taken back.
  * a connect failure: mitmproxy answers the client with its 502 right after the `error` hook,
    whatever the hook does (flow.response set there is ignored), and the hook before it,
    `server_connect_error`, cannot make mitmproxy connect again. Only probing the provider with a
    connection of our own from `server_connect` before every new connection could stand in, at one
    more TCP handshake per connection and still racing the real connect; not done.
  * `--mode upstream:` and `client_certs`: the resend would bypass the upstream proxy or could not
    present the certificate.
The resend is not mitmproxy's connection: it verifies the provider's certificate as mitmproxy is
told to (`ssl_insecure`, `ssl_verify_upstream_trusted_ca` / `_confdir`, else certifi), speaks
HTTP/1.1, and runs no server_connect hooks. A client SDK that retries too multiplies the attempts,
which is why this is off unless the operator turns it on.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import weakref
from email.utils import parsedate_to_datetime

import certifi
import httpx
from mitmproxy import ctx, http
from mitmproxy.exceptions import OptionsError
from mitmproxy.proxy.mode_specs import UpstreamMode
from mitmproxy.utils.asyncio_utils import create_task

from addons.core.catalog import Timeouts
from addons.proxy.flow_keys import ENDPOINT_KEY, PROVIDER_KEY, RETRIES_KEY, STREAM_KEY
from addons.proxy.gateway_config import SharedConfig
from addons.proxy.upstream_guard import RESOLVE_TIMEOUT_S, Resolver, is_public, resolve

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 529})
BACKOFF_SECONDS = 0.25  # without retry-after: 0.25, 0.5, 1, ... s
MAX_RETRIES = 10
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                        "upgrade", "content-length"})


def retry_wait(headers, attempt: int, now: float | None = None) -> float:
    """Seconds to wait before resending: what the provider asks for, else the backoff of `attempt` (0-based)."""
    try:
        return max(float(headers["retry-after-ms"]) / 1000, 0.0)
    except (KeyError, ValueError):
        pass
    value = headers.get("retry-after", "")
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - (time.time() if now is None else now), 0.0)
    except (TypeError, ValueError, IndexError):
        return BACKOFF_SECONDS * 2**attempt


def should_retry(response: http.Response) -> bool:
    return response.status_code in RETRY_STATUSES and response.headers.get("x-should-retry", "").lower() != "false"


class UpstreamRetries:
    def __init__(self, config: SharedConfig | None = None, transport: httpx.AsyncBaseTransport | None = None,
                 resolver: Resolver = resolve):
        """config: the chain's, for the providers' timeouts and catalog hosts (alone: its own, loaded on
        configure when retries are on); transport: httpx's, for tests; resolver: to check a catalog host's
        address as UpstreamGuard does."""
        self.config = config if config is not None else SharedConfig()
        self.transport = transport
        self.resolver = resolver
        self.client: httpx.AsyncClient | None = None
        self._sent: weakref.WeakKeyDictionary[http.HTTPFlow, http.Request] = weakref.WeakKeyDictionary()

    def load(self, loader):
        loader.add_option(
            "tollgate_upstream_retries", int, 0,
            "How many times a provider's 429 or 5xx answer to a non-streamed model call is retried before the "
            "client gets anything (0: never). Never a stream, never a connect failure, never once a byte went "
            "to the client; see addons/proxy/upstream_retries.py.",
        )
        loader.add_option(
            "tollgate_upstream_retry_max_wait_ms", int, 2000,
            "Longest wait before a retry, in milliseconds: a provider asking (retry-after) for a longer one gets "
            "its answer passed on at once. Without retry-after the wait is 250 ms, doubled per attempt.",
        )

    def configure(self, updated):
        if "tollgate_upstream_retries" in updated and not 0 <= ctx.options.tollgate_upstream_retries <= MAX_RETRIES:
            raise OptionsError(f"tollgate_upstream_retries must be between 0 and {MAX_RETRIES}")
        if "tollgate_upstream_retry_max_wait_ms" in updated and ctx.options.tollgate_upstream_retry_max_wait_ms < 0:
            raise OptionsError("tollgate_upstream_retry_max_wait_ms must not be negative")
        if ctx.options.tollgate_upstream_retries:
            self.config.load()
        if {"ssl_insecure", "ssl_verify_upstream_trusted_ca", "ssl_verify_upstream_trusted_confdir"} & set(updated):
            self._drop_client()

    async def done(self):
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Keep the request as it was sent, credentials included: Redaction scrubs them next."""
        if self._retryable(flow):
            self._sent[flow] = flow.request.copy()

    def _retryable(self, flow: http.HTTPFlow) -> bool:
        if not ctx.options.tollgate_upstream_retries or flow.error or not flow.live or flow.response is None:
            return False
        metadata = flow.metadata
        if PROVIDER_KEY not in metadata or metadata.get(STREAM_KEY) or metadata.get(ENDPOINT_KEY, "other") == "other":
            return False
        return should_retry(flow.response) and self._can_resend(flow)

    async def response(self, flow: http.HTTPFlow) -> None:
        sent = self._sent.pop(flow, None)
        if sent is None or flow.response.stream or not self._retryable(flow):
            return
        retries, metadata = ctx.options.tollgate_upstream_retries, flow.metadata
        limits = self.config.current.timeouts.get(metadata[PROVIDER_KEY], Timeouts())
        deadline = flow.request.timestamp_start + limits.total if limits.total else None
        max_wait = ctx.options.tollgate_upstream_retry_max_wait_ms / 1000
        for attempt in range(retries):
            wait = retry_wait(flow.response.headers, attempt)
            if wait > max_wait or (deadline is not None and time.time() + wait >= deadline):
                return
            await asyncio.sleep(wait)
            log.info("tollgate: %s answered %d, retrying (%d of %d)", flow.request.host,
                     flow.response.status_code, attempt + 1, retries)
            try:
                async with asyncio.timeout(None if deadline is None else deadline - time.time()):
                    answer, body = await self._resend(sent, limits)
            except (httpx.HTTPError, OSError, TimeoutError) as e:
                log.info("tollgate: retry of %s failed (%s); passing the last answer on", flow.request.host,
                         type(e).__name__)
                return
            self._take(flow.response, answer, body)
            metadata[RETRIES_KEY] = attempt + 1
            if not should_retry(flow.response):
                return

    @staticmethod
    def _can_resend(flow: http.HTTPFlow) -> bool:
        return not isinstance(flow.client_conn.proxy_mode, UpstreamMode) and not ctx.options.client_certs

    async def _resend(self, request: http.Request, limits: Timeouts) -> tuple[httpx.Response, bytes]:
        headers = [(k, v) for k, v in request.headers.fields if k.decode("latin-1").lower() not in HOP_BY_HOP]
        timeout = httpx.Timeout(connect=limits.connect, read=limits.first_byte, write=limits.first_byte, pool=None)
        client = self._client()
        url, extensions = await self._checked_target(request)
        outgoing = client.build_request(request.method, url, headers=headers, content=request.raw_content,
                                        timeout=timeout, extensions=extensions)
        answer = await client.send(outgoing, stream=True)
        try:
            body = b"".join([chunk async for chunk in answer.aiter_raw()])  # as sent: content-encoding kept
        finally:
            await answer.aclose()
        return answer, body

    async def _checked_target(self, request: http.Request) -> tuple[httpx.URL, dict]:
        """Where to resend: a catalog host at an address checked as UpstreamGuard checks its connections
        (the URL gets the IP, TLS keeps the name), else the URL as it is (a configured upstream)."""
        url, catalog = httpx.URL(request.url), self.config.catalog
        host, port = request.host, request.port
        if catalog is None or catalog.is_upstream_of(host, port) or catalog.by_host(host) is None:
            return url, {}
        addresses = await asyncio.wait_for(self.resolver(host, port), RESOLVE_TIMEOUT_S)
        if not addresses or not all(map(is_public, addresses)):
            raise httpx.ConnectError(f"{host} did not resolve to public addresses only")
        return url.copy_with(host=addresses[0]), {"sni_hostname": host}

    @staticmethod
    def _take(response: http.Response, answer: httpx.Response, body: bytes) -> None:
        """The resent request's answer in place of the last one (the Gateway, next in the chain, puts its own
        headers on it again: the request id, a limited key's x-ratelimit-*)."""
        response.status_code = answer.status_code
        response.reason = answer.reason_phrase
        response.headers = http.Headers([(k, v) for k, v in answer.headers.raw
                                         if k.decode("latin-1").lower() not in HOP_BY_HOP])
        response.headers["content-length"] = str(len(body))
        response.raw_content = body
        response.timestamp_end = time.time()

    def _client(self) -> httpx.AsyncClient:
        if self.client is None:
            if ctx.options.ssl_insecure:
                verify: ssl.SSLContext | bool = False
            else:
                verify = ssl.create_default_context(
                    cafile=ctx.options.ssl_verify_upstream_trusted_ca
                    or (None if ctx.options.ssl_verify_upstream_trusted_confdir else certifi.where()),
                    capath=ctx.options.ssl_verify_upstream_trusted_confdir,
                )
            self.client = httpx.AsyncClient(verify=verify, trust_env=False, follow_redirects=False,
                                            transport=self.transport)
        return self.client

    def _drop_client(self) -> None:
        """Certificate options changed: the next resend builds a client that follows them."""
        if self.client is not None:
            client, self.client = self.client, None
            create_task(client.aclose(), name="tollgate-retries-close", keep_ref=True)
