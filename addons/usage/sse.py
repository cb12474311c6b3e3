"""Incremental server-sent-events framing over arbitrarily split byte chunks.

Every input byte ends up in exactly one event's `raw`, so a filter can drop whole events and
forward everything else byte-identically. Only the pending (incomplete) event is buffered;
with `max_event_size`, an event that grows past it across feeds is handed out in pieces as
data-less events instead, which keeps memory bounded without losing bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_EOL = re.compile(rb"\r\n?|\n")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str | None  # the `event:` field, None when absent
    data: str  # `data:` lines joined by "\n"; "" for comment-only blocks and oversize pieces
    raw: bytes  # the exact bytes, terminating blank line included


class SSEDecoder:
    """Frames events like httpx's LineDecoder frames lines: feed() buffers, flush() drains."""

    def __init__(self, max_event_size: int | None = None) -> None:
        self._max = max_event_size
        self._reset()

    def _reset(self) -> None:
        self._buf = bytearray()
        self._start = 0  # first byte of the pending event
        self._line = 0  # first byte of the current line
        self._seek = 0  # no line ending before this offset in the current line
        self._event: str | None = None
        self._data: list[bytes] = []
        self._oversize = False  # pending event too big: pass its bytes on, ignore its fields
        self._mid_line = False  # the head of the current line was already handed out
        self._first_line = True

    def feed(self, data: bytes) -> list[SSEEvent]:
        self._buf += data
        events = self._scan(final=False)
        if self._oversize or (self._max is not None and len(self._buf) - self._start > self._max):
            self._spill(events)
        self._compact()
        return events

    def flush(self) -> list[SSEEvent]:
        """Drain at end of stream; a last event missing its blank line is still delivered."""
        events = self._scan(final=True)
        if self._line < len(self._buf) and not self._oversize:
            self._field(self._take(len(self._buf)))
        raw = bytes(self._buf[self._start :])
        if raw and self._oversize:
            events.append(SSEEvent(None, "", raw))
        elif raw:
            events.append(self._dispatch(raw))
        self._reset()
        return events

    def _scan(self, final: bool) -> list[SSEEvent]:
        buf, events = self._buf, []
        while True:
            m = _EOL.search(buf, max(self._line, self._seek))
            if m is None or (not final and m.end() == len(buf) and m.group() == b"\r"):
                self._seek = len(buf) if m is None else m.start()  # a lone \r may yet meet its \n
                return events
            line = self._take(m.start())
            self._line = m.end()
            if line or self._mid_line:
                self._mid_line = False
                if not self._oversize:
                    self._field(line)
                continue
            raw = bytes(buf[self._start : self._line])
            self._start = self._line
            if self._oversize:
                self._oversize = False
                events.append(SSEEvent(None, "", raw))
            else:
                events.append(self._dispatch(raw))

    def _take(self, end: int) -> bytes:
        line = bytes(self._buf[self._line : end])
        if self._first_line:
            line, self._first_line = line.removeprefix(_BOM), False
        return line

    def _field(self, line: bytes) -> None:
        if line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")

    def _dispatch(self, raw: bytes) -> SSEEvent:
        event = SSEEvent(self._event, b"\n".join(self._data).decode("utf-8", "replace"), raw)
        self._event, self._data = None, []
        return event

    def _spill(self, events: list[SSEEvent]) -> None:
        """Hand out the oversize event's bytes so far, keeping a trailing \\r to pair with \\n."""
        self._oversize, self._event, self._data = True, None, []
        end = len(self._buf) - self._buf.endswith(b"\r")
        if end <= self._start:
            return
        events.append(SSEEvent(None, "", bytes(self._buf[self._start : end])))
        self._mid_line = self._mid_line or end > self._line
        self._start = self._line = self._seek = end

    def _compact(self) -> None:
        if self._start:
            del self._buf[: self._start]
            self._line -= self._start
            self._seek = max(self._seek - self._start, 0)
            self._start = 0
