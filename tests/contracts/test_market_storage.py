"""The market's packed storage at the edges of every field, and who may bid on a job."""

from __future__ import annotations

import boa

from tests.contracts.contract_helpers import (
    fund,
    make_offer,
    make_spec,
    now,
    owner_change,
    queue_owner_change,
    travel_to,
)

MAX_U64 = 2**64 - 1
AUCTION_INSTANT = 1
SLOT_COMMITTED = 2
SLOT_DISPUTED = 4


def test_set_parameters__with_a_dispute_bond_beyond_the_packed_escrow__reverts(market, owner, treasury):
    queue_owner_change(market, owner, "set_parameters", treasury, 100, 2**128 + 1, 0, 5_000)
    with boa.env.prank(owner), boa.reverts("market: dispute bond too large"):
        market.set_parameters(treasury, 100, 2**128 + 1, 0, 5_000)
    owner_change(market, owner, "set_parameters", treasury, 100, 2**128, 0, 5_000)
    assert market.dispute_bond() == 2**128


def test_set_parameters__with_a_base_slash_beyond_a_slot_s_packed_terms__reverts(market, owner, treasury):
    queue_owner_change(market, owner, "set_parameters", treasury, 100, 0, 2**96, 5_000)
    with boa.env.prank(owner), boa.reverts("market: base slash too large"):
        market.set_parameters(treasury, 100, 0, 2**96, 5_000)


def test_largest_job__round_trips_through_the_packed_words(
    deployment, market, registry, token, providers, requester, provider, verifier, owner, treasury
):
    # The largest price, GPU-seconds and (with a dispute at the largest bond) escrow the market allows.
    floor = 2**96 - 1
    with boa.env.prank(provider):
        registry.register_provider(make_offer(provider, price_floor=floor))
    spec = make_spec(
        requester,
        auction=AUCTION_INSTANT,
        max_price=floor,
        max_gpu_seconds=MAX_U64,
        run_duration=8 * 86_400,  # the longest run the market allows by default
        challenge_window=3 * 86_400,  # longer than the owner's change delay, which passes before the dispute
    )
    fund(deployment, requester, market.escrow_for(spec))
    # The lease locks its whole value and the base slash: the provider stakes that much.
    fund(deployment, provider, market.escrow_for(spec) + market.base_slash())
    providers.stake(provider, market.escrow_for(spec) + market.base_slash())
    job_id = providers.post(spec)
    with boa.env.prank(provider):
        market.take_job(job_id, spec)
    job = market.jobs(job_id)
    assert job.escrow == floor * MAX_U64 // 3_600 and job.count == 1 and job.lease_start == now()
    slot = market.slots(job_id, 0)
    assert (slot.provider, slot.status, slot.price, slot.gpu_seconds) == (provider, 1, floor, 0)

    travel_to(now() + 10)
    with boa.env.prank(provider):
        market.commit_result(job_id, spec, 0, b"\xff" * 32, 10)
    slot = market.slots(job_id, 0)
    assert (slot.status, slot.gpu_seconds, slot.committed_at, slot.result_root) == (
        SLOT_COMMITTED,
        10,
        now(),
        b"\xff" * 32,
    )

    queue_owner_change(market, owner, "set_parameters", treasury, 100, 2**128, 0, 5_000)
    with boa.env.prank(owner):
        market.set_parameters(treasury, 100, 2**128, 0, 5_000)
    fund(deployment, requester, 2**128)
    with boa.env.prank(requester):
        token.approve(market.address, 2**128)
        market.dispute_result(job_id, spec, 0)
    slot = market.slots(job_id, 0)
    assert (slot.status, slot.disputer, slot.provider, slot.price) == (SLOT_DISPUTED, requester, provider, floor)
    assert market.jobs(job_id).escrow == floor * MAX_U64 // 3_600 + 2**128
    assert market.jobs(job_id).lease_start == job.lease_start


def test_commit_bid__by_the_jobs_own_requester__reverts(deployment, market, registry, providers, requester):
    # A requester that is also a registered provider may not bid up (or win) its own job.
    fund(deployment, requester)
    with boa.env.prank(requester):
        registry.stake(registry.min_provider_stake())
        registry.register_provider(make_offer(requester))
    spec = make_spec(requester)
    job_id = providers.post(spec)
    with boa.env.prank(requester), boa.reverts("market: requester cannot bid on its own job"):
        market.commit_bid(job_id, spec, b"\x01" * 32)
