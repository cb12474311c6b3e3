"""Validation of the caller's request metadata (x-lava-metadata / x-tollgate-metadata)."""

from __future__ import annotations

import json
import re

from addons.core.errors import BadRequest

MAX_PAIRS = 100
MAX_LENGTH = 255
_KEY = re.compile(r"[A-Za-z0-9_]{1,255}\Z")


def parse_metadata(raw: str) -> dict[str, str]:
    """Parse a metadata header; anything invalid is refused, never silently dropped."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest("invalid_metadata", "metadata must be a JSON object") from None
    if not isinstance(value, dict):
        raise BadRequest("invalid_metadata", "metadata must be a JSON object")
    if len(value) > MAX_PAIRS:
        raise BadRequest("invalid_metadata", f"metadata has more than {MAX_PAIRS} pairs")
    for key, item in value.items():
        if not _KEY.match(key):
            raise BadRequest(
                "invalid_metadata",
                "metadata keys must be 1-255 ASCII letters, digits or underscores",
            )
        if not isinstance(item, str) or not 1 <= len(item) <= MAX_LENGTH:
            raise BadRequest(
                "invalid_metadata", f"metadata value for {key!r} must be a string of 1-255 characters"
            )
    return value
