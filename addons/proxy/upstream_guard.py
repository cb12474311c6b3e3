"""Connect to a catalog provider only at a public address, the one that was checked.

addons.proxy.forward lets the forward endpoint name only catalog hosts, but a name is not an address: a
poisoned resolver, a hosts-file entry or a DNS rebind could point api.example-provider.com at
169.254.169.254 or at a service on the operator's network. So, when mitmproxy is about to open a
connection to a catalog host (`server_connect`), this addon resolves the name itself (the event
loop's getaddrinfo, which runs on a thread), refuses the connection if any address the name has
is private, loopback, link-local, multicast, reserved or unspecified (also inside IPv4-mapped,
6to4 and NAT64 IPv6 addresses), and otherwise pins it to the first address, the one it checked:
`server.address` becomes that IP, so mitmproxy's connect does not resolve again, while TLS SNI and
the certificate check keep the hostname (the HTTP layer set `server.sni` from the name before this
hook). Once connected, the name is put back as the address, so the HTTP layer's connection reuse
(which matches on it) keeps working. A name that does not resolve within RESOLVE_TIMEOUT_S is an
upstream timeout (504).

A provider's `upstream`, when the operator configured one, is trusted as written (a regional
endpoint, a private deployment, a local test server): connections to it are not checked.
Connections to hosts outside the catalog (traffic mitmproxy passes through) are not this addon's.

A refused connection is never opened; mitmproxy answers the client 502, which addons.proxy.error_pages
renders as `upstream_address_refused`, and the gateway records the request with the error.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import weakref
from collections.abc import Awaitable, Callable

from mitmproxy.proxy import server_hooks

from addons.proxy.error_pages import UPSTREAM_REFUSED
from addons.proxy.gateway_config import SharedConfig

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[list[str]]]
RESOLVE_TIMEOUT_S = 10.0
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


async def resolve(host: str, port: int) -> list[str]:
    """The host's addresses in the system's preferred order, resolved off the event loop."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_ADDRCONFIG
    )
    return list(dict.fromkeys(info[4][0] for info in infos))


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None
        )
        if embedded is not None and not is_public(str(embedded)):
            return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


class UpstreamGuard:
    def __init__(self, config: SharedConfig, resolver: Resolver = resolve):
        self.config = config
        self.resolver = resolver
        self.pinned: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # server -> its (host, port)

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        server, catalog = data.server, self.config.catalog
        if server.error or server.via or not server.address or catalog is None:
            return
        host, port = server.address[0], server.address[1]
        if catalog.is_upstream_of(host, port) or catalog.by_host(host) is None:
            return  # the operator's configured upstream, or not a provider
        try:
            addresses = await asyncio.wait_for(self.resolver(host, port), RESOLVE_TIMEOUT_S)
        except TimeoutError:
            server.error = f"timed out resolving {host}"
            return
        except OSError as e:
            server.error = f"cannot resolve {host}: {e}"
            return
        if not addresses or not all(map(is_public, addresses)):
            resolved = ", ".join(addresses) or "nothing"
            log.warning("tollgate: refusing to connect to %s: it resolved to %s", host, resolved)
            server.error = f"{UPSTREAM_REFUSED} ({host} resolved to {resolved})"
            return
        self.pinned[server] = (host, port)
        server.address = (addresses[0], port)

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._unpin(data.server)

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._unpin(data.server)

    def _unpin(self, server) -> None:
        name = self.pinned.pop(server, None)
        if name is not None:
            # mitmproxy refuses address changes on an open connection, since the socket would not
            # move; here the socket must stay at the checked IP and only the label changes back.
            object.__setattr__(server, "address", name)
