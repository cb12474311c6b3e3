"""The gateway's security addons, which go before the Gateway in the addon chain.

    ListenGuard     refuses to start as an open proxy (addons/listen_guard.py)
    RequestLimits   request body, header and metadata size limits (addons/request_limits.py)
    AuthThrottle    429 for a client address that keeps failing authentication (addons/auth_throttle.py)
    UpstreamGuard   connects to providers only at checked public addresses (addons/upstream_guard.py)
    Redaction       credentials out of shown, saved and logged flows (addons/redaction.py)

Before the Gateway, so that their `requestheaders` refusals come first and Redaction scrubs an
error message before the Gateway records it. `catalog` returns the Gateway's current catalog.
"""

from __future__ import annotations

from collections.abc import Callable

from addons.auth_throttle import AuthThrottle
from addons.catalog import Catalog
from addons.listen_guard import ListenGuard
from addons.redaction import Redaction
from addons.request_limits import RequestLimits
from addons.upstream_guard import UpstreamGuard


def security_addons(catalog: Callable[[], Catalog | None]) -> list:
    return [ListenGuard(), RequestLimits(), AuthThrottle(catalog), UpstreamGuard(catalog), Redaction(catalog)]
