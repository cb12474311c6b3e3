"""Two glibc malloc arenas for the gateway process, not one per thread.

glibc gives each thread that allocates an arena of its own (up to eight per core) and keeps what is
freed in it. The gateway's threads (the ledger writer, the database readers, event delivery, the
journal's fsync, ...) each allocated into their own, and the process's RSS crept up under load: a
10-minute soak (bench/streams_and_memory.py --only soak) grew 4.4 % after its warm-up and ended 10.8 %
above idle; with two arenas, 2.4–3.1 % and 8.6–9.4 % (two runs). Those threads mostly wait, so two
arenas cost them no lock contention worth measuring. Set before any thread starts; MALLOC_ARENA_MAX in the environment
still decides, and other C libraries are left alone.
"""

from __future__ import annotations

import ctypes
import os

ARENAS = 2
_M_ARENA_MAX = -8  # glibc's malloc.h


def limit_malloc_arenas() -> bool:
    """Whether the limit was set (False: MALLOC_ARENA_MAX is set, or this is not glibc)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(_M_ARENA_MAX, ARENAS) == 1
