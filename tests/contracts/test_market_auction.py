"""JobMarket: the sealed reverse-Vickrey auction (commit, reveal, finalize with k winners) and
the instant take."""

from __future__ import annotations

import boa
import pytest

from tests.contracts.contract_helpers import (
    AUCTION_INSTANT,
    DEFAULT_PRICE_FLOOR,
    E18,
    JOB_EXPIRED,
    JOB_LEASED,
    JOB_OPEN,
    SLOT_ASSIGNED,
    SLOT_RELEASED,
    assert_solvent,
    events,
    make_offer,
    make_spec,
    now,
    one_event,
    salt_for,
    travel_to,
    value,
)

# ---------------------------------------------------------------- commit


def test_commit_bid__stores_the_commitment__and_logs(market, providers, provider, spec):
    job_id = providers.post(spec)
    salt = providers.commit(job_id, spec, provider, 5 * E18)
    log = one_event(market, "BidCommitted")
    assert (log.job_id, log.provider) == (job_id, provider)
    assert market.commitments(job_id, provider) == market.bid_commitment(job_id, provider, 5 * E18, salt)


def test_bid_commitment__is_keccak_of_job_provider_price_salt(market, provider):
    from eth_abi import encode
    from eth_utils import keccak

    salt = b"\x01" * 32
    expected = keccak(encode(["uint256", "address", "uint256", "bytes32"], [3, provider, 9, salt]))
    assert market.bid_commitment(3, provider, 9, salt) == expected


def test_commit_bid__on_an_instant_job__reverts(market, providers, provider, requester):
    spec = make_spec(requester, auction=AUCTION_INSTANT)
    job_id = providers.post(spec)
    with boa.env.prank(provider), boa.reverts("market: not a sealed auction"):
        market.commit_bid(job_id, spec, b"\x01" * 32)


def test_commit_bid__on_a_cancelled_job__reverts(market, providers, provider, requester, spec):
    job_id = providers.post(spec)
    with boa.env.prank(requester):
        market.cancel_job(job_id, spec)
    with boa.env.prank(provider), boa.reverts("market: job is not open"):
        market.commit_bid(job_id, spec, b"\x01" * 32)


def test_commit_bid__at_the_bid_deadline__reverts(market, providers, provider, spec):
    job_id = providers.post(spec)
    travel_to(spec.bid_deadline)
    with boa.env.prank(provider), boa.reverts("market: bidding closed"):
        market.commit_bid(job_id, spec, b"\x01" * 32)


def test_commit_bid__one_second_before_the_bid_deadline__commits(market, providers, provider, spec):
    job_id = providers.post(spec)
    travel_to(spec.bid_deadline - 1)
    providers.commit(job_id, spec, provider, 5 * E18)


def test_commit_bid__empty__reverts(market, providers, provider, spec):
    job_id = providers.post(spec)
    with boa.env.prank(provider), boa.reverts("market: empty commitment"):
        market.commit_bid(job_id, spec, b"\x00" * 32)


def test_commit_bid__twice__reverts(market, providers, provider, spec):
    job_id = providers.post(spec)
    providers.commit(job_id, spec, provider, 5 * E18)
    with boa.env.prank(provider), boa.reverts("market: bid already committed"):
        market.commit_bid(job_id, spec, b"\x01" * 32)


def test_commit_bid__by_an_unregistered_account__reverts(market, flow, stranger, spec):
    job_id = flow.post(spec)
    with boa.env.prank(stranger), boa.reverts("market: provider not eligible"):
        market.commit_bid(job_id, spec, b"\x01" * 32)


def test_commit_bid__by_a_provider_without_enough_memory__reverts(market, flow, provider, requester):
    flow.register_provider(provider, memory_mb=8_000)
    spec = make_spec(requester, min_memory_mb=16_000)
    job_id = flow.post(spec)
    with boa.env.prank(provider), boa.reverts("market: provider not eligible"):
        market.commit_bid(job_id, spec, b"\x01" * 32)


# ---------------------------------------------------------------- reveal


def test_reveal_bid__logs_the_price_and_rank(market, providers, provider, provider2, spec):
    job_id = providers.post(spec)
    providers.commit(job_id, spec, provider, 5 * E18)
    providers.commit(job_id, spec, provider2, 3 * E18)
    travel_to(spec.bid_deadline)
    providers.reveal(job_id, spec, provider, 5 * E18)
    log = one_event(market, "BidRevealed")
    assert (log.job_id, log.provider, log.price, log.rank) == (job_id, provider, 5 * E18, 0)
    providers.reveal(job_id, spec, provider2, 3 * E18)
    assert one_event(market, "BidRevealed").rank == 0
    assert market.commitments(job_id, provider) == b"\x00" * 32
    assert market.asks(job_id, 0) == (3 * E18 << 160) | int(provider2, 16)
    assert market.asks(job_id, 1) == (5 * E18 << 160) | int(provider, 16)
    assert market.jobs(job_id).count == 2


def test_reveal_bid__before_the_bid_deadline__reverts(market, providers, provider, spec):
    job_id = providers.post(spec)
    providers.commit(job_id, spec, provider, 5 * E18)
    with boa.env.prank(provider), boa.reverts("market: bidding still open"):
        market.reveal_bid(job_id, spec, 5 * E18, salt_for(provider, 5 * E18))


def test_reveal_bid__at_the_reveal_deadline__reverts(market, providers, provider, spec):
    job_id = providers.post(spec)
    providers.commit(job_id, spec, provider, 5 * E18)
    travel_to(spec.reveal_deadline)
    with boa.env.prank(provider), boa.reverts("market: reveal closed"):
        market.reveal_bid(job_id, spec, 5 * E18, salt_for(provider, 5 * E18))


def test_reveal_bid__without_a_commitment__reverts(market, providers, provider, spec):
    job_id = providers.post(spec)
    travel_to(spec.bid_deadline)
    with boa.env.prank(provider), boa.reverts("market: no committed bid"):
        market.reveal_bid(job_id, spec, 5 * E18, salt_for(provider, 5 * E18))


def test_reveal_bid__twice__reverts(market, providers, provider, spec):
    job_id = providers.post(spec)
    providers.commit(job_id, spec, provider, 5 * E18)
    travel_to(spec.bid_deadline)
    providers.reveal(job_id, spec, provider, 5 * E18)
    with boa.env.prank(provider), boa.reverts("market: no committed bid"):
        market.reveal_bid(job_id, spec, 5 * E18, salt_for(provider, 5 * E18))


def test_reveal__with_wrong_salt__reverts(market, providers, provider, spec):
    job_id = providers.post(spec)
    providers.commit(job_id, spec, provider, 5 * E18)
    travel_to(spec.bid_deadline)
    with boa.env.prank(provider), boa.reverts("market: reveal does not match commitment"):
        market.reveal_bid(job_id, spec, 5 * E18, b"\x99" * 32)


def test_reveal__with_another_price__reverts(market, providers, provider, spec):
    job_id = providers.post(spec)
    salt = providers.commit(job_id, spec, provider, 5 * E18)
    travel_to(spec.bid_deadline)
    with boa.env.prank(provider), boa.reverts("market: reveal does not match commitment"):
        market.reveal_bid(job_id, spec, 4 * E18, salt)


def test_reveal__of_a_zero_ask__reverts(market, providers, provider, spec):
    job_id = providers.post(spec)
    providers.commit(job_id, spec, provider, 0)
    travel_to(spec.bid_deadline)
    with boa.env.prank(provider), boa.reverts("market: zero ask"):
        market.reveal_bid(job_id, spec, 0, salt_for(provider, 0))


def test_reveal__of_an_ask_above_the_max_price__reverts(market, providers, provider, spec):
    job_id = providers.post(spec)
    providers.commit(job_id, spec, provider, spec.max_price + 1)
    travel_to(spec.bid_deadline)
    with boa.env.prank(provider), boa.reverts("market: ask above max price"):
        market.reveal_bid(job_id, spec, spec.max_price + 1, salt_for(provider, spec.max_price + 1))


def test_reveal__at_exactly_the_max_price__is_kept(market, providers, provider, spec):
    job_id = providers.post(spec)
    providers.sealed_auction(job_id, spec, [(provider, spec.max_price)])
    assert market.slots(job_id, 0).price == spec.max_price


def test_reveal__after_deregistering__is_kept__and_the_auction_passes_over_it(
    market, registry, providers, provider, provider2, spec
):
    # A reveal asks the registry nothing: the bid was checked when committed, and the auction's end
    # checks each winner again. A deregistered bidder's reveal is kept (no reveal bond to forfeit),
    # and the next ask wins at the same clearing price.
    job_id = providers.post(spec)
    providers.commit(job_id, spec, provider, 5 * E18)
    providers.commit(job_id, spec, provider2, 6 * E18)
    with boa.env.prank(provider):
        registry.deregister_provider()
    travel_to(spec.bid_deadline)
    providers.reveal(job_id, spec, provider, 5 * E18)
    providers.reveal(job_id, spec, provider2, 6 * E18)
    assert market.asks(job_id, 0) == (5 * E18 << 160) | int(provider, 16)
    assert market.commitments(job_id, provider) == b"\x00" * 32
    travel_to(spec.reveal_deadline)
    providers.finalize(job_id, spec)
    s = market.slots(job_id, 0)
    assert (s.provider, s.price, s.status) == (provider2, 6 * E18, SLOT_ASSIGNED)
    assert registry.stakes(provider).active_jobs == 0


def test_finalize__winner_whose_devices_shrank_since_its_commit__is_passed_over(
    market, registry, providers, provider, provider2, spec
):
    job_id = providers.post(spec)
    providers.commit(job_id, spec, provider, 5 * E18)
    providers.commit(job_id, spec, provider2, 6 * E18)
    with boa.env.prank(provider):
        registry.register_provider(make_offer(provider, memory_mb=spec.min_memory_mb - 1))
    travel_to(spec.bid_deadline)
    providers.reveal(job_id, spec, provider, 5 * E18)
    providers.reveal(job_id, spec, provider2, 6 * E18)
    travel_to(spec.reveal_deadline)
    providers.finalize(job_id, spec)
    assert market.slots(job_id, 0).provider == provider2
    assert registry.stakes(provider).locked == 0


def test_asks__live_in_the_slot_words_while_open__and_are_cleared_when_the_auction_ends(
    market, providers, provider, provider2, spec
):
    job_id = providers.post(spec)
    providers.sealed_auction(job_id, spec, [(provider, 5 * E18), (provider2, 6 * E18)], finalize=False)
    # Open: the kept asks read through `asks`; no slot is leased yet.
    assert market.asks(job_id, 1) == (6 * E18 << 160) | int(provider2, 16)
    empty = market.slots(job_id, 0)
    assert (empty.provider, empty.price, empty.gpu_seconds) == ("0x" + "00" * 20, 0, 0)
    assert market.base_slashes(job_id, 1) == 0
    providers.finalize(job_id, spec)
    # Ended: the winner's slot was written over its ask, the clearing ask was cleared.
    assert market.slots(job_id, 0).provider == provider
    assert (market.asks(job_id, 0), market.asks(job_id, 1)) == (0, 0)
    assert market.slots(job_id, 1).provider == "0x" + "00" * 20
    assert market.base_slashes(job_id, 1) == 0


def test_reveal__on_an_instant_job__reverts(market, providers, provider, requester):
    spec = make_spec(requester, auction=AUCTION_INSTANT)
    job_id = providers.post(spec)
    travel_to(spec.bid_deadline)
    with boa.env.prank(provider), boa.reverts("market: not a sealed auction"):
        market.reveal_bid(job_id, spec, 5 * E18, b"\x01" * 32)


def test_reveal__on_a_finalized_job__reverts(market, providers, provider, provider2, spec):
    job_id = providers.post(spec)
    providers.commit(job_id, spec, provider2, 5 * E18)
    providers.sealed_auction(job_id, spec, [(provider, 4 * E18)])
    with boa.env.prank(provider2), boa.reverts("market: job is not open"):
        market.reveal_bid(job_id, spec, 5 * E18, salt_for(provider2, 5 * E18))


# ---------------------------------------------------------------- finalize: clearing


def test_finalize__k1_two_asks__lowest_wins_at_the_second_lowest__and_refunds_the_rest(
    market, token, registry, providers, provider, provider2, requester, spec
):
    job_id = providers.post(spec)
    providers.sealed_auction(job_id, spec, [(provider, 6 * E18), (provider2, 3 * E18)])
    leased = one_event(market, "JobLeased")
    slot_log = one_event(market, "SlotLeased")
    locked = one_event(market, "StakeLocked")
    assert (leased.job_id, leased.clearing_price, leased.refunded) == (job_id, 6 * E18, 4 * E18)
    assert (slot_log.job_id, slot_log.slot, slot_log.provider, slot_log.price) == (job_id, 0, provider2, 6 * E18)
    assert (locked.provider, locked.active_jobs) == (provider2, 1)
    job = market.jobs(job_id)
    assert (job.status, job.escrow, job.count, job.lease_start) == (JOB_LEASED, 6 * E18, 1, now())
    slot = market.slots(job_id, 0)
    assert (slot.provider, slot.status, slot.price, slot.gpu_seconds) == (provider2, SLOT_ASSIGNED, 6 * E18, 0)
    assert market.credits(requester) == 4 * E18
    assert registry.stakes(provider2).active_jobs == 1
    assert registry.stakes(provider).active_jobs == 0
    assert_solvent(market, token, [job_id])


def test_finalize__k1_one_ask__clears_at_the_max_price(market, providers, provider, requester, spec):
    job_id = providers.post(spec)
    providers.sealed_auction(job_id, spec, [(provider, 2 * E18)])
    assert one_event(market, "JobLeased").clearing_price == spec.max_price
    assert market.slots(job_id, 0).price == spec.max_price
    assert market.credits(requester) == 0


def test_finalize__k2_three_asks__two_lowest_win_at_the_third(
    market, token, providers, provider, provider2, provider3, requester
):
    spec = make_spec(requester, redundancy=2)
    job_id = providers.post(spec)
    providers.sealed_auction(job_id, spec, [(provider, 7 * E18), (provider2, 2 * E18), (provider3, 5 * E18)])
    assert one_event(market, "JobLeased").clearing_price == 7 * E18
    assert [e.slot for e in events(market, "SlotLeased")] == [0, 1]
    winners = {market.slots(job_id, i).provider for i in range(2)}
    assert winners == {provider2, provider3}
    assert [market.slots(job_id, i).price for i in range(2)] == [7 * E18, 7 * E18]
    assert market.jobs(job_id).escrow == 14 * E18
    assert market.credits(requester) == 20 * E18 - 14 * E18
    assert_solvent(market, token, [job_id])


def test_finalize__k2_exactly_two_asks__clears_at_the_max_price(market, providers, provider, provider2, requester):
    spec = make_spec(requester, redundancy=2)
    job_id = providers.post(spec)
    providers.sealed_auction(job_id, spec, [(provider, 7 * E18), (provider2, 2 * E18)])
    assert one_event(market, "JobLeased").clearing_price == spec.max_price
    assert market.credits(requester) == 0


def test_finalize__k3_many_asks__keeps_only_the_k_plus_1_lowest(deployment, market, flow, requester):
    bidders = [boa.env.generate_address(f"bidder{i}") for i in range(6)]
    for b in bidders:
        from tests.contracts.contract_helpers import fund

        fund(deployment, b)
        flow.register_provider(b)
    spec = make_spec(requester, redundancy=3)
    job_id = flow.post(spec)
    prices = [9, 4, 8, 1, 6, 3]  # the 4 lowest: 1, 3, 4, 6 -> winners 1, 3, 4 at 6
    asks = [(b, p * E18) for b, p in zip(bidders, prices, strict=True)]
    flow.sealed_auction(job_id, spec, asks, finalize=False)
    assert market.jobs(job_id).count == 4
    kept = [market.asks(job_id, i) >> 160 for i in range(4)]
    assert kept == [1 * E18, 3 * E18, 4 * E18, 6 * E18]
    flow.finalize(job_id, spec)
    assert one_event(market, "JobLeased").clearing_price == 6 * E18
    assert [market.slots(job_id, i).provider for i in range(3)] == [bidders[3], bidders[5], bidders[1]]


def test_reveal__above_the_kept_asks__logs_rank_k_plus_1__and_is_dropped(
    deployment, market, flow, provider, provider2, provider3, requester, spec
):
    for p in (provider, provider2, provider3):
        flow.register_provider(p)
    job_id = flow.post(spec)
    for p, price in ((provider, 2 * E18), (provider2, 3 * E18), (provider3, 4 * E18)):
        flow.commit(job_id, spec, p, price)
    travel_to(spec.bid_deadline)
    flow.reveal(job_id, spec, provider, 2 * E18)
    flow.reveal(job_id, spec, provider2, 3 * E18)
    flow.reveal(job_id, spec, provider3, 4 * E18)
    assert one_event(market, "BidRevealed").rank == 2  # k + 1: not kept
    assert market.jobs(job_id).count == 2


def test_finalize__tied_asks__the_earlier_reveal_wins(market, providers, provider, provider2, spec):
    job_id = providers.post(spec)
    providers.sealed_auction(job_id, spec, [(provider2, 5 * E18), (provider, 5 * E18)])
    assert market.slots(job_id, 0).provider == provider2
    assert market.slots(job_id, 0).price == 5 * E18


def test_finalize__tied_asks_revealed_the_other_way__the_earlier_reveal_wins(
    market, providers, provider, provider2, spec
):
    job_id = providers.post(spec)
    providers.sealed_auction(job_id, spec, [(provider, 5 * E18), (provider2, 5 * E18)])
    assert market.slots(job_id, 0).provider == provider


def test_finalize__with_too_few_asks__expires_and_refunds_everything(market, token, providers, provider, requester):
    spec = make_spec(requester, redundancy=2)
    job_id = providers.post(spec)
    providers.sealed_auction(job_id, spec, [(provider, 5 * E18)])
    log = one_event(market, "JobExpired")
    assert (log.job_id, log.asks, log.refunded) == (job_id, 1, 20 * E18)
    job = market.jobs(job_id)
    assert (job.status, job.escrow) == (JOB_EXPIRED, 0)
    assert market.credits(requester) == 20 * E18
    assert_solvent(market, token, [job_id])


def test_finalize__with_no_bids__expires__and_anyone_may_call_it(market, flow, stranger, requester, spec):
    job_id = flow.post(spec)
    travel_to(spec.reveal_deadline)
    flow.finalize(job_id, spec, caller=stranger)
    assert one_event(market, "JobExpired").asks == 0
    assert market.credits(requester) == spec.max_price


def test_finalize__before_the_reveal_deadline__reverts(market, providers, provider, spec):
    job_id = providers.post(spec)
    providers.commit(job_id, spec, provider, 5 * E18)
    travel_to(spec.reveal_deadline - 1)
    with boa.reverts("market: reveal still open"):
        market.finalize_auction(job_id, spec)


def test_finalize__twice__reverts(market, providers, provider, spec):
    job_id = providers.post(spec)
    providers.sealed_auction(job_id, spec, [(provider, 5 * E18)])
    with boa.reverts("market: job is not open"):
        market.finalize_auction(job_id, spec)


# ---------------------------------------------------------------- instant


def _instant(requester, **overrides):
    return make_spec(requester, auction=AUCTION_INSTANT, **overrides)


def test_take_job__leases_at_the_price_floor__and_refunds_the_rest(
    market, token, registry, providers, provider, requester
):
    spec = _instant(requester)
    job_id = providers.post(spec)
    assert providers.take(job_id, spec, provider) == 0
    slot_log = one_event(market, "SlotLeased")
    leased = one_event(market, "JobLeased")
    assert (slot_log.slot, slot_log.provider, slot_log.price) == (0, provider, DEFAULT_PRICE_FLOOR)
    refund = value(spec.max_price, 3_600) - value(DEFAULT_PRICE_FLOOR, 3_600)
    assert (leased.clearing_price, leased.refunded) == (DEFAULT_PRICE_FLOOR, refund)
    job = market.jobs(job_id)
    assert (job.status, job.count, job.escrow, job.lease_start) == (JOB_LEASED, 1, DEFAULT_PRICE_FLOOR, now())
    assert market.credits(requester) == refund
    assert registry.stakes(provider).active_jobs == 1
    assert_solvent(market, token, [job_id])


def test_take_job__k2__stays_open_until_the_last_slot_is_taken(
    market, token, providers, provider, provider2, requester
):
    providers.register_provider(provider2, stake=0, price_floor=6 * E18)
    spec = _instant(requester, redundancy=2)
    job_id = providers.post(spec)
    assert providers.take(job_id, spec, provider) == 0
    assert events(market, "JobLeased") == []
    job = market.jobs(job_id)
    assert (job.status, job.count, job.escrow) == (JOB_OPEN, 1, 20 * E18 - 6 * E18)
    assert providers.take(job_id, spec, provider2) == 1
    job = market.jobs(job_id)
    assert (job.status, job.count, job.escrow) == (JOB_LEASED, 2, 10 * E18)
    assert [market.slots(job_id, i).price for i in range(2)] == [DEFAULT_PRICE_FLOOR, 6 * E18]
    assert market.credits(requester) == 10 * E18
    assert_solvent(market, token, [job_id])


def test_take_job__on_a_sealed_job__reverts(market, providers, provider, spec):
    job_id = providers.post(spec)
    with boa.env.prank(provider), boa.reverts("market: not an instant auction"):
        market.take_job(job_id, spec)


def test_take_job__when_already_leased__reverts(market, providers, provider, provider2, requester):
    spec = _instant(requester)
    job_id = providers.post(spec)
    providers.take(job_id, spec, provider)
    with boa.env.prank(provider2), boa.reverts("market: job is not open"):
        market.take_job(job_id, spec)


def test_take_job__at_the_bid_deadline__reverts(market, providers, provider, requester):
    spec = _instant(requester)
    job_id = providers.post(spec)
    travel_to(spec.bid_deadline)
    with boa.env.prank(provider), boa.reverts("market: bidding closed"):
        market.take_job(job_id, spec)


def test_take_job__by_its_requester__reverts(market, providers, requester):
    providers.register_provider(requester)
    spec = _instant(requester)
    job_id = providers.post(spec)
    with boa.env.prank(requester), boa.reverts("market: requester cannot take its own job"):
        market.take_job(job_id, spec)


def test_take_job__by_an_ineligible_account__reverts(market, flow, stranger, requester):
    spec = _instant(requester)
    job_id = flow.post(spec)
    with boa.env.prank(stranger), boa.reverts("market: provider not eligible"):
        market.take_job(job_id, spec)


def test_take_job__with_a_price_floor_above_the_max__reverts(market, registry, providers, provider, requester):
    with boa.env.prank(provider):
        registry.register_provider(make_offer(provider, price_floor=11 * E18))
    spec = _instant(requester)
    job_id = providers.post(spec)
    with boa.env.prank(provider), boa.reverts("market: price floor above max price"):
        market.take_job(job_id, spec)


def test_take_job__twice_by_one_provider__reverts(market, providers, provider, requester):
    spec = _instant(requester, redundancy=2)
    job_id = providers.post(spec)
    providers.take(job_id, spec, provider)
    with boa.env.prank(provider), boa.reverts("market: provider already holds a slot"):
        market.take_job(job_id, spec)


def test_finalize__instant_before_the_bid_deadline__reverts(market, providers, requester):
    spec = _instant(requester)
    job_id = providers.post(spec)
    with boa.reverts("market: bidding still open"):
        market.finalize_auction(job_id, spec)


def test_finalize__instant_unfilled__expires_and_releases_the_taken_slots(
    market, token, registry, providers, provider, requester
):
    spec = _instant(requester, redundancy=2)
    job_id = providers.post(spec)
    providers.take(job_id, spec, provider)
    travel_to(spec.bid_deadline)
    providers.finalize(job_id, spec)
    log = one_event(market, "JobExpired")
    assert (log.asks, log.refunded) == (1, 20 * E18 - 6 * E18)
    assert one_event(market, "StakeReleased").provider == provider
    assert market.slots(job_id, 0).status == SLOT_RELEASED
    assert registry.stakes(provider).active_jobs == 0
    assert registry.reputation(provider).failed == 1
    assert market.credits(requester) == 20 * E18
    assert_solvent(market, token, [job_id])


@pytest.mark.parametrize("k", [1, 2, 3])
def test_sealed_job__with_k_winners__leases_k_slots_at_one_price(market, token, deployment, flow, requester, k):
    from tests.contracts.contract_helpers import fund

    bidders = [boa.env.generate_address(f"k-bidder{i}") for i in range(k + 1)]
    for b in bidders:
        fund(deployment, b)
        flow.register_provider(b)
    spec = make_spec(requester, redundancy=k)
    job_id = flow.post(spec)
    flow.sealed_auction(job_id, spec, [(b, (i + 1) * E18) for i, b in enumerate(bidders)])
    assert [market.slots(job_id, i).price for i in range(k)] == [(k + 1) * E18] * k
    assert market.jobs(job_id).escrow == k * value((k + 1) * E18, spec.max_gpu_seconds)
    assert_solvent(market, token, [job_id])
