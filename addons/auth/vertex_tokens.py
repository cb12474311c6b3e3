"""OAuth access tokens for Google Vertex AI, minted from the operator's service account key file.

google-auth signs a JWT assertion with the service account's private key and trades it at the key
file's `token_uri` for an access token (Google's last about an hour). That trade is a blocking HTTP
call, so it runs on a thread, never on mitmproxy's event loop, and one refresh per key file is shared
by every request that needs it. A token is refreshed ahead of its expiry: once it has less than
`refresh_ahead_s` (or half its lifetime, if that is shorter) left, a refresh starts in the background
while requests keep using it, and only a token with less than `min_valid_s` left (or none yet) makes a
request wait for the new one.

The key file is read again at each refresh (on that thread), so a rotated key is picked up without
a restart. Errors name what failed, never the key or a token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from google.auth.exceptions import GoogleAuthError
from google.auth.transport.requests import Request
from google.oauth2 import service_account
from mitmproxy.utils.asyncio_utils import create_task

log = logging.getLogger(__name__)

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
TOKEN_TIMEOUT_S = 10.0  # the token endpoint's answer; google-auth's default is 120 s


class TokenError(Exception):
    """No access token could be minted (unreadable key file, token endpoint down or refusing)."""


def utcnow() -> datetime:
    """google-auth's expiry is a naive UTC datetime; so is this clock."""
    return datetime.now(UTC).replace(tzinfo=None)


def mint(key_file: str) -> tuple[str, datetime]:
    """(access token, its expiry) for the service account in `key_file`: blocking, run it on a thread."""
    try:
        credentials = service_account.Credentials.from_service_account_file(key_file, scopes=SCOPES)
        credentials.refresh(_TimedRequest())
    except (OSError, ValueError, KeyError, GoogleAuthError) as e:
        raise TokenError(f"cannot mint a Vertex AI access token from {key_file}: {type(e).__name__}: "
                         f"{str(e)[:200]}") from None
    if not credentials.token or credentials.expiry is None:
        raise TokenError(f"the token endpoint of {key_file} answered without a token or its expiry")
    return credentials.token, credentials.expiry


class _TimedRequest(Request):
    """google-auth's requests transport with a timeout of our own on the token call."""

    def __call__(self, url, method="GET", body=None, headers=None, timeout=None, **kwargs):
        return super().__call__(url, method, body, headers, timeout=timeout or TOKEN_TIMEOUT_S, **kwargs)


@dataclass(slots=True)
class _Token:
    value: str | None = None
    expiry: datetime | None = None
    ahead_s: float = 0.0  # refresh once this little is left: refresh_ahead_s, or half a short-lived token's life
    refreshing: asyncio.Task | None = None


class ServiceAccountTokens:
    """The current access token of each service account key file, kept fresh; one per gateway process."""

    def __init__(self, *, refresh_ahead_s: float = 300.0, min_valid_s: float = 30.0,
                 now: Callable[[], datetime] = utcnow, minter: Callable[[str], tuple[str, datetime]] = mint):
        self.refresh_ahead_s = refresh_ahead_s
        self.min_valid_s = min_valid_s
        self.now = now
        self.minter = minter
        self.minted = 0  # tokens minted so far, all key files
        self._tokens: dict[str, _Token] = {}

    async def token(self, key_file: str) -> str:
        """A valid access token for `key_file`; waits only when none is left valid. Raises TokenError."""
        token = self._tokens.setdefault(key_file, _Token())
        left = (token.expiry - self.now()).total_seconds() if token.expiry else 0.0
        if left > token.ahead_s:
            return token.value
        if token.refreshing is None:
            token.refreshing = create_task(self._refresh(key_file, token), name="vertex token refresh", keep_ref=True)
            token.refreshing.add_done_callback(_retrieved)  # a background refresh's error is logged, not raised
        if left > self.min_valid_s:
            return token.value  # the refresh runs in the background
        return await asyncio.shield(token.refreshing)

    async def _refresh(self, key_file: str, token: _Token) -> str:
        try:
            value, expiry = await asyncio.get_running_loop().run_in_executor(None, self.minter, key_file)
        except TokenError as e:
            log.warning("tollgate: %s", e)
            raise
        finally:
            token.refreshing = None
        token.value, token.expiry = value, expiry
        token.ahead_s = min(self.refresh_ahead_s, (expiry - self.now()).total_seconds() / 2)
        self.minted += 1
        return value


def _retrieved(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()
