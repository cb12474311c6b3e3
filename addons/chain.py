"""The gateway's addons in chain order, the same for both ways to run it (addons/gateway.py under
mitmdump/mitmweb, and the tollgate-proxy launcher).

    ListenGuard       refuses to start as an open proxy (addons/listen_guard.py)
    RequestLimits     request body, header and metadata size limits (addons/request_limits.py)
    AuthThrottle      429 for a client address that keeps failing authentication (addons/auth_throttle.py)
    UpstreamGuard     connects to providers only at checked public addresses (addons/upstream_guard.py)
    UpstreamRetries   resends a provider's 429/5xx before the client has any of it: before Redaction,
                      whose scrubbing it must see past, and before the Gateway, which meters only the
                      answer the client gets (addons/upstream_retries.py)
    Redaction         credentials out of shown, saved and logged flows, and out of error messages
                      before the Gateway records them (addons/redaction.py)
    Gateway           the request path itself (addons/gateway_addon.py)
    UpstreamTimeouts  watches the flows the Gateway forwards (addons/upstream_timeouts.py)
    RuntimeInfo       tells the `tollgate` CLI where the gateway listens and which provider keys it
                      has (addons/runtime_info.py)
    WebRedaction      under mitmweb only: credentials out of what its UI shows, in flight too, with
                      Redaction's definition of a credential (addons/web_redaction.py)

The guards come first so that their `requestheaders` refusals happen before any other work.
"""

from __future__ import annotations

from addons.auth_throttle import AuthThrottle
from addons.gateway_addon import Gateway
from addons.listen_guard import ListenGuard
from addons.redaction import Redaction
from addons.request_limits import RequestLimits
from addons.runtime_info import RuntimeInfo
from addons.upstream_guard import UpstreamGuard
from addons.upstream_retries import UpstreamRetries
from addons.upstream_timeouts import UpstreamTimeouts
from addons.web_redaction import WebRedaction


def gateway_chain(gateway: Gateway) -> list:
    def catalog():
        return gateway.catalog

    redaction = Redaction(catalog)
    return [ListenGuard(), RequestLimits(), AuthThrottle(catalog), UpstreamGuard(catalog), UpstreamRetries(catalog=catalog),
            redaction, gateway, UpstreamTimeouts(), RuntimeInfo(catalog), WebRedaction(redaction.names)]
