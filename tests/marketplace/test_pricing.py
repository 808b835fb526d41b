"""Tests of the provider pricing strategies and their command-line specs."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketplace.errors import ConfigError
from marketplace.market.pricing import (
    FixedFloor,
    IdleDecay,
    MarketFollower,
    PricingContext,
    PricingStrategy,
    UtilizationRamp,
    ceil_fraction,
    strategy_from_spec,
)

TOKEN = 10**18


def context(**overrides: object) -> PricingContext:
    """A job paying at most 3 tokens per GPU-hour, seen by a provider with a floor of 2."""
    fields: dict[str, object] = {
        "max_price": 3 * TOKEN,
        "gpus": 1,
        "max_gpu_seconds": 3_600,
        "floor": 2 * TOKEN,
        "utilization": Fraction(0),
        "idle_seconds": 0,
        "recent_prices": (),
    }
    fields.update(overrides)
    return PricingContext(**fields)  # type: ignore[arg-type]


# ---------------------------------------------------------------- strategies


def test_fixed_floor__asks_the_floor() -> None:
    assert FixedFloor().ask(context()) == 2 * TOKEN


def test_fixed_floor__job_max_below_floor__does_not_bid() -> None:
    assert FixedFloor().ask(context(max_price=2 * TOKEN - 1)) is None


def test_fixed_floor__job_max_equal_to_floor__bids() -> None:
    assert FixedFloor().ask(context(max_price=2 * TOKEN)) == 2 * TOKEN


def test_zero_floor__asks_one_unit__because_the_chain_refuses_zero_asks() -> None:
    assert FixedFloor().ask(context(floor=0)) == 1


def test_ramp__rises_with_utilization() -> None:
    ramp = UtilizationRamp(slope=Fraction(1, 2))
    assert ramp.ask(context(utilization=Fraction(0))) == 2 * TOKEN
    assert ramp.ask(context(utilization=Fraction(1, 2))) == 5 * TOKEN // 2
    assert ramp.ask(context(utilization=Fraction(1))) == 3 * TOKEN


def test_ramp__above_the_job_max__does_not_bid() -> None:
    assert UtilizationRamp(slope=Fraction(1)).ask(context(utilization=Fraction(3, 4))) is None


def test_ramp__rounds_up_to_a_whole_unit() -> None:
    ask = UtilizationRamp(slope=Fraction(1, 3)).ask(context(floor=10, max_price=100, utilization=Fraction(1, 7)))
    assert ask == ceil_fraction(10 * (1 + Fraction(1, 21))) == 11


def test_decay__busy_provider__asks_start_price() -> None:
    decay = IdleDecay(start=Fraction(3, 2), minimum=Fraction(1), half_life_s=600)
    assert decay.ask(context(max_price=10 * TOKEN)) == 3 * TOKEN


def test_decay__premium_halves_every_half_life() -> None:
    decay = IdleDecay(start=Fraction(2), minimum=Fraction(1), half_life_s=600)
    at: dict[int, int] = {}
    for t in (0, 300, 600, 1_200, 6_000):
        ask = decay.ask(context(max_price=10 * TOKEN, idle_seconds=t))
        assert ask is not None
        at[t] = ask
    assert at[0] == 4 * TOKEN
    assert at[600] == 3 * TOKEN
    assert at[1_200] == 5 * TOKEN // 2
    assert 3 * TOKEN < at[300] < 4 * TOKEN  # piecewise linear between half-lives
    assert 2 * TOKEN < at[6_000] < 2 * TOKEN + TOKEN // 100


def test_decay__long_idle__settles_on_the_minimum_not_below_the_floor() -> None:
    decay = IdleDecay(start=Fraction(2), minimum=Fraction(1), half_life_s=1)
    assert decay.ask(context(idle_seconds=10**9)) == 2 * TOKEN


def test_follower__asks_the_median_less_the_undercut() -> None:
    follow = MarketFollower(undercut=Fraction(1, 10))
    prices = (3 * TOKEN, 5 * TOKEN // 2, 28 * TOKEN // 10)
    assert follow.ask(context(recent_prices=prices)) == 28 * TOKEN * 9 // 100


def test_follower__even_count__uses_the_mean_of_the_middle_two() -> None:
    follow = MarketFollower()
    assert follow.ask(context(recent_prices=(2 * TOKEN, 3 * TOKEN, 2 * TOKEN, 3 * TOKEN))) == 5 * TOKEN // 2


def test_follower__market_below_floor__asks_the_floor() -> None:
    assert MarketFollower().ask(context(recent_prices=(TOKEN, TOKEN))) == 2 * TOKEN


def test_follower__no_history__asks_the_floor() -> None:
    assert MarketFollower(undercut=Fraction(1, 2)).ask(context()) == 2 * TOKEN


def test_every_strategy__satisfies_the_protocol() -> None:
    for strategy in (FixedFloor(), UtilizationRamp(), IdleDecay(), MarketFollower()):
        assert isinstance(strategy, PricingStrategy)


def test_float_parameters__are_refused() -> None:
    with pytest.raises(ConfigError, match="exact number"):
        UtilizationRamp(slope=0.5)  # type: ignore[arg-type]


def test_context__utilization_above_one__is_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        context(utilization=Fraction(3, 2))


# ---------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("fixed", FixedFloor()),
        ("floor", FixedFloor()),
        ("  FIXED ", FixedFloor()),
        ("ramp", UtilizationRamp(slope=Fraction(1, 2))),
        ("ramp:slope=0.25", UtilizationRamp(slope=Fraction(1, 4))),
        ("ramp:slope=1/3", UtilizationRamp(slope=Fraction(1, 3))),
        ("decay:half_life=600", IdleDecay(half_life_s=600)),
        ("decay:start=2, min=1.2, half_life=60", IdleDecay(Fraction(2), Fraction(6, 5), 60)),
        ("follow:undercut=0.02", MarketFollower(undercut=Fraction(1, 50))),
    ],
)
def test_strategy_from_spec__builds_the_strategy(spec: str, expected: PricingStrategy) -> None:
    assert strategy_from_spec(spec) == expected


@pytest.mark.parametrize(
    "spec",
    ["fixed", "ramp:slope=0.5", "ramp:slope=1/3", "decay:start=2,min=1,half_life=60", "follow:undercut=0"],
)
def test_spec__round_trips(spec: str) -> None:
    strategy = strategy_from_spec(spec)
    assert strategy.spec == spec
    assert strategy_from_spec(strategy.spec) == strategy


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("", "empty strategy spec"),
        ("auction", "unknown strategy 'auction'"),
        ("ramp:", "missing parameters"),
        ("ramp:slope", "expected key=value"),
        ("ramp:slope=", "expected key=value"),
        ("ramp:=1", "expected key=value"),
        ("ramp:speed=1", "ramp takes no parameter 'speed'"),
        ("fixed:slope=1", "fixed takes no parameter 'slope' \\(accepted: none\\)"),
        ("ramp:slope=1,slope=2", "given twice"),
        ("ramp:slope=fast", "is not a number"),
        ("ramp:slope=1/0", "is not a number"),
        ("ramp:slope=-1", "must not be negative"),
        ("decay:min=0.5", "min must be at least 1"),
        ("decay:start=1,min=2", "start \\(1\\) must be at least min \\(2\\)"),
        ("decay:half_life=0", "half_life must be positive"),
        ("decay:half_life=1.5", "whole seconds"),
        ("follow:undercut=1", "undercut must be in"),
    ],
)
def test_strategy_from_spec__bad_spec__raises_config_error(spec: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        strategy_from_spec(spec)


# ---------------------------------------------------------------- properties

prices = st.integers(min_value=0, max_value=10**24)
fractions01 = st.fractions(min_value=0, max_value=1)
multipliers = st.fractions(min_value=1, max_value=10, max_denominator=1_000)


@st.composite
def contexts(draw: st.DrawFn) -> PricingContext:
    return PricingContext(
        max_price=draw(prices),
        gpus=draw(st.integers(1, 8)),
        max_gpu_seconds=draw(st.integers(0, 10**7)),
        floor=draw(prices),
        utilization=draw(fractions01),
        idle_seconds=draw(st.integers(0, 10**7)),
        recent_prices=tuple(draw(st.lists(prices, max_size=8))),
    )


@st.composite
def strategies_(draw: st.DrawFn) -> PricingStrategy:
    kind = draw(st.sampled_from(["fixed", "ramp", "decay", "follow"]))
    if kind == "fixed":
        return FixedFloor()
    if kind == "ramp":
        return UtilizationRamp(slope=draw(st.fractions(min_value=0, max_value=5, max_denominator=1_000)))
    if kind == "decay":
        minimum = draw(multipliers)
        return IdleDecay(
            start=minimum + draw(multipliers) - 1, minimum=minimum, half_life_s=draw(st.integers(1, 10**5))
        )
    return MarketFollower(undercut=draw(st.fractions(min_value=0, max_value=Fraction(99, 100))))


@given(strategies_(), contexts())
def test_property__a_bid_is_never_below_the_floor_nor_above_the_max(
    strategy: PricingStrategy, ctx: PricingContext
) -> None:
    ask = strategy.ask(ctx)
    if ask is not None:
        assert isinstance(ask, int)
        assert ctx.floor <= ask <= ctx.max_price
        assert ask > 0


@given(contexts())
def test_property__max_at_or_above_the_floor__fixed_floor_always_bids(ctx: PricingContext) -> None:
    if ctx.max_price >= max(ctx.floor, 1):
        assert FixedFloor().ask(ctx) == max(ctx.floor, 1)


@given(st.fractions(min_value=0, max_value=5, max_denominator=1_000), contexts(), fractions01, fractions01)
def test_property__ramp_is_monotone_in_utilization(
    slope: Fraction, ctx: PricingContext, u1: Fraction, u2: Fraction
) -> None:
    low, high = sorted((u1, u2))
    ramp = UtilizationRamp(slope=slope)
    ask_low = ramp.ask(replace(ctx, utilization=low))
    ask_high = ramp.ask(replace(ctx, utilization=high))
    if ask_high is not None:
        assert ask_low is not None
        assert ask_low <= ask_high


@given(multipliers, multipliers, st.integers(1, 10**5), contexts(), st.integers(0, 10**7), st.integers(0, 10**7))
def test_property__decay_never_rises_with_idleness(
    minimum: Fraction, extra: Fraction, half_life: int, ctx: PricingContext, t1: int, t2: int
) -> None:
    decay = IdleDecay(start=minimum + extra - 1, minimum=minimum, half_life_s=half_life)
    early, late = sorted((t1, t2))
    ask_early = decay.ask(replace(ctx, idle_seconds=early))
    ask_late = decay.ask(replace(ctx, idle_seconds=late))
    if ask_early is not None:
        assert ask_late is not None
        assert ask_late <= ask_early
