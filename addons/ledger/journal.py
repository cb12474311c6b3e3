"""Usage records on local disk before they reach the ledger, so a crash loses none.

The hook that finishes a request appends its record as one JSON line: a single write(2) to an
O_APPEND file, which the kernel keeps through a SIGKILL of this process. A background thread
fsyncs new lines every `fsync_interval`, so a power cut costs at most that window, and the event
loop never waits for the disk. When the ledger writer has committed a record it is settled here;
a segment whose records are all settled is deleted once it is rotated out (or on close).

A restarted proxy replays what a dead one left. The ledger skips request ids it already has, so
replaying a record that was committed just before the crash charges nothing twice.

Layout: <root>/<ledger id>/<slot>/<seq>.jsonl. The ledger id is a hash of the database URL, so a
journal is never replayed into another ledger. Each process holds an flock on its slot; a new
process takes the first free one, and so inherits the journal of a process that died.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import operator
import os
import threading
import time
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path

from addons.core.compact_json import compact_json
from addons.ledger.writer import UsageRecord

log = logging.getLogger(__name__)

# A line names its fields; decode drops those the record no longer has (the fee columns an earlier
# release journaled, always 0 before commit), so a journal the previous release left still replays.
_FIELDS = tuple(f.name for f in fields(UsageRecord))
_MAX_SLOTS = 1024


def ledger_id(database_url: str) -> str:
    return hashlib.sha256(database_url.encode()).hexdigest()[:16]


_VALUES = operator.attrgetter(*_FIELDS)  # every field's value at once, in C: a record is journaled per request


def encode(record: UsageRecord) -> bytes:
    data = dict(zip(_FIELDS, _VALUES(record), strict=True))
    data["created_at"] = record.created_at.isoformat()
    return compact_json(data).encode() + b"\n"


def decode(line: bytes) -> UsageRecord:
    data = json.loads(line)
    data["created_at"] = datetime.fromisoformat(data["created_at"])
    return UsageRecord(**{k: v for k, v in data.items() if k in _FIELDS})


@dataclass(slots=True)
class _Segment:
    path: Path
    open_records: int = 0


class Journal:
    def __init__(self, root: Path, database_url: str, *, segment_bytes: int = 4 << 20,
                 fsync_interval: float = 0.05):
        self.dir, self._slot_lock = _claim_slot(root / ledger_id(database_url))
        self._segment_bytes = segment_bytes
        self._fsync_interval = fsync_interval
        self._lock = threading.Lock()
        self._segments: dict[int, _Segment] = {}
        self._where: dict[str, list[int]] = {}  # request id -> segments holding it, until settled
        self._inherited = sorted(int(p.stem) for p in self.dir.glob("*.jsonl") if p.stem.isdigit())
        self._seq = (self._inherited[-1] if self._inherited else 0) + 1
        self._fd = self._open_segment(self._seq)
        self._written = 0
        self._unsynced: list[int] = []  # descriptors of rotated segments, fsynced then closed by the syncer
        self._dirty = False  # appended since the last fsync; a plain flag, so the hook takes no lock for it
        self._closing = False
        self._syncer = threading.Thread(target=self._sync_loop, name="tollgate-journal-fsync", daemon=True)
        self._syncer.start()

    # -- recovery ----------------------------------------------------------------------------

    def recover(self) -> list[UsageRecord]:
        """What a dead process journaled in this slot: to be handed to the ledger writer again."""
        records: dict[str, UsageRecord] = {}
        for seq in self._inherited:
            segment = self._segments[seq] = _Segment(self.dir / f"{seq}.jsonl")
            for line in segment.path.read_bytes().splitlines():
                try:
                    record = decode(line)
                except (ValueError, TypeError, KeyError):  # a torn last line (power cut mid-write)
                    log.warning("journal %s: skipped an unreadable line", segment.path.name)
                    continue
                records[record.id] = record
                segment.open_records += 1
                self._where.setdefault(record.id, []).append(seq)
            if segment.open_records == 0:
                self._delete(seq)
        self._inherited = []
        return list(records.values())

    # -- hot path ----------------------------------------------------------------------------

    def append(self, record: UsageRecord) -> None:
        """One write(2), on the caller's thread: durable against a crash of this process at once."""
        line = encode(record)
        with self._lock:
            _write_all(self._fd, line)
            self._segments[self._seq].open_records += 1
            self._where.setdefault(record.id, []).append(self._seq)
            self._written += len(line)
            if self._written >= self._segment_bytes:
                self._rotate()
        self._dirty = True

    def settled(self, request_ids) -> None:
        """The ledger has these (or refused them into its dead-letter file): drop them from the journal."""
        with self._lock:
            for request_id in request_ids:
                for seq in self._where.pop(request_id, ()):
                    segment = self._segments.get(seq)
                    if segment is None:
                        continue
                    segment.open_records -= 1
                    if segment.open_records == 0 and seq != self._seq:
                        self._delete(seq)

    @property
    def unsettled(self) -> int:
        with self._lock:
            return len(self._where)

    # -- files -------------------------------------------------------------------------------

    def _open_segment(self, seq: int) -> int:
        self._segments[seq] = _Segment(self.dir / f"{seq}.jsonl")
        return os.open(self._segments[seq].path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _rotate(self) -> None:
        self._unsynced.append(self._fd)
        previous = self._seq
        self._seq += 1
        self._fd = self._open_segment(self._seq)
        self._written = 0
        if self._segments[previous].open_records == 0:
            self._delete(previous)

    def _delete(self, seq: int) -> None:
        segment = self._segments.pop(seq)
        segment.path.unlink(missing_ok=True)

    def _sync_loop(self) -> None:
        """Every fsync_interval, fsync what was appended. It polls rather than being woken by appends: a
        wake-up per append (or per round) costs the event loop a GIL hand-over to this thread."""
        while not self._closing:
            time.sleep(self._fsync_interval)
            if not self._dirty:
                continue
            self._dirty = False
            with self._lock:
                fd, retired, self._unsynced = self._fd, self._unsynced, []
            try:
                while retired:
                    os.fsync(retired[0])
                    os.close(retired.pop(0))
                os.fsync(fd)  # a rotation only retires it: the syncer alone closes descriptors
            except OSError as e:  # a failing disk: keep trying; the lines are in the page cache meanwhile
                log.error("journal: fsync failed (%s)", type(e).__name__)
                with self._lock:
                    self._unsynced[:0] = retired
                self._dirty = True

    def close(self) -> None:
        """After the writer flushed: sync, and remove the segments that hold nothing unsettled."""
        self._closing = True
        self._syncer.join(5)
        with self._lock:
            for fd in (*self._unsynced, self._fd):
                os.fsync(fd)
                os.close(fd)
            self._unsynced = []
            for seq in [s for s, segment in self._segments.items() if segment.open_records == 0]:
                self._delete(seq)
        if self._where:
            log.warning("journal: %d records not yet in the ledger stay in %s for the next start",
                        len(self._where), self.dir)
        os.close(self._slot_lock)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _claim_slot(ledger_dir: Path) -> tuple[Path, int]:
    """The first slot no live process holds; its lock lasts as long as this process."""
    for slot in range(_MAX_SLOTS):
        directory = ledger_dir / str(slot)
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return directory, fd
    raise RuntimeError(f"no free journal slot under {ledger_dir}")
