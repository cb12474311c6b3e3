"""The gateway process keeps to two glibc malloc arenas however many of its threads allocate
(addons/runtime/malloc_arenas.py), unless MALLOC_ARENA_MAX says otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e  # each test runs a Python of its own: arenas are per process

# Eight threads allocate at once (blocks above pymalloc's 512 bytes and below glibc's mmap threshold come from
# the thread's arena), then glibc's malloc_stats() names every arena on stderr.
PROGRAM = """
import ctypes, sys, threading
sys.path.insert(0, {project!r})
from addons.runtime.malloc_arenas import limit_malloc_arenas
print(limit_malloc_arenas() if {limit} else None)
barrier = threading.Barrier(8)
def allocate():
    kept = [bytearray(100_000) for _ in range(4)]
    barrier.wait()
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads: thread.start()
for thread in threads: thread.join()
ctypes.CDLL(None).malloc_stats()
"""


def arenas(limit: bool, **env: str) -> tuple[str, int]:
    run = subprocess.run([sys.executable, "-c", PROGRAM.format(project=str(PROJECT), limit=limit)],
                         capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip(), run.stderr.count("Arena ")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_two_arenas_however_many_threads_allocate():
    assert arenas(limit=False)[1] > 2  # glibc's own default: an arena per allocating thread, here
    assert arenas(limit=True) == ("True", 2)


def test_malloc_arena_max_in_the_environment_still_decides():
    said, count = arenas(limit=True, MALLOC_ARENA_MAX="4")
    assert said == "False" and count <= 4
