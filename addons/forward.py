"""The forward endpoint's target (`/v1/forward?u=<provider URL>`), checked before any connection.

`u` may name only a catalog provider over https, or the upstream origin configured for one;
everything else is refused, so the endpoint is neither an open proxy nor a way into the
operator's internal network.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from addons.catalog import Catalog, Provider
from addons.errors import BadRequest

FORWARD_PATH = "/v1/forward"


@dataclass(frozen=True, slots=True)
class ForwardTarget:
    provider: Provider
    path: str  # path and query, as the provider will see them


def _refuse(why: str) -> BadRequest:
    return BadRequest("invalid_forward_url", f"u {why}")


def parse_forward_target(u: str | None, catalog: Catalog) -> ForwardTarget:
    if not u:
        raise _refuse("is required: /v1/forward?u=<url-encoded provider URL>")
    try:
        parts = urlsplit(u.strip())
        port = parts.port
    except ValueError:
        raise _refuse("is not a valid URL") from None
    if parts.username is not None or parts.password is not None:
        raise _refuse("must not carry user information")
    host = (parts.hostname or "").lower()
    if not host or parts.scheme not in ("http", "https"):
        raise _refuse("must be an absolute https URL of a catalog provider")
    default_port = 443 if parts.scheme == "https" else 80
    provider = catalog.by_host(host)
    if provider is None or parts.scheme != "https" or (port or 443) != 443:
        provider = catalog.is_upstream_of(host, port or default_port)
        if provider is None or parts.scheme != provider.origin[0]:
            raise _refuse("must point at a catalog provider host over https")
    path = parts.path or "/"
    return ForwardTarget(provider, f"{path}?{parts.query}" if parts.query else path)
