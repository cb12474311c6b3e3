"""Auto top-up against a real local payment hook, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from addons.billing import events
from addons.billing.autopay import AutoTopUp, sign, verify_signature
from addons.billing.signed_posts import HttpPost
from addons.core.settings import AutopaySettings
from addons.ledger.accounts import audit_wallets, credit_wallet, ensure_account, wallet_balance
from addons.ledger.models import (
    Customer,
    Event,
    LedgerEntry,
    TopUp,
    Wallet,
    database,
    new_id,
    utcnow,
)
from tests.harness import free_port

USD = 10**9
SECRET = "whsec_test_0123456789"
THRESHOLD = 5 * USD
BUNDLE = 20 * USD
START = 6 * USD


@dataclass
class Call:
    body: dict
    raw: bytes
    headers: dict
    verified: bool
    at: float


class Receiver:
    """The operator's payment hook: checks the signature, records calls, answers as scripted."""

    def __init__(self, secret: str = SECRET):
        self.secret = secret
        self.calls: list[Call] = []
        self.statuses: list[int] = []  # answered first, in order
        self.default = 200
        self.delay = 0.0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers["content-length"]))
                body = json.loads(raw)
                verified = verify_signature(receiver.secret, raw, self.headers.get("x-tollgate-signature", ""),
                                            body.get("timestamp"), time.time())
                with receiver._lock:
                    receiver.calls.append(Call(body, raw, {k.lower(): v for k, v in self.headers.items()},
                                               verified, time.monotonic()))
                    status = receiver.statuses.pop(0) if receiver.statuses else receiver.default
                time.sleep(receiver.delay)
                self.send_response(status if verified else 401)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/topup"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def wallet_id(ledger) -> str:
    """A customer wallet holding START, with autopay of BUNDLE below THRESHOLD."""
    account, _ = ensure_account()
    wallet = Wallet.create(account=account, customer_id="cus-1")
    Customer.create(account=account, customer_id="cus-1", wallet=wallet, autopay_threshold_nanos=THRESHOLD,
                    autopay_amount_nanos=BUNDLE)
    credit_wallet(wallet.id, START)
    return wallet.id


@pytest.fixture
def make(ledger, receiver):
    """AutoTopUp instances against the receiver (each one stands for a proxy process), closed after."""
    made = []

    def make(**overrides) -> AutoTopUp:
        kwargs = {k: overrides.pop(k) for k in ("clock", "post") if k in overrides}
        settings = dict(webhook_url=receiver.url, webhook_secret=SECRET, max_attempts=3, retry_base_seconds=0.01)
        settings.update(overrides)
        autopay = AutoTopUp(AutopaySettings(**settings), **kwargs)
        made.append(autopay)
        return autopay

    yield make
    for autopay in made:
        assert autopay.close(timeout=10)


def charge(wallet_id: str, nanos: int) -> None:
    """What the ledger writer does to a customer wallet for one request."""
    with database.atomic():
        LedgerEntry.create(wallet=wallet_id, amount_nanos=-nanos, reason="usage", request_id=new_id("req"))
        Wallet.update(balance_nanos=Wallet.balance_nanos - nanos, version=Wallet.version + 1).where(
            Wallet.id == wallet_id).execute()


def event_names(wallet_id: str) -> list[str]:
    return [e.name for e in Event.select().where(Event.wallet == wallet_id).order_by(Event.id)]


def autopay_entries(wallet_id: str) -> list[tuple[str, int]]:
    query = LedgerEntry.select(LedgerEntry.request_id, LedgerEntry.amount_nanos).where(
        (LedgerEntry.wallet == wallet_id) & (LedgerEntry.reason == "autopay"))
    return list(query.tuples())


def notify_together(instances: list[AutoTopUp], wallet_id: str, threads: int) -> None:
    barrier = threading.Barrier(threads)

    def go(i):
        barrier.wait()
        instances[i % len(instances)].notify_charged(wallet_id)

    workers = [threading.Thread(target=go, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def test_a_charge_crossing_the_threshold_tops_up_once(make, receiver, wallet_id, caplog):
    caplog.set_level(logging.INFO, logger="addons.billing.events")
    autopay = make()
    version = Wallet.get_by_id(wallet_id).version
    charge(wallet_id, 2 * USD)
    autopay.notify_charged(wallet_id)
    assert autopay.flush(timeout=30)

    assert len(receiver.calls) == 1
    call = receiver.calls[0]
    topup = TopUp.get()
    assert call.verified
    assert call.body == {"id": topup.id, "type": "topup.requested", "customer_id": "cus-1", "account": "default",
                         "amount": "20.00", "currency": "USD", "timestamp": call.body["timestamp"], "attempt": 1}
    assert abs(call.body["timestamp"] - time.time()) < 60
    assert call.headers["content-type"] == "application/json"
    assert call.headers["idempotency-key"] == topup.id
    assert call.headers["x-tollgate-timestamp"] == str(call.body["timestamp"])
    assert call.headers["x-tollgate-signature"] == sign(SECRET, call.raw)

    assert wallet_balance(wallet_id) == 4 * USD + BUNDLE
    assert Wallet.get_by_id(wallet_id).version == version + 2  # the charge, then the credit
    assert audit_wallets() == []
    assert autopay_entries(wallet_id) == [(topup.id, BUNDLE)]
    assert (topup.status, topup.attempts, topup.pending_wallet, topup.error) == ("succeeded", 1, None, None)
    assert topup.finished_at is not None
    assert event_names(wallet_id) == [events.BALANCE_LOW, events.TOPUP_REQUESTED, events.TOPUP_SUCCEEDED]
    low = Event.get(Event.name == events.BALANCE_LOW)
    assert json.loads(low.data)["balance_nanos"] == 4 * USD
    assert f"tollgate event topup.succeeded wallet={wallet_id}" in caplog.text
    assert SECRET not in caplog.text


def test_fifty_notifications_at_once_make_one_topup(make, receiver, wallet_id):
    autopay = make()
    receiver.delay = 0.2
    for _ in range(50):
        charge(wallet_id, USD // 25)
    notify_together([autopay], wallet_id, threads=50)
    assert autopay.flush(timeout=30)
    assert len(receiver.calls) == 1
    assert wallet_balance(wallet_id) == START - 2 * USD + BUNDLE
    assert len(autopay_entries(wallet_id)) == 1 and audit_wallets() == []
    assert event_names(wallet_id).count(events.BALANCE_LOW) == 1


@pytest.mark.parametrize("processes", [2, 6])
def test_several_processes_notified_together_make_one_topup(make, receiver, wallet_id, processes):
    """The pending top-up's unique column is the guard, not anything in one process's memory."""
    instances = [make() for _ in range(processes)]
    receiver.delay = 0.3  # the top-up stays pending while the others decide
    charge(wallet_id, 2 * USD)
    for _ in range(3):
        notify_together(instances, wallet_id, threads=processes * 4)
        time.sleep(0.05)
    assert all(autopay.flush(timeout=30) for autopay in instances)
    assert len(receiver.calls) == 1
    assert wallet_balance(wallet_id) == 4 * USD + BUNDLE
    assert len(autopay_entries(wallet_id)) == 1 and audit_wallets() == []
    assert TopUp.select().count() == 1
    names = event_names(wallet_id)
    assert names.count(events.TOPUP_REQUESTED) == 1 and names.count(events.BALANCE_LOW) == 1


def test_failures_are_retried_with_backoff_under_one_idempotency_key(make, receiver, wallet_id):
    autopay = make(retry_base_seconds=0.1)
    receiver.statuses = [500, 503]
    charge(wallet_id, 2 * USD)
    autopay.notify_charged(wallet_id)
    assert autopay.flush(timeout=30)

    assert [c.body["attempt"] for c in receiver.calls] == [1, 2, 3]
    topup = TopUp.get()
    assert {c.headers["idempotency-key"] for c in receiver.calls} == {topup.id}
    assert {c.body["id"] for c in receiver.calls} == {topup.id}
    first, second, third = (c.at for c in receiver.calls)
    assert second - first >= 0.1 and third - second >= 0.2  # base, then doubled
    assert (topup.status, topup.attempts) == ("succeeded", 3)
    assert autopay_entries(wallet_id) == [(topup.id, BUNDLE)]
    assert wallet_balance(wallet_id) == 4 * USD + BUNDLE and audit_wallets() == []
    assert event_names(wallet_id) == [events.BALANCE_LOW, events.TOPUP_REQUESTED, events.TOPUP_SUCCEEDED]


def test_a_hook_that_keeps_failing_fails_the_topup_and_a_later_charge_starts_another(make, receiver, wallet_id):
    autopay = make()
    receiver.default = 500
    charge(wallet_id, 2 * USD)
    autopay.notify_charged(wallet_id)
    assert autopay.flush(timeout=30)

    assert len(receiver.calls) == 3  # max_attempts
    failed = TopUp.get()
    assert (failed.status, failed.attempts, failed.pending_wallet, failed.error) == ("failed", 3, None, "HTTP 500")
    assert failed.finished_at is not None
    assert autopay_entries(wallet_id) == [] and wallet_balance(wallet_id) == 4 * USD
    assert event_names(wallet_id) == [events.BALANCE_LOW, events.TOPUP_REQUESTED, events.TOPUP_FAILED]
    assert json.loads(Event.get(Event.name == events.TOPUP_FAILED).data)["error"] == "HTTP 500"

    receiver.default = 200
    charge(wallet_id, USD)
    autopay.notify_charged(wallet_id)
    assert autopay.flush(timeout=30)
    second = TopUp.get(TopUp.status == "succeeded")
    assert second.id != failed.id and receiver.calls[-1].headers["idempotency-key"] == second.id
    assert wallet_balance(wallet_id) == 3 * USD + BUNDLE and audit_wallets() == []
    # Still the same low spell (no money came in): no second balance.low.
    assert event_names(wallet_id) == [events.BALANCE_LOW, events.TOPUP_REQUESTED, events.TOPUP_FAILED,
                                      events.TOPUP_REQUESTED, events.TOPUP_SUCCEEDED]


def test_an_unreachable_hook_fails_with_a_short_reason(make, wallet_id, caplog):
    autopay = make(webhook_url=f"http://127.0.0.1:{free_port()}/hook")
    charge(wallet_id, 2 * USD)
    autopay.notify_charged(wallet_id)
    assert autopay.flush(timeout=30)
    topup = TopUp.get()
    assert (topup.status, topup.attempts, topup.error) == ("failed", 3, "connection error (ConnectError)")
    assert wallet_balance(wallet_id) == 4 * USD
    assert SECRET not in caplog.text


def test_a_hook_that_does_not_answer_in_time_is_a_failure(make, receiver, wallet_id):
    receiver.delay = 1.0
    autopay = make(max_attempts=1, post=HttpPost(timeout=0.2))
    charge(wallet_id, 2 * USD)
    autopay.notify_charged(wallet_id)
    assert autopay.flush(timeout=30)
    topup = TopUp.get()
    assert (topup.status, topup.error) == ("failed", "timeout")
    assert wallet_balance(wallet_id) == 4 * USD


def test_signature_and_timestamp(make, receiver, wallet_id):
    autopay = make()
    charge(wallet_id, 2 * USD)
    autopay.notify_charged(wallet_id)
    assert autopay.flush(timeout=30)
    call = receiver.calls[0]
    header, stamp, now = call.headers["x-tollgate-signature"], call.body["timestamp"], time.time()
    assert verify_signature(SECRET, call.raw, header, stamp, now)
    tampered = call.raw.replace(b'"20.00"', b'"2000.00"')
    assert tampered != call.raw and not verify_signature(SECRET, tampered, header, stamp, now)
    assert not verify_signature("another-secret", call.raw, header, stamp, now)
    assert not verify_signature(SECRET, call.raw, header, stamp, stamp + 301)  # a replay, too late
    assert not verify_signature(SECRET, call.raw, header, stamp, stamp - 301)
    assert verify_signature(SECRET, call.raw, header, stamp, stamp - 300)
    assert verify_signature(SECRET, call.raw, header, stamp, stamp + 300)
    for bad in ("", header.removeprefix("sha256="), "sha256=" + "0" * 64, header + "0", "sha256=é"):
        assert not verify_signature(SECRET, call.raw, bad, stamp, now)
    assert not verify_signature("", call.raw, header, stamp, now)
    assert not verify_signature(SECRET, call.raw, header, "not-a-time", now)


def test_the_body_timestamp_comes_from_the_clock_so_a_receiver_refuses_an_old_one(make, receiver, wallet_id):
    autopay = make(clock=lambda: time.time() - 3600)
    charge(wallet_id, 2 * USD)
    autopay.notify_charged(wallet_id)
    assert autopay.flush(timeout=30)
    assert [c.verified for c in receiver.calls] == [False, False, False]
    assert (TopUp.get().status, TopUp.get().error) == ("failed", "HTTP 401")
    assert wallet_balance(wallet_id) == 4 * USD


def test_a_balance_above_the_threshold_does_nothing(make, receiver, wallet_id):
    autopay = make()
    charge(wallet_id, USD // 2)
    autopay.notify_charged(wallet_id)
    charge(wallet_id, USD // 2)  # exactly at the threshold is not below it
    autopay.notify_charged(wallet_id)
    assert autopay.flush(timeout=30)
    assert wallet_balance(wallet_id) == THRESHOLD
    assert receiver.calls == [] and TopUp.select().count() == 0 and event_names(wallet_id) == []


def test_wallets_without_autopay_settings_are_left_alone(make, receiver, ledger):
    account, own = ensure_account()
    bare = Wallet.create(account=account, customer_id="cus-bare")
    Customer.create(account=account, customer_id="cus-bare", wallet=bare, autopay_threshold_nanos=THRESHOLD)
    autopay = make()
    for wallet_id in (own.id, bare.id, "wal_missing"):
        autopay.notify_charged(wallet_id)
    assert autopay.flush(timeout=30)
    assert receiver.calls == [] and TopUp.select().count() == 0 and Event.select().count() == 0


def test_no_webhook_means_no_topup_but_balance_events_once_per_low_spell(receiver, wallet_id):
    autopay = AutoTopUp(AutopaySettings())
    try:
        for _ in range(5):
            charge(wallet_id, USD)  # 6 -> 1, below the threshold from the second charge
            autopay.notify_charged(wallet_id)
            assert autopay.flush(timeout=30)
        assert event_names(wallet_id) == [events.BALANCE_LOW]
        charge(wallet_id, 2 * USD)  # -> -1
        autopay.notify_charged(wallet_id)
        charge(wallet_id, USD)
        autopay.notify_charged(wallet_id)
        assert autopay.flush(timeout=30)
        assert event_names(wallet_id) == [events.BALANCE_LOW, events.BALANCE_DEPLETED]
        credit_wallet(wallet_id, USD)  # money came in, still low: a new spell on the next charge
        charge(wallet_id, 1)
        autopay.notify_charged(wallet_id)
        assert autopay.flush(timeout=30)
        assert event_names(wallet_id) == [events.BALANCE_LOW, events.BALANCE_DEPLETED, events.BALANCE_LOW,
                                          events.BALANCE_DEPLETED]
        assert receiver.calls == [] and TopUp.select().count() == 0 and autopay_entries(wallet_id) == []
        assert wallet_balance(wallet_id) == -USD - 1
    finally:
        assert autopay.close()


def test_a_topup_that_leaves_the_balance_low_does_not_loop_but_the_next_charge_tops_up_again(
        make, receiver, wallet_id):
    autopay = make()
    charge(wallet_id, 36 * USD)  # -> -30
    autopay.notify_charged(wallet_id)
    assert autopay.flush(timeout=30)
    assert len(receiver.calls) == 1 and wallet_balance(wallet_id) == -10 * USD
    assert event_names(wallet_id) == [events.BALANCE_LOW, events.BALANCE_DEPLETED, events.TOPUP_REQUESTED,
                                      events.TOPUP_SUCCEEDED]
    charge(wallet_id, 1)
    autopay.notify_charged(wallet_id)
    assert autopay.flush(timeout=30)
    assert len(receiver.calls) == 2 and wallet_balance(wallet_id) == 10 * USD - 1
    assert len(autopay_entries(wallet_id)) == 2 and audit_wallets() == []
    assert event_names(wallet_id)[4:] == [events.BALANCE_LOW, events.BALANCE_DEPLETED, events.TOPUP_REQUESTED,
                                          events.TOPUP_SUCCEEDED]


def test_a_topup_pending_in_another_process_blocks_a_new_one(make, receiver, wallet_id):
    TopUp.create(wallet=wallet_id, amount_nanos=BUNDLE, status="pending", pending_wallet=wallet_id)
    autopay = make()
    charge(wallet_id, 2 * USD)
    autopay.notify_charged(wallet_id)
    assert autopay.flush(timeout=30)
    assert receiver.calls == [] and TopUp.select().count() == 1
    assert events.TOPUP_REQUESTED not in event_names(wallet_id)


@pytest.mark.parametrize("when", ["on-start", "when-blocking"])
def test_a_stale_pending_topup_from_a_crashed_process_is_abandoned(make, receiver, wallet_id, when):
    def leftover():
        return TopUp.create(wallet=wallet_id, amount_nanos=BUNDLE, status="pending", pending_wallet=wallet_id,
                            attempts=1, created_at=utcnow() - timedelta(minutes=10))

    if when == "on-start":
        stale = leftover()
        autopay = make()
        assert autopay.flush(timeout=30)
        stale = TopUp.get_by_id(stale.id)
        assert (stale.status, stale.pending_wallet, stale.error) == ("failed", None, "abandoned")
        assert event_names(wallet_id) == [events.TOPUP_FAILED]
    else:
        autopay = make()
        assert autopay.flush(timeout=30)
        stale = leftover()
    charge(wallet_id, 2 * USD)
    autopay.notify_charged(wallet_id)
    assert autopay.flush(timeout=30)
    assert TopUp.get_by_id(stale.id).status == "failed"
    fresh = TopUp.get(TopUp.id != stale.id)
    assert fresh.status == "succeeded" and len(receiver.calls) == 1
    assert wallet_balance(wallet_id) == 4 * USD + BUNDLE
    assert event_names(wallet_id) == [events.TOPUP_FAILED, events.BALANCE_LOW, events.TOPUP_REQUESTED,
                                      events.TOPUP_SUCCEEDED]


def test_a_recent_pending_topup_is_not_abandoned(make, receiver, wallet_id):
    recent = TopUp.create(wallet=wallet_id, amount_nanos=BUNDLE, status="pending", pending_wallet=wallet_id,
                          created_at=utcnow() - timedelta(minutes=2))
    autopay = make()
    charge(wallet_id, 2 * USD)
    autopay.notify_charged(wallet_id)
    assert autopay.flush(timeout=30)
    assert TopUp.get_by_id(recent.id).status == "pending" and receiver.calls == []


def test_notify_never_blocks_while_the_hook_is_slow(make, receiver, wallet_id):
    receiver.delay = 1.0
    autopay = make()
    charge(wallet_id, 2 * USD)
    autopay.notify_charged(wallet_id)
    deadline = time.monotonic() + 5
    while not receiver.calls and time.monotonic() < deadline:  # the worker is inside the POST now
        time.sleep(0.01)
    started = time.perf_counter()
    for _ in range(100):
        autopay.notify_charged(wallet_id)
    assert time.perf_counter() - started < 0.1
    assert autopay.flush(timeout=30) and len(receiver.calls) == 1


def test_close_fails_a_topup_waiting_for_a_later_retry(make, receiver, wallet_id):
    autopay = make(retry_base_seconds=60)
    receiver.default = 500
    charge(wallet_id, 2 * USD)
    autopay.notify_charged(wallet_id)
    deadline = time.monotonic() + 10
    while TopUp.select().where(TopUp.attempts == 1).count() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    assert autopay.close(timeout=1)
    assert time.monotonic() - started < 5
    topup = TopUp.get()
    assert (topup.status, topup.pending_wallet, topup.error, topup.attempts) == ("failed", None, "shutdown", 1)
    assert len(receiver.calls) == 1 and events.TOPUP_FAILED in event_names(wallet_id)
    autopay.notify_charged(wallet_id)  # ignored once closed


def test_a_webhook_without_a_secret_is_refused(ledger):
    with pytest.raises(ValueError, match="webhook_secret"):
        AutoTopUp(AutopaySettings(webhook_url="http://127.0.0.1:9/hook"))


def test_record_event_stores_and_logs(ledger, wallet_id, caplog):
    caplog.set_level(logging.INFO, logger="addons.billing.events")
    events.record_event(events.BALANCE_LOW, wallet_id, balance_nanos=1)
    row = Event.get()
    assert (row.name, row.wallet_id, json.loads(row.data)) == ("balance.low", wallet_id, {"balance_nanos": 1})
    assert f"tollgate event balance.low wallet={wallet_id} balance_nanos=1" in caplog.text
    with pytest.raises(ValueError):
        events.record_event("topup.bogus", wallet_id)
