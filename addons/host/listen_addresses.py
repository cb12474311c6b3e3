"""Which listen addresses only this machine can reach, and the one line that refuses an admin listener
reachable from other machines without TLS."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """A listen host that only this machine can reach. "" (all interfaces) and names other than
    localhost are not: a name could resolve anywhere."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def open_admin_refusal(host: str, allow_open: bool, certfile: str | None, keyfile: str | None) -> str | None:
    """Why an admin listener on `host` is refused, or None: beyond loopback it needs TLS or an explicit yes."""
    if is_loopback(host) or allow_open or (certfile and keyfile):
        return None
    return (f"refusing to run an open admin listener: {host or 'every address'} is reachable from other machines "
            "and would serve the API over plain HTTP. Listen on 127.0.0.1 (--admin-host 127.0.0.1), give it a "
            "TLS certificate and key (--set tollgate_admin_certfile=PEM --set tollgate_admin_keyfile=PEM), or, if "
            "a firewall already restricts who can connect, --set tollgate_allow_open_admin=true.")
