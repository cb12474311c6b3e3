
import pytest

from addons.usage.sse import SSEDecoder
from tests.chunkings import SPLITS, split


def decode(chunks: list[bytes], max_event_size: int | None = None):
    decoder = SSEDecoder(max_event_size)
    events = [e for chunk in chunks for e in decoder.feed(chunk)]
    return events + decoder.flush()


CASES = {
    "lf": (b"data: a\n\ndata: b\n\n", [(None, "a"), (None, "b")]),
    "crlf": (b"data: a\r\n\r\ndata: b\r\n\r\n", [(None, "a"), (None, "b")]),
    "cr": (b"data: a\r\rdata: b\r\r", [(None, "a"), (None, "b")]),
    "named": (b"event: ping\ndata: {}\n\ndata: x\n\n", [("ping", "{}"), (None, "x")]),
    "multiline": (b"data: a\ndata:b\ndata:  c\n\n", [(None, "a\nb\n c")]),
    "comments": (b": keep-alive\n\nid: 7\n:x\ndata: y\nretry: 5\n\n", [(None, ""), (None, "y")]),
    "bom": (b"\xef\xbb\xbfdata: a\n\n", [(None, "a")]),
    "utf8": ("data: héllo 😀\n\n".encode(), [(None, "héllo 😀")]),
    "unterminated": (b"data: a\n\ndata: tail", [(None, "a"), (None, "tail")]),
    "extra_blank": (b"data: a\n\n\n", [(None, "a"), (None, "")]),
}


@pytest.mark.parametrize("how", SPLITS)
@pytest.mark.parametrize("case", CASES)
def test_fields_and_bytes_survive_any_chunking(case, how):
    payload, expected = CASES[case]
    events = decode(split(payload, how))
    assert [(e.event, e.data) for e in events] == expected
    assert b"".join(e.raw for e in events) == payload


def test_raw_is_exactly_one_event():
    events = decode([b"event: a\r\ndata: 1\r\n\r\ndata: 2\n\n"])
    assert [e.raw for e in events] == [b"event: a\r\ndata: 1\r\n\r\n", b"data: 2\n\n"]


def test_feed_returns_only_complete_events():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"\r") == []  # could still be the start of \r\n
    assert [e.data for e in decoder.feed(b"\ndata: b")] == ["a"]
    assert [e.data for e in decoder.flush()] == ["b"]


@pytest.mark.parametrize("how", SPLITS)
def test_oversize_event_passes_through_in_pieces(how):
    payload = b"data: " + b"x" * 500 + b"\r\n\r\ndata: small\r\n\r\n"
    events = decode(split(payload, how), max_event_size=64)
    assert b"".join(e.raw for e in events) == payload
    assert [e.data for e in events if e.data] == (["x" * 500] if how == "whole" else []) + ["small"]


def test_oversize_event_is_not_buffered():
    decoder = SSEDecoder(max_event_size=64)
    pieces = [decoder.feed(b"data: " + b"x" * 100) for _ in range(3)]
    assert all(len(p) == 1 and p[0].data == "" for p in pieces)
    assert [e.data for e in decoder.feed(b"\n\ndata: ok\n\n")] == ["", "ok"]
