"""What the processes that supervise others share (the workers' supervisor, the admin process's starter):
the restart backoff, the exit status that stops restarts, and children that die with their parent.
Standard library only."""

from __future__ import annotations

import ctypes
import os
import signal

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 30.0  # a child that ran this long before dying is not in a crash loop
CONFIG_ERROR = 78  # sysexits.h EX_CONFIG, the gateway's exit status for wrong settings: no restart mends them
PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def die_with_parent(parent: int) -> None:  # in the child, between fork and exec
    if _prctl is None:
        return
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
