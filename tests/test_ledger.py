import json
import logging
import threading
import time
from dataclasses import fields

import pytest

from addons.billing.charges import apply_charges
from addons.core.secret_formats import hash_secret
from addons.ledger.accounts import (
    KeyRecord,
    audit_wallets,
    create_key,
    credit_wallet,
    ensure_account,
    find_key,
    revoke_key,
    wallet_balance,
)
from addons.ledger.bulk import on_postgres
from addons.ledger.models import LedgerEntry, RequestRow, Wallet, database, open_database, utcnow
from addons.ledger.writer import LedgerWriter, RequestFees, UsageRecord, write_batch

START = 10_000_000


@pytest.fixture
def wallet(ledger) -> Wallet:
    _, wallet = ensure_account()
    credit_wallet(wallet.id, START)
    return wallet


def record(wallet: Wallet, request_id: str, charged: int) -> UsageRecord:
    return UsageRecord(id=request_id, created_at=utcnow(), account=wallet.account_id, wallet_id=wallet.id,
                       key=None, provider="openai", endpoint="chat.completions", charged_nanos=charged,
                       provider_cost_nanos=charged, metadata={"team": "a"})


def usage_entries() -> list[tuple[str, int]]:
    query = LedgerEntry.select(LedgerEntry.request_id, LedgerEntry.amount_nanos).where(LedgerEntry.reason == "usage")
    return sorted(query.tuples())


def test_write_batch_debits_exactly_the_charges(wallet):
    write_batch([record(wallet, "req_a", 300), record(wallet, "req_b", 1_234_567), record(wallet, "req_free", 0)],
                apply_charges)
    assert RequestRow.select().count() == 3
    assert usage_entries() == [("req_a", -300), ("req_b", -1_234_567)]
    assert wallet_balance(wallet.id) == START - 300 - 1_234_567


@pytest.mark.parametrize(
    "again",
    [["req_a", "req_b"], ["req_b"], ["req_a", "req_c"]],
    ids=["all-again", "some-again", "again-with-a-new-one"],
)
def test_write_batch_is_idempotent(wallet, again):
    write_batch([record(wallet, "req_a", 300), record(wallet, "req_b", 200)], apply_charges)
    write_batch([record(wallet, request_id, 999) for request_id in again], apply_charges)
    new = 999 if "req_c" in again else 0
    assert wallet_balance(wallet.id) == START - 500 - new
    assert len(usage_entries()) == 2 + bool(new)
    assert RequestRow.get_by_id("req_a").charged_nanos == 300  # the first write stands


def test_a_usage_record_has_a_field_per_request_column_but_the_fees_billing_decides_at_commit():
    columns = {column.name for column in RequestRow._meta.sorted_fields}
    record_fields = {f.name for f in fields(UsageRecord)}
    assert columns - record_fields == {f.name for f in fields(RequestFees)}
    assert not record_fields & {f.name for f in fields(RequestFees)}


def test_write_batch_tolerates_a_record_twice_in_one_batch(wallet):
    write_batch([record(wallet, "req_a", 300), record(wallet, "req_a", 300)], apply_charges)
    assert wallet_balance(wallet.id) == START - 300 and usage_entries() == [("req_a", -300)]


@pytest.mark.parametrize("model", ["gpt-4o-mini", "m" * 256, "m" * 5000])
def test_write_batch_stores_any_caller_supplied_model_name(wallet, model):
    """The model name comes from the caller's request body: it must not make a batch unwritable."""
    usage = record(wallet, "req_a", 300)
    usage.model = model
    write_batch([usage], apply_charges)
    assert RequestRow.select().count() == 1 and wallet_balance(wallet.id) == START - 300


def test_audit_wallets(wallet):
    write_batch([record(wallet, "req_a", 300)], apply_charges)
    assert audit_wallets() == []
    Wallet.update(balance_nanos=Wallet.balance_nanos + 1).where(Wallet.id == wallet.id).execute()
    assert audit_wallets() == [(wallet.id, START - 300 + 1, START - 300)]


def test_writer_flush_waits_for_everything_submitted(wallet):
    writer = LedgerWriter(apply_charges, batch_size=7)
    for i in range(50):
        writer.submit(record(wallet, f"req_{i}", 10))
    assert writer.flush(timeout=30)
    assert RequestRow.select().count() == 50 and wallet_balance(wallet.id) == START - 500
    assert writer.close()


def test_writer_close_writes_everything_submitted(wallet):
    writer = LedgerWriter(apply_charges, linger=0.5)
    for i in range(20):
        writer.submit(record(wallet, f"req_{i}", 10))
    assert writer.close(timeout=30)
    assert RequestRow.select().count() == 20 and wallet_balance(wallet.id) == START - 200


def test_writer_writes_a_burst_within_its_linger_as_one_batch(wallet):
    batches = []
    writer = LedgerWriter(apply_charges, linger=0.3, on_commit=lambda report: batches.append(len(report.request_ids)))
    for i in range(30):
        writer.submit(record(wallet, f"req_{i}", 10))
    assert writer.flush(timeout=30) and writer.close()
    assert batches == [30] and wallet_balance(wallet.id) == START - 300


def test_writer_loses_no_record_submitted_from_many_threads_while_it_writes(wallet):
    """Submitters only wake the writer for the first record after it took a batch: none may be left behind."""
    writer = LedgerWriter(apply_charges, batch_size=7, linger=0.0005)

    def submit_many(thread: int):
        for i in range(300):
            writer.submit(record(wallet, f"req_{thread}_{i}", 1))
            if i % 50 == 0:
                time.sleep(0.002)  # let the writer catch up and wait again, so wake-ups are exercised

    threads = [threading.Thread(target=submit_many, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert writer.flush(timeout=60) and writer.close()
    assert RequestRow.select().count() == 1200 and wallet_balance(wallet.id) == START - 1200


def test_writer_sets_aside_a_record_the_database_refuses_and_writes_the_rest(wallet, tmp_path):
    bad = record(wallet, "req_bad", 10)
    bad.created_at = None  # NOT NULL on every backend
    writer = LedgerWriter(apply_charges, dead_letters=tmp_path / "rejected.jsonl")
    for usage in (record(wallet, "req_a", 10), bad, record(wallet, "req_c", 10)):
        writer.submit(usage)
    assert writer.flush(timeout=30) and writer.close()
    assert sorted(r.id for r in RequestRow.select()) == ["req_a", "req_c"]
    assert wallet_balance(wallet.id) == START - 20 and audit_wallets() == []
    rejected = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert [r["record"]["id"] for r in rejected] == ["req_bad"]


AWKWARD = ["tab\there", "line\nbreak\r\nand back", "back\\slash \\N \\t", "quote ' and \"", "\\", "\\N", "", "é 漢字 🎉"]


def test_caller_text_of_every_kind_is_stored_as_sent(wallet):
    """Metadata and a model name come from the client: tabs, line breaks, backslashes (COPY's escapes, and its
    NULL marker as text), quotes and any Unicode are stored exactly, next to NULLs, booleans and timestamps."""
    at = utcnow()
    records = [record(wallet, f"req_{i}", 1) for i in range(len(AWKWARD))]
    for text, usage in zip(AWKWARD, records, strict=True):
        usage.metadata, usage.model, usage.created_at, usage.streamed = {"note": text, text: "k"}, text or None, at, True
    write_batch(records, apply_charges)
    stored = {row.id: row for row in RequestRow.select()}
    for text, usage in zip(AWKWARD, records, strict=True):
        row = stored[usage.id]
        assert (json.loads(row.metadata), row.model, row.created_at, row.streamed) == (usage.metadata, text or None,
                                                                                       at, True)
    assert wallet_balance(wallet.id) == START - len(AWKWARD)


def test_a_value_only_the_driver_writes_goes_in_as_it_would_and_a_nul_is_refused_by_postgresql(wallet, tmp_path):
    odd = record(wallet, "req_float", 7)
    odd.input_tokens = 12.0  # a float in an integer column: the driver's own conversion writes it
    nul = record(wallet, "req_nul", 5)
    nul.model = "gpt\x00"  # PostgreSQL stores no NUL in text (SQLite does)
    writer = LedgerWriter(apply_charges, dead_letters=tmp_path / "rejected.jsonl")
    for usage in (odd, nul):
        writer.submit(usage)
    assert writer.flush(timeout=30) and writer.close()
    stored = {r.id: (r.input_tokens, r.model) for r in RequestRow.select()}
    assert stored.pop("req_float") == (12, None) and audit_wallets() == []
    if on_postgres():
        assert stored == {} and wallet_balance(wallet.id) == START - 7
        rejected = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
        assert [r["record"]["id"] for r in rejected] == ["req_nul"]
    else:
        assert stored == {"req_nul": (0, "gpt\x00")} and wallet_balance(wallet.id) == START - 12


def test_credit_wallet_returns_the_new_balance(ledger):
    _, wallet = ensure_account()
    assert [credit_wallet(wallet.id, amount) for amount in (100, 50, -30)] == [100, 150, 120]
    assert audit_wallets() == []


def test_find_key_sees_revocation(ledger):
    row, secret = create_key("ci")
    _, wallet = ensure_account()
    assert find_key(hash_secret(secret)) == KeyRecord(row.id, row.account_id, wallet.id, revoked=False, name=row.name)
    revoke_key(row.id)
    assert find_key(hash_secret(secret)).revoked is True
    assert find_key(hash_secret(secret + "x")) is None
    with pytest.raises(LookupError):
        revoke_key("key_missing")


def test_opening_the_ledger_keeps_its_sql_out_of_debug_logs(tmp_path, caplog):
    """-v shows the gateway's connections, not every SQL statement, under either launcher."""
    caplog.set_level(logging.DEBUG)  # what -v sets
    logging.getLogger("peewee").setLevel(logging.NOTSET)
    open_database(f"sqlite:///{tmp_path}/quiet.db")
    try:
        assert not logging.getLogger("peewee").isEnabledFor(logging.DEBUG)
    finally:
        database.close()
        database.initialize(None)
