"""Start the admin process (`python -m addons.admin`: the REST API, the dashboard, /metrics) beside the gateway,
restart it when it dies, and stop it with the gateway.

Part of the chain (addons/proxy/chain.py), so both launchers run it. One per instance: the single
gateway process runs it, or under the workers' supervisor worker 1 does
(addons/core/process_env.py WORKER_ENV), so it is supervised with the workers. It inherits the
environment (the settings, TOLLGATE_DATABASE_URL, the pass-through secret, the metrics directory) and
gets the options that matter to it on its command line. It dies with the gateway (PR_SET_PDEATHSIG).
A crash is restarted after a backoff that doubles up to 30 s while it keeps crashing, as the workers
are; the proxy goes on serving meanwhile (the API answers 502 until the admin listener is back).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

from mitmproxy import ctx
from mitmproxy.utils import asyncio_utils

from addons.core.process_env import WORKER_ENV, passthrough_secret
from addons.core.supervision import BACKOFF_FIRST, BACKOFF_MAX, STABLE_AFTER, die_with_parent

log = logging.getLogger(__name__)
STOP_TIMEOUT = 5.0


def runs_admin() -> bool:
    """This process starts the admin process: the only gateway process, or worker 1 of several."""
    return os.environ.get(WORKER_ENV, "1") == "1"


class AdminProcess:
    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.task: asyncio.Task | None = None
        self.stopping = False

    def command(self, ready_fd: int) -> list[str]:
        options = ctx.options
        command = [sys.executable, "-m", "addons.admin", "--host", options.tollgate_admin_host,
                   "--port", str(options.tollgate_admin_port), "--ready-fd", str(ready_fd),
                   "--auth-fail-limit", str(options.tollgate_auth_fail_limit),
                   "--auth-fail-window-s", str(options.tollgate_auth_fail_window_s)]
        if options.tollgate_database_url:
            command += ["--database-url", options.tollgate_database_url]
        if options.tollgate_allow_open_admin:
            command.append("--allow-open")
        if options.tollgate_admin_certfile:
            command += ["--certfile", options.tollgate_admin_certfile, "--keyfile", options.tollgate_admin_keyfile]
        return command

    def running(self) -> None:
        if ctx.options.tollgate_admin and runs_admin() and self.task is None:
            passthrough_secret()  # in the environment before the child inherits it
            self.task = asyncio_utils.create_task(self._supervise(), name="tollgate-admin", keep_ref=True)

    async def _supervise(self) -> None:
        backoff = BACKOFF_FIRST
        while not self.stopping:
            started = time.monotonic()
            code = await self._run_once()
            if self.stopping:
                return
            backoff = BACKOFF_FIRST if time.monotonic() - started >= STABLE_AFTER else backoff
            log.warning(f"Tollgate: the admin process exited with status {code}; restarting in {backoff:g} s")
            await asyncio.sleep(backoff)
            backoff = min(BACKOFF_MAX, backoff * 2)

    async def _run_once(self) -> int:
        read_fd, write_fd = os.pipe()
        parent = os.getpid()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.command(write_fd), pass_fds=(write_fd,), preexec_fn=lambda: die_with_parent(parent))
        finally:
            os.close(write_fd)
        loop = asyncio.get_running_loop()
        ready = await loop.run_in_executor(None, os.read, read_fd, 1)
        os.close(read_fd)
        if ready:
            scheme = "https" if ctx.options.tollgate_admin_certfile else "http"
            log.info(f"Tollgate admin API and dashboard at {scheme}://{ctx.options.tollgate_admin_host}:"
                     f"{ctx.options.tollgate_admin_port}/ (pid {self.proc.pid})")
        return await self.proc.wait()

    async def done(self) -> None:
        self.stopping = True
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
