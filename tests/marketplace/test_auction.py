"""Tests of the clearing rules: sealed reverse Vickrey with k winners, instant take, settlement."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketplace.market.auction import Ask, Clearing, instant_take, sealed_vickrey, settle, slot_value

MAX = 100


def asks(*pairs: tuple[str, int]) -> list[Ask[str]]:
    return [Ask(provider, price) for provider, price in pairs]


# ---------------------------------------------------------------- sealed


def test_sealed__lowest_ask_wins__at_the_second_lowest() -> None:
    clearing = sealed_vickrey(asks(("alice", 70), ("bob", 50), ("carol", 60)), max_price=MAX)
    assert clearing == Clearing(winners=("bob",), prices=(60,))
    assert clearing.price == 60


def test_sealed__single_ask__is_paid_the_max_price() -> None:
    assert sealed_vickrey(asks(("alice", 40)), max_price=MAX) == Clearing(("alice",), (MAX,))


def test_sealed__no_asks__no_lease() -> None:
    assert sealed_vickrey([], max_price=MAX) is None


def test_sealed__k_winners__paid_the_k_plus_first_ask() -> None:
    clearing = sealed_vickrey(asks(("a", 90), ("b", 10), ("c", 30), ("d", 20), ("e", 40)), max_price=MAX, k=3)
    assert clearing == Clearing(winners=("b", "d", "c"), prices=(40, 40, 40))


def test_sealed__exactly_k_asks__paid_the_max_price() -> None:
    clearing = sealed_vickrey(asks(("a", 30), ("b", 10)), max_price=MAX, k=2)
    assert clearing == Clearing(winners=("b", "a"), prices=(MAX, MAX))


def test_sealed__fewer_than_k_asks__no_lease() -> None:
    assert sealed_vickrey(asks(("a", 30), ("b", 10)), max_price=MAX, k=3) is None


def test_sealed__asks_above_the_max__do_not_count() -> None:
    clearing = sealed_vickrey(asks(("a", 30), ("b", MAX + 1), ("c", 10**30)), max_price=MAX)
    assert clearing == Clearing(("a",), (MAX,))


def test_sealed__ask_at_the_max__counts_and_sets_the_price() -> None:
    assert sealed_vickrey(asks(("a", 30), ("b", MAX)), max_price=MAX) == Clearing(("a",), (MAX,))


def test_sealed__zero_ask__does_not_count() -> None:
    assert sealed_vickrey(asks(("a", 0), ("b", 50)), max_price=MAX) == Clearing(("b",), (MAX,))


def test_sealed__only_invalid_asks__no_lease() -> None:
    assert sealed_vickrey(asks(("a", 0), ("b", MAX + 1)), max_price=MAX) is None


def test_sealed__tie_for_the_win__earlier_reveal_wins_at_the_tied_price() -> None:
    clearing = sealed_vickrey(asks(("late", 50), ("early", 50)), max_price=MAX)
    assert clearing == Clearing(("late",), (50,))  # "late" revealed first in this list


def test_sealed__tie_at_the_kth_place__earlier_reveal_takes_the_last_slot() -> None:
    clearing = sealed_vickrey(asks(("a", 10), ("b", 20), ("c", 20), ("d", 20)), max_price=MAX, k=2)
    assert clearing == Clearing(("a", "b"), (20, 20))


def test_sealed__provider_revealing_twice__is_refused() -> None:
    with pytest.raises(ValueError, match="revealed twice"):
        sealed_vickrey(asks(("a", 10), ("a", 20)), max_price=MAX)


def test_sealed__negative_ask__is_refused() -> None:
    with pytest.raises(ValueError, match="negative ask"):
        sealed_vickrey(asks(("a", -1)), max_price=MAX)


@pytest.mark.parametrize(("max_price", "k"), [(0, 1), (MAX, 0)])
def test_sealed__bad_terms__are_refused(max_price: int, k: int) -> None:
    with pytest.raises(ValueError):
        sealed_vickrey(asks(("a", 1)), max_price=max_price, k=k)


# ---------------------------------------------------------------- instant


def test_instant__first_offer_at_or_below_the_max__takes_at_its_own_price() -> None:
    clearing = instant_take(asks(("dear", 120), ("first", 90), ("cheap", 10)), max_price=MAX)
    assert clearing == Clearing(("first",), (90,))


def test_instant__no_offer_at_or_below_the_max__no_lease() -> None:
    assert instant_take(asks(("a", 101), ("b", 0)), max_price=MAX) is None


def test_instant__k_slots__each_at_its_own_price_and_distinct_providers() -> None:
    clearing = instant_take(asks(("a", 90), ("a", 10), ("b", 80), ("c", 70)), max_price=MAX, k=2)
    assert clearing == Clearing(("a", "b"), (90, 80))


def test_instant__ineligible_providers__are_skipped() -> None:
    clearing = instant_take(asks(("a", 10), ("b", 20)), max_price=MAX, eligible=lambda p: p != "a")
    assert clearing == Clearing(("b",), (20,))


def test_instant__offers_are_consumed_lazily() -> None:
    seen: list[str] = []

    def offers() -> Iterator[Ask[str]]:
        for name in ("a", "b", "c"):
            seen.append(name)
            yield Ask(name, 50)

    assert instant_take(offers(), max_price=MAX) == Clearing(("a",), (50,))
    assert seen == ["a"]


def test_instant__too_few_takers__no_lease() -> None:
    assert instant_take(asks(("a", 10)), max_price=MAX, k=2) is None


# ---------------------------------------------------------------- payment


def test_slot_value__is_price_per_hour_times_gpu_seconds__rounded_down() -> None:
    assert slot_value(3_600, 10) == 10
    assert slot_value(1, 3_599) == 0
    assert slot_value(2 * 10**18, 5_400) == 3 * 10**18


def test_settle__pays_delivered_work_and_refunds_the_rest() -> None:
    result = settle(60 * 10**18, 1_800, max_gpu_seconds=3_600, max_price=100 * 10**18)
    assert result.payout == 30 * 10**18
    assert result.refund == 70 * 10**18


def test_settle__claim_above_the_escrow__is_capped() -> None:
    result = settle(MAX, 10_000, max_gpu_seconds=3_600, max_price=MAX)
    assert (result.payout, result.refund) == (MAX, 0)


def test_settle__price_above_max__is_refused() -> None:
    with pytest.raises(ValueError, match="above the max"):
        settle(MAX + 1, 1, max_gpu_seconds=1, max_price=MAX)


# ---------------------------------------------------------------- properties

ask_lists = st.lists(st.integers(0, 2 * MAX), max_size=12).map(
    lambda prices: [Ask(f"p{i}", price) for i, price in enumerate(prices)]
)


@given(ask_lists, st.integers(1, 5))
def test_property__sealed_winners_are_the_k_cheapest_and_paid_between_their_ask_and_the_max(
    bids: list[Ask[str]], k: int
) -> None:
    clearing = sealed_vickrey(bids, max_price=MAX, k=k)
    valid = [a for a in bids if 0 < a.price <= MAX]
    if len(valid) < k:
        assert clearing is None
        return
    assert clearing is not None
    assert len(clearing.winners) == k == len(set(clearing.winners))
    price_of = {a.provider: a.price for a in bids}
    losers = [a.price for a in valid if a.provider not in clearing.winners]
    for winner, paid in zip(clearing.winners, clearing.prices, strict=True):
        assert price_of[winner] <= paid <= MAX
        assert all(price_of[winner] <= loser for loser in losers)
    assert len(set(clearing.prices)) == 1  # uniform price


@given(ask_lists, st.integers(1, 5))
def test_property__escrow_is_conserved(bids: list[Ask[str]], k: int) -> None:
    clearing = sealed_vickrey(bids, max_price=MAX, k=k)
    if clearing is None:
        return
    for paid in clearing.prices:
        result = settle(paid, 1_234, max_gpu_seconds=3_600, max_price=MAX)
        assert result.payout + result.refund == slot_value(MAX, 3_600)
        assert result.payout >= 0 and result.refund >= 0
