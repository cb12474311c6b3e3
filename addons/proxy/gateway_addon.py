"""Tollgate's request path as one mitmproxy addon: route by SNI or Host (addons.proxy.routing), authenticate,
swap credentials, stream through, meter, and hand a usage record to the ledger writer.

Loaded through the script addons/gateway.py. Hooks never touch the database themselves: key and
balance lookups run on a thread pool (cached for `tollgate_cache_ttl_ms`), ledger rows are written by
a background thread. Failures of the gateway's own making answer with a JSON error response; a
bug inside a hook answers 500 rather than letting a request through unauthenticated.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from dataclasses import replace
from datetime import UTC, datetime
from urllib.parse import urlsplit

from mitmproxy import ctx, hooks, http
from mitmproxy.exceptions import OptionsError
from mitmproxy.net.http import url
from mitmproxy.proxy import server_hooks

from addons.auth.account_cache import AccountCache
from addons.auth.authentication import authenticate, check_key_scope
from addons.auth.credentials import forwarded_headers, is_captured, query_key, read_credential
from addons.auth.signed_tokens import check_scope
from addons.auth.sigv4_callers import authenticate_sigv4
from addons.auth.vertex_tokens import ServiceAccountTokens, TokenError
from addons.billing import price_guard
from addons.billing.autopay import AutoTopUp
from addons.billing.cashier import Cashier, WorstCost
from addons.billing.charges import apply_charges, is_billable
from addons.billing.limits import RequestLimits
from addons.billing.plan import plan_for
from addons.core.catalog import Catalog, Provider
from addons.core.errors import GatewayError, NotFound, ProviderNotConfigured, ShuttingDown, UpstreamUnreachable
from addons.core.settings import Settings, resolve_database_url
from addons.ledger.journal import Journal
from addons.ledger.models import open_database
from addons.ledger.writer import CommitReport, LedgerWriter, UsageRecord
from addons.proxy import bedrock, error_pages, flow_notes, metrics_recorder, mitmproxy_internals, realtime, vertex
from addons.proxy.azure import check_resource, deployment_model
from addons.proxy.error_pages import json_response, new_request_id
from addons.proxy.flow_keys import (
    CLIENT_FORMAT_KEY,
    COST_KEY,
    ENDPOINT_KEY,
    METADATA_HEADERS,
    PRICE_SOURCE_KEY,
    PROVIDER_KEY,
    REFUSAL_KEY,
    REQUEST_ID_KEY,
    RETRIES_KEY,
    STREAM_KEY,
)
from addons.proxy.forward import FORWARD_PATH, parse_forward_target, sdk_query, sdk_target
from addons.proxy.gateway_config import SharedConfig
from addons.proxy.metadata import parse_metadata
from addons.proxy.routing import addressed_to_gateway, provider_and_host
from addons.proxy.stamped_headers import stamped
from addons.proxy.usage_record import Pending, unmetered_record, usage_record
from addons.rewrite import endpoint as rewrite_endpoint
from addons.rewrite.endpoint import REWRITE_PREFIX, Rewrite, RewriteStream
from addons.rewrite.hub import Untranslatable
from addons.usage.readers import UsageReader, for_request
from addons.usage.realtime import RealtimeReader, worst_media
from pricing import genai_prices_internals
from pricing.bounds import PriceBounds
from pricing.cost import Override, price, price_source
from pricing.money import format_usd
from pricing.usage import TokenUsage

log = logging.getLogger(__name__)

FEE_PENDING_MAX = 10_000


class StreamTap:
    """The flow's stream callable: passes chunks on at once while the usage reader watches them.

    It answers with a tuple, never with b"": mitmproxy would send an empty chunk, which in
    HTTP/1 chunked encoding ends the client's response early (the dropped usage chunk).
    """

    __slots__ = ("reader",)

    def __init__(self, reader: UsageReader):
        self.reader = reader

    def __call__(self, chunk: bytes) -> tuple[bytes, ...]:
        data = self.reader.feed(chunk) if chunk else self.reader.finish()
        return (data,) if data else ()


class Gateway:
    def __init__(self, config: SharedConfig | None = None) -> None:
        """config: the chain's shared config (addons/proxy/chain.py); alone, the Gateway has its own."""
        self.config = config if config is not None else SharedConfig()
        self.keys: AccountCache | None = None
        self.writer: LedgerWriter | None = None
        self.journal: Journal | None = None
        self.pending: dict[str, Pending] = {}
        self.cashier: Cashier | None = None
        self.autopay: AutoTopUp | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False
        self.in_flight: set[str] = set()  # flows from their request headers to their response or error
        # request id -> flow whose comment waits for the customer fee the ledger decides at commit
        self.fee_pending: collections.OrderedDict[str, http.HTTPFlow] = collections.OrderedDict()
        self.flows_shown = False
        self.metrics: metrics_recorder.Recorder | None = None
        self.price_bounds = PriceBounds()  # what a request may cost, for its holds
        self.google_tokens = ServiceAccountTokens()  # Vertex AI access tokens from the operator's service account
        # OpenAI Realtime sessions, charged per response (addons/proxy/realtime.py)
        self.realtime = realtime.RealtimeSessions(lambda: self.cashier, self._record, self._session_worst_cost,
                                                  lambda: self.flows_shown)

    def load(self, loader):
        loader.add_option(
            "tollgate_database_url", str, "",
            "Ledger database URL (sqlite:///path or postgresql://...). "
            "Default: TOLLGATE_DATABASE_URL, else database_url in config/gateway.yaml.",
        )
        loader.add_option(
            "tollgate_redis_url", str, "",
            "Redis for holds shared by several instances (redis://host:port/db). "
            "Default: TOLLGATE_REDIS_URL, else redis_url in config/gateway.yaml; none keeps holds in this process.",
        )
        loader.add_option(
            "tollgate_cache_ttl_ms", int, 1000,
            "Milliseconds a key or balance lookup is cached; revocations and top-ups are seen within it.",
        )
        loader.add_option(
            "tollgate_ledger_outage", str, "serve",
            "While the ledger database is unreachable: 'serve' keeps answering keys and balances this "
            "process has cached (usage is journaled and written when the database returns), 'refuse' "
            "answers 503 ledger_unavailable.",
            choices=("serve", "refuse"),
        )
        loader.add_option(
            "tollgate_drain_seconds", int, 30,
            "On SIGTERM (tollgate-proxy): seconds requests in flight, streams included, may take to finish "
            "after the listener closes; new requests on open connections get 503 shutting_down meanwhile.",
        )
        loader.add_option(
            "tollgate_upstream_http2", bool, False,
            "Offer HTTP/2 (then HTTP/1.1) on TLS connections to providers whatever the client speaks, "
            "mitmproxy translating; requests in flight on one client connection then share one provider "
            "connection. Off: the client's protocol is mirrored (HTTP/1.1 keep-alive for the forward endpoint).",
        )
        loader.add_option(
            "tollgate_metrics", bool, True,
            "Record Prometheus metrics (requests, tokens, cost, refusals, latency, holds, queues) for the admin "
            "listener's /metrics, into the directory PROMETHEUS_MULTIPROC_DIR names (tollgate-proxy, the workers "
            "and addons/gateway.py prepare one per start).",
        )

    # What the hooks read of the shared config, under the names they have always used; None until it
    # is loaded (mitmproxy reads every attribute of an addon when it registers it).

    @property
    def settings(self) -> Settings | None:
        return self.config.current.settings if self.config.current else None

    @property
    def catalog(self) -> Catalog | None:
        return self.config.catalog

    @property
    def prices(self) -> tuple[Override, ...]:
        return self.config.current.prices if self.config.current else ()

    @property
    def signing_key(self) -> bytes | None:
        return self.config.current.signing_key if self.config.current else None

    def _load_config(self) -> None:
        """The shared config: read on the first configure (unless an addon ahead read it), again on a new ledger URL."""
        if self.writer is None:
            self.config.load()
        else:
            self.config.reload()

    def _open_ledger(self) -> str:
        """Bind the ledger models to the database; returns its URL."""
        database_url = resolve_database_url(ctx.options.tollgate_database_url or self.settings.database_url)
        try:
            open_database(database_url)
        except Exception as e:  # peewee/driver errors: name the problem, never the URL (it may hold a password)
            raise OptionsError(f"cannot open the ledger database: {type(e).__name__}: {e}") from None
        return database_url

    def _start_ledger_services(self, database_url: str) -> None:
        """Auto top-up, the crash journal and the ledger writer (threads), then the journal's replay."""
        self.autopay = AutoTopUp(self.settings.billing.autopay)
        self.journal = Journal(self.settings.journal_dir, database_url)
        self.writer = LedgerWriter(apply_charges, on_commit=self._committed)
        self._replay(self.journal.recover())

    def configure(self, updated):
        """Check the options; load the config (once), open the ledger and start its services; then the
        key cache and cashier. A new ledger URL reads the config again and switches ledgers."""
        for name in ("tollgate_cache_ttl_ms", "tollgate_drain_seconds"):
            if name in updated and getattr(ctx.options, name) < 0:
                raise OptionsError(f"{name} must not be negative")
        if "tollgate_database_url" in updated or self.writer is None:
            self._load_config()
            genai_prices_internals.load_snapshot()  # at start, not in the first request's time
            self.done()  # what the previous ledger was owed is written there before switching
            database_url = self._open_ledger()
            self._start_ledger_services(database_url)
            self._confine_interception()
        self._restart_key_cache(updated)
        if "tollgate_metrics" in updated or self.metrics is None:
            on = ctx.options.tollgate_metrics
            self.metrics = metrics_recorder.process_recorder(self._metric_sources) if on else None

    def _restart_key_cache(self, updated) -> None:
        """The key and balance cache, and the cashier that holds balances through it: built on the first
        configure, built again when their options change."""
        if {"tollgate_cache_ttl_ms", "tollgate_redis_url", "tollgate_ledger_outage"} & set(updated) or self.keys is None:
            ttl = ctx.options.tollgate_cache_ttl_ms / 1000
            keys = AccountCache(ttl=ttl, serve_stale=ctx.options.tollgate_ledger_outage == "serve")
            try:
                cashier = Cashier(self.settings.billing, keys, self.writer, freshness=ttl,
                                  redis_url=ctx.options.tollgate_redis_url or self.settings.redis_url,
                                  limits=RequestLimits(self.settings.limits.zone))
            except ValueError as e:  # the URL itself is never echoed: it may hold a password
                keys.close()
                raise OptionsError(f"tollgate_redis_url: {e}") from None
            if self.keys is not None:
                self.keys.close()
            if self.cashier is not None and self.loop is not None and self.loop.is_running():
                asyncio.run_coroutine_threadsafe(self.cashier.close(), self.loop)  # its Redis connection goes too
            self.keys, self.cashier = keys, cashier

    def _metric_sources(self) -> tuple[LedgerWriter | None, Journal | None, Cashier | None]:
        """What the metrics' gauges read (addons.proxy.metrics_recorder), on the recorder's thread."""
        return self.writer, self.journal, self.cashier

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        server = data.server
        host = server.sni or (server.address and server.address[0])  # the address may be pinned to an IP by now
        if ctx.options.tollgate_upstream_http2 and server.tls and not server.alpn_offers and self.catalog.is_origin_host(host):
            server.alpn_offers = (b"h2", b"http/1.1")

    def running(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.flows_shown = ctx.master.addons.get("view") is not None  # mitmweb: comments are read live

    def _replay(self, records: list[UsageRecord]) -> None:
        """Requests a killed process served but may not have written: the ledger skips those it has."""
        if records:
            log.warning("tollgate: replaying %d journaled usage records into the ledger", len(records))
        for record in records:
            self.writer.submit(record)

    async def drain(self) -> int:
        """Refuse new requests and wait for those in flight, up to tollgate_drain_seconds; returns those left.

        In flight counts from a request's headers, so one still being authenticated is waited for too;
        done means none for two checks in a row, so a request that came in between is not cut.
        """
        self.stopping = True
        deadline, quiet = time.monotonic() + ctx.options.tollgate_drain_seconds, 0
        while quiet < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            quiet = 0 if self.in_flight else quiet + 1
        return len(self.in_flight)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.in_flight.add(flow.id)

    def _committed(self, report: CommitReport) -> None:
        """In the writer thread, right after a commit."""
        self.journal.settled(report.request_ids)
        if self.metrics is not None:
            self.metrics.committed(report)
        for wallet_id in report.charged_customer_wallets:
            self.autopay.notify_charged(wallet_id)
        if self.loop is not None and self.cashier is not None:
            self.loop.call_soon_threadsafe(self.cashier.settled, report)
        if self.loop is not None and report.customer_fees and self.fee_pending:
            self.loop.call_soon_threadsafe(self._fees_committed, report.customer_fees)

    def _fees_committed(self, fees: dict[str, int]) -> None:
        """Flow comments that said fee=at-commit get the fee charged (mitmweb shows the update)."""
        updated = []
        for request_id, fee in fees.items():
            if (flow := self.fee_pending.pop(request_id, None)) is not None:
                flow.comment = flow_notes.with_fee(flow.comment, fee)
                updated.append(flow)
        if updated:
            ctx.master.addons.trigger(hooks.UpdateHook(updated))

    def _confine_interception(self) -> None:
        """Decrypt only catalog hosts, and connect upstream only where the addon routes to."""
        updates = {}
        if not ctx.options.allow_hosts and not ctx.options.ignore_hosts:
            updates["allow_hosts"] = self.catalog.allow_hosts_option()
        if ctx.options.connection_strategy != "lazy":
            updates["connection_strategy"] = "lazy"
        if updates:
            ctx.options.update(**updates)

    # -- request -------------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        provider, host = provider_and_host(flow, self.catalog)
        if provider is None and not addressed_to_gateway(flow):
            return  # not AI traffic: mitmproxy passes it on untouched
        request_id = new_request_id()
        flow.metadata[REQUEST_ID_KEY] = request_id
        if self.stopping:
            metrics_recorder.refused(503, "shutting_down")
            flow.response = json_response(503, ShuttingDown("shutting_down", "the gateway is stopping; retry").body(),
                                          request_id)
            flow.response.headers.update({"connection": "close", "retry-after": "1"})
            return
        try:
            forward_key = rewrite = None
            if provider is None:
                routed = self._route_gateway_endpoint(flow, request_id)
                if routed is None:
                    return
                provider, forward_key, host, rewrite = routed
            await self._forward(flow, provider, host, request_id, forward_key, rewrite)
        except GatewayError as e:
            self._refuse(flow, e, request_id)
            if CLIENT_FORMAT_KEY in flow.metadata:  # a rewrite request: the refusal in its client's error shape
                client = rewrite_endpoint.CLIENT_FORMATS[flow.metadata[CLIENT_FORMAT_KEY]]
                flow.response.content = client.error_from_hub(e.status, e.message, e.code,
                                                              (e.details or {}).get("param"))
            elif provider is not None and provider.sigv4_service:
                bedrock.aws_shaped(flow.response, e)
        except Exception:
            log.exception("tollgate: internal error on request %s", request_id)
            self._refuse(flow, GatewayError("internal_error", "the gateway failed to handle this request"), request_id)

    @staticmethod
    def _refuse(flow: http.HTTPFlow, error: GatewayError, request_id: str) -> None:
        metrics_recorder.refused(error.status, error.code)
        flow.response = json_response(error.status, error.body(), request_id)
        if error.headers:
            flow.response.headers.update(error.headers)
        flow.metadata[REFUSAL_KEY] = error.code
        flow.comment = flow_notes.refused_comment(error.status, error.code, error.message, request_id)
        flow.marked = flow_notes.REFUSED

    def _route_gateway_endpoint(
        self, flow: http.HTTPFlow, request_id: str
    ) -> tuple[Provider, str | None, str, Rewrite | None] | None:
        """Answer /healthz, or aim a /v1/forward or /v1/rewrite request at its provider; returns it, `key`, the
        host the target URL names, and for a rewrite what translating its answer needs."""
        target_path = flow.request.path
        path = target_path.partition("?")[0]
        if path == "/healthz":
            flow.response = json_response(200, b'{"status":"ok"}', request_id)
            return None
        if path.startswith(REWRITE_PREFIX):
            return self._route_rewrite(flow)
        if path != FORWARD_PATH and not path.startswith(FORWARD_PATH + "/"):  # SDKs add to a base_url's path
            raise NotFound("not_found", "the gateway serves only /v1/forward, /v1/rewrite and /healthz")
        # Read once, from the path: the live `request.query` view builds the whole URL and parses it at every lookup.
        query: dict[str, str] = {}
        params = []  # what the SDK added beside u and key
        for name, value in sdk_query(url.decode(urlsplit(target_path).query)):
            query.setdefault(name, value)  # the first value, as query.get() gives
            if name not in ("u", "key"):
                params.append((name, value))
        target = parse_forward_target(sdk_target(query.get("u"), path, params), self.catalog)
        forward_key = query.get("key")
        flow.request.path = target.path
        return target.provider, forward_key, target.host, None

    def _route_rewrite(self, flow: http.HTTPFlow) -> tuple[Provider, str | None, str, Rewrite]:
        """Translate a /v1/rewrite request into its provider's format (addons/rewrite/endpoint.py) and aim it
        there; from here on the usage reader, the cashier and the ledger see a native request."""
        request = flow.request
        parsed = rewrite_endpoint.parse_rewrite_path(request.path)
        flow.metadata[CLIENT_FORMAT_KEY] = parsed.client_format
        signed = request.copy() if parsed.client_format == "bedrock" else None  # checked as boto3 signed it
        probe = parse_forward_target(parsed.target, self.catalog)  # the provider (and host) before translating
        provider_path, body, rewrite = rewrite_endpoint.translate_request(
            parsed, probe.provider.api_family, request.raw_content or b"", probe.provider.id)
        target = parse_forward_target(rewrite_endpoint.origin_of(parsed.target) + provider_path, self.catalog)
        request.path = target.path
        request.content = body
        request.headers["content-type"] = "application/json"
        for name, value in rewrite_endpoint.PROVIDER_HEADERS.get(target.provider.api_family, {}).items():
            request.headers.setdefault(name, value)
        forward_key = dict(parsed.query).get("key")
        rewrite.signed_request = signed
        return target.provider, forward_key, target.host, rewrite

    async def _forward(
        self, flow: http.HTTPFlow, provider: Provider, host: str, request_id: str, forward_key: str | None,
        rewrite: Rewrite | None = None,
    ) -> None:
        request = flow.request
        upgrade = "upgrade" in request.headers
        sigv4_host = host  # a rewrite request names its AWS host in its target URL
        if rewrite is not None and rewrite.signed_request is not None:  # boto3 signed what it sent, untranslated
            caller = await authenticate_sigv4(rewrite.signed_request, self.keys, rewrite_endpoint.SIGV4_SERVICE)
            rewrite.signed_request = None  # checked: the copy is not kept for the rest of the request
        elif provider.sigv4_service and rewrite is None and (meant := bedrock.meant_host(flow, provider)):
            sigv4_host = meant  # AWS through HTTPS_PROXY: the caller signed with its Tollgate key; signed again
            caller = await authenticate_sigv4(request, self.keys, provider.sigv4_service)
        else:  # any provider's Tollgate credential; AWS's through the forward endpoint too (signed for it below)
            if provider.sigv4_service:
                bedrock.refuse_a_forwarded_signature(request, provider)
            key_param = query_key(request)
            # a browser's WebSocket carries its key as a subprotocol (OpenAI Realtime): taken out, then read
            subprotocol_key = realtime.take_subprotocol_key(request.headers) if upgrade else None
            credential = read_credential(request.headers, forward_key or key_param or subprotocol_key)
            if key_param is not None:
                request.query.pop("key", None)
            caller = await authenticate(credential, self.keys, self.signing_key, provider=provider.id,
                                        capture=self.settings.capture,
                                        captured=is_captured(flow.client_conn.proxy_mode))
        plan = await plan_for(caller, self.keys)
        check_resource(provider, host, callers_key=plan.provider_key is not None)
        metadata = self._metadata(request.headers)
        provider_key = plan.provider_key or await self._operator_key(provider, host)
        aws_credentials = bedrock.operator_credentials(provider) if provider.sigv4_service else None
        path, _, query = request.path.partition("?")
        family, read_path, path_model = vertex.reader_request(provider.api_family, path)
        reader = for_request(family, request.method, read_path, query, request.raw_content or b"", upgrade=upgrade)
        reader.model = path_model or reader.model
        if pinned_model := deployment_model(provider, reader.model):
            reader.model = pinned_model
        check_key_scope(caller.key, provider.id, reader.model)
        if plan.token is not None:
            check_scope(plan.token, provider.id, reader.model)
        price_guard.admit(plan, reader, self.settings, lambda model: price_source(
            model=model, provider_id=provider.id, pricing_id=provider.pricing_id, overrides=self.prices))
        rate_headers = await self.cashier.admit(request_id, plan, reader, self._worst_cost(provider, reader),
                                                len(request.raw_content or b""))
        if reader.request_body is not None:
            request.content = reader.request_body
        replacing = ((b"accept-encoding", b"identity"),)  # the usage reader reads bodies as they stream
        if aws_credentials is None and not provider.auth_query:  # the provider's key, in its header
            scheme = f"{provider.auth_scheme} " if provider.auth_scheme else ""
            replacing += ((provider.auth_header.lower().encode(),
                           (scheme + provider_key).encode("utf-8", "surrogateescape")),)
        forwarded_headers(request.headers, replacing)
        if aws_credentials is not None:
            bedrock.send_signed(flow, provider, sigv4_host, aws_credentials)  # last: the signature covers the body
        else:
            if provider.auth_query:
                request.query[provider.auth_query] = provider_key
            mitmproxy_internals.aim(request, *provider.origin_for(host))
        self.pending[flow.id] = Pending(request_id, time.time(), provider, plan, reader, metadata,
                                        rate_headers=rate_headers, model=pinned_model, rewrite=rewrite)
        flow.metadata[PROVIDER_KEY] = provider.id
        flow.metadata[ENDPOINT_KEY], flow.metadata[STREAM_KEY] = reader.endpoint, reader.stream_requested

    async def _operator_key(self, provider: Provider, host: str) -> str:
        """The operator's credential for `provider`: its key from the environment (the one for `host`'s resource
        where each has its own), or for a Google service account an access token minted from the key file (off
        the event loop)."""
        if provider.credential_type != "google_service_account":
            env = provider.credential_env_for(host)
            if key := os.environ.get(env):
                return key
            whose = f" for {host}" if env != provider.credential_env else ""  # a resource with a key of its own
            raise ProviderNotConfigured("provider_key_missing",
                                        f"no {provider.name} key is configured{whose} ({env} is not set)")
        key_file = provider.service_account_file or os.environ.get(provider.credential_env)
        if not key_file:
            raise ProviderNotConfigured(
                "provider_key_missing", f"no {provider.name} service account is configured (set "
                f"{provider.credential_env}, or providers.{provider.id}.service_account_file in gateway.yaml)")
        try:
            return await self.google_tokens.token(key_file)
        except TokenError:
            raise UpstreamUnreachable(
                "upstream_auth_failed", f"the gateway could not get a {provider.name} access token for its service "
                "account (the gateway log says why)") from None

    @staticmethod
    def _metadata(headers) -> dict[str, str] | None:
        for name in METADATA_HEADERS:
            if (value := headers.get(name)) is not None:
                return parse_metadata(value)
        return None

    # -- response ------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = self.pending.get(flow.id)
        if state is None:
            return
        response = flow.response
        state.reader.observe_headers(response.headers)
        content_type = state.content_type = response.headers.get("content-type", "")
        is_stream = content_type.startswith("text/event-stream")
        if response.status_code < 400 and (is_stream or state.reader.stream_requested
                                           or state.reader.streams_response(content_type)):
            response.stream = StreamTap(state.reader)
            state.streamed = True
            if state.rewrite is not None:  # the provider's events, translated as they pass (metered first)
                response.stream = RewriteStream(response.stream, state.rewrite)
                response.headers["content-type"] = response.stream.encoder.content_type
                response.headers.pop("content-length", None)
            self._stamp(response, state)  # its headers leave now (else with the body, after `response`)

    @staticmethod
    def _stamp(response: http.Response, state: Pending) -> None:
        """The gateway's own headers on the answer, set last: the lookups before need not walk them."""
        response.headers.fields = stamped(response.headers.fields, state.request_id, state.rate_headers or ())

    def response(self, flow: http.HTTPFlow) -> None:
        self.in_flight.discard(flow.id)
        state = self.pending.pop(flow.id, None)
        if state is None:
            return
        if flow.response.status_code == 101 and isinstance(state.reader, RealtimeReader):
            self._stamp(flow.response, state)
            self.realtime.start(flow, state)  # each response of the session is recorded as it finishes
            return
        if not state.streamed:
            if RETRIES_KEY in flow.metadata:  # addons.proxy.upstream_retries put another answer in place
                state.content_type = flow.response.headers.get("content-type", "")
            state.reader.observe_body(flow.response.content or b"", state.content_type)
            self._stamp(flow.response, state)
        self._record(flow, state, status=flow.response.status_code, error=None)
        if state.rewrite is not None and not state.streamed:
            self._translate_answer(flow, state.rewrite)

    @staticmethod
    def _translate_answer(flow: http.HTTPFlow, rewrite: Rewrite) -> None:
        """A rewritten request's whole answer (or the provider's error) in the client's format."""
        response = flow.response
        try:
            response.content = rewrite_endpoint.translate_response(rewrite, response.status_code,
                                                                   response.content or b"")
        except Untranslatable as e:  # e.g. an image a model made, which the client's format cannot carry
            response.status_code = 502
            response.content = rewrite.client.error_from_hub(
                502, f"the provider's answer has {e.field}, which the client's format cannot carry: {e.why}",
                "untranslatable")
        except Exception:
            log.warning("tollgate: the provider's answer to a rewritten request could not be translated",
                        exc_info=True)
            response.status_code = 502
            response.content = rewrite.client.error_from_hub(
                502, "the provider's answer could not be translated into the client's format", "untranslatable")
        response.headers["content-type"] = "application/json"

    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        await self.realtime.message(flow)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self.realtime.end(flow)

    def _session_worst_cost(self, upgrade: Pending) -> WorstCost:
        return self._worst_cost(upgrade.provider, upgrade.reader)

    def error(self, flow: http.HTTPFlow) -> None:
        self.in_flight.discard(flow.id)
        self.realtime.end(flow)
        if flow.error:
            flow.error.msg = error_pages.strip_tag(flow.error.msg)
        state = self.pending.pop(flow.id, None)
        if state is None:
            return
        # The provider's status only if its headers went on to the client; else the client got the gateway's error.
        status = flow.response.status_code if flow.response and state.streamed else None
        self._record(flow, state, status=status, error=flow.error.msg[:200] if flow.error else "aborted")

    def _record(self, flow: http.HTTPFlow, state: Pending, status: int | None, error: str | None) -> None:
        """Journal, then hand to the ledger writer; a metering bug still leaves a row, never nothing."""
        try:
            record = self._usage_record(flow, state, status, error)
        except Exception:
            log.exception("tollgate: metering failed on request %s; recorded without usage", state.request_id)
            record = unmetered_record(state, status)
        try:
            self.journal.append(record)
        except OSError as e:  # a full or failing disk: the ledger still gets it, only crash safety is lost
            log.error("tollgate: cannot journal request %s (%s); it goes to the ledger unjournaled",
                      record.id, type(e).__name__)
        self.writer.submit(record)

    def _usage_record(self, flow: http.HTTPFlow, state: Pending, status: int | None, error: str | None) -> UsageRecord:
        """Price the request, have billing charge it, and note both on the flow."""
        result = state.reader.result()
        if state.model is not None:  # the operator's deployment map names the model over the response
            result = replace(result, model=state.model)
        model = result.model or state.reader.model
        cost = self._cost(state.provider, model, result.usage, at=datetime.fromtimestamp(state.started, UTC),
                          media=result.media)
        billable = is_billable(status, result.source)
        source = price_guard.price_source(state.reader, cost.source, status)
        price_guard.warn_once(source, state.provider.id, model, flow.request.path)
        charges = self.cashier.charges(state.request_id, state.plan, cost.total_nanos, billable)
        self.cashier.used_tokens(state.request_id, result.usage.input_tokens + result.usage.output_tokens)
        response = None if state.session_id else flow.response  # a session's responses have no HTTP answer
        record = usage_record(state, result, response, status=status, error=error, cost_nanos=cost.total_nanos,
                              price_source=source, charges=charges, billable=billable)
        flow.metadata[COST_KEY] = format_usd(cost.total_nanos)
        flow.metadata[PRICE_SOURCE_KEY] = source
        flow.comment = flow_notes.metered_comment(record, estimated=result.source == "estimated",
                                                  key_name=state.plan.key.name)
        if self.flows_shown and flow_notes.FEE_AT_COMMIT in flow.comment:
            self.fee_pending[record.id] = flow
            if len(self.fee_pending) > FEE_PENDING_MAX:  # records that never commit (a ledger outage)
                self.fee_pending.popitem(last=False)
        flow.marked = flow_notes.METERED
        return record

    def _worst_cost(self, provider: Provider, reader: UsageReader) -> WorstCost:
        """What the request may cost with so many input and output tokens, for its holds: for tokens, the model's
        price bound (pricing/bounds.py, measured once a minute); a media request is priced with what it asks for."""
        media = reader.expected_media
        if media is not None or isinstance(reader, RealtimeReader):
            def priced(input_tokens: int, output_tokens: int) -> int:
                usage = TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens)
                worst = media if media is not None else worst_media(usage)  # Realtime: every token may be audio
                return self._cost(provider, reader.model, usage, media=worst).total_nanos
            return priced
        return lambda input_tokens, output_tokens: self.price_bounds.of(  # looked up only if a hold needs it
            provider.id, provider.pricing_id, reader.model or "", self.prices).cost(input_tokens, output_tokens)

    def _cost(self, provider: Provider, model: str | None, usage, at: datetime | None = None, media=None):
        return price(usage, model=model or "", provider_id=provider.id, pricing_id=provider.pricing_id,
                     overrides=self.prices, at=at, media=media)

    def done(self) -> None:
        if self.writer is not None:
            self.writer.flush(timeout=30)
            self.writer.close()
            self.writer = None
        if self.metrics is not None:
            self.metrics.flush()
        if self.journal is not None:
            self.journal.close()
            self.journal = None
        if self.autopay is not None:
            self.autopay.close(timeout=10)
            self.autopay = None
        if self.keys is not None:
            self.keys.close()
            self.keys = None

