"""Signed POSTs from Tollgate to the operator: the auto top-up's payment hook (autopay.py) and the webhooks
that receive billing events (event_delivery.py) are signed alike, so one receiver check serves both.

A body is compact JSON carrying a "timestamp" (unix seconds); the headers are `x-tollgate-signature:
sha256=<hex HMAC-SHA256(secret, raw body)>`, `x-tollgate-timestamp` and `idempotency-key`, the same on
every retry. A receiver checks with `verify_signature`.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Callable

import httpx

HOOK_TIMEOUT_SECONDS = 10.0
SIGNATURE_HEADER = "x-tollgate-signature"
TIMESTAMP_HEADER = "x-tollgate-timestamp"
IDEMPOTENCY_HEADER = "idempotency-key"

# post(url, body, headers) -> HTTP status; raises httpx.HTTPError / OSError when no answer came.
Post = Callable[[str, bytes, dict[str, str]], int]


def sign(secret: str, body: bytes) -> str:
    """The x-tollgate-signature value of a body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signed_headers(secret: str, body: bytes, timestamp: int, idempotency_key: str) -> dict[str, str]:
    return {
        "content-type": "application/json",
        SIGNATURE_HEADER: sign(secret, body),
        TIMESTAMP_HEADER: str(timestamp),
        IDEMPOTENCY_HEADER: idempotency_key,
    }


def verify_signature(secret: str, body: bytes, header: str, timestamp: int, now: float, tolerance: int = 300) -> bool:
    """What a receiver checks: the signature over the raw body (constant-time) and that `timestamp`,
    the body's signed "timestamp" field, is within `tolerance` seconds of `now` (replays)."""
    if not secret or not isinstance(header, str) or not isinstance(body, bytes | bytearray):
        return False
    try:
        fresh = abs(float(now) - int(timestamp)) <= tolerance
    except (TypeError, ValueError, OverflowError):
        return False
    expected = sign(secret, bytes(body)).encode()
    matches = hmac.compare_digest(expected, header.strip().encode("utf-8", "surrogateescape"))
    return matches and fresh


def post_failure(post: Post, url: str, body: bytes, headers: dict[str, str]) -> str | None:
    """None on a 2xx answer, else a short reason (no URL, no secret)."""
    try:
        status = post(url, body, headers)
    except httpx.TimeoutException:
        return "timeout"
    except (httpx.HTTPError, OSError) as e:
        return f"connection error ({type(e).__name__})"
    return None if 200 <= status < 300 else f"HTTP {status}"


class HttpPost:
    """The default `post`: one httpx client (made on first use, shared by the threads that post); no redirects
    followed."""

    def __init__(self, timeout: float = HOOK_TIMEOUT_SECONDS):
        self._timeout = timeout
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def __call__(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self._timeout, follow_redirects=False)
            client = self._client
        return client.post(url, content=body, headers=headers).status_code

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
