"""Who is calling the API: `Authorization: Bearer tg_sk_...`, a Tollgate secret key, and what its role lets
it reach.

- `account` keys (the default) act on their own account only; an object of another account is 404,
  never 403, which would confirm that it exists.
- `admin` keys act on their own account, or on any other named by an `account` parameter (query
  string or JSON body), and alone may top up an account's wallet or read the audit (403 `admin_only`).

Failed authentications are throttled per client address, as the proxy throttles them: after
`limit` failures within `window` seconds the address gets 429 `too_many_failed_auths`, except
with a key this process has seen succeed (every local app shares 127.0.0.1). Requests the gateway
passed on are the gateway's to throttle: it sees the client's own address.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request

from addons.core.errors import Forbidden, NotFound, TooManyRequests, Unauthorized
from addons.core.process_env import PASSTHROUGH_ENV, PASSTHROUGH_HEADER
from addons.services import keys

MAX_CLIENTS = 10_000
MAX_TRUSTED = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    key_name: str
    account_id: str
    account: str  # the account's name, what services take
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class FailedAuthThrottle:
    def __init__(self, limit: int = 20, window: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self.failures: OrderedDict[str, deque[float]] = OrderedDict()
        self.trusted: OrderedDict[str, None] = OrderedDict()  # SHA-256 of keys that succeeded

    def check(self, address: str, digest: str) -> None:
        if not self.limit or digest in self.trusted or not (wait := self.retry_after(address)):
            return
        raise TooManyRequests("too_many_failed_auths",
                              f"too many failed authentications from this address; retry in {wait} s")

    def succeeded(self, digest: str) -> None:
        self.trusted[digest] = None
        self.trusted.move_to_end(digest)
        if len(self.trusted) > MAX_TRUSTED:
            self.trusted.popitem(last=False)

    def failed(self, address: str, digest: str) -> None:
        self.trusted.pop(digest, None)
        if not self.limit:
            return
        times = self.failures.pop(address, None) or deque(maxlen=self.limit)
        times.append(self.clock())
        self.failures[address] = times
        if len(self.failures) > MAX_CLIENTS:
            self.failures.popitem(last=False)

    def retry_after(self, address: str) -> int:
        times = self.failures.get(address)
        now = self.clock()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times or len(times) < self.limit:
            return 0
        return max(1, math.ceil(times[0] + self.window - now))


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("missing_secret_key", "send your Tollgate secret key as 'Authorization: Bearer tg_sk_...'")
    return value.strip()


def passed_by_gateway(request: Request) -> bool:
    """The gateway passed this request on (addons/proxy/admin_route.py): it throttles the client itself."""
    tag, secret = request.headers.get(PASSTHROUGH_HEADER), os.environ.get(PASSTHROUGH_ENV)
    return bool(tag and secret) and hmac.compare_digest(tag.encode(), secret.encode())


def authenticate(request: Request, throttle: FailedAuthThrottle) -> Principal:
    """Runs on a worker thread (it reads the ledger)."""
    secret = bearer(request)
    digest = hashlib.sha256(secret.encode()).hexdigest()
    address = None if passed_by_gateway(request) else request.client.host if request.client else "?"
    if address is not None:
        throttle.check(address, digest)
    try:
        owner = keys.owner_of(secret)
    except Unauthorized:
        if address is not None:
            throttle.failed(address, digest)
        raise
    throttle.succeeded(digest)
    return Principal(owner.key_id, owner.key_name, owner.account_id, owner.account, owner.role)


def acting_account(principal: Principal, requested: str | None) -> str:
    """The account a call acts on: the key's own, or (admin keys only) the one named. An account key that
    names another account gets 404, as for any object it cannot see."""
    if not requested or requested == principal.account:
        return principal.account
    if not principal.is_admin or not keys.account_exists(requested):
        raise NotFound("account_not_found", f"no account named {requested!r}")
    return requested


def require_admin(principal: Principal, what: str) -> None:
    if not principal.is_admin:
        raise Forbidden("admin_only", f"{what} needs an admin key (tollgate keys create --role admin)")
