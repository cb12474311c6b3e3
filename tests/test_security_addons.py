"""The security addons in-process (mitmproxy's taddons/tflow), with the resolver and clock injected."""

from __future__ import annotations

import asyncio
import json

import pytest
from mitmproxy import connection, http
from mitmproxy.addons.proxyauth import ProxyAuth
from mitmproxy.exceptions import OptionsError
from mitmproxy.proxy import server_hooks
from mitmproxy.test import taddons, tflow, tutils

from addons.auth import signed_tokens
from addons.auth.authentication import authenticate
from addons.auth.credentials import CallerCredential
from addons.billing import autopay
from addons.core.catalog import load_catalog
from addons.core.errors import Unauthorized
from addons.core.secret_formats import hash_secret
from addons.core.settings import Settings
from addons.proxy import auth_throttle, error_pages, upstream_guard
from addons.proxy.auth_throttle import AuthThrottle, client_address
from addons.proxy.flow_keys import PROVIDER_KEY, REFUSAL_KEY, REQUEST_ID_KEY
from addons.proxy.gateway_config import GatewayConfig, SharedConfig
from addons.proxy.listen_guard import ListenGuard
from addons.proxy.redaction import REDACTED, Redaction
from addons.proxy.request_limits import LIMITS, METADATA_MAX_BYTES, RequestLimits
from addons.proxy.upstream_guard import UpstreamGuard, is_public

CATALOG = load_catalog(overrides={"openai": {"upstream": "http://127.0.0.1:9999"}})
CONFIG = SharedConfig(GatewayConfig(Settings(database_url="sqlite:///:memory:"), CATALOG))
SECRET = "tg_sk_" + "s" * 43


def flow_to(host="api.anthropic.com", headers=(), path="/v1/messages", peer=("10.1.2.3", 5000)):
    req = tutils.treq(host=host, port=443, scheme="https", path=path,
                      headers=http.Headers([(k.encode(), v.encode()) for k, v in headers]))
    flow = tflow.tflow(req=req)
    flow.client_conn.peername = peer
    return flow


def status(flow):
    return flow.response and (flow.response.status_code, json.loads(flow.response.content)["error"]["code"])


# -- not an open proxy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "listen_host, mode, proxyauth, allow, refused",
    [
        ("127.0.0.1", ["regular"], None, False, False),
        ("::1", ["regular"], None, False, False),
        ("localhost", ["regular"], None, False, False),
        ("0.0.0.0", ["regular"], None, False, True),
        ("", ["regular"], None, False, True),  # mitmproxy's default: every interface
        ("192.168.1.5", ["regular"], None, False, True),
        ("gateway.internal", ["regular"], None, False, True),
        ("127.0.0.1", ["regular@0.0.0.0:8080"], None, False, True),
        ("127.0.0.1", ["regular", "socks5@[::]:1080"], None, False, True),
        ("127.0.0.1", ["upstream:http://corp:3128@10.0.0.2:8080"], None, False, True),
        ("0.0.0.0", ["reverse:https://api.openai.com@8081"], None, False, False),  # fixed destination
        ("0.0.0.0", ["transparent"], None, False, False),
        ("0.0.0.0", ["regular"], "user:pass", False, False),
        ("0.0.0.0", ["regular"], None, True, False),
    ],
)
def test_open_proxy_is_refused_without_proxyauth(listen_host, mode, proxyauth, allow, refused):
    guard = ListenGuard()
    with taddons.context(ProxyAuth(), guard) as tctx:
        options = dict(listen_host=listen_host, mode=mode, proxyauth=proxyauth, tollgate_allow_open_proxy=allow)
        if refused:
            with pytest.raises(OptionsError, match="refusing to run an open proxy.*--proxyauth"):
                tctx.configure(guard, **options)
        else:
            tctx.configure(guard, **options)


# -- SSRF after DNS ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, public",
    [
        ("104.18.6.192", True), ("2606:4700::6812:6c0", True),
        ("10.0.0.1", False), ("172.16.5.4", False), ("192.168.0.1", False), ("100.64.0.1", False),
        ("127.0.0.1", False), ("::1", False), ("169.254.169.254", False), ("fe80::1%eth0", False),
        ("224.0.1.1", False), ("ff02::1", False), ("240.0.0.1", False), ("0.0.0.0", False), ("::", False),
        ("fd00::1", False), ("::ffff:10.0.0.1", False), ("64:ff9b::a9fe:a9fe", False), ("2002:a00:1::", False),
    ],
)
def test_is_public(address, public):
    assert is_public(address) is public


class FakeResolver:
    def __init__(self, answers):
        self.answers, self.calls = answers, []

    async def __call__(self, host, port):
        self.calls.append((host, port))
        if isinstance(self.answers, Exception):
            raise self.answers
        return self.answers


def connect(answers, address=("api.anthropic.com", 443)):
    resolver = FakeResolver(answers)
    guard = UpstreamGuard(CONFIG, resolver)
    server = connection.Server(address=address, sni=address[0])
    data = server_hooks.ServerConnectionHookData(server=server, client=tflow.tclient_conn())
    asyncio.run(guard.server_connect(data))
    return guard, data, resolver


def test_public_address_is_pinned_and_the_name_restored_once_connected():
    guard, data, resolver = connect(["104.18.6.192", "2606:4700::6812:6c0"])
    server = data.server
    assert resolver.calls == [("api.anthropic.com", 443)] and server.error is None
    assert (server.address, server.sni) == (("104.18.6.192", 443), "api.anthropic.com")
    server.state = connection.ConnectionState.OPEN  # mitmproxy forbids plain address changes now
    guard.server_connected(data)
    assert server.address == ("api.anthropic.com", 443)  # so the HTTP layer reuses the connection
    assert server.peername is None and not guard.pinned


@pytest.mark.parametrize("answers", [["10.0.0.7"], ["104.18.6.192", "127.0.0.1"], ["169.254.169.254"], []])
def test_private_address_is_refused_before_connecting(answers):
    _, data, _ = connect(answers)
    assert error_pages.UPSTREAM_REFUSED in data.server.error
    assert data.server.address == ("api.anthropic.com", 443)


@pytest.mark.parametrize("address", [("127.0.0.1", 9999), ("example.com", 443)],
                         ids=["configured-upstream", "not-a-provider"])
def test_configured_upstreams_and_other_hosts_are_not_checked(address):
    _, data, resolver = connect(["10.0.0.7"], address=address)
    assert resolver.calls == [] and data.server.error is None and data.server.address == address


def test_resolution_failure_is_a_connect_error():
    _, data, _ = connect(OSError("Name or service not known"))
    assert data.server.error.startswith("cannot resolve api.anthropic.com")


def test_slow_resolution_is_a_timeout(monkeypatch):
    monkeypatch.setattr(upstream_guard, "RESOLVE_TIMEOUT_S", 0.01)
    guard = UpstreamGuard(CONFIG, lambda host, port: asyncio.sleep(1))
    server = connection.Server(address=("api.anthropic.com", 443))
    asyncio.run(guard.server_connect(server_hooks.ServerConnectionHookData(server=server, client=tflow.tclient_conn())))
    assert server.error == "timed out resolving api.anthropic.com"  # error_pages: 504 upstream_timeout


# -- failed-authentication throttle --------------------------------------------------------------


class Clock:
    now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def throttle():
    addon = AuthThrottle(CONFIG, clock=Clock())
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tollgate_auth_fail_limit=3, tollgate_auth_fail_window_s=60)
        addon.tctx = tctx
        yield addon


def attempt(throttle, secret, outcome, peer=("10.1.2.3", 5000)):
    """One request through the throttle; outcome: what the gateway answers if it gets the request."""
    flow = flow_to(headers=[("x-api-key", secret)] if secret else [], peer=peer)
    throttle.requestheaders(flow)
    if flow.response is None:  # the gateway's turn
        flow.metadata[REQUEST_ID_KEY] = "req_1"
        if outcome == "forwarded":
            flow.metadata[PROVIDER_KEY] = "anthropic"
            flow.response = tutils.tresp()
        else:
            flow.response = http.Response.make(outcome, Unauthorized("invalid_credential", "x").body())
    throttle.response(flow)
    return flow


def test_failures_past_the_limit_get_429_until_the_window_passes(throttle):
    for _ in range(3):
        assert attempt(throttle, "tg_sk_guess", 401).response.status_code == 401
    refused = attempt(throttle, "tg_sk_guess2", 401)
    assert status(refused) == (429, "too_many_failed_auths") and refused.response.headers["retry-after"] == "60"
    assert refused.response.headers["x-tollgate-request-id"].startswith("req_")
    assert attempt(throttle, "tg_sk_guess", 401, peer=("10.9.9.9", 1)).response.status_code == 401  # others
    throttle.clock.now += 30
    assert attempt(throttle, "tg_sk_guess", 401).response.headers["retry-after"] == "30"
    throttle.clock.now += 30
    assert attempt(throttle, "tg_sk_guess", 401).response.status_code == 401


def test_a_credential_that_worked_still_works_from_a_throttled_address(throttle):
    assert attempt(throttle, SECRET, "forwarded").response.status_code == 200
    for _ in range(3):
        attempt(throttle, "tg_sk_guess", 403)
    assert attempt(throttle, SECRET, "forwarded").response.status_code == 200
    assert attempt(throttle, None, 401).response.status_code == 401  # no credential: nothing to throttle
    assert status(attempt(throttle, "tg_sk_other", 401)) == (429, "too_many_failed_auths")


def test_provider_errors_and_other_hosts_do_not_count(throttle):
    for _ in range(5):
        forwarded = flow_to(headers=[("x-api-key", SECRET)])
        throttle.requestheaders(forwarded)
        forwarded.metadata.update({REQUEST_ID_KEY: "req_1", PROVIDER_KEY: "anthropic"})
        forwarded.response = http.Response.make(401)  # the provider refused the provider key
        throttle.response(forwarded)
        other = flow_to(host="example.com", headers=[("x-api-key", "tg_sk_guess")])
        throttle.requestheaders(other)
        other.response = http.Response.make(401)
        throttle.response(other)
    assert not throttle.failures and not throttle.credentials


@pytest.mark.parametrize("code, status_code", [("key_scope", 403), ("token_scope", 403),
                                               ("request_limit_reached", 429), ("spend_limit_reached", 402),
                                               ("rate_limited", 429)])
def test_refusals_of_an_authenticated_callers_request_do_not_count(throttle, code, status_code):
    """Outside the key's scope or over its limits: the credential was good, so no failed authentication."""
    for _ in range(5):
        flow = flow_to(headers=[("x-api-key", SECRET)])
        throttle.requestheaders(flow)
        flow.metadata.update({REQUEST_ID_KEY: "req_1", REFUSAL_KEY: code})
        flow.response = http.Response.make(status_code)
        throttle.response(flow)
    assert not throttle.failures


def test_throttle_state_is_bounded(throttle, monkeypatch):
    monkeypatch.setattr(auth_throttle, "MAX_CLIENTS", 5)
    for i in range(20):
        attempt(throttle, "tg_sk_guess", 401, peer=(f"10.0.0.{i}", 1))
    assert len(throttle.failures) == 5 and all(len(t) <= 3 for t in throttle.failures.values())


@pytest.mark.parametrize("peer, key", [(("10.0.0.1", 1), "10.0.0.1"), (("::ffff:10.0.0.1", 1), "10.0.0.1"),
                                       (("2001:db8:1:2:3:4:5:6", 1), "2001:db8:1:2::/64")])
def test_client_address(peer, key):
    assert client_address(flow_to(peer=peer)) == key


@pytest.mark.parametrize("options", [{"tollgate_auth_fail_limit": -1}, {"tollgate_auth_fail_window_s": 0}])
def test_bad_throttle_options(throttle, options):
    with pytest.raises(OptionsError):
        throttle.tctx.configure(throttle, **options)


# -- request limits --------------------------------------------------------------------------------


@pytest.fixture
def limits():
    addon = RequestLimits()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tollgate_max_request_body="1k", tollgate_max_header_bytes="4k")
        addon.tctx = tctx
        yield addon
        addon.done()


def test_limits_are_parsed(limits):
    assert (LIMITS.body, LIMITS.header_bytes) == (1024, 4096)


@pytest.mark.parametrize("value", ["12q", "-1", "1.5m"])
def test_bad_limits_are_refused(limits, value):
    with pytest.raises(OptionsError):
        limits.tctx.configure(limits, tollgate_max_request_body=value)
    assert LIMITS.body == 1024


def test_zero_turns_a_limit_off(limits):
    limits.tctx.configure(limits, tollgate_max_header_bytes="0")
    flow = flow_to(headers=[("x-big", "a" * 10_000)])
    limits.requestheaders(flow)
    assert LIMITS.header_bytes is None and flow.response is None


@pytest.mark.parametrize(
    "headers, expected",
    [
        ([("x-big", "a" * 5000)], (431, "request_headers_too_large")),
        ([("x-a", "a" * 2100), ("x-b", "b" * 2100)], (431, "request_headers_too_large")),
        ([("x-tollgate-metadata", '{"k": "v"}')], None),
        ([("x-big", "a" * 3000)], None),
    ],
)
def test_oversized_headers_are_431(limits, headers, expected):
    flow = flow_to(headers=headers)
    limits.requestheaders(flow)
    assert status(flow) == expected


def test_oversized_metadata_is_431_before_it_is_parsed(limits):
    limits.tctx.configure(limits, tollgate_max_header_bytes="1m")
    flow = flow_to(headers=[("x-lava-metadata", "[" * (METADATA_MAX_BYTES + 1))])
    limits.requestheaders(flow)
    assert status(flow) == (431, "metadata_too_large")


# -- redaction ------------------------------------------------------------------------------------


def gateway_flow(headers, path="/v1/messages"):
    flow = flow_to(headers=headers, path=path)
    flow.metadata[REQUEST_ID_KEY] = "req_1"
    return flow


def test_sent_provider_credentials_are_redacted():
    flow = gateway_flow([("authorization", "Bearer sk-provider-0123456789"), ("x-api-key", "sk-ant-0123456789"),
                         ("x-goog-api-key", "AIza-0123456789"), ("anthropic-version", "2023-06-01")],
                        path="/v1beta/models/g:generateContent?key=AIza-0123456789&alt=sse")
    flow.metadata["proxyauth"] = ("user", "proxy-pass")
    Redaction(CONFIG).responseheaders(flow)
    headers = flow.request.headers
    assert (headers["authorization"], headers["x-api-key"], headers["x-goog-api-key"]) == (
        f"Bearer {REDACTED}", REDACTED, REDACTED)
    assert headers["anthropic-version"] == "2023-06-01"
    assert flow.request.query["key"] == REDACTED and flow.request.query["alt"] == "sse"
    assert flow.metadata["proxyauth"] == ("user", REDACTED)
    state = json.dumps(flow.get_state(), default=repr)
    assert "0123456789" not in state and "proxy-pass" not in state


def test_refused_request_loses_the_callers_credential_also_inside_u():
    inner = f"https://generativelanguage.googleapis.com/v1beta/models/g:generateContent?key={SECRET}"
    flow = gateway_flow([("api-key", SECRET)], path=f"/v1/forward?u={inner}&key={SECRET}")
    flow.error = tflow.terr(f"Connection refused for {SECRET}")
    Redaction(CONFIG).error(flow)
    assert SECRET not in json.dumps(flow.get_state(), default=repr)
    assert flow.error.msg == f"Connection refused for {REDACTED}"
    assert flow.request.query["u"].startswith("https://generativelanguage.googleapis.com/")


def test_flows_the_gateway_did_not_handle_are_left_alone():
    flow = flow_to(host="example.com", headers=[("authorization", "Bearer their-own-token")])
    Redaction(CONFIG).responseheaders(flow)
    assert flow.request.headers["authorization"] == "Bearer their-own-token"


# -- constant-time comparison ----------------------------------------------------------------------


class AccountCacheSpy:
    def __init__(self):
        self.asked = []

    async def key(self, key_hash):
        self.asked.append(key_hash)


def test_secret_keys_are_looked_up_by_hash_only():
    keys = AccountCacheSpy()
    with pytest.raises(Unauthorized):
        asyncio.run(authenticate(CallerCredential(secret_key=SECRET), keys, None))
    assert keys.asked == [hash_secret(SECRET)] and SECRET not in keys.asked[0]


def test_signatures_are_compared_in_constant_time(monkeypatch):
    compared = []
    real = signed_tokens.hmac.compare_digest
    monkeypatch.setattr(signed_tokens.hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    with pytest.raises(Unauthorized):
        signed_tokens.verify_signed_token("tgt_e30.c2ln", b"k" * 32)
    body = b'{"a":1}'
    assert autopay.verify_signature("whsec", body, autopay.sign("whsec", body), timestamp=0, now=0)
    assert len(compared) == 2  # both go through the same hmac module
