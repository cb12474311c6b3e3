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
from dataclasses import dataclass, field
from datetime import datetime

from peewee import PostgresqlDatabase

from addons.ledger.models import Customer, LedgerEntry, MeterRow, MeterUsage, Wallet, database
from pricing import meters


def cycle_start(at: datetime) -> datetime:
    """Billing cycles are calendar months in UTC."""
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@dataclass(slots=True)
class CommitReport:
    """What a committed batch changed, for the proxy's holds and the auto top-up."""

    request_ids: list[str] = field(default_factory=list)
    wallets: dict[str, tuple[int, int]] = field(default_factory=dict)  # wallet -> (balance, version)
    token_charges: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    charged_customer_wallets: set[str] = field(default_factory=set)


def _locked(query):
    return query.for_update() if isinstance(database.obj, PostgresqlDatabase) else query


def _meter_fee(record, specs: dict) -> int:
    if record.meter_id not in specs:
        specs[record.meter_id] = meters.spec_from_row(MeterRow.get_by_id(record.meter_id))
    spec = specs[record.meter_id]
    key = dict(wallet=record.customer_wallet_id, meter=record.meter_id, cycle_start=cycle_start(record.created_at))
    MeterUsage.insert(**key, units_micro=0).on_conflict_ignore().execute()
    usage = _locked(MeterUsage.select().where(*(getattr(MeterUsage, k) == v for k, v in key.items()))).get()
    before = meters.micro_to_units(usage.units_micro)
    fee = meters.fee(spec, units=meters.micro_to_units(record.units_micro), running_before=before,
                     provider_cost_nanos=record.provider_cost_nanos)
    MeterUsage.update(units_micro=MeterUsage.units_micro + record.units_micro).where(
        MeterUsage.id == usage.id).execute()
    return fee


def apply_charges(records: list) -> CommitReport:
    """Debit merchants and customers for `records` (not yet in the ledger); call inside a transaction."""
    report = CommitReport(request_ids=[r.id for r in records])
    customer_wallets = {r.customer_wallet_id for r in records if r.customer_wallet_id}
    wallet_ids = sorted({r.wallet_id for r in records} | customer_wallets)
    balances = dict(
        _locked(Wallet.select(Wallet.id, Wallet.balance_nanos).where(Wallet.id.in_(wallet_ids)).order_by(Wallet.id))
        .tuples()
    )
    overdraft = dict(
        Customer.select(Customer.wallet, Customer.overdraft_limit_nanos)
        .where(Customer.wallet.in_(list(customer_wallets)))
        .tuples()
    )
    specs: dict = {}
    debits: dict[str, int] = defaultdict(int)
    entries = []

    def debit(wallet_id: str, amount: int, record) -> None:
        debits[wallet_id] += amount
        balances[wallet_id] -= amount
        entries.append(dict(wallet=wallet_id, amount_nanos=-amount, reason="usage", request_id=record.id))

    for record in records:
        if record.charged_nanos:
            debit(record.wallet_id, record.charged_nanos, record)
        if record.customer_wallet_id and record.bill_customer:
            fee = (_meter_fee(record, specs) if record.meter_id else 0) + record.customer_byok_fee_nanos
            room = max(0, balances[record.customer_wallet_id] + overdraft.get(record.customer_wallet_id, 0))
            record.fee_nanos = min(fee, room)
            record.fee_uncollected_nanos = fee - record.fee_nanos
            if record.fee_nanos:
                debit(record.customer_wallet_id, record.fee_nanos, record)
                report.charged_customer_wallets.add(record.customer_wallet_id)
        if record.token_id:  # a signed token's spend is what its payer was charged
            record.token_spend_nanos = record.fee_nanos if record.bill_customer else record.charged_nanos
            report.token_charges[record.token_id] += record.token_spend_nanos
    if entries:
        LedgerEntry.insert_many(entries).execute()
    for wallet_id, amount in debits.items():
        Wallet.update(balance_nanos=Wallet.balance_nanos - amount, version=Wallet.version + 1).where(
            Wallet.id == wallet_id
        ).execute()
    report.wallets = {
        wallet_id: (balance, version)
        for wallet_id, balance, version in Wallet.select(Wallet.id, Wallet.balance_nanos, Wallet.version)
        .where(Wallet.id.in_(list(debits)))
        .tuples()
    }
    return report

