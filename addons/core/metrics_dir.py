"""The directory where every process of one gateway writes its Prometheus metrics (prometheus_client's
multiprocess files), named by PROMETHEUS_MULTIPROC_DIR in the environment of all of them; the admin
process's /metrics merges what is there (addons/admin/metrics.py).

`prepare()` runs once per gateway start, before any worker or the admin process exists: in the workers
supervisor, in tollgate-proxy and in addons/gateway.py (mitmdump, mitmweb). The processes it starts
inherit the directory, and a second call in them (a worker's own launcher, mitmweb reloading the script)
keeps it. Where it is:
- PROMETHEUS_MULTIPROC_DIR as the operator set it: created if missing, emptied of an earlier run's files;
- else a new directory under the system's temporary directory (TMPDIR, /tmp: often a tmpfs, where
  prometheus_client advises its files be), one per start so that two gateways on one machine never
  share one, removed when the process that made it exits.

A worker that exits takes its gauges out of the sum (`forget`); its counters stay, since what it
counted stays in the ledger. Standard library only: the workers supervisor stays light.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own name for it
PREPARED_ENV = "TOLLGATE_METRICS_DIR"  # the directory a process of this gateway prepared, for those it starts


def prepare() -> Path:
    """The gateway's metrics directory, in this process's environment (and so its children's)."""
    named = os.environ.get(DIR_ENV)
    if named and os.environ.get(PREPARED_ENV) == named and os.path.isdir(named):
        return Path(named)  # prepared by the process that started this one, or by an earlier call here
    if named:
        directory = Path(named)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
    else:
        directory = Path(tempfile.mkdtemp(prefix="tollgate-metrics-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
    os.environ[DIR_ENV] = os.environ[PREPARED_ENV] = str(directory)
    return directory


def current() -> Path | None:
    """The metrics directory of this process, if one was prepared or named."""
    named = os.environ.get(DIR_ENV)
    return Path(named) if named and os.path.isdir(named) else None


def forget(pid: int) -> None:
    """A process of the gateway has exited: its live gauges leave the sums, as prometheus_client's
    multiprocess.mark_process_dead does (`gauge_live*_<pid>.db`)."""
    if (directory := current()) is not None:
        for path in directory.glob(f"gauge_live*_{pid}.db"):
            path.unlink(missing_ok=True)
