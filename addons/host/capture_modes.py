"""Whether a capture mode can run on this machine, checked before anything starts.

mitmproxy starts `--mode local` (its eBPF redirector) after the gateway has announced itself: on a
host that cannot run it, the redirector prints a page of BPF verifier dump and exits, while the
proxy keeps running with no listener at all. So the gateway checks first, and refuses with one
line saying why and what to do instead (ListenGuard raises it at configure time):

    local       Linux only: the capabilities the redirector needs (CAP_NET_ADMIN, CAP_BPF or
                CAP_SYS_ADMIN) in this process's bounding set, the cgroup v2 hierarchy mounted at
                /sys/fs/cgroup in this process's mount namespace (where the redirector, its child,
                attaches; a hybrid cgroup v1 host has it elsewhere or nowhere, and the gateway then runs
                in a private mount namespace that mounts it there: README, "Local (eBPF)"), and
                `sudo`, through which mitmproxy starts the redirector, also as root.
    wireguard   mitmproxy's own userspace WireGuard: no privilege needed, only its UDP port, which
                is checked free, and its key file (confdir/wireguard.conf, made on first start),
                checked readable.
    transparent listens like any proxy; the redirect is the firewall's (`tollgate capture on`).

A redirector that still fails once started is caught by the launcher (addons.runtime.launcher), which
prints its one-line cause and exits.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import shutil
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mitmproxy.proxy import mode_specs

CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF = 12, 21, 39
ALTERNATIVES = "use --mode transparent with `tollgate capture on`, or --mode wireguard"


@dataclass(frozen=True)
class Host:
    """What the checks read about this machine; tests pass their own."""

    platform: str
    bounding_caps: int | None  # None: unknown (no /proc)
    cgroup2_at_root: bool
    has_sudo: bool
    redirector_unavailable: str | None = None


def this_host() -> Host:
    return Host(
        platform=sys.platform,
        bounding_caps=_caps("CapBnd"),
        cgroup2_at_root=Path("/sys/fs/cgroup/cgroup.controllers").exists(),
        has_sudo=shutil.which("sudo") is not None,
        redirector_unavailable=_redirector_unavailable(),
    )


def _caps(field: str, status: Path = Path("/proc/self/status")) -> int | None:
    try:
        for line in status.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return None


def _redirector_unavailable() -> str | None:
    try:
        from mitmproxy_rs.local import LocalRedirector

        return LocalRedirector.unavailable_reason()
    except Exception as e:  # no mitmproxy_rs build for this platform
        return f"mitmproxy's local redirector is not available ({type(e).__name__})"


def local_mode_refusal(host: Host) -> str | None:
    """Why `--mode local` cannot run on `host`, as one line with what to do; None if it may."""
    if not host.platform.startswith("linux"):
        return None  # macOS and Windows: mitmproxy's own redirectors, with their own prompts
    if host.redirector_unavailable:
        return f"--mode local cannot run here: {host.redirector_unavailable}; {ALTERNATIVES}"
    if host.bounding_caps is not None:
        missing = [name for name, bit in (("CAP_NET_ADMIN", CAP_NET_ADMIN),) if not host.bounding_caps >> bit & 1]
        if not (host.bounding_caps >> CAP_BPF & 1 or host.bounding_caps >> CAP_SYS_ADMIN & 1):
            missing.append("CAP_BPF")
        if missing:
            return (f"--mode local cannot run here: its eBPF redirector needs {' and '.join(missing)}, which this "
                    f"process cannot get (a container without them?); grant them, or {ALTERNATIVES}")
    if not host.cgroup2_at_root:
        return ("--mode local cannot run here: its eBPF redirector attaches to the cgroup v2 hierarchy at "
                "/sys/fs/cgroup, and this host does not mount cgroup v2 there (cgroup v1 or hybrid); start the "
                "gateway in a mount namespace of its own that does (as root: unshare --mount --propagation private "
                f"sh -c 'mount -t cgroup2 none /sys/fs/cgroup && exec ./run_proxy.sh --mode local:APP'; README, "
                f"\"Local (eBPF)\"), or {ALTERNATIVES}")
    if not host.has_sudo:
        return ("--mode local needs sudo: mitmproxy starts its eBPF redirector through sudo, also as root; install "
                f"sudo, or {ALTERNATIVES}")
    return None


def worker_refusal(specs: Sequence[str], listen_port: int | None) -> str | None:
    """Why the modes cannot be shared by several workers (SO_REUSEPORT shares a fixed TCP port only):
    transparent and regular can; wireguard, dns, reverse:quic (UDP) and local (no port) cannot."""
    for spec in specs:
        mode = mode_specs.ProxyMode.parse(spec)
        port = mode.listen_port(listen_port)
        if mode.transport_protocol != "tcp" or port is None:
            return f"mode {spec!r} cannot be shared by several workers (only TCP listeners can); run one worker for it"
        if port == 0:
            return "workers share one port: give a fixed --listen-port, not 0"
    return None


def udp_port_refusal(spec: str, host: str, port: int) -> str | None:
    """Why the WireGuard server cannot have UDP host:port (taken, or no such local address), or None."""
    try:
        family = socket.AF_INET6 if host and ipaddress.ip_address(host.strip("[]")).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET  # a name: mitmproxy resolves it
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((host.strip("[]"), port))
    except OSError as e:
        where = f"{host or 'all interfaces'}:{port}"
        if e.errno == errno.EADDRINUSE:
            return (f"--mode {spec} cannot listen on UDP {where}: the port is already in use; pick another "
                    "(--mode wireguard@PORT) or stop what holds it")
        return f"--mode {spec} cannot listen on UDP {where}: {e.strerror or e}; pick another address or port"
    return None


def wireguard_keys_refusal(spec: str, path: Path) -> str | None:
    """Why the WireGuard key file cannot be used, or None (also when it does not exist yet: it is made)."""
    if not path.exists():
        return None
    try:
        import mitmproxy_rs.wireguard

        keys = json.loads(path.read_text())
        for name in ("server_key", "client_key"):
            mitmproxy_rs.wireguard.pubkey(keys[name])
    except Exception as e:  # unreadable, not JSON, a key missing or invalid
        detail = f"no {e}" if isinstance(e, KeyError) else type(e).__name__
        return f"--mode {spec} cannot use its key file {path} ({detail}); fix it, or remove it to have new keys made"
    return None


def refusal(specs: Sequence[str], listen_host: str = "", listen_port: int | None = None, confdir: str = "~/.mitmproxy",
            host: Callable[[], Host] = this_host) -> str | None:
    """The first reason one of the mode specs cannot run here, or None."""
    for spec in specs:
        try:
            mode = mode_specs.ProxyMode.parse(spec)
        except ValueError:
            continue  # Proxyserver reports invalid specs
        if isinstance(mode, mode_specs.LocalMode) and (why := local_mode_refusal(host())):
            return why
        if isinstance(mode, mode_specs.WireGuardMode):
            port = mode.listen_port(listen_port)
            if port and (why := udp_port_refusal(spec, mode.listen_host(listen_host), port)):
                return why
            keys = Path(mode.data).expanduser() if mode.data else Path(confdir).expanduser() / "wireguard.conf"
            if why := wireguard_keys_refusal(spec, keys):
                return why
    return None


@dataclass(frozen=True)
class ListenOptions:
    """What the mode checks need of a command line: modes, listen address, confdir."""

    modes: list[str]
    listen_host: str = ""
    listen_port: int | None = None
    confdir: str = "~/.mitmproxy"


def listen_options(argv: Sequence[str]) -> ListenOptions:
    """Read from mitmproxy-style arguments (`--mode`/`-m`, `--listen-host`, `--listen-port`/`-p`, and the
    same as `--set NAME=VALUE`); every other argument is ignored, and so is a value that does not parse
    (the proxy itself reports it). mitmproxy's own parser would need every addon loaded."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("-m", "--mode", action="append")
    parser.add_argument("--listen-host")
    parser.add_argument("-p", "--listen-port")
    parser.add_argument("--set", action="append", dest="setoptions")
    try:
        args, _ = parser.parse_known_args(argv)
    except argparse.ArgumentError:  # e.g. an option missing its value
        return ListenOptions(["regular"])
    values = {"mode": args.mode, "listen_host": args.listen_host, "listen_port": args.listen_port}
    confdir = None
    for assignment in args.setoptions or ():
        name, _, value = assignment.partition("=")
        if name in values:
            values[name] = [value] if name == "mode" else value
        elif name == "confdir":
            confdir = value
    port = values["listen_port"]
    return ListenOptions(values["mode"] or ["regular"], values["listen_host"] or "",
                         int(port) if port and port.isdigit() else None, confdir or "~/.mitmproxy")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m addons.host.capture_modes [mitmweb arguments]`: run_proxy.sh --web checks the modes first.

    mitmweb loads the gateway as a script, whose refusal mitmweb only logs before starting the
    listeners anyway (a local mode then prints the redirector's BPF dump); so the check runs before
    mitmweb does, on the same arguments, and prints the one line tollgate-proxy would.
    """
    opts = listen_options(sys.argv[1:] if argv is None else argv)
    if why := refusal(opts.modes, opts.listen_host, opts.listen_port, opts.confdir):
        print(f"mitmweb: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
