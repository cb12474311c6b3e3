"""The headers the gateway puts on every answer it passes on: its request id, and a limited key's x-ratelimit-*
fields in place of the provider's. Set in one pass over the raw fields: setting them one header at a time walks
and rebuilds the fields once per header, on every response."""

from __future__ import annotations

from addons.billing.limits import RATE_HEADER_PREFIX
from addons.proxy.flow_keys import REQUEST_ID_HEADERS

Fields = tuple[tuple[bytes, bytes], ...]

_ID_NAMES = tuple(name.encode() for name in REQUEST_ID_HEADERS)
_ID_SIZES = frozenset(len(name) for name in _ID_NAMES)  # a field of another length is none of them: not lowered
_PREFIX_SIZE = len(RATE_HEADER_PREFIX)
_X = (b"x", b"X")  # every name replaced starts with an x: the rest are passed over on their first byte


def stamped(fields: Fields, request_id: str, rate_fields: Fields) -> Fields:
    """`fields` with the request id headers set to `request_id` and, where `rate_fields` are given, every
    x-ratelimit-* field the provider sent replaced by them (OpenAI sends six, and an x-request-id). The test is
    written out in the comprehension: a function called per field cost more than the test (every answer)."""
    value = request_id.encode()
    kept = [field for field in fields if (name := field[0])[:1] not in _X or not (
        rate_fields and (name.startswith(RATE_HEADER_PREFIX) or name[:_PREFIX_SIZE].lower() == RATE_HEADER_PREFIX)
        or len(name) in _ID_SIZES and name.lower() in _ID_NAMES)]
    return (*kept, (_ID_NAMES[0], value), (_ID_NAMES[1], value), *rate_fields)
