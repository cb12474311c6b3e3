import json
import os
import time
from datetime import datetime

import pytest

from addons.ledger.journal import Journal, decode, encode
from addons.ledger.writer import UsageRecord

URL = "sqlite:///ledger.db"


def record(i: int, **kw) -> UsageRecord:
    return UsageRecord(id=f"req_{i:04d}", created_at=datetime(2026, 11, 27, 12, 0, i % 60), account="acct_1",
                       wallet_id="wal_1", key="key_1", provider="openai", endpoint="chat.completions",
                       model="gpt-4o-mini", status=200, input_tokens=i, output_tokens=2 * i,
                       provider_cost_nanos=1234 * i, charged_nanos=1234 * i, usage_source="reported",
                       metadata={"user": "ü"} if i % 2 else None, **kw)


def crash(journal: Journal) -> None:
    """What SIGKILL leaves: the files, and the slot lock released by the kernel."""
    journal._closing = True
    journal._syncer.join()
    os.close(journal._slot_lock)


def test_a_record_round_trips_through_its_line():
    original = record(7, customer_wallet_id="wal_c", units_micro=5, bill_customer=True)
    assert decode(encode(original)) == original


def test_a_line_the_previous_release_wrote_still_decodes():
    """It carried the fee columns too (always 0 before commit): they are billing's at commit now, and ignored."""
    old = {"id": "req_0001", "created_at": "2026-11-27T12:00:01", "account": "acct_1", "wallet_id": "wal_1",
           "key": "key_1", "provider": "openai", "endpoint": "chat.completions", "model": "gpt-4o-mini",
           "customer_id": "cus_1", "meter_slug": "tok", "token_id": None, "status": 200, "streamed": False,
           "input_tokens": 1, "cache_read_tokens": 0, "cache_write_tokens": 0, "output_tokens": 2,
           "reasoning_tokens": 0, "provider_cost_nanos": 1234, "charged_nanos": 1234, "fee_nanos": 0,
           "fee_uncollected_nanos": 0, "token_spend_nanos": 0, "latency_ms": 5, "ttfb_ms": 3,
           "usage_source": "reported", "price_source": "catalog", "byok": False, "error": None,
           "metadata": {"user": "ü"}, "bill_customer": True, "customer_wallet_id": "wal_c", "meter_id": "mtr_1",
           "units_micro": 3_000_000, "customer_byok_fee_nanos": 0}
    decoded = decode(json.dumps(old).encode())
    assert decoded == record(1, customer_id="cus_1", meter_slug="tok", latency_ms=5, ttfb_ms=3, price_source="catalog",
                             bill_customer=True, customer_wallet_id="wal_c", meter_id="mtr_1", units_micro=3_000_000)


def test_what_a_crashed_process_journaled_is_recovered_by_the_next(tmp_path):
    first = Journal(tmp_path, URL)
    for i in range(5):
        first.append(record(i))
    first.settled(["req_0001"])
    crash(first)
    second = Journal(tmp_path, URL)
    assert sorted(r.id for r in second.recover()) == ["req_0000", "req_0001", "req_0002", "req_0003", "req_0004"]
    second.settled([f"req_{i:04d}" for i in range(5)])
    second.close()
    assert not list(second.dir.glob("*.jsonl"))  # all settled: nothing is left to replay
    assert Journal(tmp_path, URL).recover() == []


def test_a_clean_close_keeps_only_what_the_ledger_does_not_have(tmp_path):
    journal = Journal(tmp_path, URL)
    journal.append(record(1))
    journal.append(record(2))
    journal.settled(["req_0001"])
    journal.close()
    # The segment still holds req_0002, so it stays whole: the ledger skips the settled req_0001 on replay.
    assert [r.id for r in Journal(tmp_path, URL).recover()] == ["req_0001", "req_0002"]


def test_a_live_process_keeps_its_slot_and_another_ledger_has_its_own(tmp_path):
    live = Journal(tmp_path, URL)
    live.append(record(1))
    assert Journal(tmp_path, URL).recover() == []  # the second process gets slot 1, not the live journal
    assert Journal(tmp_path, "postgresql://other/db").recover() == []
    assert live.dir.name == "0"


def test_settled_segments_are_deleted_as_the_journal_rotates(tmp_path):
    journal = Journal(tmp_path, URL, segment_bytes=2000)
    for i in range(40):
        journal.append(record(i))
        journal.settled([f"req_{i:04d}"] if i != 3 else [])
    segments = sorted(journal.dir.glob("*.jsonl"))
    assert len(segments) == 2  # the one still holding req_0003, and the current one
    crash(journal)
    replayed = {r.id for r in Journal(tmp_path, URL).recover()}
    assert "req_0003" in replayed and "req_0020" not in replayed and len(replayed) < 10


def test_a_torn_last_line_is_skipped(tmp_path, caplog):
    journal = Journal(tmp_path, URL)
    journal.append(record(1))
    crash(journal)
    segment = next(journal.dir.glob("*.jsonl"))
    segment.write_bytes(segment.read_bytes() + encode(record(2))[:40])
    assert [r.id for r in Journal(tmp_path, URL).recover()] == ["req_0001"]
    assert "unreadable line" in caplog.text


@pytest.mark.parametrize("interval", [0.005, 0.05])
def test_appended_lines_are_fsynced_off_the_callers_thread(tmp_path, monkeypatch, interval):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    journal = Journal(tmp_path, URL, fsync_interval=interval)
    journal.append(record(1))
    deadline = datetime.now().timestamp() + 2
    while not synced and datetime.now().timestamp() < deadline:
        pass
    assert synced and journal._fd in synced
    journal.close()


def test_a_failed_fsync_is_retried_for_every_segment_it_covered(tmp_path, monkeypatch, caplog):
    failures, synced = [OSError(5, "EIO")], []
    real_fsync = os.fsync

    def flaky_fsync(fd):
        if failures:
            raise failures.pop()
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", flaky_fsync)
    journal = Journal(tmp_path, URL, segment_bytes=1, fsync_interval=0.01)  # every append retires a segment
    for n in range(3):
        journal.append(record(n))
    retired = list(journal._unsynced)
    deadline = time.monotonic() + 5
    while (journal._unsynced or journal._fd not in synced) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "fsync failed" in caplog.text and not failures
    assert set(retired) <= set(synced) and journal._fd in synced and not journal._unsynced
    journal.close()
