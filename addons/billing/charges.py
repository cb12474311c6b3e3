"""What a request is charged, each amount decided by one function here, and the charging of a batch.

- request_charges, when the request ends (on the event loop): the merchant's debit (the provider
  cost, or a bring-your-own-key fee) and a billed customer's BYOK fee. They depend only on the
  request's plan and cost, and the proxy holds the merchant's debit at once.
- request_fees, at commit (in the ledger writer's transaction): the customer's fee, and what counts
  against a signed token's cap. The fee of a metered request depends on the customer's running total
  for the meter in the current cycle, and a customer may not be charged below zero (less any
  overdraft they are allowed), so both are decided against rows locked for the transaction, rather
  than on the event loop where another instance's charges are invisible.

apply_charges moves the money of a batch and returns the fees; it never sets them on the records.
The merchant's wallet pays without a floor: the provider has already been paid.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from addons.billing.plan import BillingPlan, byok_fee
from addons.core.settings import BillingSettings
from addons.ledger.bulk import bulk_insert, execute, for_update
from addons.ledger.models import LedgerEntry, MeterRow, MeterUsage, utcnow
from addons.ledger.writer import NO_FEES, CommitReport, RequestFees, UsageRecord
from pricing import meters

ENTRY_COLUMNS = ("wallet", "amount_nanos", "reason", "request_id", "created_at")


def is_billable(status: int | None, usage_source: str) -> bool:
    """A request is charged if the provider answered it, or if usage was estimated (a cut stream)."""
    return (status is not None and status < 400) or usage_source == "estimated"


@dataclass(frozen=True, slots=True)
class RequestCharges:
    """What a finished request is charged before commit: the record's charged_nanos and customer_byok_fee_nanos."""

    merchant_nanos: int = 0  # debited from the merchant's wallet
    customer_byok_fee_nanos: int = 0  # added to a billed customer's fee at commit


def request_charges(plan: BillingPlan, cost_nanos: int, billable: bool, settings: BillingSettings) -> RequestCharges:
    """Without a provider key the merchant pays the provider cost; with one, whoever pays is charged the BYOK fee."""
    if not billable:
        return RequestCharges()
    if not plan.byok:
        return RequestCharges(merchant_nanos=cost_nanos)
    fee = byok_fee(cost_nanos, settings.byok_fee_percent, settings.byok_fee_per_request_nanos)
    return RequestCharges(customer_byok_fee_nanos=fee) if plan.bill_customer else RequestCharges(merchant_nanos=fee)


def request_fees(record: UsageRecord, meter_fee: int, room: int) -> RequestFees:
    """A request's fees at commit: its customer's fee (`meter_fee` plus the BYOK fee) as far as the `room` left
    in the balance covers it, and the token spend, which is what the token's payer was charged."""
    fee_nanos = uncollected = 0
    if record.customer_wallet_id and record.bill_customer:
        fee = meter_fee + record.customer_byok_fee_nanos
        fee_nanos = min(fee, room)
        uncollected = fee - fee_nanos
    spend = (fee_nanos if record.bill_customer else record.charged_nanos) if record.token_id else 0
    return RequestFees(fee_nanos, uncollected, spend)


def cycle_start(at: datetime) -> datetime:
    """Billing cycles are calendar months in UTC."""
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


class RunningTotals:
    """The batch's meter running totals, locked once per (wallet, meter, cycle) and written back once."""

    def __init__(self, records: list[UsageRecord]):
        metered = [r for r in records if r.meter_id and r.customer_wallet_id and r.bill_customer]
        keys = {(r.customer_wallet_id, r.meter_id, cycle_start(r.created_at)) for r in metered}
        self.units: dict[tuple, int] = {}
        self.ids: dict[tuple, int] = {}
        self.before: dict[tuple, int] = {}
        self.specs: dict[str, meters.MeterSpec] = {}
        if not keys:
            return
        self.specs = {
            row.id: meters.spec_from_row(row)
            for row in MeterRow.select().where(MeterRow.id.in_(list({r.meter_id for r in metered})))
        }
        bulk_insert(MeterUsage, ("wallet", "meter", "cycle_start", "units_micro"),
                    [(w, m, c, 0) for w, m, c in sorted(keys)], ignore_duplicates=True)
        rows = execute('SELECT "id", "wallet_id", "meter_id", "cycle_start", "units_micro" FROM "meter_usage" '
                       'WHERE "wallet_id" IN %(list)s ORDER BY "id"' + for_update(), {w for w, _, _ in keys})
        for row_id, wallet_id, meter_id, cycle, units in rows:
            key = (wallet_id, meter_id, cycle if isinstance(cycle, datetime) else datetime.fromisoformat(cycle))
            if key in keys:
                self.ids[key], self.units[key], self.before[key] = row_id, units, units

    def fee(self, record: UsageRecord) -> int:
        key = (record.customer_wallet_id, record.meter_id, cycle_start(record.created_at))
        fee = meters.fee(self.specs[record.meter_id], units=meters.micro_to_units(record.units_micro),
                         running_before=meters.micro_to_units(self.units[key]),
                         provider_cost_nanos=record.provider_cost_nanos)
        self.units[key] += record.units_micro
        return fee

    def write(self) -> None:
        for key, units in self.units.items():
            if units != self.before[key]:
                execute('UPDATE "meter_usage" SET "units_micro" = %s WHERE "id" = %s', units, self.ids[key])


def apply_charges(records: list[UsageRecord]) -> CommitReport:
    """Debit merchants and customers for `records` (not yet in the ledger); call inside a transaction.
    The ledger writer's Charge: the gateway hands it to LedgerWriter. Each request's fees are in the
    report, for the writer to put in its row."""
    report = CommitReport(request_ids=[r.id for r in records])
    now = utcnow()
    customer_wallets = {r.customer_wallet_id for r in records if r.customer_wallet_id}
    # A customer's fee is capped by its balance, so with customers every wallet of the batch is read and locked
    # first, in id order. Without one nothing is read: each debit below locks its merchant's wallet, in the same
    # order, so concurrent writers never wait on each other in a circle.
    balances: dict[str, int] = defaultdict(int)
    overdraft: dict[str, int] = {}
    if customer_wallets:
        balances.update(execute('SELECT "id", "balance_nanos" FROM "wallet" WHERE "id" IN %(list)s ORDER BY "id"'
                                + for_update(), sorted({r.wallet_id for r in records} | customer_wallets)))
        overdraft = dict(execute('SELECT "wallet_id", "overdraft_limit_nanos" FROM "customer" '
                                 'WHERE "wallet_id" IN %(list)s', customer_wallets))
    totals = RunningTotals(records)
    debits: dict[str, int] = defaultdict(int)
    entries = []

    def debit(wallet_id: str, amount: int, record: UsageRecord) -> None:
        debits[wallet_id] += amount
        balances[wallet_id] -= amount
        entries.append((wallet_id, -amount, "usage", record.id, now))

    for record in records:
        if record.charged_nanos:
            debit(record.wallet_id, record.charged_nanos, record)
        customer = record.customer_wallet_id if record.bill_customer else None
        meter_fee = totals.fee(record) if customer and record.meter_id else 0
        room = max(0, balances[customer] + overdraft.get(customer, 0)) if customer else 0
        fees = request_fees(record, meter_fee, room)
        if customer:
            report.customer_fees[record.id] = fees.fee_nanos
            if fees.fee_nanos:
                debit(customer, fees.fee_nanos, record)
                report.charged_customer_wallets.add(customer)
        if fees != NO_FEES:
            report.fees[record.id] = fees
        if record.token_id:  # a signed token's spend is what its payer was charged
            report.token_charges[record.token_id] += fees.token_spend_nanos
    totals.write()
    bulk_insert(LedgerEntry, ENTRY_COLUMNS, entries)
    for wallet_id in sorted(debits):
        for balance, version in execute('UPDATE "wallet" SET "balance_nanos" = "balance_nanos" - %s, '
                                        '"version" = "version" + 1 WHERE "id" = %s RETURNING "balance_nanos", "version"',
                                        debits[wallet_id], wallet_id):
            report.wallets[wallet_id] = (balance, version)
    return report
