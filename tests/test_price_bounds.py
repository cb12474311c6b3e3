"""Price bounds (pricing/bounds.py): what holds reserve must never be less than what the request then costs."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from pricing.bounds import BOUND_TTL, PriceBounds
from pricing.cost import Override, price
from pricing.usage import TokenUsage

# (provider, model): flat prices, Gemini's long-prompt tier (output dearer too), DeepSeek's off-peak hours
MODELS = [("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-20250514"), ("google", "gemini-2.5-pro"),
          ("google", "gemini-1.5-pro"), ("deepseek", "deepseek-chat")]
OFF_PEAK_END = datetime(2026, 12, 7, 0, 30, tzinfo=UTC).timestamp()  # DeepSeek's discount ends at 00:30 UTC


def exact(provider: str, model: str, usage: TokenUsage, at: float, overrides=()) -> int:
    return price(usage, model=model, provider_id=provider, pricing_id=provider, overrides=overrides,
                 at=datetime.fromtimestamp(at, UTC)).total_nanos


@settings(max_examples=300, deadline=None)
@given(model=st.sampled_from(MODELS), input_tokens=st.integers(0, 3_000_000), output_tokens=st.integers(0, 200_000),
       start=st.floats(OFF_PEAK_END - 90, OFF_PEAK_END + 30), into=st.floats(0, BOUND_TTL - 0.001))
def test_a_bound_is_never_below_the_price_during_the_minute_it_serves(model, input_tokens, output_tokens, start, into):
    provider, name = model
    bounds = PriceBounds(clock=lambda: start)
    usage = TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens)
    assert bounds.of(provider, provider, name, ()).cost(usage.input_tokens, usage.output_tokens) >= exact(provider, name, usage, start + into)


def test_a_flat_priced_models_bound_is_its_price():
    bound = PriceBounds().of("openai", "openai", "gpt-4o-mini", ())
    usage = TokenUsage(input_tokens=1234, output_tokens=567)
    assert bound.cost(usage.input_tokens, usage.output_tokens) == exact("openai", "gpt-4o-mini", usage, datetime.now(UTC).timestamp())


def test_the_off_peak_discount_is_not_held_into_the_minute_it_ends():
    usage = TokenUsage(input_tokens=10_000, output_tokens=1_000)
    before_end = PriceBounds(clock=lambda: OFF_PEAK_END - 30).of("deepseek", "deepseek", "deepseek-chat", ())
    assert exact("deepseek", "deepseek-chat", usage, OFF_PEAK_END - 30) < exact("deepseek", "deepseek-chat", usage,
                                                                                 OFF_PEAK_END)
    assert before_end.cost(usage.input_tokens, usage.output_tokens) == exact("deepseek", "deepseek-chat", usage, OFF_PEAK_END)


def test_bounds_are_measured_again_after_their_minute_and_for_new_overrides():
    now = [1_800_000_000.0]
    bounds = PriceBounds(clock=lambda: now[0])
    cheap = (Override("openai", "my-model", input_mtok=Decimal(1), output_mtok=Decimal(2)),)
    dear = (Override("openai", "my-model", input_mtok=Decimal(10), output_mtok=Decimal(20)),)
    usage = TokenUsage(input_tokens=1_000_000, output_tokens=1_000_000)
    first = bounds.of("openai", "openai", "my-model", cheap)
    assert first.cost(usage.input_tokens, usage.output_tokens) == 3 * 10**9
    assert bounds.of("openai", "openai", "my-model", cheap) is first  # within its minute: not measured again
    assert bounds.of("openai", "openai", "my-model", dear).cost(usage.input_tokens, usage.output_tokens) == 30 * 10**9  # new overrides
    now[0] += BOUND_TTL
    assert bounds.of("openai", "openai", "my-model", dear) is not first
