"""Charging batches inside the ledger writer's transaction, on SQLite and PostgreSQL, with real rows:
merchant debits, customer fees by meter, running totals per monthly cycle, the balance floor and
overdraft, disabled billing, BYOK fees, the commit report, idempotence and hold mirrors."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest

from addons.billing.charges import RequestCharges, apply_charges, cycle_start, request_charges
from addons.billing.plan import BillingPlan
from addons.core.settings import BillingSettings
from addons.ledger.accounts import (
    KeyRecord,
    audit_wallets,
    create_customer,
    create_key,
    credit_wallet,
    ensure_account,
    token_spent,
    wallet_state,
)
from addons.ledger.models import Hold, LedgerEntry, MeterRow, MeterUsage, RequestRow
from addons.ledger.writer import HoldRecord, RequestFees, UsageRecord, write_batch
from pricing.meters import make_meter_spec, tiers_json

MERCHANT_START = 100_000_000_000  # $100
CUSTOMER_START = 1_000_000_000  # $1
T0 = datetime(2025, 3, 10, 12, 0, 0)
CENT = 10_000_000  # $0.01 in nanos
MILLION = 1_000_000  # micro-units per unit


@pytest.fixture
def shop(ledger):
    account, merchant = ensure_account()
    credit_wallet(merchant.id, MERCHANT_START)
    key, _ = create_key("ci")
    return SimpleNamespace(account=account, merchant=merchant.id, key=key.id)


def add_meter(shop, slug, rate_type, unit, tiers=(), percentage=None, payer=None) -> MeterRow:
    spec = make_meter_spec(slug, rate_type, unit, list(tiers), percentage, payer)
    return MeterRow.create(account=shop.account, slug=spec.slug, rate_type=spec.rate_type, unit=spec.unit,
                           percentage=None if spec.percentage is None else str(spec.percentage),
                           base_cost_payer=spec.base_cost_payer, token_basis=spec.token_basis,
                           tiers=tiers_json(spec))


def add_customer(name="cus_1", balance=CUSTOMER_START, overdraft=0) -> str:
    """The customer's wallet id."""
    return create_customer("default", name, balance_nanos=balance, overdraft_limit_nanos=overdraft).wallet_id


def usage(shop, rid, *, at=T0, charged=0, cost=None, customer=None, wallet=None, meter=None, units=0,
          bill=True, byok_fee=0, token=None) -> UsageRecord:
    return UsageRecord(
        id=rid, created_at=at, account=shop.account.id, wallet_id=shop.merchant, key=shop.key, provider="openai",
        endpoint="chat.completions", customer_id=customer, meter_slug=meter.slug if meter else None, token_id=token,
        status=200, provider_cost_nanos=charged if cost is None else cost, charged_nanos=charged,
        customer_wallet_id=wallet, meter_id=meter.id if meter else None, units_micro=units * MILLION,
        bill_customer=bool(customer) and bill, customer_byok_fee_nanos=byok_fee,
    )


def balance(wallet_id: str) -> int:
    return wallet_state(wallet_id)[0]


def fees(*request_ids: str) -> list[tuple[int, int]]:
    """(fee_nanos, fee_uncollected_nanos) per request, as stored."""
    return [(r.fee_nanos, r.fee_uncollected_nanos) for r in (RequestRow.get_by_id(i) for i in request_ids)]


def running_total(wallet: str, meter: MeterRow) -> dict[datetime, int]:
    rows = MeterUsage.select(MeterUsage.cycle_start, MeterUsage.units_micro).where(
        MeterUsage.wallet == wallet, MeterUsage.meter == meter.id)
    return {start: units for start, units in rows.tuples()}


# -- merchant ----------------------------------------------------------------------------------

def test_a_request_without_a_customer_debits_only_the_merchant(shop):
    wallet = add_customer()
    report = write_batch([usage(shop, "req_a", charged=1_234), usage(shop, "req_b", charged=0)], apply_charges)
    assert balance(shop.merchant) == MERCHANT_START - 1_234
    assert balance(wallet) == CUSTOMER_START
    assert fees("req_a", "req_b") == [(0, 0), (0, 0)]
    assert list(report.wallets) == [shop.merchant] and report.charged_customer_wallets == set()
    assert audit_wallets() == []


def test_the_merchant_is_debited_below_zero_the_provider_is_already_paid(ledger):
    account, merchant = ensure_account()
    credit_wallet(merchant.id, 100)
    shop = SimpleNamespace(account=account, merchant=merchant.id, key=None)
    write_batch([usage(shop, "req_a", charged=250)], apply_charges)
    assert balance(merchant.id) == -150  # 100 - 250: no floor for the merchant
    assert audit_wallets() == []


# -- customer fees by meter ----------------------------------------------------------------------

def test_fixed_per_request_fee(shop):
    wallet = add_customer()
    meter = add_meter(shop, "per-req", "fixed", "requests", ["0:0.01"])
    write_batch([usage(shop, f"req_{i}", at=T0 + timedelta(seconds=i), charged=70, customer="cus_1", wallet=wallet,
                       meter=meter, units=1) for i in range(3)], apply_charges)
    assert fees("req_0", "req_1", "req_2") == [(CENT, 0)] * 3
    assert balance(wallet) == CUSTOMER_START - 3 * CENT  # 1.00 - 3 x 0.01
    assert balance(shop.merchant) == MERCHANT_START - 3 * 70  # the merchant still pays the provider
    assert running_total(wallet, meter) == {cycle_start(T0): 3 * MILLION}
    assert audit_wallets() == []


@pytest.mark.parametrize(
    "batches",
    [["a", "b"], ["ab"], ["ba"]],
    ids=["two-batches", "one-batch", "one-batch-out-of-order"],
)
def test_tiered_tokens_carry_the_running_total_and_straddle_a_boundary(shop, batches):
    wallet = add_customer()
    meter = add_meter(shop, "tok", "fixed", "tokens_1m", ["0:1.00", "1000:3.00"])  # USD per million tokens
    made = {"a": usage(shop, "req_a", at=T0, charged=5, customer="cus_1", wallet=wallet, meter=meter, units=600),
            "b": usage(shop, "req_b", at=T0 + timedelta(minutes=1), charged=5, customer="cus_1", wallet=wallet,
                       meter=meter, units=700)}
    for batch in batches:
        write_batch([made[name] for name in batch], apply_charges)
    # a: tokens [0, 600) at $1/M                        = 600 * 1 / 1e6 USD = 600_000 nanos
    # b: tokens [600, 1000) at $1/M + [1000, 1300) at $3/M = (400 + 900) / 1e6 USD = 1_300_000 nanos
    assert fees("req_a", "req_b") == [(600_000, 0), (1_300_000, 0)]
    assert balance(wallet) == CUSTOMER_START - 1_900_000
    assert running_total(wallet, meter) == {cycle_start(T0): 1_300 * MILLION}
    assert audit_wallets() == []


@pytest.mark.parametrize(
    "percentage, payer, cost, fee",
    [
        ("20", None, 5_000_000, 6_000_000),  # customer pays base: 5_000_000 + 20% = 5_000_000 + 1_000_000
        ("20", "merchant", 5_000_000, 1_000_000),  # markup only: 20% of 5_000_000
        ("12.5", None, 7, 8),  # 7 + 0.875 = 7.875 nanos, rounded half-up once
        ("0", None, 3_000, 3_000),  # pass-through of the provider cost
    ],
)
def test_percentage_fee_with_base_cost(shop, percentage, payer, cost, fee):
    wallet = add_customer()
    meter = add_meter(shop, "pct", "percentage", "tokens_1m", [], percentage, payer)
    write_batch([usage(shop, "req_a", charged=cost, customer="cus_1", wallet=wallet, meter=meter, units=500)],
                apply_charges)
    assert fees("req_a") == [(fee, 0)]
    assert balance(wallet) == CUSTOMER_START - fee
    assert balance(shop.merchant) == MERCHANT_START - cost
    assert audit_wallets() == []


@pytest.mark.parametrize("payer, fee", [
    (None, 5_400_000),  # 500 tokens at $2/M = 1_000_000; 10% of 4_000_000 = 400_000; base 4_000_000
    ("merchant", 1_400_000),  # 1_000_000 + 400_000
])
def test_hybrid_fee(shop, payer, fee):
    wallet = add_customer()
    meter = add_meter(shop, "hyb", "hybrid", "tokens_1m", ["0:2.00"], "10", payer)
    write_batch([usage(shop, "req_a", charged=4_000_000, customer="cus_1", wallet=wallet, meter=meter, units=500)],
                apply_charges)
    assert fees("req_a") == [(fee, 0)]
    assert balance(wallet) == CUSTOMER_START - fee
    assert audit_wallets() == []


@pytest.mark.parametrize("together", [True, False], ids=["one-batch", "two-batches"])
def test_the_running_total_resets_in_a_new_monthly_cycle(shop, together):
    wallet = add_customer()
    meter = add_meter(shop, "tok", "fixed", "tokens_1m", ["0:1.00", "1000:3.00"])
    january = usage(shop, "req_jan", at=datetime(2025, 1, 31, 23, 59, 59), customer="cus_1", wallet=wallet,
                    meter=meter, units=900)
    february = usage(shop, "req_feb", at=datetime(2025, 2, 1, 0, 0, 0), customer="cus_1", wallet=wallet,
                     meter=meter, units=900)
    for batch in ([january, february],) if together else ([january], [february]):
        write_batch(batch, apply_charges)
    # each month starts at 0: 900 tokens at $1/M = 900_000 nanos, both times
    # (had the total carried over: 100 at $1/M + 800 at $3/M = 2_500_000)
    assert fees("req_jan", "req_feb") == [(900_000, 0), (900_000, 0)]
    assert running_total(wallet, meter) == {datetime(2025, 1, 1): 900 * MILLION, datetime(2025, 2, 1): 900 * MILLION}
    assert audit_wallets() == []


@pytest.mark.parametrize("at, start", [
    (datetime(2025, 3, 10, 12, 30, 15, 123), datetime(2025, 3, 1)),
    (datetime(2024, 12, 31, 23, 59, 59, 999999), datetime(2024, 12, 1)),
    (datetime(2025, 1, 1), datetime(2025, 1, 1)),
])
def test_cycle_start_is_the_first_of_the_month(at, start):
    assert cycle_start(at) == start


# -- the balance floor ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "start, overdraft, expected_fees, end",
    [
        # 0.003 left, fee 0.01: 0.003 collected, 0.007 not; then nothing left to collect
        (3_000_000, 0, [(3_000_000, 7_000_000), (0, CENT)], 0),
        # exactly enough for one
        (CENT, 0, [(CENT, 0), (0, CENT)], 0),
        # an overdraft of 0.005: room is 0.003 + 0.005 = 0.008, then none
        (3_000_000, 5_000_000, [(8_000_000, 2_000_000), (0, CENT)], -5_000_000),
        # an overdraft of 0.02 covers both fees: 0.003 - 0.02 = -0.017
        (3_000_000, 20_000_000, [(CENT, 0), (CENT, 0)], -17_000_000),
        # an empty balance and no overdraft collects nothing
        (0, 0, [(0, CENT), (0, CENT)], 0),
    ],
)
@pytest.mark.parametrize("together", [True, False], ids=["one-batch", "two-batches"])
def test_a_fee_is_capped_at_the_balance_plus_overdraft(shop, start, overdraft, expected_fees, end, together):
    wallet = add_customer(balance=start, overdraft=overdraft)
    meter = add_meter(shop, "per-req", "fixed", "requests", ["0:0.01"])
    records = [usage(shop, f"req_{i}", at=T0 + timedelta(seconds=i), charged=40, customer="cus_1", wallet=wallet,
                     meter=meter, units=1) for i in range(2)]
    for batch in (records,) if together else ([records[0]], [records[1]]):
        write_batch(batch, apply_charges)
    assert fees("req_0", "req_1") == expected_fees
    assert balance(wallet) == end and end >= -overdraft
    assert balance(shop.merchant) == MERCHANT_START - 80  # the merchant's debit is never capped
    assert audit_wallets() == []


# -- disabled billing and BYOK -------------------------------------------------------------------------

def test_disabled_billing_tracks_the_customer_without_charging_them(shop):
    wallet = add_customer()
    meter = add_meter(shop, "tok", "fixed", "tokens_1m", ["0:1.00"])
    report = write_batch([usage(shop, "req_a", charged=300, customer="cus_1", wallet=wallet, meter=meter,
                                units=1_000, bill=False)], apply_charges)
    assert fees("req_a") == [(0, 0)]
    assert RequestRow.get_by_id("req_a").customer_id == "cus_1"  # still attributed
    assert balance(wallet) == CUSTOMER_START and running_total(wallet, meter) in ({}, {cycle_start(T0): 0})
    assert balance(shop.merchant) == MERCHANT_START - 300
    assert wallet not in report.wallets and report.charged_customer_wallets == set()
    assert audit_wallets() == []


def test_a_customer_byok_fee_is_added_to_the_meter_fee(shop):
    wallet = add_customer()
    meter = add_meter(shop, "per-req", "fixed", "requests", ["0:0.01"])
    write_batch([usage(shop, "req_a", charged=0, cost=9_000, customer="cus_1", wallet=wallet, meter=meter, units=1,
                       byok_fee=2_500)], apply_charges)
    assert fees("req_a") == [(CENT + 2_500, 0)]  # 0.01 per request + the BYOK fee
    assert balance(wallet) == CUSTOMER_START - CENT - 2_500
    assert balance(shop.merchant) == MERCHANT_START  # the customer's own provider key: the merchant pays nothing
    assert audit_wallets() == []


# -- the commit report ---------------------------------------------------------------------------------

def test_the_report_carries_new_balances_and_versions(shop):
    wallet = add_customer()  # opening balance: version 1
    meter = add_meter(shop, "per-req", "fixed", "requests", ["0:0.01"])
    merchant_version = wallet_state(shop.merchant)[1]
    customer_version = wallet_state(wallet)[1]
    first = write_batch([usage(shop, "req_a", charged=500, customer="cus_1", wallet=wallet, meter=meter, units=1),
                         usage(shop, "req_b", charged=200)], apply_charges)
    assert first.wallets == {shop.merchant: (MERCHANT_START - 700, merchant_version + 1),  # one move per batch
                             wallet: (CUSTOMER_START - CENT, customer_version + 1)}
    assert sorted(first.request_ids) == ["req_a", "req_b"] and first.charged_customer_wallets == {wallet}
    second = write_batch([usage(shop, "req_c", charged=100)], apply_charges)
    assert second.wallets == {shop.merchant: (MERCHANT_START - 800, merchant_version + 2)}
    assert audit_wallets() == []


@pytest.mark.parametrize(
    "customer, bill, start, expected",
    [
        (False, True, CUSTOMER_START, 700),  # no customer: the merchant's debit
        (True, True, CUSTOMER_START, CENT),  # a billed customer: their fee, not the merchant's debit
        (True, True, 4_000_000, 4_000_000),  # only the collected part of a capped fee
        (True, False, CUSTOMER_START, 700),  # billing disabled: the merchant pays, so it is the merchant's debit
    ],
    ids=["merchant", "customer", "customer-capped", "customer-billing-disabled"],
)
def test_token_charges_are_the_payers_and_agree_with_token_spent(shop, customer, bill, start, expected):
    wallet = add_customer(balance=start)
    meter = add_meter(shop, "per-req", "fixed", "requests", ["0:0.01"])
    record = usage(shop, "req_a", charged=700, customer="cus_1" if customer else None,
                   wallet=wallet if customer else None, meter=meter, units=1, bill=bill, token="tok_1")
    report = write_batch([record, usage(shop, "req_other", charged=999)], apply_charges)  # no token: counts nowhere
    assert dict(report.token_charges) == {"tok_1": expected}
    assert token_spent("tok_1") == expected
    assert token_spent("tok_unknown") == 0
    assert audit_wallets() == []


def test_token_charges_add_up_over_requests(shop):
    wallet = add_customer()
    meter = add_meter(shop, "per-req", "fixed", "requests", ["0:0.01"])
    report = write_batch([
        usage(shop, "req_a", charged=700, token="tok_1"),
        usage(shop, "req_b", at=T0 + timedelta(seconds=1), charged=700, customer="cus_1", wallet=wallet,
              meter=meter, units=1, token="tok_1"),
    ], apply_charges)
    assert dict(report.token_charges) == {"tok_1": 700 + CENT}
    assert token_spent("tok_1") == 700 + CENT


# -- the amounts, each decided by one function ----------------------------------------------------------

SETTINGS = BillingSettings(byok_fee_percent=Decimal(10), byok_fee_per_request_nanos=1_000)


@pytest.mark.parametrize(
    "byok, bill, billable, expected",
    [
        (False, False, True, RequestCharges(merchant_nanos=9_000)),  # managed key: the provider cost
        (False, True, True, RequestCharges(merchant_nanos=9_000)),  # a billed customer's fee comes at commit
        (True, False, True, RequestCharges(merchant_nanos=1_900)),  # BYOK: 10% of the cost + the per-request part
        (True, True, True, RequestCharges(customer_byok_fee_nanos=1_900)),  # ... the billed customer's, then
        (False, False, False, RequestCharges()),  # not billable: nothing
        (True, True, False, RequestCharges()),
    ],
    ids=["managed", "managed-customer", "byok", "byok-customer", "unbillable", "unbillable-byok"],
)
def test_request_charges(byok, bill, billable, expected):
    plan = BillingPlan(KeyRecord("key_1", "acct_1", "wal_1", False), bill_customer=bill,
                       provider_key="sk-own" if byok else None)
    assert request_charges(plan, 9_000, billable, SETTINGS) == expected


def test_charging_returns_the_fees_and_leaves_the_records_as_they_are(shop):
    wallet = add_customer(balance=4_000_000)
    meter = add_meter(shop, "per-req", "fixed", "requests", ["0:0.01"])
    batch = [usage(shop, "req_a", charged=700, customer="cus_1", wallet=wallet, meter=meter, units=1, token="tok_1"),
             usage(shop, "req_b", charged=200)]
    before = [replace(r) for r in batch]
    report = write_batch(batch, apply_charges)
    assert batch == before
    assert report.fees == {"req_a": RequestFees(4_000_000, CENT - 4_000_000, 4_000_000)}  # req_b: no fees
    assert report.customer_fees == {"req_a": 4_000_000}
    assert fees("req_a", "req_b") == [(4_000_000, CENT - 4_000_000), (0, 0)]
    assert RequestRow.get_by_id("req_a").token_spend_nanos == 4_000_000


# -- idempotence -----------------------------------------------------------------------------------------

def test_resubmitting_a_batch_is_a_no_op(shop):
    wallet = add_customer()
    meter = add_meter(shop, "tok", "fixed", "tokens_1m", ["0:1.00", "1000:3.00"])

    def batch():
        return [usage(shop, "req_a", charged=300, customer="cus_1", wallet=wallet, meter=meter, units=800,
                      token="tok_1"),
                usage(shop, "req_b", charged=200)]

    write_batch(batch(), apply_charges)
    states = (wallet_state(shop.merchant), wallet_state(wallet), running_total(wallet, meter))
    entries = LedgerEntry.select().count()
    again = write_batch(batch(), apply_charges)
    assert (wallet_state(shop.merchant), wallet_state(wallet), running_total(wallet, meter)) == states
    assert LedgerEntry.select().count() == entries and RequestRow.select().count() == 2
    assert again.wallets == {} and dict(again.token_charges) == {} and again.charged_customer_wallets == set()
    assert sorted(again.request_ids) == ["req_a", "req_b"]  # still reported, so the proxy releases their holds
    assert fees("req_a") == [(800_000, 0)]  # 800 tokens at $1/M, charged once
    assert audit_wallets() == []


# -- hold mirrors ---------------------------------------------------------------------------------------

def test_a_hold_record_is_mirrored_and_its_request_removes_it(shop):
    wallet = add_customer()
    meter = add_meter(shop, "per-req", "fixed", "requests", ["0:0.01"])
    expires = T0 + timedelta(minutes=10)
    report = write_batch([HoldRecord("req_a", wallet, 25_000_000, expires), HoldRecord("req_b", wallet, 5, expires)],
                         apply_charges)
    assert report.request_ids == [] and report.wallets == {}
    write_batch([HoldRecord("req_a", wallet, 25_000_000, expires)], apply_charges)  # mirrored twice: still one row
    assert sorted(Hold.select(Hold.request_id, Hold.wallet, Hold.amount_nanos).tuples()) == [
        ("req_a", wallet, 25_000_000), ("req_b", wallet, 5)]
    assert balance(wallet) == CUSTOMER_START  # a hold is not a charge
    write_batch([usage(shop, "req_a", charged=10, customer="cus_1", wallet=wallet, meter=meter, units=1)],
                apply_charges)
    assert [h.request_id for h in Hold.select()] == ["req_b"]
    assert audit_wallets() == []


def test_a_top_up_adds_to_its_requests_mirrored_hold_and_goes_with_it(shop):
    """A Realtime session's next response held more as the client spoke (Cashier.top_up): its row shows the sum and
    the later expiry; once the request is charged the row goes, and a top-up arriving after that adds no row."""
    wallet = add_customer()
    meter = add_meter(shop, "per-req", "fixed", "requests", ["0:0.01"])
    first, later = T0 + timedelta(minutes=10), T0 + timedelta(minutes=12)
    write_batch([HoldRecord("req_a", wallet, CENT, first), HoldRecord("req_a", wallet, 3 * CENT, later, added=True)],
                apply_charges)
    write_batch([HoldRecord("req_a", wallet, 2 * CENT, later, added=True)], apply_charges)
    [row] = Hold.select()
    assert (row.request_id, row.amount_nanos, row.expires_at) == ("req_a", 6 * CENT, later)
    write_batch([usage(shop, "req_a", charged=10, customer="cus_1", wallet=wallet, meter=meter, units=1)],
                apply_charges)
    write_batch([HoldRecord("req_a", wallet, CENT, later, added=True)], apply_charges)  # too late: nothing to add to
    assert Hold.select().count() == 0 and audit_wallets() == []


def test_a_customer_request_that_is_not_billed_still_removes_its_hold(shop):
    """A billed customer's request the provider refused is not charged (bill_customer is False on its record), but
    it was held at admission: its row goes all the same. A request of no customer has no hold row to look for."""
    wallet = add_customer()
    expires = T0 + timedelta(minutes=10)
    write_batch([HoldRecord("req_refused", wallet, CENT, expires), HoldRecord("req_other", wallet, CENT, expires)],
                apply_charges)
    write_batch([usage(shop, "req_refused", customer="cus_1", wallet=wallet, bill=False), usage(shop, "req_plain")],
                apply_charges)
    assert [h.request_id for h in Hold.select()] == ["req_other"]
    assert balance(wallet) == CUSTOMER_START and audit_wallets() == []


def test_a_hold_and_its_request_in_one_batch_leave_no_hold(shop):
    wallet = add_customer()
    meter = add_meter(shop, "per-req", "fixed", "requests", ["0:0.01"])
    write_batch([HoldRecord("req_a", wallet, CENT, T0 + timedelta(minutes=10)),
                 usage(shop, "req_a", charged=10, customer="cus_1", wallet=wallet, meter=meter, units=1)],
                apply_charges)
    assert Hold.select().count() == 0 and fees("req_a") == [(CENT, 0)]
    assert audit_wallets() == []
