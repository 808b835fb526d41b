"""The market's money at risk matches the money at stake: each attack of the economics review
(docs/economics.md) as a test that fails on the contracts before the fix and passes after.

Tests are named ``test_<what>__<condition>__<outcome>``.
"""

from __future__ import annotations

from typing import Any

import boa
import pytest
from eth_account import Account
from eth_utils import keccak

from tests.contracts.contract_helpers import (
    BASE_SLASH,
    CHANGE_DELAY,
    DEFAULT_PRICE_FLOOR,
    DISPUTE_BOND,
    E18,
    FEE_BPS,
    MAX_UINT,
    MIN_PROVIDER_STAKE,
    NO_SHOW_ROOT,
    OUTCOME_ACCEPT,
    SLASH_REQUESTER_BPS,
    SLOT_NO_SHOW,
    SLOT_REFUNDED,
    assert_solvent,
    fund,
    load,
    make_spec,
    now,
    queue_owner_change,
    sign_permit,
    travel_to,
    value,
)
from tests.contracts.test_reservations import (
    CHALLENGE,
    DAY,
    DURATION,
    ESCROW,
    GPUS,
    PRICE,
    bought,
    deploy_reservations,
    window,
)

# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def res(deployment, providers, owner, treasury, requester, provider, provider2, verifier, stranger) -> Any:
    r = deploy_reservations(deployment.token, deployment.registry, owner, treasury, court=verifier)
    for account in (requester, provider, provider2, verifier, stranger):
        with boa.env.prank(account):
            deployment.token.approve(r.address, MAX_UINT)
    return r


def _permit_account(deployment: Any, amount: int) -> Any:
    acct = Account.from_key(b"\x09" * 32)
    with boa.env.prank(deployment.owner):
        deployment.token.mint(acct.address, amount)
    return acct


# ---------------------------------------------------------------- (a) permit front-running


def test_post_job_with_permit__permit_front_run_by_a_stranger__posts_with_the_allowance_it_set(
    deployment, market, token, stranger
):
    acct = _permit_account(deployment, 100 * E18)
    spec = make_spec(acct.address)
    deadline = now() + 600
    escrow = market.escrow_for(spec)
    v, r, s = sign_permit(token, acct.key, market.address, escrow, deadline)
    # The signed permit is public in the mempool: a stranger submits it first.
    with boa.env.prank(stranger):
        token.permit(acct.address, market.address, escrow, deadline, v, r, s)
    with boa.env.prank(acct.address):
        job_id = market.post_job_with_permit(spec, deadline, v, r, s)
    assert market.jobs(job_id).escrow == escrow
    assert token.allowance(acct.address, market.address) == 0


def test_post_job_with_permit__permit_used_and_no_allowance__reverts_with_the_permit_reason(
    deployment, market, token, stranger
):
    acct = _permit_account(deployment, 100 * E18)
    spec = make_spec(acct.address)
    deadline = now() + 600
    escrow = market.escrow_for(spec)
    v, r, s = sign_permit(token, acct.key, market.address, escrow, deadline)
    with boa.env.prank(stranger):
        token.permit(acct.address, market.address, escrow, deadline, v, r, s)
    with boa.env.prank(acct.address):
        token.approve(market.address, escrow - 1)
    with boa.env.prank(acct.address), boa.reverts("erc20: invalid signature"):
        market.post_job_with_permit(spec, deadline, v, r, s)


def test_buy_with_permit__permit_front_run_by_a_stranger__buys_with_the_allowance_it_set(
    deployment, res, token, provider, stranger
):
    acct = _permit_account(deployment, ESCROW)
    with boa.env.prank(provider):
        rid = res.offer(now() + DAY, DURATION, GPUS, PRICE)
    deadline = now() + 600
    v, r, s = sign_permit(token, acct.key, res.address, ESCROW, deadline)
    with boa.env.prank(stranger):
        token.permit(acct.address, res.address, ESCROW, deadline, v, r, s)
    with boa.env.prank(acct.address):
        res.buy_with_permit(rid, deadline, v, r, s)
    assert res.reservations(rid).holder == acct.address
    assert token.balanceOf(acct.address) == 0


# ---------------------------------------------------------------- (b) collateral per lease


def test_take_job__one_minimum_stake_for_many_jobs__leases_only_what_its_free_stake_covers(
    flow, market, registry, requester, stranger
):
    # Each 400-token slot locks 400 + the base slash: a 1,000 stake backs two, not ten.
    cheat = stranger
    flow.register_provider(cheat, price_floor=400 * E18)
    spec = make_spec(requester, auction=1, max_price=400 * E18, max_gpu_seconds=3_600)
    collateral = value(400 * E18, 3_600) + BASE_SLASH
    first = flow.post(spec)
    flow.take(first, spec, cheat)
    assert registry.stakes(cheat).locked == collateral
    assert registry.free_stake(cheat) == MIN_PROVIDER_STAKE - collateral
    second = flow.post(spec)
    flow.take(second, spec, cheat)
    assert registry.free_stake(cheat) == MIN_PROVIDER_STAKE - 2 * collateral == 0
    third = flow.post(spec)
    with boa.env.prank(cheat), boa.reverts("market: provider not eligible"):
        market.take_job(third, spec)


def test_request_unbond__stake_locked_by_a_lease__reverts(flow, registry, requester, provider):
    spec = make_spec(requester, auction=1)
    job_id = flow.post(spec)
    flow.take(job_id, spec, provider)
    locked = registry.stakes(provider).locked
    assert locked > 0
    with boa.env.prank(provider), boa.reverts("registry: amount exceeds free stake"):
        registry.request_unbond(MIN_PROVIDER_STAKE - locked + 1)
    with boa.env.prank(provider):
        registry.request_unbond(MIN_PROVIDER_STAKE - locked)


def test_finalize_auction__winner_unbonded_between_reveal_and_finalize__next_ask_wins_at_the_same_price(
    flow, market, registry, requester, provider, provider2, provider3
):
    spec = make_spec(requester)
    job_id = flow.post(spec)
    flow.sealed_auction(job_id, spec, [(provider, 5 * E18), (provider2, 6 * E18)], finalize=False)
    with boa.env.prank(provider):
        registry.request_unbond(MIN_PROVIDER_STAKE)
    flow.finalize(job_id, spec)
    s = market.slots(job_id, 0)
    assert (s.provider, s.price) == (provider2, 6 * E18)
    assert registry.stakes(provider).active_jobs == 0
    assert registry.stakes(provider2).locked == value(6 * E18, spec.max_gpu_seconds) + BASE_SLASH


def test_finalize_auction__only_winner_deregistered_after_reveal__expires_and_locks_nothing(
    flow, market, registry, requester, provider
):
    spec = make_spec(requester)
    job_id = flow.post(spec)
    flow.sealed_auction(job_id, spec, [(provider, 5 * E18)], finalize=False)
    with boa.env.prank(provider):
        registry.deregister_provider()
    flow.finalize(job_id, spec)
    assert market.jobs(job_id).status == 8  # EXPIRED
    assert registry.stakes(provider).locked == 0


def test_settle__slashed_slot__takes_and_unlocks_exactly_its_collateral(flow, registry, requester, provider):
    spec = make_spec(requester, auction=1)
    job_id = flow.post(spec)
    flow.take(job_id, spec, provider)
    collateral = registry.stakes(provider).locked
    travel_to(now() + spec.run_duration + 1)
    flow.settle(job_id, spec, 0)
    s = registry.stakes(provider)
    assert (s.locked, s.active_jobs, s.active) == (0, 0, MIN_PROVIDER_STAKE - collateral)


def test_buy__reservation__locks_its_price_and_the_base_slash(res, registry, provider, requester):
    with boa.env.prank(provider):
        rid = res.offer(now() + DAY, DURATION, GPUS, PRICE)
    with boa.env.prank(requester):
        res.buy(rid)
    assert registry.stakes(provider).locked == ESCROW + BASE_SLASH


# ---------------------------------------------------------------- (c) item 5: bounded windows

DAY_S = 86_400


@pytest.mark.parametrize(
    ("terms", "reason"),
    [
        ({"bid_deadline": 1 * DAY_S + 1}, "market: bid window above the maximum"),
        ({"bid_deadline": 3_600, "reveal_deadline": 3_600 + DAY_S + 1}, "market: reveal window above the maximum"),
        ({"run_duration": 8 * DAY_S + 1}, "market: run duration above the maximum"),
        ({"challenge_window": 7 * DAY_S + 1}, "market: challenge window above the maximum"),
        ({"challenge_window": 2**64 - 1}, "market: challenge window above the maximum"),
    ],
)
def test_post_job__window_above_the_market_bound__reverts(flow, market, requester, terms, reason):
    t = now()
    fields = {k: (t + v if k.endswith("deadline") else v) for k, v in terms.items()}
    spec = make_spec(requester, **fields)
    with boa.env.prank(requester), boa.reverts(reason):
        market.post_job(spec)


def test_post_job__windows_at_the_market_bounds__posts(flow, market, requester):
    t = now()
    spec = make_spec(
        requester,
        bid_deadline=t + DAY_S,
        reveal_deadline=t + 2 * DAY_S,
        run_duration=8 * DAY_S,
        challenge_window=7 * DAY_S,
    )
    assert flow.post(spec) >= 1
    assert market.window_bounds() == (DAY_S, 8 * DAY_S, 7 * DAY_S)


def test_set_window_bounds__above_the_hard_limit_or_by_a_stranger__reverts(market, owner, stranger):
    limit = market.MAX_WINDOW()
    assert limit == 30 * DAY_S
    queue_owner_change(market, owner, "set_window_bounds", DAY_S, limit + 1, DAY_S)
    with boa.env.prank(owner), boa.reverts("market: window bound out of range"):
        market.set_window_bounds(DAY_S, limit + 1, DAY_S)
    queue_owner_change(market, owner, "set_window_bounds", 0, DAY_S, DAY_S)
    with boa.env.prank(owner), boa.reverts("market: window bound out of range"):
        market.set_window_bounds(0, DAY_S, DAY_S)
    with boa.env.prank(stranger), boa.reverts():
        market.set_window_bounds(DAY_S, DAY_S, DAY_S)


def test_finalize_auction__instant_slot_of_a_job_that_never_filled__unlocks_its_collateral_without_penalty(
    flow, market, registry, requester, provider
):
    # k = 2, one slot taken: the provider leaves after the (bounded) bid deadline, stake whole.
    spec = make_spec(requester, auction=1, redundancy=2, bid_deadline=now() + DAY_S)
    job_id = flow.post(spec)
    flow.take(job_id, spec, provider)
    assert registry.stakes(provider).locked > 0
    travel_to(spec.bid_deadline)
    with boa.env.prank(provider):
        market.finalize_auction(job_id, spec)
    s = registry.stakes(provider)
    assert (s.locked, s.active_jobs, s.active) == (0, 0, MIN_PROVIDER_STAKE)
    assert market.jobs(job_id).status == 8  # EXPIRED


# ---------------------------------------------------------------- (d) item 3: over-claims


def _challenger(providers: Any) -> str:
    challenger = boa.env.generate_address("challenger")
    fund(providers.d, challenger)
    providers.register_verifier(challenger)
    return challenger


def test_settle__verifier_cut_a_disputed_claim__returns_the_bond_and_slashes_in_proportion(
    providers, market, registry, requester, provider, verifier
):
    challenger = _challenger(providers)
    spec = make_spec(requester, auction=1)
    job_id = providers.committed_job(spec, provider, 3_600)
    with boa.env.prank(challenger):
        market.dispute_result(job_id, spec, 0)
    with boa.env.prank(verifier):
        market.attest(job_id, spec, 0, OUTCOME_ACCEPT, 900)  # a quarter of the claim holds
    assert market.over_claims(job_id, 0) == 3_600
    assert market.dispute_bonds(job_id, 0) == DISPUTE_BOND
    price = market.slots(job_id, 0).price
    slot_value = value(price, spec.max_gpu_seconds)
    collateral = slot_value + BASE_SLASH
    provider_before, requester_before = market.credits(provider), market.credits(requester)
    providers.settle(job_id, spec, 0)

    penalty = collateral * (3_600 - 900) // 3_600
    paid = value(price, 900)
    fee = paid * FEE_BPS // 10_000
    to_requester = penalty * SLASH_REQUESTER_BPS // 10_000
    assert market.credits(provider) - provider_before == paid - fee  # no bond for the provider
    assert market.credits(challenger) == DISPUTE_BOND + penalty - to_requester
    assert market.credits(requester) - requester_before == slot_value - paid + to_requester
    s = registry.stakes(provider)
    assert (s.locked, s.active) == (0, MIN_PROVIDER_STAKE - penalty)


def test_settle__verifier_cut_an_undisputed_claim__slashes_in_proportion_to_the_cut(
    providers, market, registry, treasury, requester, provider, verifier
):
    spec = make_spec(requester, auction=1)
    job_id = providers.committed_job(spec, provider, 3_600)
    with boa.env.prank(verifier):
        market.attest(job_id, spec, 0, OUTCOME_ACCEPT, 3_000)
    collateral = value(market.slots(job_id, 0).price, spec.max_gpu_seconds) + BASE_SLASH
    treasury_before = market.credits(treasury)
    providers.settle(job_id, spec, 0)
    penalty = collateral * 600 // 3_600
    assert registry.stakes(provider).active == MIN_PROVIDER_STAKE - penalty
    assert market.credits(treasury) - treasury_before >= penalty - penalty * SLASH_REQUESTER_BPS // 10_000


def test_settle__verifier_accepted_the_whole_claim__pays_the_bond_to_the_provider_and_slashes_nothing(
    providers, market, registry, requester, provider, verifier
):
    challenger = _challenger(providers)
    spec = make_spec(requester, auction=1)
    job_id = providers.committed_job(spec, provider, 3_600)
    with boa.env.prank(challenger):
        market.dispute_result(job_id, spec, 0)
    with boa.env.prank(verifier):
        market.attest(job_id, spec, 0, OUTCOME_ACCEPT, 3_600)
    assert market.over_claims(job_id, 0) == 0
    price = market.slots(job_id, 0).price
    paid = value(price, 3_600)
    providers.settle(job_id, spec, 0)
    assert market.credits(provider) == paid - paid * FEE_BPS // 10_000 + DISPUTE_BOND
    assert market.credits(challenger) == 0
    assert registry.stakes(provider).active == MIN_PROVIDER_STAKE


def test_settle__cut_within_the_tolerance__pays_the_verified_seconds_and_slashes_nothing(
    providers, market, registry, requester, provider, verifier
):
    # Metering noise: 5 % below the claim (3,420 of 3,600 s) is paid as verified, never penalised.
    spec = make_spec(requester, auction=1)
    job_id = providers.committed_job(spec, provider, 3_600)
    tolerated = 3_600 - 3_600 * market.OVER_CLAIM_TOLERANCE_BPS() // 10_000
    assert tolerated == 3_420
    with boa.env.prank(verifier):
        market.attest(job_id, spec, 0, OUTCOME_ACCEPT, tolerated)
    paid = value(market.slots(job_id, 0).price, tolerated)
    providers.settle(job_id, spec, 0)
    assert market.credits(provider) == paid - paid * FEE_BPS // 10_000
    assert registry.stakes(provider).active == MIN_PROVIDER_STAKE


def test_settle__cut_just_beyond_the_tolerance__slashes_in_proportion(
    providers, market, registry, requester, provider, verifier
):
    spec = make_spec(requester, auction=1)
    job_id = providers.committed_job(spec, provider, 3_600)
    with boa.env.prank(verifier):
        market.attest(job_id, spec, 0, OUTCOME_ACCEPT, 3_419)
    collateral = value(market.slots(job_id, 0).price, spec.max_gpu_seconds) + BASE_SLASH
    providers.settle(job_id, spec, 0)
    assert registry.stakes(provider).active == MIN_PROVIDER_STAKE - collateral * 181 // 3_600


# ---------------------------------------------------------------- (e) item 4: a dispute nobody rules on


def test_settle__dispute_nobody_ruled_on__pays_the_claim_and_gives_the_bond_to_the_provider(
    providers, market, registry, requester, provider
):
    spec = make_spec(requester, auction=1)
    job_id = providers.committed_job(spec, provider, 1_800)
    with boa.env.prank(requester):
        market.dispute_result(job_id, spec, 0)  # and no verifier ever rules
    travel_to(market.slots(job_id, 0).committed_at + 2 * spec.challenge_window)
    requester_before = market.credits(requester)
    providers.settle(job_id, spec, 0)
    price = market.slots(job_id, 0).price
    paid = value(price, 1_800)
    assert market.slots(job_id, 0).status == 64  # PAID
    assert market.credits(provider) == paid - paid * FEE_BPS // 10_000 + DISPUTE_BOND
    # The requester is refunded only the escrow above the claim: its bond is gone.
    assert market.credits(requester) - requester_before == value(price, spec.max_gpu_seconds) - paid
    assert registry.stakes(provider).active == MIN_PROVIDER_STAKE


# ---------------------------------------------------------------- (f) item 7: idle reservation refunded later


def test_report_not_served__idle_window_reported_after_it_ended__reverts_and_the_provider_is_paid(
    res, registry, provider, requester
):
    rid = bought(res, provider, requester)
    _, end = window(res, rid)
    travel_to(end + 10)  # the holder never ran a job, and reports once the window is over
    with boa.env.prank(requester), boa.reverts("reservations: window over"):
        res.report_not_served(rid)
    travel_to(end + CHALLENGE)
    res.settle(rid)
    assert res.credits(requester) == 0
    assert res.credits(provider) == ESCROW - ESCROW * FEE_BPS // 10_000
    assert registry.stakes(provider).locked == 0


def test_report_not_served__idle_window_reported_and_nobody_ruled__pays_the_provider_and_the_bond(
    res, provider, requester
):
    rid = bought(res, provider, requester)
    _, end = window(res, rid)
    travel_to(end - 1)  # within the window, no usage, and no verifier rules
    with boa.env.prank(requester):
        res.report_not_served(rid)
    travel_to(end + 2 * CHALLENGE)
    res.settle(rid)
    assert res.credits(requester) == 0
    assert res.credits(provider) == ESCROW - ESCROW * FEE_BPS // 10_000 + res.dispute_bonds(rid)


# ---------------------------------------------------------------- (g) item 2: a requester that never delivers


def _leased_instant(flow: Any, requester: str, provider: str, **overrides: Any) -> tuple[int, Any]:
    spec = make_spec(requester, auction=1, **overrides)
    job_id = flow.post(spec)
    flow.take(job_id, spec, provider)
    return job_id, spec


def test_commit_result__no_show_reported__settles_unslashed_with_the_no_show_fee(
    flow, market, registry, token, treasury, requester, provider
):
    # The requester never uploads: before, the provider's only way out was an empty result that a
    # verifier rejected (slot value + base slash gone); now it reports the no-show and is paid a fee.
    job_id, spec = _leased_instant(flow, requester, provider)
    requester_before = market.credits(requester)
    completed = registry.reputation(provider).completed
    travel_to(market.jobs(job_id).lease_start + spec.run_duration // 4)
    flow.commit_result(job_id, spec, 0, 0, root=NO_SHOW_ROOT)
    assert market.slots(job_id, 0).status == SLOT_NO_SHOW
    flow.settle(job_id, spec, 0, caller=provider)
    slot_value = value(DEFAULT_PRICE_FLOOR, spec.max_gpu_seconds)
    fee_for_holding = slot_value * market.NO_SHOW_FEE_BPS() // 10_000  # 10 %: 0.4 tokens here
    protocol_fee = fee_for_holding * FEE_BPS // 10_000
    assert market.credits(provider) == fee_for_holding - protocol_fee
    assert market.credits(requester) - requester_before == slot_value - fee_for_holding
    assert market.slots(job_id, 0).status == SLOT_REFUNDED
    stake = registry.stakes(provider)
    assert (stake.active, stake.locked, stake.active_jobs) == (MIN_PROVIDER_STAKE, 0, 0)
    assert registry.reputation(provider).completed == completed + 1
    assert_solvent(market, token, [job_id])


def test_attest__on_a_no_show_report__reverts__nobody_can_turn_it_into_a_slash(
    flow, providers, market, requester, provider, verifier
):
    job_id, spec = _leased_instant(flow, requester, provider)
    travel_to(market.jobs(job_id).lease_start + spec.run_duration // 4)
    flow.commit_result(job_id, spec, 0, 0, root=NO_SHOW_ROOT)
    with boa.env.prank(verifier), boa.reverts("market: result is not committed"):
        market.attest(job_id, spec, 0, 1, 0)
    with boa.env.prank(requester), boa.reverts("market: result is not committed"):
        market.dispute_result(job_id, spec, 0)


def test_commit_result__no_show_before_a_quarter_of_the_run_window__reverts(flow, market, requester, provider):
    # A provider cannot take the fee without giving the requester time to upload.
    job_id, spec = _leased_instant(flow, requester, provider)
    travel_to(market.jobs(job_id).lease_start + spec.run_duration // 4 - 1)
    with boa.env.prank(provider), boa.reverts("market: too early to report a no-show"):
        market.commit_result(job_id, spec, 0, NO_SHOW_ROOT, 0)


def test_commit_result__no_show_that_claims_seconds__reverts(flow, market, requester, provider):
    job_id, spec = _leased_instant(flow, requester, provider)
    travel_to(market.jobs(job_id).lease_start + spec.run_duration // 4)
    with boa.env.prank(provider), boa.reverts("market: a no-show claims no GPU-seconds"):
        market.commit_result(job_id, spec, 0, NO_SHOW_ROOT, 1)


def test_no_show_griefing__costs_the_requester_the_fee_each_time__and_the_provider_nothing(
    flow, market, registry, token, requester, provider
):
    # The attack of the review, four rounds in a row: the requester posts, never uploads, and
    # before the fix came out ahead each round (escrow back plus half the slash).
    wallet_before = token.balanceOf(requester) + market.credits(requester)
    for _ in range(4):
        job_id, spec = _leased_instant(flow, requester, provider)
        travel_to(market.jobs(job_id).lease_start + spec.run_duration // 4)
        flow.commit_result(job_id, spec, 0, 0, root=NO_SHOW_ROOT)
        flow.settle(job_id, spec, 0, caller=provider)
    slot_value = value(DEFAULT_PRICE_FLOOR, 3_600)
    lost = wallet_before - token.balanceOf(requester) - market.credits(requester)
    assert lost == 4 * (slot_value * market.NO_SHOW_FEE_BPS() // 10_000)
    assert registry.stakes(provider).active == MIN_PROVIDER_STAKE


# ---------------------------------------------------------------- (i) item 6: shill reveals


def _shills(flow: Any, n: int) -> list[str]:
    shills = [boa.env.generate_address(f"shill{i}") for i in range(n)]
    for shill in shills:
        fund(flow.d, shill)
        flow.register_provider(shill)
    return shills


def test_shill_ladder__unrevealed_rungs_forfeit_their_bonds__the_attack_loses(
    flow, market, registry, token, treasury, requester, provider, provider2
):
    # Honest asks 5 and 9 (k = 1: the winner is paid the second ask, 9). The requester's shills
    # commit a ladder and, after the honest reveals, reveal only the rung just above 5.
    ladder = [51 * E18 // 10, 6 * E18, 7 * E18, 8 * E18]
    shills = _shills(flow, len(ladder))
    before = sum(token.balanceOf(a) + market.credits(a) + registry.total_stake(a) for a in [requester, *shills])
    spec = make_spec(requester)
    job_id = flow.post(spec)
    flow.commit(job_id, spec, provider, 5 * E18)
    flow.commit(job_id, spec, provider2, 9 * E18)
    for shill, price in zip(shills, ladder, strict=True):
        flow.commit(job_id, spec, shill, price)
    travel_to(spec.bid_deadline)
    flow.reveal(job_id, spec, provider, 5 * E18)
    flow.reveal(job_id, spec, provider2, 9 * E18)
    flow.reveal(job_id, spec, shills[0], ladder[0])
    travel_to(spec.reveal_deadline)
    flow.finalize(job_id, spec)
    assert market.slots(job_id, 0).price == ladder[0]  # the shill moved the price from 9 to 5.1
    # Anyone (here the treasury's keeper) takes the unrevealed rungs' bonds.
    treasury_before = market.credits(treasury)
    for shill in shills[1:]:
        with boa.env.prank(treasury):
            assert market.forfeit_unrevealed(job_id, spec, shill) == BASE_SLASH
    assert market.credits(treasury) - treasury_before == 3 * BASE_SLASH
    with boa.env.prank(treasury), boa.reverts("market: no unrevealed bid"):
        market.forfeit_unrevealed(job_id, spec, shills[1])
    with boa.env.prank(treasury), boa.reverts("market: no unrevealed bid"):
        market.forfeit_unrevealed(job_id, spec, provider)  # revealed: nothing to take
    # The saving on one GPU-hour: 9 - 5.1 = 3.9 tokens; the forfeits: 3 x 100.
    refunded = market.credits(requester)
    after = sum(token.balanceOf(a) + market.credits(a) + registry.total_stake(a) for a in [requester, *shills])
    gain = value(9 * E18 - ladder[0], spec.max_gpu_seconds)
    assert after - before == -value(ladder[0], spec.max_gpu_seconds) - 3 * BASE_SLASH
    assert gain - 3 * BASE_SLASH < 0
    assert refunded > 0


def test_forfeit_unrevealed__before_the_reveal_deadline__reverts(flow, market, requester, provider):
    spec = make_spec(requester)
    job_id = flow.post(spec)
    flow.commit(job_id, spec, provider, 5 * E18)
    travel_to(spec.bid_deadline)
    with boa.env.prank(requester), boa.reverts("market: reveal still open"):
        market.forfeit_unrevealed(job_id, spec, provider)


def test_forfeit_unrevealed__bid_on_a_cancelled_job__reverts(flow, market, registry, requester, provider):
    spec = make_spec(requester)
    job_id = flow.post(spec)
    flow.commit(job_id, spec, provider, 5 * E18)
    with boa.env.prank(requester):
        market.cancel_job(job_id, spec)
    travel_to(spec.reveal_deadline)
    with boa.env.prank(requester), boa.reverts("market: job was cancelled"):
        market.forfeit_unrevealed(job_id, spec, provider)
    assert registry.stakes(provider).active == MIN_PROVIDER_STAKE


def _lock_all_but(flow: Any, provider: str, requester: str, keep: int) -> None:
    """Leases ``provider`` an instant job whose collateral leaves about ``keep`` of its free stake."""
    free = flow.registry.free_stake(provider)
    seconds = (free - keep - BASE_SLASH) * 3_600 // DEFAULT_PRICE_FLOOR
    blocker = make_spec(requester, auction=1, max_price=DEFAULT_PRICE_FLOOR, max_gpu_seconds=seconds)
    flow.take(flow.post(blocker), blocker, provider)
    assert keep <= flow.registry.free_stake(provider) < keep + E18 // 100


def test_commit_bid__free_stake_short_of_the_reveal_bond__reverts(flow, market, requester, provider):
    # Committing needs free stake for the lease at the max price and for the reveal bond.
    spec = make_spec(requester, max_price=10 * E18, max_gpu_seconds=3_600)
    needed = value(10 * E18, 3_600) + 2 * BASE_SLASH  # 210 tokens
    job_id = flow.post(spec)
    _lock_all_but(flow, provider, requester, needed - E18)
    with boa.env.prank(provider), boa.reverts("market: provider not eligible"):
        market.commit_bid(job_id, spec, b"\x01" * 32)


def test_commit_bid__free_stake_for_the_lease_and_the_reveal_bond__commits(flow, market, requester, provider):
    spec = make_spec(requester, max_price=10 * E18, max_gpu_seconds=3_600)
    job_id = flow.post(spec)
    _lock_all_but(flow, provider, requester, value(10 * E18, 3_600) + 2 * BASE_SLASH)
    flow.commit(job_id, spec, provider, 5 * E18)
    assert market.commitments(job_id, provider) != b"\x00" * 32


def test_reveal_bid__stake_locked_since_the_commit__still_reveals__and_the_auction_skips_it(
    flow, market, registry, requester, provider, provider2
):
    # An honest bidder whose free stake another lease took after its commit is not made to forfeit:
    # it reveals, and the auction passes over it to the next ask.
    spec = make_spec(requester)
    job_id = flow.post(spec)
    flow.commit(job_id, spec, provider, 5 * E18)
    flow.commit(job_id, spec, provider2, 6 * E18)
    _lock_all_but(flow, provider, requester, E18)
    travel_to(spec.bid_deadline)
    flow.reveal(job_id, spec, provider, 5 * E18)
    flow.reveal(job_id, spec, provider2, 6 * E18)
    travel_to(spec.reveal_deadline)
    flow.finalize(job_id, spec)
    assert (market.slots(job_id, 0).provider, market.slots(job_id, 0).price) == (provider2, 6 * E18)
    with boa.env.prank(requester), boa.reverts("market: no unrevealed bid"):
        market.forfeit_unrevealed(job_id, spec, provider)


# ---------------------------------------------------------------- (h) item 10: owner powers (the slashing part)


def test_set_authorized__the_owner_itself_or_an_externally_owned_account__reverts(registry, owner, stranger):
    with boa.env.prank(owner), boa.reverts("registry: owner cannot slash"):
        registry.set_authorized(owner, True)
    with boa.env.prank(owner), boa.reverts("registry: account is not a contract"):
        registry.set_authorized(stranger, True)
    with boa.env.prank(owner):
        registry.set_authorized(stranger, False)  # revoking stays possible for any account


def test_set_authorized__once_the_market_is_set__waits_out_the_change_delay__revocation_at_once(
    registry, owner, market
):
    # Any contract will do as the authorized one: the token's code is there already.
    helper = market.token()
    with boa.env.prank(owner), boa.reverts("registry: change not queued"):
        registry.set_authorized(helper, True)
    with boa.env.prank(owner):
        registry.queue_change(keccak(registry.set_authorized.prepare_calldata(helper, True)))
    boa.env.time_travel(seconds=CHANGE_DELAY - 1)
    with boa.env.prank(owner), boa.reverts("registry: change still delayed"):
        registry.set_authorized(helper, True)
    boa.env.time_travel(seconds=1)
    with boa.env.prank(owner):
        registry.set_authorized(helper, True)
    assert registry.authorized(helper)
    with boa.env.prank(owner):
        registry.set_authorized(helper, False)
    assert not registry.authorized(helper)


def test_set_market__the_owner_itself__reverts(owner, token):
    with boa.env.prank(owner):
        fresh = load("ProviderRegistry", token.address, MIN_PROVIDER_STAKE, MIN_PROVIDER_STAKE, 86_400)
    with boa.env.prank(owner), boa.reverts("registry: owner cannot slash"):
        fresh.set_market(owner)
