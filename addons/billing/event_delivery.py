"""Billing events to every webhook an account registered (POST /v1/webhooks), each signed with its own secret.

Flow. AutoTopUp records events on its worker thread and, once their transaction has committed, hands each
to `publish`, which only enqueues. A dispatcher thread, on its own database connection, reads the live
webhooks of the account owning the event's wallet at that moment (so a webhook registered after the
gateway started gets the next event, and a deleted one gets nothing) and hands the POSTs to a few sender
threads. No cache: events are rare (a few per low spell and top-up), the query is one indexed read.

The request, signed as the auto top-up's payment hook is (signed_posts.py). Body (compact JSON): {"id":
"evt_<event id>", "type": the event's name, "customer_id", "account", the event's facts with money as
decimal USD strings ("amount", "balance", "threshold"), "currency": "USD", "timestamp": unix seconds}.
Headers: `x-tollgate-signature: sha256=<hex HMAC-SHA256(webhook secret, raw body)>`,
`x-tollgate-timestamp`, `idempotency-key: evt_<event id>`, the same on every retry, so a receiver can
drop repeats. A receiver checks with `verify_signature` (the body's timestamp within 5 minutes).

Isolation. A webhook has at most one POST in flight, so a slow or dead receiver holds one sender and
delays only its own events; the others and the auto top-up go on. Failures (non-2xx, connection
error, timeout 10 s) are retried like the payment hook: billing.autopay `max_attempts`, after
`retry_base_seconds * 2**(attempt-1)`, scheduled, not slept. Each attempt re-reads the webhook: a
deleted one gets no more, a moved one gets it at its new URL, with a fresh timestamp. Then the
delivery is given up, logged with the webhook's and event's ids (never its URL or secret). A webhook
gets its events in order, unless one of them is retried.

Shutdown. `close(timeout)`: no more events; those queued, and retries due within the timeout, are
delivered; later retries are dropped (logged).
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from peewee import InterfaceError, OperationalError

from addons.billing.signed_posts import HttpPost, Post, post_failure, signed_headers
from addons.core.sealed_secrets import UnsealError, unseal
from addons.core.settings import AutopaySettings
from addons.ledger.models import Account, Customer, Event, Wallet, WebhookRow, database
from pricing.money import format_usd

log = logging.getLogger(__name__)

SENDERS = 8  # threads posting at once; one webhook holds at most one of them
DB_RETRY_SECONDS = 1.0
HIDDEN_FACTS = ("credited_nanos",)  # the low-spell bookkeeping of autopay.py, not the receiver's business


@dataclass(frozen=True, slots=True)
class PublishedEvent:
    """What a delivery needs of an Event row, detached from the database."""

    id: int
    name: str
    wallet_id: str | None
    data: dict

    @classmethod
    def of(cls, event: Event) -> PublishedEvent:
        return cls(event.id, event.name, event.wallet_id, json.loads(event.data or "{}"))

    @property
    def public_id(self) -> str:
        return f"evt_{self.id}"


@dataclass(frozen=True, slots=True)
class Delivery:
    event: PublishedEvent
    webhook_id: str
    account: str
    customer_id: str | None
    attempt: int = 1


def event_body(event: PublishedEvent, account: str, customer_id: str | None, timestamp: int) -> bytes:
    facts = {}
    for key, value in sorted(event.data.items()):
        if key in HIDDEN_FACTS:
            continue
        if key.endswith("_nanos"):
            facts[key.removesuffix("_nanos")] = format_usd(int(value))
        else:
            facts[key] = value
    body = {"id": event.public_id, "type": event.name, "customer_id": customer_id, "account": account, **facts,
            "currency": "USD", "timestamp": timestamp}
    return json.dumps(body, separators=(",", ":"), default=str).encode()


class EventDelivery:
    """One per AutoTopUp. `post(url, body, headers) -> status` replaces the httpx call (tests only); `clock`
    gives the body's unix timestamp."""

    def __init__(self, settings: AutopaySettings, *, clock: Callable[[], float] = time.time,
                 post: Post | None = None):
        self._max_attempts = max(1, settings.max_attempts)
        self._retry_base = max(0.0, settings.retry_base_seconds)
        self._clock = clock
        self._default_post = post is None
        self._post: Post = post or HttpPost()
        self._senders = ThreadPoolExecutor(SENDERS, thread_name_prefix="tollgate-webhook")
        self._cond = threading.Condition()
        self._events: deque[PublishedEvent] = deque()
        self._done: deque[tuple[Delivery, str | None]] = deque()  # from the senders: (delivery, failure)
        self._later: list[tuple[float, int, str, object]] = []  # (due, seq, "event" | "send", item)
        self._seq = itertools.count()
        self._in_flight: set[str] = set()  # webhook ids with a POST under way
        self._waiting: dict[str, deque[Delivery]] = {}  # behind that POST, in order
        self._busy = False
        self._closing = False
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._run, name="tollgate-event-delivery", daemon=True)
        self._thread.start()

    # -- the caller's side --------------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """Non-blocking: deliver a committed event to its account's webhooks."""
        with self._cond:
            if self._closing:
                log.warning("webhooks: event evt_%s came after shutdown began; not delivered", event.id)
                return
            self._events.append(PublishedEvent.of(event))
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event so far is delivered or given up."""
        with self._cond:
            return self._cond.wait_for(self._idle, timeout)

    def close(self, timeout: float = 10.0) -> bool:
        with self._cond:
            if not self._closing:
                self._closing = True
                self._deadline = time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the dispatcher -----------------------------------------------------------------------------

    def _idle(self) -> bool:
        return not (self._events or self._done or self._later or self._in_flight or self._waiting or self._busy)

    def _due(self, now: float) -> bool:
        """A retry is due (when closing, only one due by the deadline: later ones are dropped)."""
        return bool(self._later) and self._later[0][0] <= now and (
            not self._closing or self._later[0][0] <= self._deadline)

    def _next_work(self) -> tuple[str, object]:
        with self._cond:
            while True:
                self._busy = False
                if self._idle():
                    self._cond.notify_all()
                now = time.monotonic()
                if self._done:
                    self._busy = True
                    return "done", self._done.popleft()
                if self._due(now):
                    self._busy = True
                    _, _, kind, item = heapq.heappop(self._later)
                    return kind, item
                if self._events:
                    self._busy = True
                    return "event", self._events.popleft()
                if self._closing and not self._in_flight and (not self._later or self._later[0][0] > self._deadline):
                    leftover, self._later = self._later, []
                    return "stop", leftover
                wake = self._later[0][0] if self._later and (
                    not self._closing or self._later[0][0] <= self._deadline) else None
                self._cond.wait(None if wake is None else wake - now)  # else a sender's answer wakes it

    def _run(self) -> None:
        try:
            while True:
                kind, item = self._next_work()
                if kind == "stop":
                    for _, _, what, left in item:
                        name = left.public_id if what == "event" else f"{left.event.public_id} to {left.webhook_id}"
                        log.warning("webhooks: closing before %s could be delivered; dropped", name)
                    return
                try:
                    if kind == "event":
                        self._fan_out(item)
                    elif kind == "send":
                        self._enqueue(item)
                    elif kind == "done":
                        self._finished(*item)
                except Exception:
                    log.exception("webhooks: %s failed", kind)
        finally:
            self._senders.shutdown(wait=True)
            if self._default_post:
                self._post.close()
            self._close_connection()

    def _close_connection(self) -> None:
        try:
            if database.obj is not None and not database.is_closed():
                database.close()
        except Exception:  # noqa: BLE001 - a broken connection may refuse even to close
            pass

    def _db_lost(self, e: Exception, kind: str, item: object) -> None:
        """Try again once the database is back."""
        log.error("webhooks: database error: %s", type(e).__name__)
        self._close_connection()
        self._later_push(DB_RETRY_SECONDS, kind, item)

    def _later_push(self, delay: float, kind: str, item: object) -> None:
        with self._cond:
            heapq.heappush(self._later, (time.monotonic() + delay, next(self._seq), kind, item))
            self._cond.notify_all()

    def _fan_out(self, event: PublishedEvent) -> None:
        """A Delivery for each live webhook of the account that owns the event's wallet."""
        if event.wallet_id is None:
            return
        try:
            database.connect(reuse_if_open=True)
            owner = (Wallet.select(Wallet.account, Account.name).join(Account).where(Wallet.id == event.wallet_id)
                     .tuples().first())
            if owner is None:
                return
            account_id, account = owner
            webhook_ids = list(WebhookRow.select(WebhookRow.id)
                               .where(WebhookRow.account == account_id, WebhookRow.deleted_at.is_null())
                               .order_by(WebhookRow.created_at, WebhookRow.id).tuples())
            customer_id = event.data.get("customer_id") or (
                Customer.select(Customer.customer_id).where(Customer.wallet == event.wallet_id).scalar())
        except (OperationalError, InterfaceError) as e:
            self._db_lost(e, "event", event)
            return
        for (webhook_id,) in webhook_ids:
            self._enqueue(Delivery(event, webhook_id, account, customer_id))

    def _enqueue(self, delivery: Delivery) -> None:
        with self._cond:
            if delivery.webhook_id in self._in_flight:
                self._waiting.setdefault(delivery.webhook_id, deque()).append(delivery)
                return
        self._start(delivery)

    def _start(self, delivery: Delivery) -> bool:
        """POST it on a sender, reading the webhook as it is now: False when there is nothing to send (the
        webhook was deleted, its secret cannot be opened, or the database is away: then it is tried again)."""
        try:
            database.connect(reuse_if_open=True)
            row = (WebhookRow.select(WebhookRow.url, WebhookRow.sealed_secret)
                   .where(WebhookRow.id == delivery.webhook_id, WebhookRow.deleted_at.is_null()).first())
        except (OperationalError, InterfaceError) as e:
            self._db_lost(e, "send", delivery)
            return False
        if row is None:
            return False
        try:
            secret = unseal(row.sealed_secret)
        except UnsealError as e:
            log.error("webhooks: %s not delivered to %s: %s", delivery.event.public_id, delivery.webhook_id, e)
            return False
        timestamp = int(self._clock())
        body = event_body(delivery.event, delivery.account, delivery.customer_id, timestamp)
        headers = signed_headers(secret, body, timestamp, delivery.event.public_id)
        with self._cond:
            self._in_flight.add(delivery.webhook_id)
        self._senders.submit(self._send, delivery, row.url, body, headers)
        return True

    def _send(self, delivery: Delivery, url: str, body: bytes, headers: dict[str, str]) -> None:
        """On a sender thread: no database, only the POST."""
        try:
            failure = post_failure(self._post, url, body, headers)
        except Exception as e:  # noqa: BLE001 - whatever happens, the dispatcher must hear of it
            failure = f"internal error ({type(e).__name__})"
        with self._cond:
            self._done.append((delivery, failure))
            self._cond.notify_all()

    def _finished(self, delivery: Delivery, failure: str | None) -> None:
        with self._cond:
            self._in_flight.discard(delivery.webhook_id)
        if failure is not None:
            what = f"{delivery.event.public_id} to webhook {delivery.webhook_id}"
            if delivery.attempt < self._max_attempts:
                log.warning("webhooks: %s, attempt %d/%d failed: %s", what, delivery.attempt, self._max_attempts,
                            failure)
                retry = Delivery(delivery.event, delivery.webhook_id, delivery.account, delivery.customer_id,
                                 delivery.attempt + 1)
                self._later_push(self._retry_base * 2 ** (delivery.attempt - 1), "send", retry)
            else:
                log.warning("webhooks: %s given up after %d attempts: %s", what, delivery.attempt, failure)
        self._next_of(delivery.webhook_id)

    def _next_of(self, webhook_id: str) -> None:
        """Start the next delivery waiting for this webhook, if any."""
        while True:
            with self._cond:
                waiting = self._waiting.get(webhook_id)
                if not waiting or webhook_id in self._in_flight:
                    return
                delivery = waiting.popleft()
                if not waiting:
                    del self._waiting[webhook_id]
            if self._start(delivery):
                return
