"""The CLI's commands about this host, not the ledger: the provider catalog, the CA clients must trust, and
transparent capture rules (addons/host/)."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from addons.cli.output import emit, table
from addons.core.catalog import load_catalog
from addons.core.settings import load_settings
from addons.host import capture, trust
from addons.proxy.runtime_info import read_running, runtime_file
from addons.rewrite.formats import client_formats_for


def cmd_providers(args) -> None:
    """The catalog; `format`: the client formats the rewrite endpoint translates to each provider."""
    catalog = load_catalog(overrides=load_settings().provider_overrides)
    running = read_running()
    source = "running gateway" if running else "this shell's environment"
    has_key = set(running.get("provider_keys") or ()) if running else None
    rows = [
        {"id": p.id, "name": p.name, "hosts": list(p.host_names), "api_family": p.api_family,
         "credential_env": p.credential_env,
         "configured": p.id in has_key if running else p.credential_configured(os.environ),
         "source": source, "upstream": p.upstream, "format": client_formats_for(p.api_family)}
        for p in catalog.providers
    ]
    column = "gateway has key" if running else "key in this shell"
    text = (f"Keys as the running gateway (pid {running['pid']}, started {running.get('started_at')}) has them."
            if running else "No running gateway found: the key column reports this shell's environment, "
                            "which a gateway started from this shell would have.")
    shown = table("Providers", ["id", "hosts", "family", "format", "credential", column, "upstream"],
                  [[r["id"], _hosts_shown(r["hosts"]), r["api_family"], ", ".join(r["format"]) or "-",
                    r["credential_env"], "yes" if r["configured"] else "no", r["upstream"]] for r in rows])
    shown.columns[5].no_wrap = True  # the header says whose keys these are
    emit(args, rows, shown, text=text)


def _hosts_shown(hosts: list[str], most: int = 2) -> str:
    """A provider's hosts in the table: a regional cloud's dozens cut to the first few (--json lists all)."""
    if len(hosts) <= most + 1:
        return ", ".join(hosts)
    return f"{', '.join(hosts[:most])} and {len(hosts) - most} more (--json lists them)"


DEFAULT_PROXY = "127.0.0.1:8080"


def _proxy_url(port: int | None, running: dict | None) -> tuple[str, str | None]:
    """HTTPS_PROXY for clients: --port, else the running gateway's proxy listener, else the default; and a note."""
    if port is not None:
        return f"http://127.0.0.1:{port}", None
    if running is None:
        return f"http://{DEFAULT_PROXY}", (f"no running gateway found ({runtime_file()}); HTTPS_PROXY assumes "
                                           f"{DEFAULT_PROXY}: pass --port if the gateway listens elsewhere")
    addrs = [(host, p) for listener in running.get("listeners") or () if listener.get("type") in ("regular", "upstream")
             for host, p in listener.get("listen_addrs") or ()]
    if not addrs:
        modes = ", ".join(listener.get("mode", "?") for listener in running.get("listeners") or ()) or "none"
        return f"http://{DEFAULT_PROXY}", (f"the running gateway (pid {running['pid']}) has no HTTP proxy listener "
                                           f"(modes: {modes}); HTTPS_PROXY assumes {DEFAULT_PROXY}")
    host, p = sorted(addrs, key=lambda a: ":" in a[0])[0]  # IPv4 first
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    note = ("the running gateway requires proxy credentials (--proxyauth): put them in HTTPS_PROXY as "
            "http://USER:PASS@HOST:PORT" if running.get("proxyauth") else None)
    return f"http://{f'[{host}]' if ':' in host else host}:{p}", note


def cmd_ca(args) -> None:
    running = read_running()
    confdir = Path(args.confdir or (running or {}).get("confdir")
                   or os.environ.get("MITMPROXY_CONFDIR", "~/.mitmproxy")).expanduser()
    cert = confdir / trust.CA_FILE
    if args.install or args.uninstall:
        try:
            changes = trust.install(cert) if args.install else trust.uninstall()
        except trust.TrustError as e:
            raise SystemExit(f"tollgate: {e}") from None
        emit(args, {"ca_cert": str(cert), "changes": changes}, text="\n".join(changes))
        return
    proxy, note = _proxy_url(args.port, running)
    if note:
        print(f"tollgate: {note}", file=sys.stderr)
    if not cert.exists():
        missing = (f"mitmproxy's CA does not exist yet ({cert}): start the gateway once (./run_proxy.sh), "
                   "which creates it, then run this again")
        if args.exports and not args.json:
            raise SystemExit(f"tollgate: {missing}")
        emit(args, {"ca_cert": str(cert), "exists": False, "bundle": None, "exports": {}}, text=missing)
        return
    bundle = str(trust.write_bundle(cert))
    exports = {"SSL_CERT_FILE": bundle, "REQUESTS_CA_BUNDLE": bundle, "NODE_EXTRA_CA_CERTS": str(cert),
               "HTTPS_PROXY": proxy}
    lines = [f"export {k}={shlex.quote(v)}" for k, v in exports.items()]
    if args.exports and not args.json:
        print("\n".join(lines))
        return
    data = {"ca_cert": str(cert), "exists": True, "bundle": bundle, "exports": exports}
    emit(args, data, text="\n".join([f"CA certificate: {cert}",
                                     f"CA bundle (the system's roots and this CA): {bundle}", *lines]))


# -- capture: transparent capture rules on this host (addons/host/capture.py) ----------------------------

def cmd_capture(args) -> None:
    try:
        if args.action == "on":
            _capture_on(args)
        elif args.action == "off":
            _capture_off(args)
        else:
            emit(args, status := capture.capture_status(_capture_binaries()), text=_capture_status_text(status))
    except capture.CaptureError as e:
        raise SystemExit(f"tollgate capture: {e}") from None


def _capture_binaries() -> dict[str, str]:
    found = capture.binaries()
    capture.require_net_admin()
    return found


def _capture_on(args) -> None:
    if args.uid is not None:
        selector = capture.Selector("uid", str(capture.resolve_uid(args.uid)))
    else:
        selector = capture.Selector("cgroup", args.cgroup)
    gateway_uid = (capture.resolve_uid(args.gateway_user) if args.gateway_user is not None
                   else capture.default_gateway_uid(args.port))
    plan = capture.plan_on(selector, args.port, gateway_uid)
    if args.dry_run:
        commands = [capture.command_line(name, step) for _, name in capture.FAMILIES for step in plan]
    else:
        commands = capture.capture_on(selector, args.port, gateway_uid, _capture_binaries())
    what = f"{selector.describe()}: TCP {', '.join(map(str, capture.PORTS))} -> port {args.port}"
    data = {"selector": {selector.kind: selector.value}, "port": args.port, "gateway_uid": gateway_uid,
            "dry_run": args.dry_run, "commands": commands}
    text = "\n".join(commands) if args.dry_run else (
        f"capturing {what} (the gateway's uid {gateway_uid} excluded); undo with: tollgate capture off")
    if not args.dry_run and capture.listener_uid(args.port) is None:
        text += (f"\nnothing listens on port {args.port} yet: start the gateway with --mode transparent "
                 f"--listen-port {args.port}; until then the captured connections are refused")
    emit(args, data, text=text)


def _capture_off(args) -> None:
    if args.dry_run:
        commands = [capture.command_line(name, step) for _, name in capture.FAMILIES
                    for step in capture.plan_off([shlex.join(["-A", "OUTPUT", *capture.JUMP])])]
    else:
        commands = capture.capture_off(_capture_binaries())
    text = "\n".join(commands) if args.dry_run else (
        f"removed {len(commands)} firewall change(s) tagged {capture.COMMENT}" if commands else "no capture rules")
    emit(args, {"dry_run": args.dry_run, "commands": commands}, text=text)


def _capture_status_text(status: dict) -> str:
    lines = ["capture is " + ("on" if status["active"] else "off")]
    for family, found in status["families"].items():
        lines += [f"{family}: {rule}" for rule in found["jump"] + found["rules"]]
    return "\n".join(lines)


def add_capture_parser(sub, common) -> None:
    capture_cmd = sub.add_parser("capture", parents=[common],
                                 help="transparent capture of apps on this host (iptables)")
    actions = capture_cmd.add_subparsers(dest="action", required=True)
    on = actions.add_parser("on", parents=[common], help="redirect a user's or cgroup's TCP 80/443 to the gateway")
    who = on.add_mutually_exclusive_group(required=True)
    who.add_argument("--uid", metavar="USER", help="capture this user's connections (name or number)")
    who.add_argument("--cgroup", metavar="PATH", help="capture this cgroup v2's connections (e.g. /app.slice)")
    on.add_argument("--port", type=int, default=8080, help="the gateway's transparent-mode port (default 8080)")
    on.add_argument("--gateway-user", metavar="USER",
                    help="the user the gateway runs as, never captured (default: the owner of the listener on "
                         "--port, else you)")
    on.add_argument("--dry-run", action="store_true", help="print the iptables commands instead of running them")
    off = actions.add_parser("off", parents=[common], help="remove every rule tollgate capture installed")
    off.add_argument("--dry-run", action="store_true", help="print the iptables commands instead of running them")
    actions.add_parser("status", parents=[common], help="show the capture rules in place")
    capture_cmd.set_defaults(fn=cmd_capture)
