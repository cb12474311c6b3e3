"""JSON without spaces, from shared encoders: json.dumps builds a new encoder on every call that passes it an
option, and the gateway writes such JSON per request (the journal) and per event of a translated stream."""

from __future__ import annotations

import json
from typing import Any

_COMPACT = json.JSONEncoder(separators=(",", ":"))
_COMPACT_UNICODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def compact_json(value: Any, *, ensure_ascii: bool = True) -> str:
    """json.dumps(value, separators=(",", ":"), ensure_ascii=ensure_ascii)."""
    return (_COMPACT if ensure_ascii else _COMPACT_UNICODE).encode(value)
