"""The forward endpoint's target (`/v1/forward?u=<provider URL>`), checked before any connection.

`u` may name only a catalog provider over https, or the upstream origin configured for one;
everything else is refused, so the endpoint is neither an open proxy nor a way into the
operator's internal network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from addons.catalog import Catalog, Provider
from addons.errors import BadRequest

FORWARD_PATH = "/v1/forward"
# urlsplit drops tab/CR/LF silently and keeps spaces and NUL, which would reach the request line.
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")
_PRINTABLE_ASCII = "".join(map(chr, range(0x21, 0x7F)))


@dataclass(frozen=True, slots=True)
class ForwardTarget:
    provider: Provider
    path: str  # path and query, as the provider will see them


def _refuse(why: str) -> BadRequest:
    return BadRequest("invalid_forward_url", f"u {why}")


def parse_forward_target(u: str | None, catalog: Catalog) -> ForwardTarget:
    if not u:
        raise _refuse("is required: /v1/forward?u=<url-encoded provider URL>")
    u = u.strip()
    if _CONTROL_OR_SPACE.search(u):
        raise _refuse("must not contain spaces or control characters")
    try:
        parts = urlsplit(u)
        port = parts.port
        # Non-ASCII is sent percent-encoded (surrogate escapes: as the bytes the client sent).
        target = quote(parts.path or "/", _PRINTABLE_ASCII, errors="surrogateescape")
        if parts.query:
            target += "?" + quote(parts.query, _PRINTABLE_ASCII, errors="surrogateescape")
    except ValueError:  # a bad port, a bad IPv6 literal, a lone surrogate
        raise _refuse("is not a valid URL") from None
    if parts.username is not None or parts.password is not None:
        raise _refuse("must not carry user information")
    host = (parts.hostname or "").lower()
    if not host or not parts.netloc.isascii() or parts.scheme not in ("http", "https"):
        raise _refuse("must be an absolute https URL of a catalog provider")
    default_port = 443 if parts.scheme == "https" else 80
    provider = catalog.by_host(host)
    if provider is None or parts.scheme != "https" or (port or 443) != 443:
        provider = catalog.is_upstream_of(host, port or default_port)
        if provider is None or parts.scheme != provider.origin[0]:
            raise _refuse("must point at a catalog provider host over https")
    return ForwardTarget(provider, target)
