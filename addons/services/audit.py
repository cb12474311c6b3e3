"""The ledger's own check: every wallet's cached balance equals the sum of its entries."""

from __future__ import annotations

from dataclasses import dataclass

from addons.ledger import accounts


@dataclass(frozen=True, slots=True)
class Mismatch:
    wallet: str
    balance_nanos: int
    entries_sum_nanos: int


@dataclass(frozen=True, slots=True)
class AuditReport:
    mismatches: list[Mismatch]

    @property
    def ok(self) -> bool:
        return not self.mismatches


def audit() -> AuditReport:
    """Read in one statement, so it holds while the proxy commits."""
    return AuditReport([Mismatch(*row) for row in accounts.audit_wallets()])
