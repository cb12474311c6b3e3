"""The gateway's addons in chain order, the same for both ways to run it (addons/gateway.py under
mitmdump/mitmweb, and the tollgate-proxy launcher).

    ListenGuard       refuses to start as an open proxy (addons/proxy/listen_guard.py)
    RequestLimits     request body, header and metadata size limits (addons/proxy/request_limits.py)
    AuthThrottle      429 for a client address that keeps failing authentication (addons/proxy/auth_throttle.py)
    UpstreamGuard     connects to providers only at checked public addresses (addons/proxy/upstream_guard.py)
    UpstreamRetries   resends a provider's 429/5xx before the client has any of it: before Redaction,
                      whose scrubbing it must see past, and before the Gateway, which meters only the
                      answer the client gets (addons/proxy/upstream_retries.py)
    Redaction         credentials out of shown, saved and logged flows, and out of error messages
                      before the Gateway records them (addons/proxy/redaction.py)
    AdminRoute        passes /v1/* requests addressed to the gateway (but /v1/forward) on to the admin
                      process, which serves the REST API (addons/proxy/admin_route.py)
    Gateway           the request path itself (addons/proxy/gateway_addon.py)
    UpstreamTimeouts  watches the flows the Gateway forwards (addons/proxy/upstream_timeouts.py)
    RuntimeInfo       tells the `tollgate` CLI where the gateway listens and which provider keys it
                      has (addons/proxy/runtime_info.py)
    WebRedaction      under mitmweb only: credentials out of what its UI shows, in flight too, with
                      Redaction's definition of a credential (addons/proxy/web_redaction.py)
    AdminProcess      starts the admin process (REST API, dashboard, /metrics) and restarts it should it
                      die (addons/proxy/admin_process.py)

The guards come first so that their `requestheaders` refusals happen before any other work.

The addons that read config (the catalog, settings, upstream timeouts) are handed one object, the
Gateway's SharedConfig (addons/proxy/gateway_config.py): the files are read once per process, by
the first addon to configure that needs them, and every addon sees the same catalog.
"""

from __future__ import annotations

from addons.proxy.admin_process import AdminProcess
from addons.proxy.admin_route import AdminRoute
from addons.proxy.auth_throttle import AuthThrottle
from addons.proxy.gateway_addon import Gateway
from addons.proxy.listen_guard import ListenGuard
from addons.proxy.redaction import Redaction
from addons.proxy.request_limits import RequestLimits
from addons.proxy.runtime_info import RuntimeInfo
from addons.proxy.upstream_guard import UpstreamGuard
from addons.proxy.upstream_retries import UpstreamRetries
from addons.proxy.upstream_timeouts import UpstreamTimeouts
from addons.proxy.web_redaction import WebRedaction


def gateway_chain(gateway: Gateway) -> list:
    config = gateway.config
    redaction = Redaction(config)
    return [ListenGuard(), RequestLimits(), AuthThrottle(config), UpstreamGuard(config), UpstreamRetries(config),
            redaction, AdminRoute(), gateway, UpstreamTimeouts(config), RuntimeInfo(config), WebRedaction(redaction.names), AdminProcess()]
