"""The capacity test's decision from known rate samples: when it waits, passes and flags."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from benchmarks._pairs import interleaved_pairs, pair_stats, spread, wilson_interval
from marketplace.verify import billing
from marketplace.verify.billing import capacity_attempts_for, capacity_decision, capacity_flagged

CLAIM = 1000  # GFLOP/s; a rate meets it when claim <= 2 x rate, i.e. rate >= 500


def test_attempts_follow_the_stated_false_flag_rate() -> None:
    assert capacity_attempts_for(0.01, 0.3) == 13  # 0.7^13 = 0.0097 <= 0.01 < 0.7^12 = 0.0138
    assert capacity_attempts_for(0.5, 0.5) == 1
    assert capacity_attempts_for(0.25, 0.5) == 2  # exact power: no extra attempt
    assert capacity_attempts_for(0.001, 1.0) == 1
    assert billing.CAPACITY_ATTEMPTS == capacity_attempts_for(
        billing.CAPACITY_FALSE_FLAG_RATE, billing.CAPACITY_QUIET_FRACTION
    )
    for alpha, p0 in ((0.01, 0.3), (0.001, 0.2), (0.05, 0.5)):
        k = capacity_attempts_for(alpha, p0)
        assert (1 - p0) ** k <= alpha < (1 - p0) ** (k - 1)


@pytest.mark.parametrize("alpha,p0", [(0.0, 0.3), (1.0, 0.3), (0.01, 0.0), (0.01, 1.5)])
def test_attempts_refuse_meaningless_parameters(alpha: float, p0: float) -> None:
    with pytest.raises(ValueError, match="capacity test"):
        capacity_attempts_for(alpha, p0)


def test_one_rate_that_meets_the_claim_settles_it_unflagged() -> None:
    slow = [120, 90, 300, 0, 410]  # a busy host, and one failed challenge
    d = capacity_decision(CLAIM, [*slow, 520])
    assert d.decided and not d.flagged
    assert d.attest == 520 and d.meeting_claim == 1 and d.attempts == 6
    assert not capacity_flagged(CLAIM, d.attest)


def test_slow_rates_wait_for_enough_evidence_before_flagging() -> None:
    rates = [400] * 12  # every product under what the claim needs
    for k in range(1, 13):
        d = capacity_decision(CLAIM, rates[:k], false_flag_rate=0.01, quiet_fraction=0.3)
        assert not d.decided and not d.flagged, k
        assert d.p_value == pytest.approx(0.7**k)
    d = capacity_decision(CLAIM, [*rates, 450], false_flag_rate=0.01, quiet_fraction=0.3)
    assert d.decided and d.flagged and d.attest == 450
    assert d.p_value <= 0.01
    assert capacity_flagged(CLAIM, d.attest)  # the registry flags what is attested


def test_the_boundary_rate_is_the_registrys_rule() -> None:
    assert not capacity_decision(CLAIM, [500]).flagged  # 1000 <= 2 x 500
    d = capacity_decision(CLAIM, [499] * billing.CAPACITY_ATTEMPTS)
    assert d.decided and d.flagged


def test_a_verifier_cap_on_attempts_decides_early() -> None:
    d = capacity_decision(CLAIM, [10, 20, 30], max_attempts=3)
    assert d.decided and d.flagged and d.attest == 30
    assert d.p_value == pytest.approx(0.7**3)
    assert not capacity_decision(CLAIM, [10, 20], max_attempts=3).decided


def test_no_measurement_decides_nothing() -> None:
    d = capacity_decision(CLAIM, [])
    assert not d.decided and not d.flagged and d.attest == 0


def test_the_false_flag_rate_holds_for_an_honest_provider_at_the_assumed_quiet_fraction() -> None:
    """Honest rates meet the claim with probability exactly p0 = 0.3: flagged at most ~1 %."""
    rng = random.Random(7)
    flagged = 0
    trials = 4000
    for _ in range(trials):
        rates: list[int] = []
        while True:
            rates.append(600 if rng.random() < 0.3 else rng.randrange(0, 500))
            d = capacity_decision(CLAIM, rates)
            if d.decided:
                break
        flagged += d.flagged
    assert flagged / trials <= 0.015  # 0.7^13 = 0.0097 plus sampling noise
    # and a liar whose rates never reach the claim's need is always flagged
    liar = capacity_decision(CLAIM, [rng.randrange(300, 500) for _ in range(billing.CAPACITY_ATTEMPTS)])
    assert liar.decided and liar.flagged


def test_pairs_alternate_and_report_the_median_ratio() -> None:
    ticks = iter(range(1000))
    order: list[str] = []

    def clock() -> float:
        return float(next(ticks))

    def make(name: str) -> Callable[[], None]:
        def run() -> None:
            order.append(name)
            if name == "a":
                for _ in range(2):  # `a` takes three ticks, `b` one
                    next(ticks)

        return run

    stats = interleaved_pairs(make("a"), make("b"), rounds=4, warmup=0, clock=clock)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert stats.ratios == [3.0, 3.0, 3.0, 3.0]
    out: dict[str, Any] = stats.as_json()
    assert out["pairs"] == 4 and out["ratio"]["median"] == 3.0


def test_spread_and_interval() -> None:
    s = spread([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["median"], s["min"], s["max"], s["p25"], s["p75"]) == (3.0, 1.0, 5.0, 2.0, 4.0)
    assert pair_stats([2.0, 4.0], [1.0, 1.0]).median_ratio == 3.0
    with pytest.raises(ValueError):
        pair_stats([1.0], [])
    lo, hi = wilson_interval(0, 100)
    assert lo == 0.0 and 0.03 < hi < 0.04
    lo, hi = wilson_interval(100, 100)
    assert hi == 1.0 and 0.96 < lo < 0.97
