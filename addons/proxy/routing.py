"""Which provider a request is for, and whether it is addressed to the gateway itself.

The same answer in every proxy mode. In regular mode the client names its destination (a CONNECT
target, an absolute URL, a Host header). In transparent, WireGuard and local mode it names nothing:
`request.host` is the original destination address, an IP, and the name the client meant is only in
the TLS SNI and the Host header. So the provider is the first catalog host among the SNI, the Host
header and `request.host`: a request that names a catalog host anywhere is metered, never passed
through unmetered.

The gateway's own endpoints (/v1/forward, /healthz) answer only a client that connected in regular
mode and sent its request to the listener itself (origin-form, Host naming the listener). A
captured request to port 443 of some address is never "for the gateway", whatever its path.
"""

from __future__ import annotations

from mitmproxy import http
from mitmproxy.net.http import url
from mitmproxy.proxy import mode_specs

from addons.core.catalog import Catalog, Provider

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def provider_for(flow: http.HTTPFlow, catalog: Catalog) -> Provider | None:
    """The catalog provider the client meant: by SNI, then Host header, then the request's host."""
    if (sni := flow.client_conn.sni) and (provider := catalog.by_host(sni)):
        return provider
    request = flow.request
    if (host_header := request.host_header) and (provider := catalog.by_host(_host_of(host_header))):
        return provider
    return catalog.by_host(request.host)


def named_host(flow: http.HTTPFlow, provider: Provider) -> str | None:
    """Which of the provider's hosts the client named (SNI, Host header, request host), so that a request
    to a regional or legacy host of a provider goes to that host and not to its base_url's."""
    request = flow.request
    for host in (flow.client_conn.sni, request.host_header and _host_of(request.host_header), request.host):
        if host and (host := host.lower().rstrip(".")) in provider.hosts:
            return host
    return None


def addressed_to_gateway(flow: http.HTTPFlow) -> bool:
    """A regular-mode request to the proxy's own address, as to an ordinary HTTP server."""
    client = flow.client_conn
    if not isinstance(client.proxy_mode, mode_specs.RegularMode):
        return False
    sockname = client.sockname
    host = flow.request.host
    return bool(sockname) and flow.request.port == sockname[1] and (host in LOCAL_HOSTS or host == sockname[0])


def _host_of(authority: str) -> str:
    """The host of a Host header. A name or IPv4 address with a port is split here: mitmproxy's parser
    costs about 5 µs, on every request."""
    host, colon, port = authority.rpartition(":")
    if colon and port.isdigit() and "[" not in host and ":" not in host:
        return host
    if not colon:
        return authority
    try:
        return url.parse_authority(authority, check=False)[0]
    except ValueError:
        return authority
