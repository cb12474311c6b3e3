"""Charging a batch of requests inside the ledger writer's transaction.

The fee of a metered request depends on the customer's running total for the meter in the
current cycle, and a customer may not be charged below zero (less any overdraft they are
allowed), so both are decided here, against rows locked for the transaction, rather than on
the event loop where another instance's charges are invisible. The merchant's wallet pays
what the gateway computed (the provider cost, or a bring-your-own-key fee) without a floor:
the provider has already been paid.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from addons.ledger.bulk import bulk_insert, execute, for_update
from addons.ledger.models import LedgerEntry, MeterRow, MeterUsage, utcnow
from addons.ledger.writer import CommitReport, UsageRecord
from pricing import meters

ENTRY_COLUMNS = ("wallet", "amount_nanos", "reason", "request_id", "created_at")


def is_billable(status: int | None, usage_source: str) -> bool:
    """A request is charged if the provider answered it, or if usage was estimated (a cut stream)."""
    return (status is not None and status < 400) or usage_source == "estimated"


def cycle_start(at: datetime) -> datetime:
    """Billing cycles are calendar months in UTC."""
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


class RunningTotals:
    """The batch's meter running totals, locked once per (wallet, meter, cycle) and written back once."""

    def __init__(self, records: list):
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

    def fee(self, record) -> int:
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
    The ledger writer's Charge: the gateway hands it to LedgerWriter."""
    report = CommitReport(request_ids=[r.id for r in records])
    now = utcnow()
    customer_wallets = {r.customer_wallet_id for r in records if r.customer_wallet_id}
    wallet_ids = sorted({r.wallet_id for r in records} | customer_wallets)
    balances = dict(execute('SELECT "id", "balance_nanos" FROM "wallet" WHERE "id" IN %(list)s ORDER BY "id"'
                            + for_update(), wallet_ids))
    overdraft = dict(execute('SELECT "wallet_id", "overdraft_limit_nanos" FROM "customer" WHERE "wallet_id" IN %(list)s',
                             customer_wallets)) if customer_wallets else {}
    totals = RunningTotals(records)
    debits: dict[str, int] = defaultdict(int)
    entries = []

    def debit(wallet_id: str, amount: int, record) -> None:
        debits[wallet_id] += amount
        balances[wallet_id] -= amount
        entries.append((wallet_id, -amount, "usage", record.id, now))

    for record in records:
        if record.charged_nanos:
            debit(record.wallet_id, record.charged_nanos, record)
        if record.customer_wallet_id and record.bill_customer:
            fee = (totals.fee(record) if record.meter_id else 0) + record.customer_byok_fee_nanos
            room = max(0, balances[record.customer_wallet_id] + overdraft.get(record.customer_wallet_id, 0))
            record.fee_nanos = min(fee, room)
            record.fee_uncollected_nanos = fee - record.fee_nanos
            report.customer_fees[record.id] = record.fee_nanos
            if record.fee_nanos:
                debit(record.customer_wallet_id, record.fee_nanos, record)
                report.charged_customer_wallets.add(record.customer_wallet_id)
        if record.token_id:  # a signed token's spend is what its payer was charged
            record.token_spend_nanos = record.fee_nanos if record.bill_customer else record.charged_nanos
            report.token_charges[record.token_id] += record.token_spend_nanos
    totals.write()
    bulk_insert(LedgerEntry, ENTRY_COLUMNS, entries)
    for wallet_id, amount in debits.items():
        execute('UPDATE "wallet" SET "balance_nanos" = "balance_nanos" - %s, "version" = "version" + 1 WHERE "id" = %s',
                amount, wallet_id)
    if debits:
        report.wallets = {wallet_id: (balance, version) for wallet_id, balance, version in execute(
            'SELECT "id", "balance_nanos", "version" FROM "wallet" WHERE "id" IN %(list)s', list(debits))}
    return report
