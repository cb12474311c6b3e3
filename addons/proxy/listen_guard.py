"""Refuse to start as an open proxy (a listener other people can reach needs proxy authentication),
or with a capture mode this machine cannot run (addons/host/capture_modes.py: one line, why and what to do).

A proxy mode in which the client names the destination (regular, upstream, socks5) and that
listens on anything but a loopback address lets whoever reaches the port use the gateway host's
network: the internal network behind it included. mitmproxy's Block addon drops public client
addresses by default (`block_global`), but not private ones, so a gateway bound to 0.0.0.0 is
open to its whole LAN, container network or VPC. Such a configuration is refused at start-up
unless mitmproxy's `proxyauth` is set, or `tollgate_allow_open_proxy` says the network in front of
it already restricts who can connect (a container port published only to the host, a firewall).

Not checked: reverse modes (the destination is fixed, and every gateway route needs a Tollgate
key anyway), transparent mode (clients cannot name a destination by connecting to the port), and
modes that listen on no port or authenticate peers themselves (local, wireguard, dns, tun).

A Tollgate secret key is deliberately not accepted as the proxy credential: a key grants metered
AI spend, while proxy access grants the gateway host's network (any host, plain-HTTP requests to
the internal network included), which a key holder should not get by holding a key. Requests to
catalog providers need a Tollgate key whether or not proxy authentication is configured.
"""

from __future__ import annotations

from collections.abc import Sequence

from mitmproxy import ctx
from mitmproxy.exceptions import OptionsError
from mitmproxy.proxy import mode_specs

from addons.host import capture_modes
from addons.host.listen_addresses import is_loopback

CLIENT_ROUTED_MODES = (mode_specs.RegularMode, mode_specs.UpstreamMode, mode_specs.Socks5Mode)


def exposed_listeners(listen_host: str, modes: Sequence[str]) -> list[str]:
    """The client-routed mode specs that would listen beyond loopback, as "spec (host)"."""
    exposed = []
    for spec in modes:
        mode = mode_specs.ProxyMode.parse(spec)
        host = mode.listen_host(listen_host)
        if isinstance(mode, CLIENT_ROUTED_MODES) and not is_loopback(host):
            exposed.append(f"{spec} on {host or 'all interfaces'}")
    return exposed


class ListenGuard:
    def load(self, loader):
        loader.add_option(
            "tollgate_allow_open_proxy", bool, False,
            "Allow a proxy listener on a non-loopback address without proxyauth. Only for a network "
            "that already restricts who can connect (a container port published to the host only, a "
            "firewall): anyone who reaches the port can otherwise use the gateway host's network.",
        )

    def configure(self, updated):
        if {"mode", "listen_host", "listen_port", "confdir"} & set(updated) and (why := capture_modes.refusal(
            ctx.options.mode, ctx.options.listen_host, ctx.options.listen_port, ctx.options.confdir
        )):
            raise OptionsError(why)
        if not {"listen_host", "mode", "proxyauth", "tollgate_allow_open_proxy"} & set(updated):
            return
        if ctx.options.tollgate_allow_open_proxy or getattr(ctx.options, "proxyauth", None):
            return
        try:
            exposed = exposed_listeners(ctx.options.listen_host, ctx.options.mode)
        except ValueError:
            return  # an invalid mode spec: Proxyserver reports it
        if exposed:
            raise OptionsError(
                f"refusing to run an open proxy: {', '.join(exposed)} is reachable from other machines and "
                "no proxy authentication is configured. Listen on 127.0.0.1 (--listen-host 127.0.0.1), "
                "require proxy credentials (--proxyauth user:pass or @htpasswd-file), or, if a firewall "
                "already restricts who can connect, --set tollgate_allow_open_proxy=true."
            )
