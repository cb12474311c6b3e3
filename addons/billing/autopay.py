"""Automatic top-ups: when a customer's balance falls below its threshold, ask the operator's payment
hook for the configured bundle and credit it once the hook says paid.

Flow. The ledger writer calls `AutoTopUp.notify_charged(wallet)` after committing charges; that only
enqueues (it never blocks mitmproxy's event loop). A daemon worker thread, on its own database
connection, reads the wallet's Customer (nothing happens without one, or without both
`autopay_threshold_nanos` and `autopay_amount_nanos`); when `balance < threshold` it locks the wallet
row (PostgreSQL `FOR NO KEY UPDATE`, SQLite `BEGIN IMMEDIATE`) and, in that one transaction, inserts a
pending TopUp and the events. Then, outside any transaction, it POSTs the signed request to
`billing.autopay.webhook_url`; a 2xx answer credits the bundle (LedgerEntry reason "autopay",
request_id = the top-up id, balance and version moved, top-up succeeded) in one transaction.

One top-up at a time per wallet, across processes: TopUp.pending_wallet is unique and holds the wallet
id while the top-up is pending, so a second insert fails with IntegrityError and that notification does
nothing more. Many charges crossing the threshold together therefore cause one POST, whichever proxy
process sees them.

The hook request. Body (JSON): {"id": topup id, "type": "topup.requested", "customer_id", "account",
"amount": decimal USD string, "currency": "USD", "timestamp": unix seconds, "attempt": n}. Headers:
`x-tollgate-signature: sha256=<hex HMAC-SHA256(webhook_secret, raw body)>`, `x-tollgate-timestamp`,
and `idempotency-key: <topup id>`, the same on every retry, so the payment provider charges once. The
timestamp a receiver must check is the body's (it is signed); see `verify_signature`. Timeout 10 s.

Failures (non-2xx, connection error, timeout) are retried after retry_base_seconds * 2**(attempt-1),
up to max_attempts attempts; then the top-up is failed (error: a short reason, never the secret or
URL) and `topup.failed` is emitted. Retries are scheduled, not slept: other wallets go on meanwhile.
A credited top-up leaves the balance wherever it lands: if that is still below the threshold, the
next charge starts another top-up (never a loop inside one notification).

Balance events (the dedupe rule). `balance.low` (balance < threshold) and `balance.depleted`
(balance <= 0) are emitted at most once per *low spell*. A spell ends when money comes in: the
wallet's credited total (the sum of its positive topup/autopay/refund/adjustment entries, which only
ever grows) has risen since the last event of that name, whose data records `credited_nanos`. So 50
charges below the threshold emit one `balance.low`; a top-up that fails changes nothing (the next
charge starts a new top-up, but the spell goes on); a credit (auto or manual) that leaves the balance
low makes the next charge below the threshold report it again. `balance.depleted` may come later in a
spell than `balance.low`, once the balance reaches zero. The check runs under the wallet lock, so
concurrent processes emit each event once. This works with autopay off (no webhook_url) as well.

Webhooks. Every event, once its transaction has committed, goes to every webhook the wallet's account
registered (POST /v1/webhooks), each signed with its own secret, by `deliveries` (event_delivery.py) on
threads of its own: a slow or failing webhook never holds up a top-up. The payment hook above is not
one of them and gets the top-up request only, as before.

Crashed processes. A pending top-up older than `stale_after_seconds` (5 minutes, or the longest a
top-up can take with these settings if that is longer) was left by a process that died: it is marked
failed with error "abandoned" (pending_wallet cleared, `topup.failed` emitted) when an AutoTopUp
starts, and also when such a leftover blocks a new top-up for its wallet, so a long-running process
does not wait for a restart. A process that died between the hook's 2xx and the credit leaves a paid
but uncredited top-up, marked abandoned: the operator reconciles it by its id (the idempotency key).

Shutdown. `close(timeout)` stops taking notifications, handles the ones queued, makes the retries due
within the timeout, and marks top-ups whose next retry would come later failed ("shutdown"); then the
webhooks get the events recorded so far, within what is left of the timeout.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

from peewee import IntegrityError, InterfaceError, OperationalError, PostgresqlDatabase, SqliteDatabase, fn

from addons.billing.event_delivery import EventDelivery
from addons.billing.events import (
    BALANCE_DEPLETED,
    BALANCE_LOW,
    TOPUP_FAILED,
    TOPUP_REQUESTED,
    TOPUP_SUCCEEDED,
    event_data,
    record_event,
)
from addons.billing.signed_posts import (  # noqa: F401 - sign and verify_signature: a receiver's check, as ever
    HOOK_TIMEOUT_SECONDS,
    HttpPost,
    Post,
    post_failure,
    sign,
    signed_headers,
    verify_signature,
)
from addons.core.settings import AutopaySettings
from addons.ledger.models import Account, Customer, Event, LedgerEntry, TopUp, Wallet, database, utcnow
from pricing.money import format_usd

log = logging.getLogger(__name__)

STALE_AFTER_SECONDS = 300.0
DB_RETRY_SECONDS = 1.0
CREDIT_REASONS = ("topup", "autopay", "refund", "adjustment")  # entries that can end a low spell


@contextmanager
def _locked_wallet(wallet_id: str) -> Iterator[Wallet | None]:
    """A transaction holding the wallet row: serialises autopay decisions with charges and other
    processes (SQLite: the database write lock; PostgreSQL: a row lock)."""
    db = database.obj
    if isinstance(db, SqliteDatabase):
        with database.atomic(lock_type="IMMEDIATE"):
            yield Wallet.get_or_none(Wallet.id == wallet_id)
        return
    with database.atomic():
        query = Wallet.select().where(Wallet.id == wallet_id)
        if isinstance(db, PostgresqlDatabase):
            query = query.for_update("FOR NO KEY UPDATE")
        yield query.first()


def _credited_total(wallet_id: str) -> int:
    return int(
        LedgerEntry.select(fn.COALESCE(fn.SUM(LedgerEntry.amount_nanos), 0))
        .where(
            (LedgerEntry.wallet == wallet_id)
            & LedgerEntry.reason.in_(CREDIT_REASONS)
            & (LedgerEntry.amount_nanos > 0)
        )
        .scalar()
        or 0
    )


def _new_spell(wallet_id: str, name: str, credited: int) -> bool:
    last = Event.select(Event.data).where((Event.wallet == wallet_id) & (Event.name == name)).order_by(
        Event.id.desc()).first()
    return last is None or int(event_data(last).get("credited_nanos", -1)) < credited


class AutoTopUp:
    """One per proxy process. `post(url, body, headers) -> status` replaces the httpx call (tests only);
    `clock` gives the body's unix timestamp. The events it records go, once committed, to `deliveries`: every
    webhook the wallet's account registered (by default an EventDelivery of its own, closed with it)."""

    def __init__(
        self,
        settings: AutopaySettings,
        *,
        clock: Callable[[], float] = time.time,
        post: Post | None = None,
        deliveries: EventDelivery | None = None,
    ):
        if settings.webhook_url and not settings.webhook_secret:
            raise ValueError("billing.autopay.webhook_url is set but webhook_secret is not: hook calls must be signed")
        if settings.max_attempts < 1 or settings.retry_base_seconds < 0:
            raise ValueError("billing.autopay: max_attempts must be >= 1 and retry_base_seconds >= 0")
        self._settings = settings
        self._clock = clock
        self._default_post = post is None
        self._post: Post = post or HttpPost()
        self.deliveries = deliveries or EventDelivery(settings, clock=clock)
        self._outbox: list[Event] = []  # recorded, not yet known to be committed (the worker's own)
        self._cond = threading.Condition()
        self._wallets: dict[str, None] = {}  # queued notifications, an ordered set
        self._tasks: list[tuple[float, int, str, str, int]] = []  # (due, seq, kind, topup_id, attempt)
        self._seq = itertools.count()
        self._busy = True  # until the start-up clean-up is done
        self._closing = False
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._run, name="tollgate-autopay", daemon=True)
        self._thread.start()

    @property
    def enabled(self) -> bool:
        return bool(self._settings.webhook_url)

    @property
    def stale_after_seconds(self) -> float:
        """A pending top-up older than this cannot belong to a live process using these settings."""
        s = self._settings
        longest = sum(s.retry_base_seconds * 2 ** (n - 1) for n in range(1, s.max_attempts))
        longest += s.max_attempts * HOOK_TIMEOUT_SECONDS + 60
        return max(STALE_AFTER_SECONDS, longest)

    # -- the caller's side --------------------------------------------------------------------------

    def notify_charged(self, wallet_id: str) -> None:
        """Non-blocking: a wallet was charged; check it soon. Repeats while queued coalesce."""
        with self._cond:
            if self._closing:
                return
            self._wallets[wallet_id] = None
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every notification so far is handled, every top-up begun has finished and the webhooks
        have had every event (or a delivery was given up)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if not self._cond.wait_for(lambda: not (self._wallets or self._tasks or self._busy), timeout):
                return False
        return self.deliveries.flush(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float = 10.0) -> bool:
        """Stop: queued notifications are handled, retries due within `timeout` made, later ones failed
        ("shutdown"); further notifications are ignored. Then the webhooks get the events recorded meanwhile,
        within what is left of `timeout`. False if a worker is still busy at the end."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if not self._closing:
                self._closing = True
                self._deadline = deadline
            self._cond.notify_all()
        self._thread.join(timeout)
        delivered = self.deliveries.close(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive() and delivered

    # -- the worker ----------------------------------------------------------------------------------

    def _schedule(self, delay: float, kind: str, topup_id: str, attempt: int) -> None:
        with self._cond:
            heapq.heappush(self._tasks, (time.monotonic() + delay, next(self._seq), kind, topup_id, attempt))
            self._cond.notify_all()

    def _next_work(self) -> tuple:
        """(kind, arg, attempt): a due retry/credit, else a queued wallet ("check"), else, when closing and
        nothing more falls due in time, ("shutdown", the tasks left, 0)."""
        with self._cond:
            while True:
                now = time.monotonic()
                if self._tasks and self._tasks[0][0] <= now:
                    self._busy = True
                    return heapq.heappop(self._tasks)[2:]
                if self._wallets:
                    wallet_id = next(iter(self._wallets))
                    del self._wallets[wallet_id]
                    self._busy = True
                    return ("check", wallet_id, 0)
                if self._closing and (not self._tasks or self._tasks[0][0] > self._deadline):
                    leftover, self._tasks = self._tasks, []
                    self._busy = bool(leftover)
                    return ("shutdown", leftover, 0)
                timeout = self._tasks[0][0] - now if self._tasks else None
                self._cond.wait(timeout)

    def _run(self) -> None:
        try:
            self._safely(self._abandon_stale)
            with self._cond:
                self._busy = False
                self._cond.notify_all()
            while True:
                kind, arg, attempt = self._next_work()
                try:
                    if kind == "shutdown":
                        self._shutdown(arg)
                        return
                    if kind == "check":
                        self._safely(self._check, arg)
                    elif kind == "pay":
                        self._pay_safely(arg, attempt)
                    elif kind == "credit":
                        self._credit_safely(arg, attempt)
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
        finally:
            if self._default_post:
                self._post.close()
            if database.obj is not None and not database.is_closed():
                database.close()

    def _connect(self) -> None:
        database.connect(reuse_if_open=True)

    def _db_lost(self, e: Exception) -> None:
        log.error("autopay: database error: %s", type(e).__name__)
        self._outbox.clear()  # their transaction rolled back
        try:
            if not database.is_closed():
                database.close()
        except Exception:  # noqa: BLE001 - a broken connection may refuse even to close
            pass

    def _safely(self, step: Callable, *args) -> bool:
        try:
            self._connect()
            step(*args)
            return True
        except (OperationalError, InterfaceError) as e:
            self._db_lost(e)
        except Exception:
            log.exception("autopay: %s failed", step.__name__)
            self._outbox.clear()
        return False

    def _pay_safely(self, topup_id: str, attempt: int) -> None:
        try:
            self._connect()
            self._attempt(topup_id, attempt)
        except (OperationalError, InterfaceError) as e:  # keep the top-up going once the database is back
            self._db_lost(e)
            self._schedule(DB_RETRY_SECONDS, "pay", topup_id, attempt)
        except Exception as e:
            log.exception("autopay: top-up %s attempt %d failed", topup_id, attempt)
            self._outbox.clear()
            self._safely(self._fail, topup_id, attempt, f"internal error ({type(e).__name__})")

    def _credit_safely(self, topup_id: str, attempts: int) -> None:
        try:
            self._connect()
            self._succeed(topup_id, attempts)
        except (OperationalError, InterfaceError) as e:  # paid: the credit must land
            self._db_lost(e)
            self._schedule(DB_RETRY_SECONDS, "credit", topup_id, attempts)
        except Exception:
            log.exception("autopay: top-up %s was paid but could not be credited", topup_id)
            self._outbox.clear()

    # -- events --------------------------------------------------------------------------------------

    def _record(self, name: str, wallet_id: str, **data) -> None:
        """Record an event in the current transaction; `_publish` hands it to the webhooks after the commit."""
        self._outbox.append(record_event(name, wallet_id, **data))

    def _publish(self) -> None:
        """Once no transaction is open any more (the events' own has committed), deliver what was recorded."""
        if database.in_transaction():
            return
        recorded, self._outbox = self._outbox, []
        for event in recorded:
            self.deliveries.publish(event)

    # -- deciding ------------------------------------------------------------------------------------

    def _check(self, wallet_id: str) -> None:
        customer = Customer.get_or_none(Customer.wallet == wallet_id)
        if customer is None or customer.deleted_at is not None:  # a deleted customer is asked for no money
            return
        threshold, amount = customer.autopay_threshold_nanos, customer.autopay_amount_nanos
        if threshold is None or amount is None or amount <= 0:
            return
        balance = Wallet.select(Wallet.balance_nanos).where(Wallet.id == wallet_id).scalar()
        if balance is None or balance >= threshold:  # the common case, without a lock
            return
        topup = None
        with _locked_wallet(wallet_id) as wallet:
            if wallet is None or wallet.balance_nanos >= threshold:
                return
            balance = wallet.balance_nanos
            if self.enabled:
                topup = self._start_topup(wallet_id, amount)
            credited = _credited_total(wallet_id)
            facts = dict(customer_id=customer.customer_id, balance_nanos=balance, threshold_nanos=threshold,
                         credited_nanos=credited)
            if _new_spell(wallet_id, BALANCE_LOW, credited):
                self._record(BALANCE_LOW, wallet_id, **facts)
            if balance <= 0 and _new_spell(wallet_id, BALANCE_DEPLETED, credited):
                self._record(BALANCE_DEPLETED, wallet_id, **facts)
            if topup is not None:
                self._record(TOPUP_REQUESTED, wallet_id, topup_id=topup.id, amount_nanos=amount,
                             customer_id=customer.customer_id, balance_nanos=balance)
        self._publish()
        if topup is not None:
            log.info("autopay: top-up %s of %s USD for wallet %s requested", topup.id, format_usd(amount), wallet_id)
            self._pay_safely(topup.id, 1)

    def _start_topup(self, wallet_id: str, amount: int) -> TopUp | None:
        """Insert the pending top-up; None when one is pending already (here or in another process)."""
        for _ in range(2):
            try:
                with database.atomic():  # a savepoint: PostgreSQL's transaction survives the conflict
                    return TopUp.create(wallet=wallet_id, amount_nanos=amount, status="pending",
                                        pending_wallet=wallet_id)
            except IntegrityError:
                pending = TopUp.get_or_none(TopUp.pending_wallet == wallet_id)
                if pending is None or not self._abandon(pending):
                    log.debug("autopay: a top-up is already pending for wallet %s", wallet_id)
                    return None
        return None

    def _abandon_stale(self) -> None:
        cutoff = utcnow() - timedelta(seconds=self.stale_after_seconds)
        for topup in list(TopUp.select().where((TopUp.status == "pending") & (TopUp.created_at < cutoff))):
            self._abandon(topup)

    def _abandon(self, topup: TopUp) -> bool:
        """Fail a pending top-up left by a dead process; False if it may still be live."""
        if topup.created_at >= utcnow() - timedelta(seconds=self.stale_after_seconds):
            return False
        done = self._finish_failed(topup.id, topup.wallet_id, topup.attempts, "abandoned")
        if done:
            log.warning("autopay: pending top-up %s from %s abandoned", topup.id, topup.created_at)
        return done

    # -- paying --------------------------------------------------------------------------------------

    def _attempt(self, topup_id: str, attempt: int) -> None:
        topup = TopUp.get_or_none(TopUp.id == topup_id)
        if topup is None or topup.status != "pending":  # e.g. abandoned by another process meanwhile
            log.warning("autopay: top-up %s is no longer pending; not retried", topup_id)
            return
        customer_id, account = (
            Customer.select(Customer.customer_id, Account.name)
            .join(Account)
            .where(Customer.wallet == topup.wallet_id)
            .tuples()
            .first()
        ) or (None, None)
        timestamp = int(self._clock())
        body = json.dumps(
            {"id": topup.id, "type": "topup.requested", "customer_id": customer_id, "account": account,
             "amount": format_usd(topup.amount_nanos), "currency": "USD", "timestamp": timestamp,
             "attempt": attempt},
            separators=(",", ":"),
        ).encode()
        headers = signed_headers(self._settings.webhook_secret, body, timestamp, topup.id)
        error = post_failure(self._post, self._settings.webhook_url, body, headers)
        if error is None:
            self._credit_safely(topup_id, attempt)
            return
        log.warning("autopay: top-up %s attempt %d/%d failed: %s", topup_id, attempt,
                    self._settings.max_attempts, error)
        if attempt >= self._settings.max_attempts:
            self._finish_failed(topup_id, topup.wallet_id, attempt, error)
            return
        still_pending = (TopUp.id == topup_id) & (TopUp.status == "pending")
        TopUp.update(attempts=attempt, error=error).where(still_pending).execute()
        self._schedule(self._settings.retry_base_seconds * 2 ** (attempt - 1), "pay", topup_id, attempt + 1)

    def _succeed(self, topup_id: str, attempts: int) -> None:
        """Credit a paid top-up: entry, balance, version and status in one transaction; idempotent."""
        topup = TopUp.get_by_id(topup_id)
        with _locked_wallet(topup.wallet_id):
            credited = (
                LedgerEntry.select()
                .where((LedgerEntry.wallet == topup.wallet_id) & (LedgerEntry.reason == "autopay")
                       & (LedgerEntry.request_id == topup_id))
                .exists()
            )
            if not credited:
                LedgerEntry.create(wallet=topup.wallet_id, amount_nanos=topup.amount_nanos, reason="autopay",
                                   request_id=topup_id, note="auto top-up")
                Wallet.update(balance_nanos=Wallet.balance_nanos + topup.amount_nanos,
                              version=Wallet.version + 1).where(Wallet.id == topup.wallet_id).execute()
            TopUp.update(status="succeeded", pending_wallet=None, attempts=attempts, error=None,
                         finished_at=utcnow()).where(TopUp.id == topup_id).execute()
            if not credited:
                balance = Wallet.select(Wallet.balance_nanos).where(Wallet.id == topup.wallet_id).scalar()
                self._record(TOPUP_SUCCEEDED, topup.wallet_id, topup_id=topup_id,
                             amount_nanos=topup.amount_nanos, attempts=attempts, balance_nanos=balance)
        self._publish()
        log.info("autopay: top-up %s credited after %d attempt(s)", topup_id, attempts)

    def _finish_failed(self, topup_id: str, wallet_id: str, attempts: int, error: str) -> bool:
        with database.atomic():
            done = (
                TopUp.update(status="failed", pending_wallet=None, attempts=attempts, error=error[:200],
                             finished_at=utcnow())
                .where((TopUp.id == topup_id) & (TopUp.status == "pending"))
                .execute()
            )
            if done:
                self._record(TOPUP_FAILED, wallet_id, topup_id=topup_id, attempts=attempts, error=error[:200])
        self._publish()  # unless this runs inside a transaction of _check's, which publishes after its commit
        return bool(done)

    def _fail(self, topup_id: str, attempts: int, error: str) -> None:
        topup = TopUp.get_or_none(TopUp.id == topup_id)
        if topup is not None:
            self._finish_failed(topup_id, topup.wallet_id, max(attempts, topup.attempts), error)

    def _shutdown(self, leftover: list) -> None:
        for _, _, kind, topup_id, attempt in leftover:
            if kind == "pay":
                log.warning("autopay: closing before retry %d of top-up %s; marked failed", attempt, topup_id)
                self._safely(self._fail, topup_id, attempt - 1, "shutdown")
            else:
                log.error("autopay: top-up %s was paid but is not credited (database unavailable); "
                          "reconcile it by its id", topup_id)
