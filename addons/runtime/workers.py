"""Run the gateway on several cores: `python -m addons.runtime.workers --workers N -- [tollgate-proxy options]`.

Starts N lean gateway processes (addons.runtime.launcher with `--reuse-port`) that listen on the same
port with SO_REUSEPORT; the kernel spreads incoming connections across them. ./run_proxy.sh
uses this when `--workers` (default: the number of cores) is above 1; one worker needs no
supervisor. The ledger is initialised before (`tollgate init`, run by ./run_proxy.sh).
Modes that cannot share a port (wireguard and other UDP modes, local) are refused before any
worker starts when N is given, and run as one process with `--workers auto`.

- Start-up: the first worker starts alone and the others only once it listens, so the mitmproxy
  CA (and the token signing key, the ledger tables) is created once, by one process, and shared
  by all workers through the confdir. A worker reports that it listens by writing a byte to a
  pipe the supervisor gives it (`--ready-fd`).
- Restarts: a worker that exits while the supervisor runs is started again after a backoff that
  doubles (0.5 s up to 30 s) while it keeps dying within 30 s of its start, so a crash loop never
  spins. If workers die before listening `--max-start-failures` times in a row (port taken), the
  supervisor stops the others and exits 1; at once if a worker exits with CONFIG_ERROR (78: its
  settings are wrong, the same for every start).
- Stop: SIGTERM or SIGINT is passed on to every worker, whose `done` flushes its ledger writer;
  a worker still running after `--stop-timeout` seconds is killed. Exit status 0 when every worker
  stopped cleanly. Workers get SIGTERM should the supervisor itself die (PR_SET_PDEATHSIG, Linux).

Each worker keeps its own caches and, without Redis, its own holds: set `TOLLGATE_REDIS_URL` (or
`redis_url`) so that concurrent requests on different workers see each other's holds.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from addons.core import metrics_dir  # stdlib-only modules: the supervisor stays light
from addons.core.process_env import PID_ENV, WORKER_ENV, passthrough_secret
from addons.core.supervision import BACKOFF_FIRST, BACKOFF_MAX, CONFIG_ERROR, STABLE_AFTER, die_with_parent

PROG = "tollgate-workers"


def say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


@dataclass
class Slot:
    number: int
    proc: subprocess.Popen | None = None
    ready_fd: int | None = None  # read end of the readiness pipe while the worker has not reported
    ready: bool = False
    signalled: bool = False  # the stop signal was passed on to this process
    started: float = 0.0
    start_at: float = 0.0  # when to (re)start it
    backoff: float = BACKOFF_FIRST


class Supervisor:
    def __init__(self, workers: int, worker_args: Sequence[str], max_start_failures: int = 5,
                 stop_timeout: float = 45.0, command: Sequence[str] | None = None):
        self.slots = [Slot(i + 1) for i in range(workers)]
        self.worker_args = list(worker_args)
        self.command = list(command or [sys.executable, "-m", "addons.runtime.launcher"])
        self.max_start_failures = max_start_failures
        self.stop_timeout = stop_timeout
        self.start_failures = 0
        self.first_ready = False
        self.stop_signal: int | None = None
        self.failed = False
        self.misconfigured = False  # a worker exited with CONFIG_ERROR: so does the supervisor

    # -- workers ---------------------------------------------------------------------------

    def spawn(self, slot: Slot) -> None:
        read_fd, write_fd = os.pipe()
        parent = os.getpid()
        try:
            slot.proc = subprocess.Popen(
                [*self.command, "--reuse-port", "--ready-fd", str(write_fd), *self.worker_args],
                pass_fds=(write_fd,), preexec_fn=lambda: die_with_parent(parent),
                # the gateway's pid in data/gateway.json; worker 1 runs the admin process
                env={**os.environ, PID_ENV: str(parent), WORKER_ENV: str(slot.number)},
            )
        except OSError:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        slot.ready_fd, slot.ready, slot.signalled, slot.started = read_fd, False, False, time.monotonic()
        say(f"worker {slot.number} started (pid {slot.proc.pid})")

    def _close_ready(self, slot: Slot) -> None:
        if slot.ready_fd is not None:
            os.close(slot.ready_fd)
            slot.ready_fd = None

    def _reap(self, slot: Slot, code: int) -> None:
        metrics_dir.forget(slot.proc.pid)  # its gauges leave the instance's sums
        self._close_ready(slot)
        lived = time.monotonic() - slot.started
        slot.proc = None
        if self.stop_signal is not None:
            return
        how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        if not slot.ready:
            self.start_failures += 1
            if code == CONFIG_ERROR or self.start_failures >= self.max_start_failures:
                why = ("its settings are wrong (said above), which no restart mends" if code == CONFIG_ERROR
                       else f"{self.start_failures} failed starts in a row")
                say(f"worker {slot.number} {how} before listening; {why}, giving up")
                self.failed = True
                self.misconfigured = code == CONFIG_ERROR
                self.stop(signal.SIGTERM)
                return
        slot.backoff = BACKOFF_FIRST if slot.ready and lived >= STABLE_AFTER else slot.backoff
        delay = slot.backoff
        slot.backoff = min(BACKOFF_MAX, slot.backoff * 2)
        slot.start_at = time.monotonic() + delay
        say(f"worker {slot.number} {how}{'' if slot.ready else ' before listening'}; restarting in {delay:g} s")

    def _check_ready(self, timeout: float) -> None:
        waiting = {s.ready_fd: s for s in self.slots if s.ready_fd is not None}
        try:
            readable, _, _ = select.select(list(waiting), [], [], timeout)
        except InterruptedError:  # pragma: no cover (PEP 475 retries; kept for safety)
            readable = []
        for fd in readable:
            slot = waiting[fd]
            data = os.read(fd, 16)
            self._close_ready(slot)
            if data:  # else EOF: it exited before listening, which poll() reports
                slot.ready = True
                self.first_ready = True
                self.start_failures = 0
                say(f"worker {slot.number} (pid {slot.proc.pid}) is listening")

    # -- signals ---------------------------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:
        # only noted here: the main loop (at most 0.2 s later) passes it on, in `_shutdown`
        if self.stop_signal is None:
            self.stop_signal = signum

    def _send(self, signum: int) -> None:
        """Pass the stop signal on, once per worker (also to one spawned while the signal arrived)."""
        for slot in self.slots:
            if slot.proc is not None and not slot.signalled and slot.proc.poll() is None:
                slot.signalled = True
                try:
                    slot.proc.send_signal(signum)
                except ProcessLookupError:
                    pass

    def stop(self, signum: int) -> None:
        self.stop_signal = signum
        self._send(signum)

    # -- main loop -------------------------------------------------------------------------

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        while self.stop_signal is None:
            now = time.monotonic()
            for slot in self.slots:
                # the first worker starts alone: it creates the CA the others share
                if slot.proc is None and now >= slot.start_at and (self.first_ready or slot is self.slots[0]):
                    self.spawn(slot)
            self._check_ready(0.2)
            for slot in self.slots:
                if slot.proc is not None and (code := slot.proc.poll()) is not None:
                    self._reap(slot, code)
        return self._shutdown()

    def _shutdown(self) -> int:
        self._send(self.stop_signal)
        deadline = time.monotonic() + self.stop_timeout
        clean = not self.failed
        for slot in self.slots:
            if slot.proc is None:
                continue
            try:
                code = slot.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"worker {slot.number} (pid {slot.proc.pid}) did not stop in {self.stop_timeout:g} s; killing it")
                slot.proc.kill()
                code = slot.proc.wait()
            self._close_ready(slot)
            # one that had not started listening may have died of the signal itself: it held nothing
            if code != 0 and not (code == -self.stop_signal and not slot.ready):
                clean = False
                say(f"worker {slot.number} stopped with status {code}")
            slot.proc = None
        say("all workers stopped" if clean else "stopped, not cleanly")
        return CONFIG_ERROR if self.misconfigured else 0 if clean else 1


def _redis_configured(worker_args: Sequence[str]) -> bool:
    if any(arg.partition("tollgate_redis_url=")[2] for arg in worker_args):
        return True
    try:
        from addons.core.settings import load_settings

        return bool(load_settings().redis_url)
    except Exception:  # bad settings: the workers will say so
        return True


def _debug(worker_args: Sequence[str]) -> bool:
    """The gateway was asked for debug output (`-v`, `--set termlog_verbosity=debug`)."""
    return any(arg in ("-v", "--verbose") or arg.endswith("termlog_verbosity=debug") for arg in worker_args)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, usage="%(prog)s --workers N [options] -- [tollgate-proxy options]",
        description="Run N gateway workers sharing one listening port (SO_REUSEPORT).",
    )
    parser.add_argument("--workers", default="auto",
                        help="number of workers; auto (the default): one per core when Redis is configured, "
                             "else 1")
    parser.add_argument("--max-start-failures", type=int, default=5,
                        help="give up after this many worker starts in a row fail before listening (default 5)")
    parser.add_argument("--stop-timeout", type=float, default=45.0,
                        help="seconds a worker gets to flush its ledger writer on stop (default 45)")
    parser.add_argument("worker_args", nargs=argparse.REMAINDER, help="after --: the tollgate-proxy options")
    args = parser.parse_args(argv)
    if args.worker_args[:1] == ["--"]:
        args.worker_args = args.worker_args[1:]
    if args.workers != "auto" and not (args.workers.isdigit() and int(args.workers) >= 1):
        parser.error("--workers must be auto or a positive number")
    if args.max_start_failures < 1:
        parser.error("--max-start-failures must be at least 1")
    return args


def worker_count(requested: str, worker_args: Sequence[str]) -> int:
    """Holds must be shared for several workers to be correct, so more than one needs Redis.

    Without it each worker would admit against the same balance on its own, and concurrent
    requests on different workers could spend more than a customer has.
    """
    cores = len(os.sched_getaffinity(0))
    shared = _redis_configured(worker_args)
    if requested == "auto":
        if cores > 1 and not shared and _debug(worker_args):  # one process is the usual case: not worth a line
            say(f"one worker: set TOLLGATE_REDIS_URL (or redis_url) to run one per core ({cores})")
        return cores if shared else 1
    if int(requested) > 1 and not shared:
        raise SystemExit(f"{PROG}: --workers {requested} needs Redis (TOLLGATE_REDIS_URL or redis_url), "
                         "where the workers share their holds")
    return int(requested)


def shared_mode_refusal(worker_args: Sequence[str]) -> str | None:
    """Refused before any worker starts: modes the workers cannot share (WireGuard, local, UDP)."""
    from addons.host.capture_modes import (  # here: mitmproxy is not imported when not needed
        listen_options,
        worker_refusal,
    )

    opts = listen_options(worker_args)
    try:
        return worker_refusal(opts.modes, opts.listen_port)
    except ValueError:
        return None  # a bad spec: the worker says so


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    workers = worker_count(args.workers, args.worker_args)
    if workers > 1 and (why := shared_mode_refusal(args.worker_args)):
        if args.workers != "auto":
            raise SystemExit(f"{PROG}: {why}")
        say(f"one worker: {why.partition(' (')[0]}")
        workers = 1
    if workers == 1:  # no supervisor needed: become the gateway
        launcher = str(Path(sys.executable).with_name("tollgate-proxy"))
        os.execv(launcher, [launcher, *args.worker_args])
    passthrough_secret()  # one for the instance: every worker passes API requests to worker 1's admin process
    metrics_dir.prepare()  # before any worker: they all record into it
    supervisor = Supervisor(workers, args.worker_args, args.max_start_failures, args.stop_timeout)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
