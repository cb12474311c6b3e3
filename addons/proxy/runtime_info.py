"""What the running gateway tells the `tollgate` CLI: a small JSON file it writes while it runs.

`tollgate ca --exports` needs the address the gateway really listens on, and `tollgate providers`
which provider keys the gateway (not the shell the CLI runs in) has. So once its listeners are up,
the gateway writes `data/gateway.json` (or the file named by TOLLGATE_RUNTIME_FILE) atomically,
mode 0600:

    pid            the gateway's process (with workers: their supervisor, from TOLLGATE_GATEWAY_PID)
    started_at     ISO time, UTC
    listeners      per proxy mode: its spec, type and the addresses it is really bound to
    confdir        mitmproxy's confdir, where the CA is
    proxyauth      whether clients must send proxy credentials
    provider_keys  ids of the providers whose key is set in the gateway's environment (never a value)

It is rewritten when the listeners change and removed when they close (a stop), unless a newer gateway
has written it since. A reader ignores a file whose pid is not alive (a gateway that was killed).
With several gateways started from one checkout, the file describes the last one started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from mitmproxy import ctx

from addons.core.files import write_atomically
from addons.core.process_env import PID_ENV  # set in the workers' environment
from addons.core.settings import PROJECT_ROOT
from addons.proxy.gateway_config import SharedConfig

log = logging.getLogger(__name__)

FILE_ENV = "TOLLGATE_RUNTIME_FILE"


def runtime_file() -> Path:
    return Path(os.environ.get(FILE_ENV) or PROJECT_ROOT / "data" / "gateway.json")


def pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def read_running(path: Path | None = None) -> dict | None:
    """The running gateway's file, or None: no file, an unreadable one, or its process is gone."""
    try:
        data = json.loads((path or runtime_file()).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and pid_alive(data.get("pid")) else None


class RuntimeInfo:
    def __init__(self, config: SharedConfig):
        self.config = config
        self.pid = int(os.environ.get(PID_ENV) or os.getpid())
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.path: Path | None = None

    def running(self) -> None:
        proxyserver = ctx.master.addons.get("proxyserver")
        if proxyserver is None:
            return
        self.path = runtime_file()
        proxyserver.servers.changed.connect(self._write)
        self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        catalog = self.config.catalog
        listeners = [
            {"mode": server.mode.full_spec, "type": server.mode.type_name,
             "listen_addrs": [[addr[0], addr[1]] for addr in server.listen_addrs]}
            for server in ctx.master.addons.get("proxyserver").servers
        ]
        if not any(listener["listen_addrs"] for listener in listeners):
            self._remove()  # stopping (the listeners close first): no longer a gateway to point clients at
            return
        state = {
            "pid": self.pid,
            "started_at": self.started_at,
            "listeners": listeners,
            "confdir": os.path.expanduser(ctx.options.confdir),
            "proxyauth": bool(getattr(ctx.options, "proxyauth", None)),
            "provider_keys": sorted(p.id for p in catalog.providers if p.credential_configured(os.environ))
            if catalog else [],
        }
        try:
            write_atomically(self.path, json.dumps(state, indent=2) + "\n")
        except OSError as e:  # the gateway serves without it; only the CLI's view of it is lost
            log.warning(f"tollgate: cannot write {self.path} ({e.strerror}); `tollgate ca` and `providers` "
                         "will not see this gateway")

    def done(self) -> None:
        if self.path is not None:
            self._remove()
            self.path = None

    def _remove(self) -> None:
        """Unless a newer gateway has written the file since."""
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if json.loads(self.path.read_text()).get("pid") == self.pid:
                self.path.unlink()
