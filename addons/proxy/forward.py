"""The forward endpoint's target (`/v1/forward?u=<provider URL>`), checked before any connection.

`u` may name only a catalog provider over https, or the upstream origin configured for one;
everything else is refused, so the endpoint is neither an open proxy nor a way into the
operator's internal network.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from addons.core.catalog import Catalog, Provider
from addons.core.errors import BadRequest

FORWARD_PATH = "/v1/forward"
# "https://api.openai.com/v1" + "chat/completions": a version segment with the SDK's path glued on.
_GLUED_VERSION = re.compile(r"^(https?://[^/?#]*(?:/[^/?#]*)*?/v\d+(?:alpha\d*|beta\d*)?)(?!alpha|beta)(?=[a-z])")
# urlsplit drops tab/CR/LF silently and keeps spaces and NUL, which would reach the request line.
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")
_PRINTABLE_ASCII = "".join(map(chr, range(0x21, 0x7F)))


@dataclass(frozen=True, slots=True)
class ForwardTarget:
    provider: Provider
    path: str  # path and query, as the provider will see them
    host: str  # the host u names (lower-case): a provider's regional or per-account host decides the origin


def _refuse(why: str) -> BadRequest:
    return BadRequest("invalid_forward_url", f"u {why}")


def sdk_query(fields: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The forward endpoint's query parameters. google-genai adds its own query with a second "?"
    (":streamGenerateContent?alt=sse?u=<base>"), which hides `u` inside another parameter's value."""
    if any(name == "u" for name, _ in fields):
        return list(fields)
    split = []
    for name, value in fields:
        value, glued, rest = value.partition("?")
        split.append((name, value))
        if glued:
            split += parse_qsl(rest, keep_blank_values=True)
    return split


def sdk_target(u: str | None, path: str, params: list[tuple[str, str]] = ()) -> str | None:
    """The provider URL an SDK meant, from a base URL of `/v1/forward?u=<base>` and what it requested.

    SDKs join their own path onto a base URL in two ways. OpenAI's adds a slash to the forward path and
    appends to the query, so a `u` without a trailing slash arrives as ".../v1chat/completions"; it is
    read as ".../v1/chat/completions". Google's appends to the path ("/v1/forward/v1beta/models/..."),
    which is appended to `u`. Either way `u` works with or without its trailing slash. Query parameters
    the SDK added beside `u` (`params`: all but `u` and `key`, e.g. Gemini's alt=sse) go to the provider.
    """
    if not u:
        return u
    suffix = path[len(FORWARD_PATH) + 1 :] if path.startswith(FORWARD_PATH + "/") else ""
    if suffix:
        base, sep, query = u.partition("?")
        u = f"{base.rstrip('/')}/{suffix}{sep}{query}"
    elif path != FORWARD_PATH:
        u = _GLUED_VERSION.sub(r"\1/", u, count=1)
    if params:
        u += ("&" if "?" in u else "?") + urlencode(params)
    return u


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
    return ForwardTarget(provider, target, host.rstrip("."))
