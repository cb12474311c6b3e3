import random
from datetime import UTC, datetime
from decimal import Decimal, localcontext

import pytest
from genai_prices.data_snapshot import get_snapshot
from genai_prices.types import ModelPrice, TieredPrices

from addons.core.catalog import load_catalog
from pricing import cost as cost_module
from pricing.cost import UNPRICED, Cost, load_overrides, parse_overrides, price
from pricing.money import to_nanos
from pricing.usage import TokenUsage

M = Decimal(1_000_000)


def usd(*token_rate_pairs) -> int:
    """Expected nanos from (tokens, USD per million) pairs, computed independently of cost.py."""
    return to_nanos(sum((tokens * Decimal(rate) for tokens, rate in token_rate_pairs), Decimal(0)) / M)


def overrides(*entries):
    return parse_overrides({"models": list(entries)})


# Rates are genai-prices 0.2.3's published USD per million tokens for each model.
@pytest.mark.parametrize(
    "provider_id, pricing_id, model, usage, input_nanos, output_nanos",
    [
        # gpt-4o: $2.50 in, $1.25 cached in, $10 out; a dated snapshot name prices as gpt-4o.
        ("openai", "openai", "gpt-4o-2024-08-06", TokenUsage(1000, 200, 0, 100, 50),
         usd((800, "2.5"), (200, "1.25")), usd((100, "10"))),
        # claude-3-5-sonnet: $3 in, $0.30 cache read, $3.75 cache write, $15 out.
        ("anthropic", "anthropic", "claude-3-5-sonnet-20241022", TokenUsage(10_000, 4000, 2000, 500),
         usd((4000, "3"), (4000, "0.3"), (2000, "3.75")), usd((500, "15"))),
        # gemini-2.5-flash: $0.30 in, $0.03 cache read, $2.50 out; Gemini's "models/" prefix is stripped.
        ("gemini", "google", "models/gemini-2.5-flash", TokenUsage(1234, 234, 0, 567, 300),
         usd((1000, "0.3"), (234, "0.03")), usd((567, "2.5"))),
        # llama-3.3-70b-versatile on Groq: $0.59 in, $0.79 out.
        ("groq", "groq", "llama-3.3-70b-versatile", TokenUsage(1234, 0, 0, 567),
         usd((1234, "0.59")), usd((567, "0.79"))),
    ],
)  # fmt: skip
def test_known_models_are_priced_exactly(provider_id, pricing_id, model, usage, input_nanos, output_nanos):
    cost = price(usage, model=model, provider_id=provider_id, pricing_id=pricing_id, overrides=())
    assert cost == Cost(input_nanos + output_nanos, input_nanos, output_nanos, "catalog")


@pytest.mark.parametrize("cached", [0, 400, 1000])
def test_cache_read_tokens_bill_at_the_cache_rate(cached):
    cost = price(TokenUsage(1000, cached), model="gpt-4o", provider_id="openai", pricing_id="openai")
    assert cost.input_nanos == usd((1000 - cached, "2.5"), (cached, "1.25"))


def test_reasoning_tokens_are_output_tokens_counted_once():
    def cost(reasoning):
        usage = TokenUsage(input_tokens=100, output_tokens=1000, reasoning_tokens=reasoning)
        return price(usage, model="o3", provider_id="openai", pricing_id="openai")

    assert cost(800) == cost(0)
    assert cost(800).output_nanos == usd((1000, "8"))


def test_a_published_reasoning_rate_applies_to_the_reasoning_share():
    # sonar-deep-research: $8 per million output tokens, $3 per million of them that are reasoning.
    usage = TokenUsage(input_tokens=0, output_tokens=1000, reasoning_tokens=600)
    cost = price(usage, model="sonar-deep-research", provider_id="perplexity", pricing_id="perplexity")
    assert cost.output_nanos == usd((400, "8"), (600, "3"))


def test_per_request_fees_count_in_the_total_only():
    # sonar: $1 in, $1 out, plus $12 per thousand requests.
    usage = TokenUsage(input_tokens=1000, output_tokens=100)
    cost = price(usage, model="sonar", provider_id="perplexity", pricing_id="perplexity")
    assert (cost.input_nanos, cost.output_nanos) == (usd((1000, "1")), usd((100, "1")))
    assert cost.total_nanos == cost.input_nanos + cost.output_nanos + to_nanos(Decimal(12) / 1000)


@pytest.mark.parametrize("hour, input_rate", [(12, "0.27"), (20, "0.135")])
def test_time_dependent_prices_use_the_request_time(hour, input_rate):
    at = datetime(2026, 3, 2, hour, tzinfo=UTC)
    usage = TokenUsage(input_tokens=1000)
    cost = price(usage, model="deepseek-chat", provider_id="deepseek", pricing_id="deepseek", at=at)
    assert cost.input_nanos == usd((1000, input_rate))


def cost_of(in_rate, out_rate, source, tokens_in=1000, tokens_out=100):
    input_nanos, output_nanos = usd((tokens_in, in_rate)), usd((tokens_out, out_rate))
    return Cost(input_nanos + output_nanos, input_nanos, output_nanos, source)


@pytest.mark.parametrize(
    "model, expected",
    [
        ("gpt-4o", cost_of("1", "2", "override")),
        ("GPT-4O", cost_of("1", "2", "override")),
        ("my-model-7b", cost_of("0.5", "0.5", "override")),
        ("gpt-4o-mini", cost_of("0.15", "0.6", "catalog")),  # the groq override is not openai's
    ],
)
def test_an_override_wins_over_genai_prices(model, expected):
    table = overrides(
        {"provider": "openai", "model": "gpt-4o", "input_mtok": "1", "output_mtok": "2"},
        {"provider": "openai", "model": "my-model-*", "input_mtok": "0.5", "output_mtok": "0.5"},
        {"provider": "groq", "model": "gpt-4o-mini", "input_mtok": "9", "output_mtok": "9"},
    )
    usage = TokenUsage(input_tokens=1000, output_tokens=100)
    assert price(usage, model=model, provider_id="openai", pricing_id="openai", overrides=table) == expected


def test_override_cache_rates_default_to_the_input_rate():
    usage = TokenUsage(input_tokens=1000, cache_read_tokens=300, cache_write_tokens=200)
    plain = overrides({"provider": "acme", "model": "m", "input_mtok": "2", "output_mtok": "4"})
    cached = overrides({"provider": "acme", "model": "m", "input_mtok": "2", "output_mtok": "4",
                        "cache_read_mtok": "0.2", "cache_write_mtok": "2.5"})  # fmt: skip
    assert price(usage, model="m", provider_id="acme", pricing_id=None, overrides=plain).input_nanos == usd((1000, "2"))
    assert price(usage, model="m", provider_id="acme", pricing_id=None, overrides=cached).input_nanos == usd(
        (500, "2"), (300, "0.2"), (200, "2.5")
    )


@pytest.mark.parametrize(
    "provider_id, pricing_id, model",
    [
        ("openai", "openai", "no-such-model"),
        ("openai", "no-such-provider", "gpt-4o"),
        ("deepinfra", None, "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
        ("openai", "openai", ""),
    ],
)
def test_unknown_models_are_unpriced_not_errors(provider_id, pricing_id, model):
    cost = price(TokenUsage(1000, 0, 0, 100), model=model, provider_id=provider_id, pricing_id=pricing_id)
    assert cost == UNPRICED == Cost(0, 0, 0, "unpriced")


@pytest.mark.parametrize(
    "tokens, rate, nanos",
    [(1, "0.0004", 0), (1, "0.0005", 1), (3, "0.0005", 2), (5, "0.0005", 3), (1, "0.0014999", 1)],
)
def test_rounding_is_half_up_to_the_nano(tokens, rate, nanos):
    table = overrides({"provider": "acme", "model": "m", "input_mtok": rate, "output_mtok": "0"})
    cost = price(TokenUsage(input_tokens=tokens), model="m", provider_id="acme", pricing_id=None, overrides=table)
    assert (cost.total_nanos, cost.input_nanos) == (nanos, nanos)


def test_shipped_overrides_load_and_price_sambanova():
    catalog = load_catalog()
    assert all(catalog.by_id(o.provider) for o in load_overrides()), "an override names no catalog provider"
    usage = TokenUsage(input_tokens=1000, output_tokens=100)
    cost = price(usage, model="Meta-Llama-3.3-70B-Instruct", provider_id="sambanova", pricing_id=None)
    assert cost == cost_of("0.6", "1.2", "override")


def test_yaml_numbers_are_read_as_exact_decimals(tmp_path):
    path = tmp_path / "overrides.yaml"
    path.write_text("models:\n  - {provider: acme, model: m, input_mtok: 0.1, output_mtok: 3}\n")
    [entry] = load_overrides(path)
    assert (entry.input_mtok, entry.output_mtok) == (Decimal("0.1"), Decimal(3))


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("model: []", "just a 'models' list"),
        ("models: [{provider: acme, model: m, input_mtok: 1}]", r"#1: missing field\(s\) output_mtok"),
        ("models: [{provider: acme, model: m, input_mtok: 1, output_mtok: 1, x: 1}]", r"unknown field\(s\) x"),
        ("models: [{provider: acme, model: m, input_mtok: -1, output_mtok: 1}]", "input_mtok -1 must be a finite"),
        ("models: [{provider: acme, model: m, input_mtok: cheap, output_mtok: 1}]", "'cheap' is not a decimal"),
        ("models: [{provider: acme, model: m, input_mtok: 1, output_mtok: true}]", "output_mtok must be a decimal"),
        ("models: [{provider: acme, model: m, input_mtok: .inf, output_mtok: 1}]", "cannot read price overrides"),
        ("models: [{provider: '', model: m, input_mtok: 1, output_mtok: 1}]", "provider must be a non-empty"),
    ],
)
def test_bad_overrides_are_rejected(tmp_path, yaml_text, message):
    path = tmp_path / "overrides.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ValueError, match=message):
        load_overrides(path)


# --- The fast path must price exactly as genai-prices does ---------------------------------------


def random_usages(count, seed=20240601):
    rng = random.Random(seed)
    usages = []
    for _ in range(count):
        total_in, total_out = rng.randint(0, 5_000_000), rng.randint(0, 500_000)
        cache_read = rng.randint(0, total_in)
        usages.append(TokenUsage(total_in, cache_read, rng.randint(0, total_in - cache_read), total_out,
                                 rng.randint(0, total_out)))  # fmt: skip
    return usages


EQUIVALENCE_USAGES = [
    TokenUsage(),
    TokenUsage(input_tokens=20, output_tokens=9),
    TokenUsage(1000, 200, 100, 300, 50),
    TokenUsage(3_000_000, 1_000_000, 500_000, 200_000, 150_000),  # past every tier threshold
    TokenUsage(7, 7, 0, 1, 1),
    *random_usages(1),
]
# Dated price changes and DeepSeek-style off-peak hours: peak and off-peak, old and new.
EQUIVALENCE_DATES = [datetime(2024, 1, 1, 12, tzinfo=UTC), datetime(2025, 6, 1, 18, 30, tzinfo=UTC),
                     datetime(2026, 3, 2, 3, tzinfo=UTC)]  # fmt: skip


def outcome(call):
    """A Cost, or the error it raised: the slow path failing must fail the same way fast."""
    try:
        return call()
    except Exception as e:  # noqa: BLE001 - any failure must match
        return type(e), str(e)


def resolves(model_ref, pricing_id):
    try:
        get_snapshot().find_provider_model(model_ref, None, pricing_id, None)
    except LookupError:
        return False
    return True


def test_every_snapshot_model_prices_as_genai_prices_does():
    checked = 0
    for provider in get_snapshot().providers:
        for model in provider.models:
            if not resolves(model.id, provider.id):  # an id its own match rules miss: unpriced, as ever
                assert price(TokenUsage(1), model=model.id, provider_id=provider.id, pricing_id=provider.id) == UNPRICED
                continue
            dated = not isinstance(model.prices, ModelPrice)  # only conditional prices depend on the date
            for at in EQUIVALENCE_DATES if dated else EQUIVALENCE_DATES[-1:]:
                for usage in EQUIVALENCE_USAGES:
                    fast = outcome(lambda: price(usage, model=model.id, provider_id=provider.id,
                                                 pricing_id=provider.id, overrides=(), at=at))  # fmt: skip
                    slow = outcome(lambda: cost_module._genai_prices_cost(
                        cost_module._clamped(usage), model.id, provider.id, at))  # fmt: skip
                    assert fast == slow, (provider.id, model.id, at, usage)
                    checked += 1
    assert checked > 10_000


def test_linear_prices_take_the_fast_path(monkeypatch):
    def slow(*args):
        raise AssertionError("the slow path was taken")

    monkeypatch.setattr(cost_module, "_genai_prices_cost", slow)
    usage = TokenUsage(input_tokens=20, output_tokens=9)
    cost = price(usage, model="gpt-4o-mini", provider_id="openai", pricing_id="openai")
    assert cost == cost_of("0.15", "0.6", "catalog", tokens_in=20, tokens_out=9)


def spy_on_slow_path(monkeypatch):
    calls = []
    slow = cost_module._genai_prices_cost

    def spy(*args):
        calls.append(args)
        return slow(*args)

    monkeypatch.setattr(cost_module, "_genai_prices_cost", spy)
    return calls


def test_tiered_prices_take_the_slow_path(monkeypatch):
    provider, model = get_snapshot().find_provider_model("gemini-2.5-pro", None, "google", None)
    at = datetime(2026, 3, 2, 12, tzinfo=UTC)
    assert any(isinstance(rate, TieredPrices) for rate in model.get_prices(at).__dict__.values())
    calls = spy_on_slow_path(monkeypatch)
    usage = TokenUsage(input_tokens=300_000, output_tokens=1000)  # past the 200k tier
    cost = price(usage, model="gemini-2.5-pro", provider_id="gemini", pricing_id="google", at=at)
    assert len(calls) == 1
    assert cost == cost_module._genai_prices_cost(cost_module._clamped(usage), "gemini-2.5-pro", "google", at)
    assert cost.input_nanos == usd((300_000, "2.5"))  # the tier rate on every token


@pytest.mark.parametrize("tokens, slow", [(10**15, False), (10**40, True)])
def test_counts_too_large_for_exact_decimals_take_the_slow_path(monkeypatch, tokens, slow):
    calls = spy_on_slow_path(monkeypatch)
    usage = TokenUsage(input_tokens=tokens, cache_read_tokens=tokens // 3, output_tokens=tokens)
    cost = price(usage, model="gpt-4o-mini", provider_id="openai", pricing_id="openai")
    assert len(calls) == slow
    assert cost == cost_module._genai_prices_cost(cost_module._clamped(usage), "gpt-4o-mini", "openai", None)


def test_a_low_decimal_precision_takes_the_slow_path(monkeypatch):
    usage = TokenUsage(input_tokens=123_456_789, output_tokens=987_654_321)
    with localcontext(prec=6):
        calls = spy_on_slow_path(monkeypatch)
        cost = price(usage, model="gpt-4o-mini", provider_id="openai", pricing_id="openai")
        assert len(calls) == 1
        assert cost == cost_module._genai_prices_cost(cost_module._clamped(usage), "gpt-4o-mini", "openai", None)


@pytest.mark.parametrize(
    "usage, counts",
    [
        (TokenUsage(10, 3, 2, 5, 1), (10, 3, 2, 5, 1)),
        (TokenUsage(-5, 3, 2, -1, 1), (0, 0, 0, 0, 0)),
        (TokenUsage(10, 8, 8, 5, 9), (10, 8, 2, 5, 5)),
        (TokenUsage(10, -1, 4, 5, -2), (10, 0, 4, 5, 0)),
    ],
)
def test_nonsense_counts_are_clamped(usage, counts):
    assert cost_module._clamped(usage) == counts
