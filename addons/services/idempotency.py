"""`Idempotency-Key` on the admin API's creations, top-ups and reported requests: a repeat with the same key and body returns
the first answer and changes nothing; the same key with another body is 409 `idempotency_key_reused`.

The key is claimed, the call's work is done and its answer stored in one transaction, so repeats
racing on several processes serialise on the key's unique index: the loser waits for the winner's
commit and returns its answer (or, had the winner failed, does the work itself). A call that fails
stores nothing, so it may be retried with the same key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

from peewee import IntegrityError

from addons.ledger.models import IdempotencyRow, database
from addons.services.errors import Conflict

MAX_KEY_LENGTH = 255


def fingerprint(method: str, path: str, body: dict) -> str:
    canonical = json.dumps([method, path, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def run_once(account_id: str, key: str, request_hash: str, work: Callable[[], tuple[int, dict]]) -> tuple[int, dict]:
    """(status, answer) of the first call made with `key` in `account_id`; `work` runs at most once per key."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise Conflict("invalid_idempotency_key", f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
    for _ in range(3):  # a winner that rolled back leaves the key free again
        with database.atomic():
            try:
                with database.atomic():  # a savepoint: a lost race leaves the transaction usable
                    IdempotencyRow.insert(account=account_id, key=key, request_hash=request_hash).execute()
            except IntegrityError:
                row = IdempotencyRow.get_or_none(IdempotencyRow.account == account_id, IdempotencyRow.key == key)
                if row is None or row.status is None:
                    continue
                if row.request_hash != request_hash:
                    raise Conflict("idempotency_key_reused",
                                              "this Idempotency-Key was used with another request") from None
                return row.status, json.loads(row.response)
            status, answer = work()
            (IdempotencyRow.update(status=status, response=json.dumps(answer))
             .where(IdempotencyRow.account == account_id, IdempotencyRow.key == key).execute())
            return status, answer
    raise Conflict("idempotency_key_in_progress", "a request with this Idempotency-Key is in progress; retry")
