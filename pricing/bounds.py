"""Upper bounds of a request's price, for holds: what a request may cost before it has run.

A hold needs a figure at least as large as the price, on every request that has a balance, cap or spend
limit, so pricing each request's worst case in full is work on the hot path that buys nothing. A model's
bound is measured once a minute instead: its price with no tokens, and its dearest price per million input
and output tokens over small and huge counts (tiers that make long prompts dearer, or cheaper, are both
caught), output beside short and long prompts. Prices that change with the time of day (DeepSeek's off-peak hours) are measured at both ends of
the minute the bound serves and the dearer taken.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from pricing.cost import Override, price
from pricing.usage import TokenUsage

BOUND_TTL = 60.0  # seconds a measured bound serves
_SCALES = (1_000, 1_000_000, 100_000_000)  # token counts the dearest rate is taken over
_MAX_BOUNDS = 4096
_MTOK = 1_000_000


@dataclass(frozen=True, slots=True)
class PriceBound:
    fixed: int  # nanos a request costs with no tokens
    input_per_mtok: int  # nanos per million input tokens, the dearest measured (rounded up)
    output_per_mtok: int

    def cost(self, input_tokens: int, output_tokens: int) -> int:
        """At least what that many input and output tokens cost."""
        return (self.fixed + -(-input_tokens * self.input_per_mtok // _MTOK)
                + -(-output_tokens * self.output_per_mtok // _MTOK))


def measure(price_at: Callable[[TokenUsage, datetime], int], now: float) -> PriceBound:
    """The bound of a model that `price_at(usage, at)` prices, for the minute from `now`. Output is measured
    beside every input count too: a long prompt can make the output dearer (Gemini's tiers)."""
    instants = (datetime.fromtimestamp(now, UTC), datetime.fromtimestamp(now + BOUND_TTL, UTC))

    def cost(input_tokens: int, output_tokens: int) -> int:
        return max(price_at(TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens), at) for at in instants)

    def per_mtok(extra: int, count: int) -> int:
        return -(-max(extra, 0) * _MTOK // count)

    fixed = cost(0, 0)
    inputs = {count: cost(count, 0) for count in (0, *_SCALES)}
    input_rate = max(per_mtok(inputs[count] - fixed, count) for count in _SCALES)
    output_rate = max(per_mtok(cost(prompt, count) - alone, count) for prompt, alone in inputs.items() for count in _SCALES)
    return PriceBound(fixed, input_rate, output_rate)


class PriceBounds:
    """The bounds of the models requests go to, each measured once per BOUND_TTL; new overrides start afresh."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._bounds: dict[tuple[str, str], tuple[float, PriceBound]] = {}  # (provider, model) -> (until, bound)
        self._overrides: tuple[Override, ...] | None = None

    def of(self, provider_id: str, pricing_id: str | None, model: str, overrides: tuple[Override, ...]) -> PriceBound:
        now = self.clock()
        if overrides is not self._overrides:
            self._bounds.clear()
            self._overrides = overrides
        known = self._bounds.get((provider_id, model))
        if known is not None and now < known[0]:
            return known[1]
        bound = measure(lambda usage, at: price(usage, model=model, provider_id=provider_id, pricing_id=pricing_id,
                                                overrides=overrides, at=at).total_nanos, now)
        if len(self._bounds) >= _MAX_BOUNDS:
            self._bounds.clear()
        self._bounds[provider_id, model] = (now + BOUND_TTL, bound)
        return bound
