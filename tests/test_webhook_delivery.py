"""Billing events to the webhooks registered through the API, against real local receivers, on SQLite and PostgreSQL:
each signed with its own secret beside the settings-file payment hook (unchanged), registered and deleted while
the gateway runs, one failing or slow receiver holding up neither the others nor the top-up."""

from __future__ import annotations

import time

import pytest

from addons.billing import events
from addons.billing.autopay import AutoTopUp, sign, verify_signature
from addons.core import sealed_secrets
from addons.core.settings import AutopaySettings
from addons.ledger.accounts import audit_wallets, credit_wallet, ensure_account, wallet_balance
from addons.ledger.models import Customer, Event, TopUp, Wallet
from addons.services import webhooks
from tests.test_autopay import BUNDLE, SECRET, START, THRESHOLD, USD, Receiver, charge


@pytest.fixture(autouse=True)
def sealed_key(tmp_path, monkeypatch):
    monkeypatch.delenv(sealed_secrets.KEY_ENV, raising=False)
    monkeypatch.setattr(sealed_secrets, "KEY_FILE", tmp_path / "sealed-secrets.key")


@pytest.fixture
def receivers():
    """Local receivers, closed after; `register` makes one a webhook of an account and gives it that secret."""
    made = []

    def receiver(secret: str = SECRET) -> Receiver:
        made.append(Receiver(secret))
        return made[-1]

    yield receiver
    for r in made:
        r.close()


def register(receiver: Receiver, account: str = "default", name: str = "hook") -> str:
    created = webhooks.create(account, name, receiver.url)
    receiver.secret = created.secret
    return created.webhook.id


@pytest.fixture
def wallet_id(ledger) -> str:
    """A customer wallet of the default account holding START, with autopay of BUNDLE below THRESHOLD."""
    account, _ = ensure_account()
    wallet = Wallet.create(account=account, customer_id="cus-1")
    Customer.create(account=account, customer_id="cus-1", wallet=wallet, autopay_threshold_nanos=THRESHOLD,
                    autopay_amount_nanos=BUNDLE)
    credit_wallet(wallet.id, START)
    ensure_account("shop")
    return wallet.id


@pytest.fixture
def autopay(ledger):
    """An AutoTopUp (one proxy process) with its event delivery; `start(payhook)` against a payment hook or none."""
    made = []

    def start(payhook: Receiver | None = None, **settings) -> AutoTopUp:
        hook = dict(webhook_url=payhook.url, webhook_secret=SECRET) if payhook else {}
        made.append(AutoTopUp(AutopaySettings(**{"max_attempts": 3, "retry_base_seconds": 0.01, **hook,
                                                 **settings})))
        return made[-1]

    yield start
    for instance in made:
        assert instance.close(timeout=10)


def low_charge(instance: AutoTopUp, wallet_id: str) -> None:
    charge(wallet_id, 2 * USD)  # 6 -> 4, below the threshold of 5
    instance.notify_charged(wallet_id)
    assert instance.flush(timeout=30)


def types(receiver: Receiver) -> list[str]:
    return [call.body["type"] for call in receiver.calls]


def test_every_webhook_and_the_payment_hook_get_the_events_each_signed_with_its_own_secret(
        receivers, autopay, wallet_id):
    payhook, first, second = receivers(), receivers(), receivers()
    register(first, name="first")
    register(second, name="second")
    low_charge(autopay(payhook), wallet_id)

    topup = TopUp.get()
    assert topup.status == "succeeded" and wallet_balance(wallet_id) == 4 * USD + BUNDLE
    # the settings-file hook: the payment request alone, exactly as before
    [paid] = payhook.calls
    assert paid.verified and paid.body == {
        "id": topup.id, "type": "topup.requested", "customer_id": "cus-1", "account": "default", "amount": "20.00",
        "currency": "USD", "timestamp": paid.body["timestamp"], "attempt": 1}
    recorded = {e.name: e.id for e in Event.select()}
    for receiver in (first, second):
        assert types(receiver) == [events.BALANCE_LOW, events.TOPUP_REQUESTED, events.TOPUP_SUCCEEDED]
        for call in receiver.calls:
            assert call.verified  # under this receiver's own secret, the timestamp fresh
            assert call.headers["x-tollgate-signature"] == sign(receiver.secret, call.raw)
            assert call.headers["x-tollgate-timestamp"] == str(call.body["timestamp"])
            assert call.headers["idempotency-key"] == call.body["id"] == f"evt_{recorded[call.body['type']]}"
            assert call.headers["content-type"] == "application/json"
        low, requested, succeeded = (call.body for call in receiver.calls)
        assert low == {"id": low["id"], "type": "balance.low", "customer_id": "cus-1", "account": "default",
                       "balance": "4.00", "threshold": "5.00", "currency": "USD", "timestamp": low["timestamp"]}
        assert (requested["topup_id"], requested["amount"], requested["balance"]) == (topup.id, "20.00", "4.00")
        assert (succeeded["topup_id"], succeeded["amount"], succeeded["balance"]) == (topup.id, "20.00", "24.00")
    # each is signed for its own receiver only
    call = first.calls[0]
    assert not verify_signature(second.secret, call.raw, call.headers["x-tollgate-signature"],
                                call.body["timestamp"], time.time())
    assert first.secret != second.secret != SECRET


def test_webhooks_registered_after_start_get_the_next_event_deleted_ones_and_other_accounts_nothing(
        receivers, autopay, wallet_id):
    instance = autopay()  # no payment hook: balance events only
    assert instance.flush(timeout=30)
    deleted, late, elsewhere = receivers(), receivers(), receivers()
    webhooks.delete("default", register(deleted))
    register(late)  # after the gateway's delivery started
    register(elsewhere, account="shop")
    charge(wallet_id, 6 * USD)  # 6 -> 0: low and depleted
    instance.notify_charged(wallet_id)
    assert instance.flush(timeout=30)
    assert types(late) == [events.BALANCE_LOW, events.BALANCE_DEPLETED]
    assert all(call.verified for call in late.calls)
    assert deleted.calls == [] and elsewhere.calls == []


def test_a_failing_webhook_is_retried_under_one_key_and_stops_neither_the_others_nor_the_topup(
        receivers, autopay, wallet_id):
    payhook, failing, working = receivers(), receivers(), receivers()
    register(failing, name="failing")
    register(working, name="working")
    failing.default = 500
    low_charge(autopay(payhook), wallet_id)

    assert TopUp.get().status == "succeeded" and wallet_balance(wallet_id) == 4 * USD + BUNDLE
    assert audit_wallets() == []
    assert types(working) == [events.BALANCE_LOW, events.TOPUP_REQUESTED, events.TOPUP_SUCCEEDED]
    assert len(failing.calls) == 3 * 3  # every event, max_attempts times
    by_key = {}
    for call in failing.calls:
        by_key.setdefault(call.headers["idempotency-key"], []).append(call.body["timestamp"])
    assert sorted(by_key) == sorted(call.headers["idempotency-key"] for call in working.calls)
    assert all(len(stamps) == 3 for stamps in by_key.values())


def test_a_slow_webhook_holds_up_only_itself(receivers, autopay, wallet_id):
    payhook, slow, quick = receivers(), receivers(), receivers()
    register(slow, name="slow")
    register(quick, name="quick")
    slow.delay = 3.0
    instance = autopay(payhook)
    charge(wallet_id, 2 * USD)
    instance.notify_charged(wallet_id)
    deadline = time.monotonic() + 2.5
    while len(quick.calls) < 3 and time.monotonic() < deadline:  # topup.succeeded: sent once credited
        time.sleep(0.01)
    # the quick one has all three events, and the top-up is credited, while the slow one is still on its first
    assert types(quick) == [events.BALANCE_LOW, events.TOPUP_REQUESTED, events.TOPUP_SUCCEEDED]
    assert len(slow.calls) == 1 and wallet_balance(wallet_id) == 4 * USD + BUNDLE
    slow.delay = 0  # the first answer still takes its 3 s
    assert instance.flush(timeout=30)
    assert types(slow) == types(quick)  # one at a time, in order


def test_a_webhook_deleted_while_failing_gets_no_more_retries(receivers, autopay, wallet_id):
    failing = receivers()
    webhook_id = register(failing)
    failing.default = 500
    instance = autopay(max_attempts=5, retry_base_seconds=0.5)
    charge(wallet_id, 2 * USD)
    instance.notify_charged(wallet_id)
    deadline = time.monotonic() + 10
    while not failing.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    webhooks.delete("default", webhook_id)
    assert instance.flush(timeout=30)
    assert types(failing) == [events.BALANCE_LOW]


def test_close_delivers_what_was_recorded(receivers, autopay, wallet_id):
    hook = receivers()
    register(hook)
    instance = autopay()
    charge(wallet_id, 2 * USD)
    instance.notify_charged(wallet_id)
    assert instance.close(timeout=10)
    assert types(hook) == [events.BALANCE_LOW]


def test_close_makes_the_retries_due_within_its_timeout(receivers, autopay, wallet_id):
    flaky = receivers()
    register(flaky)
    flaky.statuses = [500]
    instance = autopay(retry_base_seconds=0.3)
    charge(wallet_id, 2 * USD)
    instance.notify_charged(wallet_id)
    assert instance.close(timeout=10)
    assert types(flaky) == [events.BALANCE_LOW, events.BALANCE_LOW] and flaky.calls[1].verified
