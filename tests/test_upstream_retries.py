"""The retry addon in-process (mitmproxy's taddons/tflow), with the provider an httpx MockTransport;
the real proxy against the mock provider is tests/test_upstream_faults.py."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from mitmproxy import http
from mitmproxy.exceptions import OptionsError
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from addons.core.catalog import Catalog, Timeouts, load_catalog
from addons.core.settings import Settings
from addons.proxy.flow_keys import ENDPOINT_KEY, PROVIDER_KEY, RETRIES_KEY, STREAM_KEY
from addons.proxy.gateway_config import GatewayConfig, SharedConfig
from addons.proxy.upstream_retries import UpstreamRetries, retry_wait, should_retry

BODY = b'{"model":"gpt-4o-mini","messages":[]}'
ANSWER = {"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}


def answer(status: int, body: bytes = b"", **headers: str) -> httpx.Response:
    """A provider's answer as it comes off the wire (its body not read yet)."""
    return httpx.Response(status, headers={k.replace("_", "-"): v for k, v in headers.items()},
                          stream=httpx.ByteStream(body))


class Provider:
    """Answers each resend with the next of `answers` (an httpx.Response or an exception), recording it."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def forwarded(status=503, headers=(("retry-after", "0"),), stream=False, endpoint="chat.completions"):
    """A flow as the Gateway forwarded it, with the provider's first answer."""
    request = tutils.treq(host="api.openai.com", port=443, scheme="https", method="POST",
                          path="/v1/chat/completions", content=BODY,
                          headers=http.Headers(host="api.openai.com", authorization="Bearer sk-real"))
    response = tutils.tresp(status_code=status, content=b'{"error":{}}',
                            headers=http.Headers(x_lava_request_id="req_1", **dict(headers)))
    request.timestamp_start = time.time()  # forwarded just now
    flow = tflow.tflow(req=request, resp=response, live=True)
    flow.metadata.update({PROVIDER_KEY: "openai", ENDPOINT_KEY: endpoint, STREAM_KEY: stream})
    return flow


LIMITS = Timeouts(total=10)


def retry(flow, provider: Provider, retries: int = 2, max_wait_ms: int = 200, addresses: list[str] | None = None):
    """addresses: what api.openai.com resolves to (None: the catalog is not consulted)."""
    async def resolver(host, port):
        return addresses

    catalog = load_catalog() if addresses is not None else Catalog(())
    config = GatewayConfig(Settings(database_url="sqlite:///:memory:"), catalog, timeouts={"openai": LIMITS})
    addon = UpstreamRetries(SharedConfig(config), transport=httpx.MockTransport(provider), resolver=resolver)
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tollgate_upstream_retries=retries, tollgate_upstream_retry_max_wait_ms=max_wait_ms)

        async def go():
            addon.responseheaders(flow)
            if "authorization" in flow.request.headers:
                flow.request.headers["authorization"] = "[redacted]"  # as Redaction does next in the chain
            await addon.response(flow)
            await addon.done()

        asyncio.run(go())
    return flow


def test_the_retry_answer_replaces_the_providers():
    provider = Provider(answer(200, json.dumps(ANSWER).encode(), x_request_id="req_mock"))
    flow = retry(forwarded(), provider)
    assert (flow.response.status_code, json.loads(flow.response.content)) == (200, ANSWER)
    # the resent request's headers, not the first answer's (the Gateway, next in the chain, adds its own: test_limits)
    assert flow.response.headers["x-request-id"] == "req_mock" and "x-lava-request-id" not in flow.response.headers
    assert flow.response.headers["content-length"] == str(len(flow.response.raw_content))
    assert flow.metadata[RETRIES_KEY] == 1
    [sent] = provider.seen  # the request as the Gateway forwarded it, not as Redaction left it: URL, key, body
    assert (sent.method, str(sent.url), sent.content) == ("POST", "https://api.openai.com/v1/chat/completions", BODY)
    assert sent.headers["authorization"] == "Bearer sk-real"


def test_retries_stop_at_the_option_and_pass_the_last_answer_on():
    provider = Provider(*(answer(502, b"again", retry_after="0") for _ in range(3)))
    flow = retry(forwarded(), provider, retries=2)
    assert (flow.response.status_code, flow.response.content, len(provider.seen)) == (502, b"again", 2)


def test_a_resend_goes_to_the_checked_address_of_a_catalog_host():
    provider = Provider(answer(200, json.dumps(ANSWER).encode()))
    retry(forwarded(), provider, addresses=["162.159.140.245"])
    [sent] = provider.seen
    assert (sent.url.host, sent.extensions["sni_hostname"], sent.headers["host"]) == (
        "162.159.140.245", "api.openai.com", "api.openai.com")


@pytest.mark.parametrize("addresses", [["10.0.0.7"], ["162.159.140.245", "127.0.0.1"], []])
def test_no_resend_to_a_catalog_host_that_resolves_to_a_private_address(addresses):
    provider = Provider(answer(200, b"{}"))
    flow = retry(forwarded(), provider, addresses=addresses)
    assert provider.seen == [] and flow.response.status_code == 503  # the provider's first answer, passed on


def test_a_failed_resend_passes_the_last_answer_on():
    flow = retry(forwarded(), Provider(httpx.ConnectError("refused")))
    assert (flow.response.status_code, flow.response.content) == (503, b'{"error":{}}')
    assert RETRIES_KEY not in flow.metadata


@pytest.mark.parametrize("flow, why", [
    (forwarded(stream=True), "a stream"),
    (forwarded(endpoint="other"), "not a model call"),
    (forwarded(status=400), "not a retryable status"),
    (forwarded(headers=[("x-should-retry", "false")]), "the provider says not to"),
    (forwarded(headers=[("retry-after", "5")]), "a longer wait than allowed"),
])
def test_not_retried(flow, why):
    provider = Provider()
    retry(flow, provider)
    assert provider.seen == [], why


def test_not_retried_when_off_or_not_the_gateways():
    provider = Provider()
    retry(forwarded(), provider, retries=0)
    flow = forwarded()
    del flow.metadata[PROVIDER_KEY]
    retry(flow, provider)
    assert provider.seen == []


def test_not_retried_through_an_upstream_proxy():
    flow = forwarded()
    flow.client_conn.proxy_mode = ProxyMode.parse("upstream:http://proxy.test:3128")
    provider = Provider()
    retry(flow, provider)
    assert provider.seen == []


def test_the_total_timeout_bounds_the_retries():
    provider = Provider()
    flow = forwarded(headers=[("retry-after", "0.1")])
    flow.request.timestamp_start -= 9.95  # 50 ms of a 10 s total left
    retry(flow, provider)
    assert provider.seen == []


@pytest.mark.parametrize("headers, attempt, wait", [
    ({"retry-after-ms": "150"}, 0, 0.15),
    ({"retry-after": "2"}, 0, 2.0),
    ({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, 0, 10.0),  # an HTTP date, 10 s after "now"
    ({"retry-after": "soon"}, 1, 0.5),  # unreadable: the backoff
    ({}, 0, 0.25),
    ({}, 2, 1.0),
])
def test_retry_wait(headers, attempt, wait):
    assert retry_wait(http.Headers(**{k.replace("-", "_"): v for k, v in headers.items()}), attempt,
                      now=1445412480.0) == pytest.approx(wait)


@pytest.mark.parametrize("status, headers, expected", [
    (429, {}, True), (500, {}, True), (529, {}, True), (503, {"x-should-retry": "false"}, False),
    (400, {}, False), (501, {}, False), (200, {}, False),
])
def test_should_retry(status, headers, expected):
    assert should_retry(tutils.tresp(status_code=status, headers=http.Headers(**{k.replace("-", "_"): v
                                                                                  for k, v in headers.items()}))) is expected


@pytest.mark.parametrize("options, message", [
    ({"tollgate_upstream_retries": -1}, "between 0 and 10"),
    ({"tollgate_upstream_retries": 11}, "between 0 and 10"),
    ({"tollgate_upstream_retry_max_wait_ms": -1}, "must not be negative"),
])
def test_options_are_checked(options, message):
    addon = UpstreamRetries()
    with taddons.context(addon) as tctx, pytest.raises(OptionsError, match=message):
        tctx.configure(addon, **options)
