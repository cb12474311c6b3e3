"""How many usage records a second the ledger writer commits (issue: >= 2,000/s on PostgreSQL).

Run by hand:  .venv/bin/python bench/ledger_throughput.py [--records 20000] [--url postgresql://...]
Each record is a request row plus its merchant debit; every fifth also bills a customer through a
tiered meter (running totals, locked rows), as customer billing does. Writes go through the same
LedgerWriter the proxy uses, batched in one background thread.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg2  # noqa: E402

from addons.billing.charges import apply_charges  # noqa: E402
from addons.ledger.accounts import create_customer, create_key, credit_wallet, ensure_account  # noqa: E402
from addons.ledger.models import MeterRow, open_database, utcnow  # noqa: E402
from addons.ledger.writer import LedgerWriter, UsageRecord  # noqa: E402
from pricing import meters  # noqa: E402


def fresh(url: str) -> str:
    if url.startswith("postgresql://"):
        name = url.rsplit("/", 1)[1]
        conn = psycopg2.connect("dbname=test user=postgres host=127.0.0.1")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            cur.execute(f"CREATE DATABASE {name}")
        conn.close()
    return url


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/tollgate_ledger_bench")
    args = parser.parse_args()
    open_database(fresh(args.url))
    account, merchant = ensure_account()
    credit_wallet(merchant.id, 10**15)
    key, _ = create_key("bench")
    customer = create_customer("default", "bench-customer", balance_nanos=10**15)
    spec = meters.make_meter_spec("bench", "fixed", "tokens_1m", ["0:2.00", "1000000:1.00"])
    meter = MeterRow.create(account=account, slug="bench", rate_type="fixed", unit="tokens_1m",
                            base_cost_payer=spec.base_cost_payer, tiers=meters.tiers_json(spec))
    writer = LedgerWriter(apply_charges)
    started = time.perf_counter()
    for i in range(args.records):
        billed = i % 5 == 0
        writer.submit(UsageRecord(
            id=f"req_{secrets.token_hex(12)}", created_at=utcnow(), account=account.id, wallet_id=merchant.id,
            key=key.id, provider="openai", endpoint="chat.completions", model="gpt-4o-mini", status=200,
            input_tokens=17, output_tokens=9, provider_cost_nanos=7650, charged_nanos=7650, usage_source="reported",
            customer_id="bench-customer" if billed else None, meter_slug="bench" if billed else None,
            customer_wallet_id=customer.wallet_id if billed else None, meter_id=meter.id if billed else None,
            units_micro=26 * 10**6 if billed else 0, bill_customer=billed,
        ))
    assert writer.flush(timeout=600)
    elapsed = time.perf_counter() - started
    writer.close()
    print(f"{args.records} records ({args.records // 5} customer-billed) in {elapsed:.2f} s: "
          f"{args.records / elapsed:,.0f} records/s on {args.url.split(':')[0]}")


if __name__ == "__main__":
    main()
