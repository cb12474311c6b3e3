"""Holds: money set aside for requests in flight, so concurrent requests cannot overspend.

A pot is anything with a spending limit: a wallet (balance plus overdraft) or a signed token's
spend cap. Its confirmed figure comes from the ledger, either read or reported by the writer
right after it committed a charge; open holds are subtracted from it. Everything here runs on
mitmproxy's event loop, so checking every pot of a request and reserving in all of them happens
with no await in between: atomic within the process. A hold lives until the writer has committed
the request's charge (its release comes with the new balance), or until it expires.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


class InsufficientFunds(Exception):
    def __init__(self, pot: str, available: int):
        super().__init__(pot)
        self.pot = pot
        self.available = available


@dataclass(slots=True)
class Pot:
    confirmed: int
    version: int
    confirmed_at: float
    holds: dict[str, tuple[int, float]] = field(default_factory=dict)  # request -> (amount, expires)


class HoldBook:
    def __init__(self, hold_ttl: float, clock: Callable[[], float] = time.monotonic):
        self._hold_ttl = hold_ttl
        self._clock = clock
        self._pots: dict[str, Pot] = {}
        self._requests: dict[str, list[str]] = {}

    def is_fresh(self, pot: str, max_age: float) -> bool:
        known = self._pots.get(pot)
        return known is not None and self._clock() - known.confirmed_at < max_age

    def confirm(self, pot: str, amount: int, version: int) -> None:
        """A ledger figure; an older version than the one held is ignored (reads race commits)."""
        known = self._pots.get(pot)
        if known is None:
            self._pots[pot] = Pot(amount, version, self._clock())
        elif version >= known.version:
            known.confirmed, known.version, known.confirmed_at = amount, version, self._clock()

    def spend(self, pot: str, amount: int) -> None:
        """A committed charge on a pot whose ledger figure has no version (a token's spend)."""
        if pot in self._pots:
            self._pots[pot].confirmed -= amount

    def available(self, pot: str) -> int:
        known = self._pots[pot]
        now = self._clock()
        expired = [rid for rid, (_, expires) in known.holds.items() if expires <= now]
        for request_id in expired:
            del known.holds[request_id]
        return known.confirmed - sum(amount for amount, _ in known.holds.values())

    def hold(self, request_id: str, amounts: dict[str, int]) -> None:
        """Reserve in every pot or in none; InsufficientFunds names the first pot short."""
        for pot, amount in amounts.items():
            available = self.available(pot)
            if amount > available:
                raise InsufficientFunds(pot, max(available, 0))
        for pot, amount in amounts.items():
            self.add(request_id, pot, amount)

    def add(self, request_id: str, pot: str, amount: int) -> None:
        """Reserve without checking: a charge already incurred, waiting for the writer."""
        known = self._pots.get(pot)
        if known is None or amount <= 0:
            return
        held, _ = known.holds.get(request_id, (0, 0.0))
        known.holds[request_id] = (held + amount, self._clock() + self._hold_ttl)
        self._requests.setdefault(request_id, []).append(pot)

    def release(self, request_id: str) -> None:
        for pot in self._requests.pop(request_id, ()):
            self._pots[pot].holds.pop(request_id, None)
