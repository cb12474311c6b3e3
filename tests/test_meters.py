import json
from decimal import Decimal
from types import SimpleNamespace

import pytest

from pricing.meters import (
    MeterSpec,
    Tier,
    fee,
    make_meter_spec,
    max_rate,
    micro_to_units,
    parse_tier,
    spec_from_row,
    tiered_amount,
    tiers_json,
    units_of,
    units_to_micro,
)
from pricing.usage import Measured, TokenUsage

D = Decimal


@pytest.mark.parametrize(
    "text, tier",
    [
        ("0:1.50", Tier(D(0), D("1.50"))),
        ("1000000:3.00", Tier(D(1_000_000), D("3.00"))),
        (" 10 : 0 ", Tier(D(10), D(0))),
        ("5:0.000001", Tier(D(5), D("0.000001"))),
    ],
)
def test_parse_tier(text, tier):
    assert parse_tier(text) == tier


@pytest.mark.parametrize(
    "text, match",
    [
        ("1.50", "START:RATE"),  # missing colon
        ("0:1:2", "START:RATE"),
        ("", "START:RATE"),
        ("-1:1.00", "tier start"),
        ("0.5:1.00", "tier start"),  # starts are whole raw units
        ("1e6:1.00", "tier start"),
        ("1_000:1.00", "tier start"),
        ("0:-1", "tier rate"),
        ("0:abc", "tier rate"),
        ("0:1e-3", "tier rate"),  # float-like: write 0.001
        ("0:nan", "tier rate"),
        ("0:inf", "tier rate"),
        ("0:.5", "tier rate"),
        ("0:", "tier rate"),
    ],
)
def test_parse_tier_rejects(text, match):
    with pytest.raises(ValueError, match=match):
        parse_tier(text)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rate_type="fixed", tiers=[]), "fixed meters need at least one tier"),
        (dict(rate_type="hybrid", tiers=[], percentage="10"), "hybrid meters need at least one tier"),
        (dict(rate_type="percentage", tiers=["0:1.00"], percentage="20"), "percentage meters take no tiers"),
        (dict(rate_type="percentage", tiers=[]), "percentage meters need a percentage"),
        (dict(rate_type="hybrid", tiers=["0:1"]), "hybrid meters need a percentage"),
        (dict(rate_type="fixed", tiers=["0:1"], percentage="5"), "fixed meters take no percentage"),
        (dict(rate_type="percentage", tiers=[], percentage="-5"), "percentage must be"),
        (dict(rate_type="percentage", tiers=[], percentage="20%"), "percentage must be"),
        (dict(rate_type="fixed", tiers=["10:1.00"]), "first tier must start at 0"),
        (dict(rate_type="fixed", tiers=["0:2", "100:1", "100:0.5"]), "strictly increasing"),
        (dict(rate_type="fixed", tiers=["0:2", "100:1", "50:0.5"]), "strictly increasing"),
        (dict(rate_type="fixed", tiers=[Tier(D(0), D(-1))]), "tier rate"),
        (dict(rate_type="fixed", tiers="0:1.00"), "list of START:RATE"),
        (dict(rate_type="flat", tiers=["0:1"]), "unknown rate type"),
        (dict(unit="seconds"), "unknown unit"),
        (dict(token_basis="input"), "unknown token basis"),
        (dict(unit="requests", token_basis="output"), "only to tokens_1m"),
        (dict(base_cost_payer="nobody"), "unknown base cost payer"),
        (dict(slug=""), "slug"),
        (dict(slug="Gold"), "slug"),
        (dict(slug="gold tier"), "slug"),
        (dict(slug="a" * 65), "slug"),
    ],
)
def test_make_meter_spec_rejects(kwargs, match):
    args = dict(slug="gold", rate_type="fixed", unit="tokens_1m", tiers=["0:1.00"]) | kwargs
    with pytest.raises(ValueError, match=match):
        make_meter_spec(**args)


@pytest.mark.parametrize(
    "rate_type, tiers, percentage, payer",
    [
        ("fixed", ["0:1"], None, "merchant"),  # the rate is the whole price
        ("percentage", [], "20", "customer"),  # base cost plus markup
        ("hybrid", ["0:1"], "20", "customer"),
    ],
)
def test_default_base_cost_payer(rate_type, tiers, percentage, payer):
    spec = make_meter_spec("m", rate_type, "tokens_1m", tiers, percentage)
    assert spec.base_cost_payer == payer
    assert spec.token_basis == "input+output"


def test_make_meter_spec_accepts_tiers_and_slug_edges():
    slug = "a-z_0-9" + "x" * 57  # 64 characters
    spec = make_meter_spec(slug, "hybrid", "minutes", [Tier(D(0), D("0.006"))], D("12.5"), "merchant")
    tiers = (Tier(D(0), D("0.006")),)
    assert spec == MeterSpec(slug, "hybrid", "minutes", tiers, D("12.5"), "merchant", "input+output")


def test_row_round_trip():
    spec = make_meter_spec("gold", "hybrid", "tokens_1m", ["0:3.00", "1000000:1.50"], "20", token_basis="output")
    assert json.loads(tiers_json(spec)) == [[0, "3.00"], [1000000, "1.50"]]
    row = SimpleNamespace(
        slug="gold", rate_type="hybrid", percentage="20", base_cost_payer="customer",
        unit="tokens_1m", token_basis="output", tiers=tiers_json(spec),
    )  # fmt: skip
    assert spec_from_row(row) == spec


@pytest.mark.parametrize(
    "tiers, match",
    [
        ("not json", "not JSON"),
        ('{"0": "1"}', "list of"),
        ('[[0, 1.5]]', "bad tier"),  # a float rate would not be exact
        ('[[0, "1"], [0, "2"]]', "strictly increasing"),
    ],
)
def test_spec_from_row_rejects(tiers, match):
    row = SimpleNamespace(
        slug="gold", rate_type="fixed", percentage=None, base_cost_payer="merchant",
        unit="tokens_1m", token_basis="input+output", tiers=tiers,
    )  # fmt: skip
    with pytest.raises(ValueError, match=match):
        spec_from_row(row)


TOKENS = TokenUsage(input_tokens=1000, cache_read_tokens=400, output_tokens=250, reasoning_tokens=50)


@pytest.mark.parametrize(
    "unit, basis, characters, seconds, units",
    [
        ("tokens_1m", "input+output", 0, None, D(1250)),  # 1000 + 250; cache reads are inside input
        ("tokens_1m", "output", 0, None, D(250)),
        ("characters_1m", "input+output", 1234, None, D(1234)),
        ("minutes", "input+output", 0, D(90), D("1.5")),  # 90 / 60
        ("minutes", "input+output", 0, D(100), D("1.666667")),  # 1.6666.. quantized half-up to micro-minutes
        ("minutes", "input+output", 0, D("0.00003"), D("0.000001")),  # 0.0000005 min rounds up
        ("minutes", "input+output", 0, None, D(0)),  # duration not reported: nothing to bill
        ("requests", "input+output", 0, None, D(1)),
    ],
)
def test_units_of(unit, basis, characters, seconds, units):
    spec = make_meter_spec("m", "fixed", unit, ["0:1"], token_basis=basis)
    assert units_of(spec, Measured(TOKENS, characters, seconds)) == units


@pytest.mark.parametrize("characters, seconds", [(-1, None), (0, D(-1)), (0, D("NaN"))])
def test_units_of_rejects_negative(characters, seconds):
    spec = make_meter_spec("m", "fixed", "minutes", ["0:1"])
    with pytest.raises(ValueError, match="non-negative"):
        units_of(spec, Measured(TokenUsage(), characters, seconds))


@pytest.mark.parametrize(
    "units, micro",
    [
        (D(1234), 1_234_000_000),
        (D("1.5"), 1_500_000),
        (D("1.666667"), 1_666_667),
        (D("0.0000005"), 1),  # half a micro-unit rounds up
        (D("0.0000004999"), 0),
    ],
)
def test_units_to_micro(units, micro):
    assert units_to_micro(units) == micro


@pytest.mark.parametrize("micro, units", [(1_500_000, D("1.5")), (1, D("0.000001")), (0, D(0))])
def test_micro_to_units(micro, units):
    assert micro_to_units(micro) == units


def meter(rate_type="fixed", unit="tokens_1m", tiers=("0:1",), percentage=None, payer=None):
    return make_meter_spec("m", rate_type, unit, list(tiers), percentage, payer)


@pytest.mark.parametrize(
    "spec, units, before, cost, nanos",
    [
        # 1234 * 1.50 / 1e6 = 0.001851 USD; the merchant pays the provider
        (meter(tiers=["0:1.50"]), D(1234), D(0), 999, 1_851_000),
        # fixed with customer base payer: 999 nanos base + 0.001851 USD
        (meter(tiers=["0:1.50"], payer="customer"), D(1234), D(0), 999, 1_851_999),
        # 0.001 USD base + 20% = 0.0012
        (meter("percentage", tiers=[], percentage="20"), D(5), D(0), 1_000_000, 1_200_000),
        # merchant absorbs the base: 20% of 0.001 = 0.0002
        (meter("percentage", tiers=[], percentage="20", payer="merchant"), D(5), D(0), 1_000_000, 200_000),
        # 0.003 base + 10% (0.0003) + 2000 * 0.50 / 1e6 (0.001) = 0.0043
        (meter("hybrid", tiers=["0:0.50"], percentage="10"), D(2000), D(0), 3_000_000, 4_300_000),
        # hybrid, merchant: 0.0003 + 0.001 = 0.0013
        (meter("hybrid", tiers=["0:0.50"], percentage="10", payer="merchant"), D(2000), D(0), 3_000_000, 1_300_000),
        # straddles 1M: 1000 * 2.00 / 1e6 + 1000 * 1.00 / 1e6 = 0.002 + 0.001 = 0.003
        (meter(tiers=["0:2.00", "1000000:1.00"]), D(2000), D(999_000), 0, 3_000_000),
        # starts exactly at the boundary: all 1000 at 1.00 / 1e6 = 0.001
        (meter(tiers=["0:2.00", "1000000:1.00"]), D(1000), D(1_000_000), 0, 1_000_000),
        # ends exactly at the boundary: all 1000 at 2.00 / 1e6 = 0.002
        (meter(tiers=["0:2.00", "1000000:1.00"]), D(1000), D(999_000), 0, 2_000_000),
        # three tiers: 500 * 3 + 1000 * 2 + 500 * 1 = 4000, / 1e6 = 0.004
        (meter(tiers=["0:3", "1000:2", "2000:1"]), D(2000), D(500), 0, 4_000_000),
        # zero units cost nothing, even deep in a tier
        (meter(tiers=["0:3", "1000:2"]), D(0), D(5000), 0, 0),
        # characters_1m: 1234 * 15.00 / 1e6 = 0.01851
        (meter(unit="characters_1m", tiers=["0:15.00"]), D(1234), D(0), 0, 18_510_000),
        # minutes: 1.5 min (90 s) * 0.006 = 0.009
        (meter(unit="minutes", tiers=["0:0.006"]), D("1.5"), D(0), 0, 9_000_000),
        # minutes straddling 10: 0.5 * 0.006 + 1 * 0.004 = 0.007
        (meter(unit="minutes", tiers=["0:0.006", "10:0.004"]), D("1.5"), D("9.5"), 0, 7_000_000),
        # requests: the 100th request (99 before) is in the second tier: 0.001
        (meter(unit="requests", tiers=["0:0.002", "99:0.001"]), D(1), D(99), 0, 1_000_000),
        (meter(unit="requests", tiers=["0:0.002", "99:0.001"]), D(1), D(98), 0, 2_000_000),
    ],
)
def test_fee(spec, units, before, cost, nanos):
    assert fee(spec, units=units, running_before=before, provider_cost_nanos=cost) == nanos


@pytest.mark.parametrize(
    "spec, units, before, cost, nanos",
    [
        # 1 * 0.0005 / 1e6 = 0.0000000005 USD = exactly half a nano: up
        (meter(tiers=["0:0.0005"]), D(1), D(0), 0, 1),
        # 2.5 nanos -> 3 (half-up, not banker's 2)
        (meter(tiers=["0:0.0025"]), D(1), D(0), 0, 3),
        # 0.4999999999999999999999999999999 nanos -> 0: exact, not first rounded to 28 digits (0.5 -> 1)
        (meter(tiers=["0:0.0004999999999999999999999999999999"]), D(1), D(0), 0, 0),
        # across a boundary, rounded once: 0.4 + 0.1 = 0.5 nanos -> 1 (per-part rounding would give 0 + 0)
        (meter(tiers=["0:0.0004", "1:0.0001"]), D(2), D(0), 0, 1),
        # 0.4 + 0.09 = 0.49 nanos -> 0
        (meter(tiers=["0:0.0004", "1:0.00009"]), D(2), D(0), 0, 0),
        # boundary at 1M: 0.3 + 0.2 nanos (one token each side) = 0.5 -> 1
        (meter(tiers=["0:0.0003", "1000000:0.0002"]), D(2), D(999_999), 0, 1),
        # 50% markup of 1 nano, merchant: 0.5 -> 1
        (meter("percentage", tiers=[], percentage="50", payer="merchant"), D(1), D(0), 1, 1),
        # 5 nanos base + 10% (0.5) = 5.5 -> 6
        (meter("percentage", tiers=[], percentage="10"), D(1), D(0), 5, 6),
        # hybrid: 5 base + 0.3 markup (6%) + 0.2 tiered (0.0002 / 1e6) = 5.5 -> 6, though no part is >= .5
        (meter("hybrid", tiers=["0:0.0002"], percentage="6"), D(1), D(0), 5, 6),
    ],
)
def test_fee_rounds_half_up_once(spec, units, before, cost, nanos):
    assert fee(spec, units=units, running_before=before, provider_cost_nanos=cost) == nanos


def test_tiered_amount_is_exact_usd():
    tiers = (Tier(D(0), D("2.00")), Tier(D(1_000_000), D("1.00")))
    # (1000 * 2.00 + 1000 * 1.00) / 1e6 = 0.003
    assert tiered_amount(tiers, D(999_000), D(2000), D(1_000_000)) == D("0.003")


@pytest.mark.parametrize(
    "before, units, cost", [(D(0), D(-1), 0), (D(-1), D(1), 0), (D(0), D(1), -1)]
)
def test_fee_rejects_negative(before, units, cost):
    with pytest.raises(ValueError, match="non-negative"):
        fee(meter(), units=units, running_before=before, provider_cost_nanos=cost)


@pytest.mark.parametrize(
    "spec, rate",
    [
        (meter(tiers=["0:3.00", "1000:5.00", "2000:1.00"]), D("5.00")),
        (meter("percentage", tiers=[], percentage="20"), D(0)),
    ],
)
def test_max_rate(spec, rate):
    assert max_rate(spec) == rate
