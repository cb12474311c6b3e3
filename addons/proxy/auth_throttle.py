"""Slow down credential guessing: a client address that keeps failing authentication is told to wait.

After `tollgate_auth_fail_limit` failed authentications (the gateway answered 401 or 403) from one
client address within `tollgate_auth_fail_window_s` seconds, further requests from that address
that present a credential are answered 429 `too_many_failed_auths` with Retry-After, at
`requestheaders`: before the body is read and without looking the credential up. The address is
let in again as its oldest failure leaves the window.

Requests with a credential that this process has seen succeed (the gateway forwarded the request, or
the admin process answered it with a success)
are still let through from a throttled address, so one misconfigured client cannot lock out the
others behind the same address (every local app shares 127.0.0.1). Such a credential that then
fails (revoked) loses that standing. Requests without a credential are not counted or refused:
they cost no lookup. Only gateway traffic (catalog hosts, the gateway's own endpoints) is counted
or refused; traffic mitmproxy passes through is not this addon's.

Addresses are the TCP peer (X-Forwarded-For is not trusted); IPv6 clients count per /64, the
block one host usually holds. State is in this process and bounded: at most MAX_CLIENTS
addresses (the least recently failing are forgotten first), `limit` timestamps each, and
MAX_TRUSTED credential digests (SHA-256, never the credential itself; looked up by digest, so no
secret is compared).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable

from mitmproxy import ctx, http
from mitmproxy.exceptions import OptionsError

from addons.auth.credentials import query_key, read_credential
from addons.core.errors import GatewayError, TooManyRequests
from addons.proxy.error_pages import refuse
from addons.proxy.flow_keys import ADMIN_KEY, PROVIDER_KEY, REFUSAL_KEY, REQUEST_ID_KEY
from addons.proxy.gateway_config import SharedConfig
from addons.proxy.routing import addressed_to_gateway, provider_for

MAX_CLIENTS = 10_000
MAX_TRUSTED = 10_000
FAILED_AUTH = frozenset({401, 403})
# 403s that refuse what an authenticated caller asked for, not who it is: they count as no failure
NOT_AUTH_FAILURES = frozenset({"key_scope", "token_scope"})


def client_address(flow: http.HTTPFlow) -> str:
    ip = ipaddress.ip_address(flow.client_conn.peername[0].split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def credential_digest(flow: http.HTTPFlow) -> str | None:
    """SHA-256 of the secret part of the caller's credential, or None when it sent none we can read."""
    request = flow.request
    try:
        credential = read_credential(request.headers, query_key(request))
    except GatewayError:
        # An AWS SigV4 signature (Bedrock) differs on every request: the access key id it names stands for it.
        signed = request.headers.get("authorization", "")
        if not signed.startswith("AWS4-HMAC-SHA256 Credential="):
            return None
        access_key = signed.removeprefix("AWS4-HMAC-SHA256 Credential=").partition("/")[0]
        return hashlib.sha256(b"sigv4:" + access_key.encode("utf-8", "surrogateescape")).hexdigest()
    secret = credential.signed_token or credential.secret_key or credential.provider_key
    return hashlib.sha256(secret.encode()).hexdigest()


class AuthThrottle:
    def __init__(self, config: SharedConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock
        self.limit = 0
        self.window = 0.0
        self.failures: OrderedDict[str, deque[float]] = OrderedDict()  # address -> recent failure times
        self.trusted: OrderedDict[str, None] = OrderedDict()  # digests of credentials that succeeded
        self.credentials: weakref.WeakKeyDictionary[http.HTTPFlow, str] = weakref.WeakKeyDictionary()

    def load(self, loader):
        loader.add_option(
            "tollgate_auth_fail_limit", int, 20,
            "Failed authentications (401/403) from one client address within tollgate_auth_fail_window_s "
            "after which its requests get 429 without a key lookup; 0 turns the throttle off.",
        )
        loader.add_option(
            "tollgate_auth_fail_window_s", int, 60,
            "Seconds a failed authentication counts against its client address.",
        )

    def configure(self, updated):
        if {"tollgate_auth_fail_limit", "tollgate_auth_fail_window_s"} & set(updated):
            if ctx.options.tollgate_auth_fail_limit < 0:
                raise OptionsError("tollgate_auth_fail_limit must not be negative")
            if ctx.options.tollgate_auth_fail_window_s <= 0:
                raise OptionsError("tollgate_auth_fail_window_s must be positive")
            self.limit = ctx.options.tollgate_auth_fail_limit
            self.window = float(ctx.options.tollgate_auth_fail_window_s)
            self.failures.clear()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live or not self.limit or not self._for_gateway(flow):
            return
        digest = credential_digest(flow)
        if digest is None:
            return
        self.credentials[flow] = digest
        wait = self.retry_after(client_address(flow)) if self.failures else 0
        if wait and digest not in self.trusted:
            error = TooManyRequests("too_many_failed_auths",
                                    f"too many failed authentications from this address; retry in {wait} s")
            refuse(flow, error, {"retry-after": str(wait)})

    def response(self, flow: http.HTTPFlow) -> None:
        self._settle(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._settle(flow)

    def _settle(self, flow: http.HTTPFlow) -> None:
        digest = self.credentials.pop(flow, None)
        if digest is None:
            return
        metadata = flow.metadata
        if PROVIDER_KEY in metadata or (ADMIN_KEY in metadata and flow.response is not None
                                        and flow.response.status_code < 400):  # forwarded, or the API took it
            self.trusted[digest] = None
            self.trusted.move_to_end(digest)
            if len(self.trusted) > MAX_TRUSTED:
                self.trusted.popitem(last=False)
        elif flow.response is not None and flow.response.status_code in FAILED_AUTH \
                and REQUEST_ID_KEY in flow.metadata and flow.metadata.get(REFUSAL_KEY) not in NOT_AUTH_FAILURES:
            self.trusted.pop(digest, None)
            self.failed(client_address(flow))

    def failed(self, address: str) -> None:
        times = self.failures.pop(address, None) or deque(maxlen=self.limit)
        times.append(self.clock())
        self.failures[address] = times  # now the most recent
        if len(self.failures) > MAX_CLIENTS:
            self.failures.popitem(last=False)

    def retry_after(self, address: str) -> int:
        """Whole seconds until `address` may authenticate again; 0 if it may now."""
        times = self.failures.get(address)
        if not times:
            return 0
        now = self.clock()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self.failures[address]
            return 0
        if len(times) < self.limit:
            return 0
        return max(1, math.ceil(times[0] + self.window - now))

    def _for_gateway(self, flow: http.HTTPFlow) -> bool:
        catalog = self.config.catalog
        return catalog is not None and (
            provider_for(flow, catalog) is not None or addressed_to_gateway(flow)
        )
