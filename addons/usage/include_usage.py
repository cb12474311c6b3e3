"""Asking an OpenAI-style chat stream for its usage on the client's behalf, and hiding the answer.

Such streams report usage only when asked (`stream_options.include_usage`). The reader asks
(ask_for_usage rewrites the request: where the client sent no stream_options, by adding the one member to
its bytes as they are, so a long prompt is not encoded again before the stream can start) and the client
still gets the stream it asked for: the usage-only chunk is dropped and strip_null_usage removes the
`"usage":null` member every other chunk then carries, byte-exactly. (A chunk is left as is when that member
cannot be located unambiguously, or when a provider puts the usage in a content chunk.)
"""

from __future__ import annotations

import re
from typing import Any

from addons.core.compact_json import compact_json

_USAGE_KEY = b'"usage"'
_ASK = b'"stream_options":{"include_usage":true},'
_JSON_SPACE = b" \t\r\n"
_NULL_LAST = re.compile(rb'"usage"[ \t]*:[ \t]*null(?=[ \t]*[,}])')  # after a comma
_NULL_FIRST = re.compile(rb'"usage"[ \t]*:[ \t]*null[ \t]*,[ \t]*')  # right after "{"


def ask_for_usage(req: dict[str, Any], body: bytes) -> bytes | None:
    """The request body (`body`, parsed as `req`) with `stream_options.include_usage` set, or None when it
    needs no rewrite (already asked for) or cannot take one (stream_options is not an object)."""
    if req and "stream_options" not in req:  # an object with members: one more goes first
        start = len(body) - len(body.lstrip(_JSON_SPACE))
        if body[start:start + 1] == b"{" and body[start + 1:start + 2] != b"\x00":  # UTF-8: UTF-16 is encoded anew
            return body[:start + 1] + _ASK + body[start + 1:]
    options = req.get("stream_options")
    if options is None:
        options = {}
    if not isinstance(options, dict) or options.get("include_usage") is True:
        return None
    rewritten = {**req, "stream_options": {**options, "include_usage": True}}
    try:
        return compact_json(rewritten, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # lone surrogates survive only as \u escapes
        return compact_json(rewritten).encode()


def strip_null_usage(raw: bytes) -> bytes:
    """Remove the one `"usage":null` member include_usage added; leave ambiguous events alone.

    Outside strings JSON has no unescaped quote, so `"usage"` followed by a colon is a key.
    """
    spans, at = [], raw.find(_USAGE_KEY)
    while at >= 0:
        before = at - 1
        while before >= 0 and raw[before] in b" \t":
            before -= 1
        if raw[before : before + 1] == b"," and (m := _NULL_LAST.match(raw, at)):
            spans.append((before, m.end()))
        elif raw[before : before + 1] == b"{" and (m := _NULL_FIRST.match(raw, at)):
            spans.append((at, m.end()))
        at = raw.find(_USAGE_KEY, at + 1)
    if len(spans) != 1:
        return raw
    (start, end), = spans
    return raw[:start] + raw[end:]
