"""The lean gateway process: `tollgate-proxy [mitmdump options]` (what ./run_proxy.sh runs).

mitmdump loads all of mitmproxy's default addons plus a per-flow console printer (Dumper); most
of them serve interactive use, and each one with a flow hook is called on every flow. This
launcher runs a mitmproxy Master with only what the gateway's request path needs, then the
Gateway addon itself (no script loader indirection, no script reload watcher).

Kept, in mitmproxy's order:
    TermLog         startup lines, warnings and errors (no per-flow lines, see below)
    Core            option validation and the core commands
    Block           refuses clients from public addresses unless `--set block_global=false`, so a
                    gateway bound to 0.0.0.0 is not an open proxy by accident
    StripDnsHttpsRecords, DnsResolver
                    act only on DNS flows (`--mode dns`, WireGuard); no cost on HTTP flows
    DisableH2C      refuses h2c upgrades, which mitmproxy cannot proxy
    ProxyAuth       `--proxyauth` (proxy authentication)
    Proxyserver     the listeners and connection handling
    ScriptLoader    so `-s extra.py` still works (the gateway itself is not loaded through it)
    NextLayer, TlsConfig
                    protocol detection, interception, the CA in the confdir
    UpstreamAuth    `--mode upstream:` behind an authenticating proxy
    UpdateAltSvc    keeps clients of `--mode reverse:` from bypassing the proxy via Alt-Svc
    ErrorCheck      exits non-zero when startup logged an error (port taken, bad settings)
    Gateway         addons.proxy.gateway_addon, added last, once the command line is parsed, with the
                    addons around it in addons/proxy/chain.py's order
Dropped (interactive, replay or flow-storage features the gateway does not use):
    Dumper (per-flow output), KeepServing and ReadFileStdin (reading flow files), Browser,
    BlockList, AntiCache, AntiComp, ClientPlayback, ServerPlayback, CommandHistory, Comment, Cut,
    Export, Onboarding (mitm.it; `tollgate ca` gives the CA), MapRemote, MapLocal, ModifyBody,
    ModifyHeaders, StickyAuth, StickyCookie, Save, SaveHar.
Their command-line flags are gone (`-w` is an unrecognized argument) and a `--set` of one of their
options is an error rather than silently ignored. `./run_proxy.sh --web` runs mitmweb with all of
them for interactive inspection.

Hooks are dispatched by addons.runtime.hook_index.IndexedAddonManager: only to the addons that handle them.

mitmproxy's internals are patched by addons.proxy.mitmproxy_internals.install(lean=True), called
before anything runs (it refuses an unsupported mitmproxy); `lean` also drops mitmproxy's debug-only
per-field type checks of messages, looks headers up without a method call per field or a KeyError per absent
header, and names flows and connections from a seeded generator rather than uuid4, in this process only.

mitmproxy logs every client and server connect/disconnect at INFO; here those show only at debug
verbosity (`-v` or `--set termlog_verbosity=debug`), so a busy gateway writes no per-flow lines;
peewee's per-statement SQL lines never show (addons.ledger.models.open_database quiets them, under mitmdump too).

The process keeps to two glibc malloc arenas rather than one per thread (addons/runtime/malloc_arenas.py),
so its RSS stays flat under load. Once it runs, what it loaded at start is frozen out of Python's cyclic
collector (addons/runtime/heap_freeze.py), so no full collection holds the event loop for a tenth of a second.

The event loop is uvloop's when uvloop is installed (an optional speed-up; asyncio's own loop
otherwise). `TOLLGATE_UVLOOP=0` turns it off. The startup line names the loop in use.

Workers (`--reuse-port`, passed by addons.runtime.workers): several processes listen on one port with
SO_REUSEPORT, and the kernel spreads new connections across them. mitmproxy binds its TCP
listeners with `asyncio.start_server(handler, host, port)` (proxy/mode_servers.py), which has no
way to ask for `reuse_port` (or a backlog). Rather than patching mitmproxy's module, or pre-binding a
socket that mitmproxy would not use, the gateway runs on an event loop subclass whose `create_server`
(what `asyncio.start_server` calls) defaults to a backlog of 4096 and, in a worker, to
`reuse_port=True`: mitmproxy stays untouched, and the only servers this process creates are
mitmproxy's listeners. A worker refuses modes that do not
listen on a fixed TCP port (UDP-based ones such as dns, wireguard, reverse:quic; local; port 0),
which cannot be shared this way. Any process of the same user that also sets SO_REUSEPORT could
join the port; a plain listener (a second gateway without workers) still gets "address in use".
`--ready-fd N` (internal) makes a worker write a byte to fd N once it is listening.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mitmproxy import ctx, exceptions, hooks, master, options, optmanager
from mitmproxy.addons import (
    block,
    core,
    disable_h2c,
    dns_resolver,
    errorcheck,
    next_layer,
    proxyauth,
    proxyserver,
    script,
    strip_dns_https_records,
    termlog,
    tlsconfig,
    update_alt_svc,
    upstream_auth,
)
from mitmproxy.tools import cmdline
from mitmproxy.tools.main import process_options
from mitmproxy.utils import asyncio_utils, debug

from addons.core import metrics_dir
from addons.core.supervision import CONFIG_ERROR
from addons.host import capture_modes
from addons.proxy import mitmproxy_internals
from addons.proxy.chain import gateway_chain
from addons.proxy.gateway_addon import Gateway
from addons.runtime.heap_freeze import HeapFreeze
from addons.runtime.hook_index import IndexedAddonManager
from addons.runtime.malloc_arenas import limit_malloc_arenas

PROG = "tollgate-proxy"
GATEWAY_SCRIPT = Path(__file__).resolve().parents[1] / "gateway.py"
CONNECTION_LOGGER = "mitmproxy.proxy.server"
REDIRECTOR_LOGGER = "mitmproxy.packet_sources.linux"  # what `--mode local`'s redirector process prints


def lean_addons() -> list:
    """mitmproxy's default addons minus the interactive ones, in mitmproxy's order (see above)."""
    return [
        core.Core(),
        block.Block(),
        strip_dns_https_records.StripDnsHttpsRecords(),
        disable_h2c.DisableH2C(),
        proxyauth.ProxyAuth(),
        proxyserver.Proxyserver(),
        script.ScriptLoader(),
        dns_resolver.DnsResolver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        upstream_auth.UpstreamAuth(),
        update_alt_svc.UpdateAltSvc(),
    ]


class QuietConnections:
    """Keep mitmproxy's per-connection INFO lines (client connect, server disconnect...) for debug verbosity."""

    def load(self, loader):
        self.configure({"termlog_verbosity"})  # TermLog's option exists already; apply its current value

    def configure(self, updated):
        if "termlog_verbosity" in updated:
            debug_level = ctx.options.termlog_verbosity == "debug"
            logging.getLogger(CONNECTION_LOGGER).setLevel(logging.NOTSET if debug_level else logging.WARNING)
            for watch in logging.getLogger(REDIRECTOR_LOGGER).filters:
                if isinstance(watch, RedirectorWatch):
                    watch.verbose = debug_level


class RedirectorWatch(logging.Filter):
    """`--mode local` on Linux: the eBPF redirector is a separate process, started after the proxy is up.
    One that fails prints a page of BPF verifier output and exits, leaving a proxy with no listener
    (addons/host/capture_modes.py refuses the hosts it can tell in advance). Its lines show only at debug
    verbosity; when it exits or reports an error, the gateway stops with one line: the redirector's
    own error and its causes (`Error: ...`, `Caused by:` items), without the dump and backtrace."""

    def __init__(self, fail: Callable[[str], None]):
        super().__init__()
        self.fail = fail
        self.failed: str | None = None
        self.verbose = False
        self.error: list[str] = []
        self.in_causes = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for line in message.splitlines():
            text = line.strip()
            if text.startswith("Error: "):
                self.error, self.in_causes = [text.removeprefix("Error: ")], False
            elif text == "Caused by:":
                self.in_causes = True
            elif self.in_causes and self.error and text[:1].isdigit() and ": " in text:
                self.error.append(text.partition(": ")[2])
            elif not text or text == "Stack backtrace:":
                self.in_causes = False
        if self.failed is None and (record.levelno >= logging.ERROR or "exited" in message):
            cause = ": ".join(self.error) or (message.strip().splitlines() or ["it exited"])[0]
            self.failed = (f"--mode local failed: mitmproxy's eBPF redirector did not start ({cause}); use "
                           "--mode transparent with `tollgate capture on`, or --mode wireguard (-v shows its output)")
            self.fail(self.failed)
        return self.verbose


class ReadySignal:
    """Tells the supervisor this worker listens: one byte on an inherited pipe, written when running."""

    def __init__(self, fd: int):
        self.fd: int | None = fd

    def running(self):
        if self.fd is not None:
            try:
                os.write(self.fd, b"1")
            finally:
                os.close(self.fd)
                self.fd = None


class GracefulStop:
    """The first SIGTERM/SIGINT closes the listener and lets requests in flight finish (the Gateway's
    drain), then stops, which flushes the ledger writer and the journal; a second one stops at once."""

    def __init__(self, m: GatewayMaster):
        self.master = m
        self.draining = False

    def __call__(self) -> None:
        if self.draining:
            self.master.shutdown()
            return
        self.draining = True
        asyncio_utils.create_task(self._drain(), name="tollgate-drain", keep_ref=True)

    async def _drain(self) -> None:
        try:
            await self.master.addons.get("proxyserver").servers.update([])
            logging.info("Tollgate: stopped listening; waiting for requests in flight")
            if left := await self.master.gateway.drain():
                logging.warning(f"Tollgate: {left} request(s) still in flight at the drain timeout are cut")
        finally:
            self.master.shutdown()


class GatewayMaster(master.Master):
    """A mitmproxy Master with the lean addon set; the Gateway is added by `install_gateway`."""

    def __init__(self, opts: options.Options):
        super().__init__(opts)
        self.addons = IndexedAddonManager(self)  # before any addon: see addons/runtime/hook_index.py
        self._termlog_addon = termlog.TermLog()
        self.addons.add(self._termlog_addon)
        # ErrorCheck collects errors logged from here on; it has no flow hooks, so its place is free.
        self.addons.add(QuietConnections(), *lean_addons(), errorcheck.ErrorCheck())
        self.gateway: Gateway | None = None

    def install_gateway(self) -> None:
        """Add the Gateway once the command line is parsed, so its first `configure` sees every option
        (as the script loader does for `-s addons/gateway.py`). It goes last in the chain, with the addons
        of addons/proxy/chain.py around it: the addons whose order matters to it (Block, DisableH2C, ProxyAuth)
        come before it either way."""
        self.gateway = Gateway()
        installed = gateway_chain(self.gateway)
        self.addons.add(*installed)
        for addon in installed:
            self.addons.invoke_addon_sync(addon, hooks.ConfigureHook(set(self.options.keys())))
        self.addons.add(HeapFreeze())  # last: its `running` comes after everything the others set up in theirs


def make_parser(opts: options.Options) -> argparse.ArgumentParser:
    parser = cmdline.mitmdump(opts)
    parser.prog = PROG
    parser.usage = "%(prog)s [options]"
    parser.description = "Tollgate's gateway on a lean mitmproxy (mitmdump's options, no per-flow output)."
    for action in parser._actions:  # mitmdump's trailing flow filter: refused below, so not advertised
        if action.dest == "filter_args":
            action.help = argparse.SUPPRESS
    group = parser.add_argument_group("Tollgate")
    group.add_argument("--reuse-port", action="store_true",
                       help="listen with SO_REUSEPORT, as one of several workers sharing the port")
    group.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    group.add_argument("--admin-port", type=int, metavar="PORT",
                       help="port of the admin listener: the REST API, dashboard and /metrics (default 8082)")
    group.add_argument("--admin-host", metavar="HOST",
                       help="address of the admin listener (default 127.0.0.1; beyond loopback it needs TLS or "
                            "--set tollgate_allow_open_admin=true)")
    group.add_argument("--no-admin", action="store_true", help="run no admin process and serve no REST API")
    return parser


def admin_setoptions(args: argparse.Namespace) -> list[str]:
    """The admin flags as the options they stand for (addons/proxy/admin_route.py)."""
    named = []
    if args.no_admin:
        named.append("tollgate_admin=false")
    if args.admin_port is not None:
        named.append(f"tollgate_admin_port={args.admin_port}")
    if args.admin_host is not None:
        named.append(f"tollgate_admin_host={args.admin_host}")
    return named


def check_worker_modes(opts: options.Options) -> None:
    """A worker can share only fixed TCP listening ports (see the module docstring)."""
    if why := capture_modes.worker_refusal(opts.mode, opts.listen_port):
        raise exceptions.OptionsError(why)


def _unknown_set_options(opts: options.Options, setoptions: Sequence[str]) -> list[str]:
    named = {spec.partition("=")[0].strip() for spec in setoptions}
    return sorted(named & set(opts.deferred))


def _uvloop_works(uvloop) -> bool:
    """Some uvloop and Python 3.13 pairs fail under an eager task factory, which mitmproxy installs
    ('unexpected keyword argument eager_start'): try that path once, else keep asyncio's loop."""

    async def probe() -> None:
        await asyncio.create_task(asyncio.sleep(0))

    loop, coro = uvloop.new_event_loop(), probe()
    try:
        loop.set_task_factory(asyncio.eager_task_factory)
        loop.run_until_complete(coro)
        return True
    except TypeError:
        coro.close()
        return False
    finally:
        loop.close()


LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn


def _loop_factory(reuse_port: bool):
    base: type[asyncio.AbstractEventLoop] = asyncio.SelectorEventLoop
    if os.environ.get("TOLLGATE_UVLOOP", "1") != "0":
        try:
            import uvloop

            if _uvloop_works(uvloop):
                base = uvloop.Loop
        except ImportError:
            pass

    class GatewayLoop(base):  # type: ignore[misc, valid-type]
        """`asyncio.start_server` (mitmproxy's listeners, the only servers this process creates) gets a
        listen backlog for bursts of new clients (asyncio's default of 100 made about one connection in
        ten wait for a SYN retry, a second, when 1,000 clients connected within 2 s) and, for a worker,
        SO_REUSEPORT."""

        async def create_server(self, *args, **kwargs):
            kwargs.setdefault("backlog", LISTEN_BACKLOG)
            if reuse_port:
                kwargs.setdefault("reuse_port", True)
            return await super().create_server(*args, **kwargs)

    return GatewayLoop


async def _run(argv: Sequence[str]) -> int:
    # As mitmproxy.tools.main.run, with our Master and the gateway added after parsing.
    logging.getLogger().setLevel(logging.DEBUG)
    for name, level in (("asyncio", logging.WARNING), ("hpack", logging.WARNING), ("quic", logging.WARNING)):
        logging.getLogger(name).setLevel(level)
    debug.register_info_dumpers()

    loop = asyncio.get_running_loop()
    failed: list[str] = []

    def fail(why: str) -> None:  # any thread: the redirector's lines come from mitmproxy_rs
        def stop() -> None:
            print(f"{PROG}: {why}", file=sys.stderr, flush=True)
            failed.append(why)
            m.shutdown()

        loop.call_soon_threadsafe(stop)

    logging.getLogger(REDIRECTOR_LOGGER).addFilter(RedirectorWatch(fail))
    opts = options.Options()
    m = GatewayMaster(opts)
    parser = make_parser(opts)
    args = parser.parse_args(argv)
    try:
        if args.filter_args:
            raise exceptions.OptionsError("flow filters do not apply: this process prints no flows")
        args.setoptions = [*(args.setoptions or []), *admin_setoptions(args)]
        opts.set(*args.setoptions, defer=True)
        optmanager.load_paths(opts, os.path.join(opts.confdir, "config.yaml"), os.path.join(opts.confdir, "config.yml"))
        process_options(parser, opts, args)
        if any(Path(s.strip("'\" ")).expanduser().resolve() == GATEWAY_SCRIPT for s in opts.scripts):
            raise exceptions.OptionsError(f"{PROG} runs the gateway itself; drop -s {GATEWAY_SCRIPT.name}")
        m.install_gateway()
        if args.options:
            optmanager.dump_defaults(opts, sys.stdout)
            return 0
        if args.commands:
            m.commands.dump()
            return 0
        if not opts.scripts and (unknown := _unknown_set_options(opts, args.setoptions)):
            raise exceptions.OptionsError(
                f"unknown option(s): {', '.join(unknown)} (this launcher leaves out mitmproxy's interactive "
                "addons; use ./run_proxy.sh --web for them)"
            )
        if args.reuse_port:
            check_worker_modes(opts)
        if args.ready_fd is not None:
            m.addons.add(ReadySignal(args.ready_fd))
    except exceptions.OptionsError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return CONFIG_ERROR

    event_loop = "uvloop" if any(c.__module__.startswith("uvloop") for c in type(loop).__mro__) else "asyncio"
    logging.info(f"Tollgate gateway (pid {os.getpid()}, {event_loop} event loop"
                 + (", a worker sharing its port)" if args.reuse_port else ")"))
    stop = GracefulStop(m)
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as mitmproxy: a closed client socket must not kill us
    await m.run()
    # Stopped, the ledger flushed: a late second SIGTERM/SIGINT (a process group signal and the
    # supervisor's own) must not turn the clean exit into a death by signal.
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(signum)
        signal.signal(signum, signal.SIG_IGN)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    limit_malloc_arenas()  # first: before any thread allocates
    argv = list(sys.argv[1:] if argv is None else argv)
    metrics_dir.prepare()  # a worker keeps its supervisor's
    try:
        mitmproxy_internals.install(lean=True)
    except mitmproxy_internals.UnsupportedMitmproxy as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return CONFIG_ERROR
    # The loop exists before the full parser (which needs a Master, which needs the loop).
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--reuse-port", action="store_true")
    reuse_port = pre.parse_known_args(argv)[0].reuse_port
    with asyncio.Runner(loop_factory=_loop_factory(reuse_port)) as runner:
        return runner.run(_run(argv))


if __name__ == "__main__":
    sys.exit(main())
