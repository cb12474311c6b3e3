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


def _is_request_id(name: bytes) -> bool:
    return len(name) in _ID_SIZES and name.lower() in _ID_NAMES


def _is_id_or_rate(name: bytes) -> bool:
    return name[:_PREFIX_SIZE].lower() == RATE_HEADER_PREFIX or _is_request_id(name)


def stamped(fields: Fields, request_id: str, rate_fields: Fields) -> Fields:
    """`fields` with the request id headers set to `request_id` and, where `rate_fields` are given, every
    x-ratelimit-* field the provider sent replaced by them."""
    replaced = _is_id_or_rate if rate_fields else _is_request_id
    if any(replaced(name) for name, _ in fields):
        fields = tuple(field for field in fields if not replaced(field[0]))
    value = request_id.encode()
    return (*fields, *((name, value) for name in _ID_NAMES), *rate_fields)
