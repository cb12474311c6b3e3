"""Keep credentials out of the flows mitmproxy shows, saves and logs.

The provider key has to be on `flow.request` when the request goes upstream: the gateway injects
it in `request`. Once the request is sent, nothing needs it, so at `responseheaders` (or `error`,
whichever comes first) every credential on a gateway flow is replaced by "[redacted]": the
headers SDKs put keys in, the provider's own auth header or query parameter from the catalog,
the `key` parameter (also inside the forward endpoint's `u`), Proxy-Authorization, and the key a browser
offers as a WebSocket subprotocol (`openai-insecure-api-key.<key>`; the other subprotocols stay). A refused
request, which the gateway never rewrote, still carries the caller's Tollgate credential and is
redacted the same way. The values found are also scrubbed from the flow's error message, which the
ledger records. mitmproxy's ProxyAuth keeps the proxy password in `flow.metadata["proxyauth"]`;
it is redacted on every flow.

These hooks run before the ones that save or print flows: the gateway's addons are loaded as
script children, which come before mitmproxy's Save, SaveHar, Dumper and mitmweb's View in the
addon chain. So `mitmdump -w`, HAR exports, mitmdump's flow output and mitmweb show "[redacted]".
While a request is in flight (from its headers arriving until its response headers) the live flow
still carries the caller's credential (before the gateway's `request` hook) or the provider key
(after it, for the whole time the provider takes to answer): it has to, to be sent. What mitmweb
shows of such a flow is masked by addons/proxy/web_redaction.py with `redact_request` below, the one
definition of where credentials sit on a request.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from mitmproxy import http

from addons.auth.credentials import CREDENTIAL_HEADERS
from addons.core.catalog import Catalog
from addons.proxy.flow_keys import REQUEST_ID_KEY
from addons.proxy.gateway_config import SharedConfig

REDACTED = "[redacted]"
SUBPROTOCOLS = "sec-websocket-protocol"  # a browser's WebSocket key: `openai-insecure-api-key.<key>` among them
SUBPROTOCOL_KEY = "openai-insecure-api-key."
HEADERS = (*CREDENTIAL_HEADERS, "proxy-authorization", SUBPROTOCOLS)
QUERY = ("key",)
MIN_SCRUB = 8  # shorter values are not looked for in error messages


def masked(value: str) -> str:
    """"Bearer sk-..." -> "Bearer [redacted]"; a bare value -> "[redacted]"."""
    scheme, sep, rest = value.partition(" ")
    return f"{scheme} {REDACTED}" if sep and rest.strip() and scheme.isalpha() else REDACTED


class Redaction:
    def __init__(self, config: SharedConfig):
        self.config = config
        self._names: tuple[Catalog | None, frozenset[str], frozenset[str]] = (None, frozenset(HEADERS), frozenset(QUERY))

    def names(self) -> tuple[frozenset[str], frozenset[str]]:
        """Header and query parameter names that carry credentials, the catalog's included."""
        catalog = self.config.catalog
        if catalog is not None and self._names[0] is not catalog:
            headers = frozenset([*HEADERS, *(p.auth_header for p in catalog.providers if p.auth_header)])
            query = frozenset([*QUERY, *(p.auth_query for p in catalog.providers if p.auth_query)])
            self._names = (catalog, headers, query)
        return self._names[1], self._names[2]

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self.redact(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self.redact(flow)

    def redact(self, flow: http.HTTPFlow) -> None:
        redact_proxyauth(flow.metadata)
        if REQUEST_ID_KEY not in flow.metadata or flow.request is None:
            return
        found = redact_request(flow.request, *self.names())
        if flow.error:
            for value in found:
                if len(value) >= MIN_SCRUB:
                    flow.error.msg = flow.error.msg.replace(value, REDACTED)


def redact_proxyauth(metadata: dict) -> bool:
    """mitmproxy's ProxyAuth keeps (user, password) in the flow's metadata; True if it was masked now."""
    auth = metadata.get("proxyauth")
    if isinstance(auth, tuple | list) and len(auth) == 2 and auth[1] != REDACTED:
        metadata["proxyauth"] = (auth[0], REDACTED)
        return True
    return False


def redact_request(request: http.Request, header_names: frozenset[str], query_names: frozenset[str]) -> list[str]:
    """Mask every credential on the request in place; returns the values masked now (none: nothing changed).

    The one place that says what a credential on a request is: the Redaction addon applies it to the
    live flow once it is sent, addons/proxy/web_redaction.py to what mitmweb shows of a flow in flight.
    """
    found: list[str] = []
    fields = request.headers.fields
    names = _byte_names(header_names)  # the raw names compared as bytes, most passed over: this runs on every request
    if hits := [index for index, (name, _) in enumerate(fields) if name.lower() in names]:
        masked_fields = list(fields)
        for index in hits:
            masked_fields[index] = _masked_field(*fields[index], header_names, found)
        if found:
            request.headers.fields = tuple(masked_fields)
    if "?" in request.path:
        query = request.query
        for name in list(query.keys()):
            if name in query_names:
                values = query.get_all(name)
                if any(v != REDACTED for v in values):
                    found += [v for v in values if v != REDACTED]
                    query.set_all(name, [REDACTED] * len(values))
            elif name == "u":  # the forward endpoint's target, before the gateway rewrote it
                before = len(found)
                urls = [_redact_url(u, query_names, found) for u in query.get_all(name)]
                if len(found) > before:
                    query.set_all(name, urls)
    return found


_byte_name_sets: dict[frozenset[str], frozenset[bytes]] = {}  # header names -> the same as raw names (a few sets)


def _byte_names(names: frozenset[str]) -> frozenset[bytes]:
    raw = _byte_name_sets.get(names)  # a frozenset's hash is kept: one lookup
    if raw is None:
        if len(_byte_name_sets) >= 16:  # a new set per catalog reload: the old ones go
            _byte_name_sets.clear()
        raw = _byte_name_sets[names] = frozenset(name.encode("latin-1") for name in names)
    return raw


def _masked_field(name: bytes, value: bytes, header_names, found: list[str]) -> tuple[bytes, bytes]:
    lowered = name.lower().decode("latin-1")
    if lowered not in header_names:
        return name, value
    text = value.decode("latin-1")
    if lowered == SUBPROTOCOLS:  # only the key among the subprotocols offered
        keys = [p.strip()[len(SUBPROTOCOL_KEY):] for p in text.split(",") if p.strip().startswith(SUBPROTOCOL_KEY)]
        found += [key for key in keys if key != REDACTED]
        for key in keys:
            text = text.replace(SUBPROTOCOL_KEY + key, SUBPROTOCOL_KEY + REDACTED)
        return name, text.encode("latin-1")
    shown = masked(text)
    if shown != text:
        found.append(text.partition(" ")[2] or text)
    return name, shown.encode("latin-1")


def _redact_url(url: str, names: frozenset[str], found: list[str]) -> str:
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    secrets = [v for k, v in pairs if k in names and v != REDACTED]
    if not secrets:
        return url
    found += secrets
    return urlunsplit(parts._replace(query=urlencode([(k, REDACTED if k in names else v) for k, v in pairs])))
