"""JobMarket: settlement on every path (paid, slashed, refunded), its arithmetic, slashing and
the pull withdrawals. Every money path has its failing case next to its happy case."""

from __future__ import annotations

import boa
import pytest

from tests.contracts.contract_helpers import (
    AUCTION_INSTANT,
    BASE_SLASH,
    DEFAULT_PRICE_FLOOR,
    DISPUTE_BOND,
    E18,
    FEE_BPS,
    JOB_CLOSED,
    JOB_LEASED,
    MIN_PROVIDER_STAKE,
    OUTCOME_ACCEPT,
    OUTCOME_REJECT,
    OUTCOME_VOID,
    SLASH_REQUESTER_BPS,
    SLOT_PAID,
    SLOT_REFUNDED,
    SLOT_SLASHED,
    UNBONDING_PERIOD,
    assert_solvent,
    make_offer,
    make_spec,
    one_event,
    owner_change,
    owner_change_queued_earlier,
    travel_to,
    value,
)

PRICE = DEFAULT_PRICE_FLOOR  # the instant jobs below lease at the provider's floor
SLOT_VALUE = value(PRICE, 3_600)  # max_gpu_seconds = 3,600
EARLY_REFUND = value(10 * E18, 3_600) - SLOT_VALUE  # escrow above the floor, refunded at the take


@pytest.fixture
def ispec(requester):
    return make_spec(requester, auction=AUCTION_INSTANT)


@pytest.fixture
def leased(providers, provider, ispec):
    job_id = providers.post(ispec)
    providers.take(job_id, ispec, provider)
    return job_id


@pytest.fixture
def committed(providers, leased, ispec):
    boa.env.time_travel(seconds=1_800)
    providers.commit_result(leased, ispec, 0, 1_800)
    return leased


def window_end(market, job_id, spec, windows=1):
    return market.slots(job_id, 0).committed_at + windows * spec.challenge_window


def settled(market):
    return one_event(market, "SlotSettled")


# ---------------------------------------------------------------- paid


def test_settle__an_accepted_result__pays_verified_time_less_fee__and_refunds_the_rest(
    market, token, registry, providers, provider, requester, treasury, verifier, committed, ispec
):
    with boa.env.prank(verifier):
        market.attest(committed, ispec, 0, OUTCOME_ACCEPT, 1_000)
    providers.settle(committed, ispec, 0)
    paid = 1_000 * PRICE // 3_600
    fee = paid * FEE_BPS // 10_000
    # The claim (1,800) was cut to 1,000: the stake pays the collateral in proportion to the cut.
    penalty = (SLOT_VALUE + BASE_SLASH) * 800 // 1_800
    to_requester = penalty * SLASH_REQUESTER_BPS // 10_000
    log = settled(market)
    assert (log.job_id, log.slot, log.provider, log.status, log.gpu_seconds) == (
        committed,
        0,
        provider,
        SLOT_PAID,
        1_000,
    )
    assert (log.paid, log.fee, log.refunded, log.slashed) == (paid, fee, SLOT_VALUE - paid, penalty)
    assert one_event(market, "JobClosed").job_id == committed
    assert market.credits(provider) == paid - fee
    assert market.credits(treasury) == fee + penalty - to_requester
    assert market.credits(requester) == EARLY_REFUND + SLOT_VALUE - paid + to_requester
    assert market.slots(committed, 0).status == SLOT_PAID
    job = market.jobs(committed)
    assert (job.status, job.escrow, job.count) == (JOB_CLOSED, 0, 0)
    assert registry.stakes(provider).active_jobs == 0
    assert registry.reputation(provider).completed == 1
    assert registry.stakes(provider).active == MIN_PROVIDER_STAKE - penalty
    assert_solvent(market, token, [committed])


def test_settle__accepted_by_the_requester__pays_the_claim(
    market, token, providers, provider, requester, committed, ispec
):
    with boa.env.prank(requester):
        market.accept_result(committed, ispec, 0)
    providers.settle(committed, ispec, 0, caller=provider)
    paid = value(PRICE, 1_800)
    assert settled(market).paid == paid
    assert market.credits(provider) == paid - paid * FEE_BPS // 10_000
    assert_solvent(market, token, [committed])


def test_settle__a_full_claim__pays_the_whole_slot_escrow(market, token, providers, provider, leased, ispec):
    boa.env.time_travel(seconds=3_600)
    providers.commit_result(leased, ispec, 0, 3_600)
    travel_to(window_end(market, leased, ispec))
    providers.settle(leased, ispec, 0)
    log = settled(market)
    assert (log.paid, log.refunded) == (SLOT_VALUE, 0)
    assert_solvent(market, token, [leased])


def test_settle__unchallenged_past_the_window__anyone_settles_the_claim(
    market, token, providers, stranger, provider, committed, ispec
):
    travel_to(window_end(market, committed, ispec))
    providers.settle(committed, ispec, 0, caller=stranger)
    log = settled(market)
    assert (log.status, log.gpu_seconds, log.paid) == (SLOT_PAID, 1_800, value(PRICE, 1_800))
    assert_solvent(market, token, [committed])


def test_settle__committed_inside_the_window__reverts(market, stranger, committed, ispec):
    travel_to(window_end(market, committed, ispec) - 1)
    with boa.env.prank(stranger), boa.reverts("market: slot cannot settle yet"):
        market.settle(committed, ispec, 0)


def test_settle__sealed_job__pays_at_the_clearing_price(
    market, token, providers, provider, provider2, requester, treasury, spec
):
    job_id = providers.post(spec)
    providers.sealed_auction(job_id, spec, [(provider, 3 * E18), (provider2, 7 * E18)])
    boa.env.time_travel(seconds=2_000)
    providers.commit_result(job_id, spec, 0, 2_000)
    with boa.env.prank(requester):
        market.accept_result(job_id, spec, 0)
    providers.settle(job_id, spec, 0)
    paid = 2_000 * 7 * E18 // 3_600
    fee = paid * FEE_BPS // 10_000
    assert settled(market).paid == paid
    assert market.credits(provider) == paid - fee
    assert market.credits(treasury) == fee
    assert market.credits(requester) == 3 * E18 + (7 * E18 - paid)
    assert_solvent(market, token, [job_id])


# ---------------------------------------------------------------- slashed


def test_settle__a_rejected_result__refunds_and_slashes_to_requester_and_treasury(
    market, token, registry, providers, provider, requester, treasury, verifier, committed, ispec
):
    with boa.env.prank(verifier):
        market.attest(committed, ispec, 0, OUTCOME_REJECT, 0)
    providers.settle(committed, ispec, 0)
    slash = SLOT_VALUE + BASE_SLASH
    to_requester = slash * SLASH_REQUESTER_BPS // 10_000
    log = settled(market)
    assert (log.status, log.gpu_seconds, log.paid, log.fee, log.refunded, log.slashed) == (
        SLOT_SLASHED,
        0,
        0,
        0,
        SLOT_VALUE,
        slash,
    )
    assert one_event(market, "StakeSlashed").amount == slash
    assert market.credits(requester) == EARLY_REFUND + SLOT_VALUE + to_requester
    assert market.credits(treasury) == slash - to_requester
    assert market.credits(provider) == 0
    assert registry.stakes(provider).active == MIN_PROVIDER_STAKE - slash
    r = registry.reputation(provider)
    assert (r.completed, r.failed, r.slashed) == (0, 1, 1)
    assert registry.stakes(provider).active_jobs == 0
    assert_solvent(market, token, [committed])


def test_settle__no_result_by_the_run_deadline__refunds_and_slashes(
    market, token, providers, provider, requester, leased, ispec
):
    travel_to(market.jobs(leased).lease_start + ispec.run_duration + 1)
    providers.settle(leased, ispec, 0)
    log = settled(market)
    assert (log.status, log.slashed, log.refunded) == (SLOT_SLASHED, SLOT_VALUE + BASE_SLASH, SLOT_VALUE)
    assert_solvent(market, token, [leased])


def test_settle__no_result_at_the_run_deadline__cannot_settle_yet(market, requester, leased, ispec):
    travel_to(market.jobs(leased).lease_start + ispec.run_duration)
    with boa.env.prank(requester), boa.reverts("market: slot cannot settle yet"):
        market.settle(leased, ispec, 0)


def test_settle__slash__takes_the_collateral_the_lease_kept_from_unbonding(
    market, token, registry, providers, provider, leased, ispec
):
    # The lease locked its value and the base slash: that part of the stake cannot unbond.
    slash = SLOT_VALUE + BASE_SLASH
    with boa.env.prank(provider), boa.reverts("registry: amount exceeds free stake"):
        registry.request_unbond(MIN_PROVIDER_STAKE - 10 * E18)
    with boa.env.prank(provider):
        registry.request_unbond(MIN_PROVIDER_STAKE - slash)
    travel_to(market.jobs(leased).lease_start + ispec.run_duration + 1)
    providers.settle(leased, ispec, 0)
    assert settled(market).slashed == slash
    s = registry.stakes(provider)
    assert (s.active, s.unbonding, s.locked) == (0, MIN_PROVIDER_STAKE - slash, 0)
    assert_solvent(market, token, [leased])


def test_settle__slash__takes_at_most_what_is_staked(
    market, token, registry, providers, provider, provider2, provider3, verifier, requester, treasury, leased, ispec
):
    with boa.env.prank(provider):
        registry.request_unbond(MIN_PROVIDER_STAKE - registry.stakes(provider).locked)
    boa.env.time_travel(seconds=UNBONDING_PERIOD)
    with boa.env.prank(provider), boa.reverts("registry: provider holds leases"):
        registry.withdraw_unbonded()
    with boa.env.prank(market.address):
        registry.slash(provider, MIN_PROVIDER_STAKE - 30 * E18)  # leave 30 tokens
    providers.settle(leased, ispec, 0)
    log = settled(market)
    assert log.slashed == 30 * E18
    assert market.credits(requester) == EARLY_REFUND + SLOT_VALUE + 15 * E18
    assert registry.total_stake(provider) == 0
    stakers = (provider, provider2, provider3, verifier)
    assert token.balanceOf(registry.address) == sum(registry.total_stake(a) for a in stakers)
    # The market holds what it owes plus what the direct slash above sent it.
    owed = market.jobs(leased).escrow + market.total_credits()
    assert token.balanceOf(market.address) == owed + MIN_PROVIDER_STAKE - 30 * E18


# ---------------------------------------------------------------- disputes


def test_settle__dispute_upheld__pays_the_challenger_bond_and_the_rest_of_the_slash(
    market, token, providers, provider, requester, treasury, verifier, committed, ispec
):
    challenger = boa.env.generate_address("challenger")
    from tests.contracts.contract_helpers import fund

    fund(providers.d, challenger)
    providers.register_verifier(challenger)
    with boa.env.prank(challenger):
        market.dispute_result(committed, ispec, 0)
    with boa.env.prank(verifier):
        market.attest(committed, ispec, 0, OUTCOME_REJECT, 0)
    providers.settle(committed, ispec, 0)
    slash = SLOT_VALUE + BASE_SLASH
    to_requester = slash * SLASH_REQUESTER_BPS // 10_000
    assert settled(market).slashed == slash
    assert market.credits(challenger) == DISPUTE_BOND + slash - to_requester
    assert market.credits(requester) == EARLY_REFUND + SLOT_VALUE + to_requester
    assert market.credits(treasury) == 0
    assert_solvent(market, token, [committed])


def test_settle__dispute_rejected__gives_the_bond_to_the_provider(
    market, token, providers, provider, requester, verifier, committed, ispec
):
    with boa.env.prank(requester):
        market.dispute_result(committed, ispec, 0)
    with boa.env.prank(verifier):
        market.attest(committed, ispec, 0, OUTCOME_ACCEPT, 1_800)
    providers.settle(committed, ispec, 0)
    paid = value(PRICE, 1_800)
    fee = paid * FEE_BPS // 10_000
    assert settled(market).paid == paid
    assert market.credits(provider) == paid - fee + DISPUTE_BOND
    assert market.credits(requester) == EARLY_REFUND + SLOT_VALUE - paid
    assert_solvent(market, token, [committed])


def test_settle__dispute_without_a_ruling__pays_the_claim_and_the_bond_to_the_provider_after_the_second_window(
    market, token, registry, providers, provider, requester, committed, ispec
):
    with boa.env.prank(requester):
        market.dispute_result(committed, ispec, 0)
    travel_to(window_end(market, committed, ispec, windows=2) - 1)
    with boa.env.prank(requester), boa.reverts("market: slot cannot settle yet"):
        market.settle(committed, ispec, 0)
    travel_to(window_end(market, committed, ispec, windows=2))
    providers.settle(committed, ispec, 0)
    paid = 1_800 * PRICE // 3_600
    fee = paid * FEE_BPS // 10_000
    log = settled(market)
    assert (log.status, log.paid, log.refunded, log.slashed) == (SLOT_PAID, paid, SLOT_VALUE - paid, 0)
    assert market.credits(requester) == EARLY_REFUND + SLOT_VALUE - paid
    assert market.credits(provider) == paid - fee + DISPUTE_BOND
    assert registry.stakes(provider).active == MIN_PROVIDER_STAKE
    assert registry.reputation(provider).completed == 1
    assert_solvent(market, token, [committed])


def test_settle__voided__refunds_and_slashes_nobody(
    market, token, registry, providers, provider, requester, verifier, committed, ispec
):
    with boa.env.prank(verifier):
        market.attest(committed, ispec, 0, OUTCOME_VOID, 0)
    providers.settle(committed, ispec, 0)
    log = settled(market)
    assert (log.status, log.refunded, log.slashed) == (SLOT_REFUNDED, SLOT_VALUE, 0)
    assert market.credits(requester) == EARLY_REFUND + SLOT_VALUE
    assert registry.stakes(provider).active == MIN_PROVIDER_STAKE
    assert_solvent(market, token, [committed])


def test_settle__voided_dispute__returns_the_bond_to_the_challenger(
    market, token, providers, requester, verifier, committed, ispec
):
    with boa.env.prank(requester):
        market.dispute_result(committed, ispec, 0)
    with boa.env.prank(verifier):
        market.attest(committed, ispec, 0, OUTCOME_VOID, 0)
    providers.settle(committed, ispec, 0)
    assert market.credits(requester) == EARLY_REFUND + SLOT_VALUE + DISPUTE_BOND
    assert_solvent(market, token, [committed])


def test_settle__after_the_dispute_bond_changed__returns_the_bond_that_was_paid(
    market, token, owner, treasury, providers, requester, verifier, committed, ispec
):
    with boa.env.prank(requester):
        market.dispute_result(committed, ispec, 0)
    owner_change_queued_earlier(
        market, owner, "set_parameters", treasury, FEE_BPS, 3 * DISPUTE_BOND, BASE_SLASH, SLASH_REQUESTER_BPS
    )
    with boa.env.prank(verifier):
        market.attest(committed, ispec, 0, OUTCOME_VOID, 0)
    providers.settle(committed, ispec, 0)
    assert market.credits(requester) == EARLY_REFUND + SLOT_VALUE + DISPUTE_BOND
    assert_solvent(market, token, [committed])


# ---------------------------------------------------------------- settle guards


def test_settle__an_open_job__reverts(market, flow, requester, spec):
    job_id = flow.post(spec)
    with boa.env.prank(requester), boa.reverts("market: job is not leased"):
        market.settle(job_id, spec, 0)


def test_settle__a_closed_job__reverts(market, providers, verifier, requester, committed, ispec):
    with boa.env.prank(requester):
        market.accept_result(committed, ispec, 0)
    providers.settle(committed, ispec, 0)
    with boa.env.prank(requester), boa.reverts("market: job is not leased"):
        market.settle(committed, ispec, 0)


def test_settle__a_slot_beyond_the_redundancy__reverts(market, requester, leased, ispec):
    with boa.env.prank(requester), boa.reverts("market: no such slot"):
        market.settle(leased, ispec, 1)


def test_settle__a_slot_twice__reverts__and_pays_once(
    market, token, providers, provider, provider2, provider3, requester
):
    spec = make_spec(requester, redundancy=2)
    job_id = providers.post(spec)
    providers.sealed_auction(job_id, spec, [(provider, 2 * E18), (provider2, 3 * E18), (provider3, 4 * E18)])
    boa.env.time_travel(seconds=100)
    providers.commit_result(job_id, spec, 0, 100)
    with boa.env.prank(requester):
        market.accept_result(job_id, spec, 0)
    providers.settle(job_id, spec, 0)
    assert market.jobs(job_id).status == JOB_LEASED
    credit = market.credits(provider)
    with boa.env.prank(provider), boa.reverts("market: slot already settled"):
        market.settle(job_id, spec, 0)
    assert market.credits(provider) == credit
    # The second slot never commits: slashed after the run deadline, and the job closes.
    travel_to(market.jobs(job_id).lease_start + spec.run_duration + 1)
    providers.settle(job_id, spec, 1)
    assert market.jobs(job_id).status == JOB_CLOSED
    assert market.jobs(job_id).escrow == 0
    assert_solvent(market, token, [job_id])


def test_settle__an_assigned_slot_before_its_deadline_by_a_stranger__reverts(market, stranger, leased, ispec):
    with boa.env.prank(stranger), boa.reverts("market: slot cannot settle yet"):
        market.settle(leased, ispec, 0)


# ---------------------------------------------------------------- withdrawals


def test_withdraw__after_settlement__pays_provider_treasury_and_requester__and_empties_the_market(
    market, token, providers, provider, requester, treasury, committed, ispec
):
    with boa.env.prank(requester):
        market.accept_result(committed, ispec, 0)
    providers.settle(committed, ispec, 0)
    for account in (provider, requester, treasury):
        before = token.balanceOf(account)
        credit = market.credits(account)
        with boa.env.prank(account):
            assert market.withdraw() == credit
        assert token.balanceOf(account) == before + credit
    assert market.total_credits() == 0
    assert token.balanceOf(market.address) == 0


def test_withdraw__with_nothing_credited__reverts(market, provider, leased):
    with boa.env.prank(provider), boa.reverts("market: nothing to withdraw"):
        market.withdraw()


# ---------------------------------------------------------------- rounding and stuck states


def test_instant_job__with_rounding_in_the_refund__leaves_no_dust_in_escrow(
    market, token, registry, providers, provider, requester
):
    # max 2 wei/hour for half an hour: escrow 1 wei; the floor of 1 wei/hour is worth 0 and the
    # refund of the difference rounds to 0 too, so 1 wei must still find its way back.
    with boa.env.prank(provider):
        registry.register_provider(make_offer(provider, price_floor=1))
    spec = make_spec(requester, auction=AUCTION_INSTANT, max_price=2, max_gpu_seconds=1_800)
    job_id = providers.post(spec)
    providers.take(job_id, spec, provider)
    travel_to(market.jobs(job_id).lease_start + spec.run_duration + 1)
    providers.settle(job_id, spec, 0)
    assert market.jobs(job_id).status == JOB_CLOSED
    assert_solvent(market, token, [job_id])


def test_instant_job__with_the_longest_windows__can_still_be_committed_and_settled(
    market, token, providers, provider, requester, owner
):
    # The longest windows the hard limit lets the owner allow.
    limit = market.MAX_WINDOW()
    owner_change(market, owner, "set_window_bounds", limit, limit, limit)
    spec = make_spec(requester, auction=AUCTION_INSTANT, run_duration=limit, challenge_window=limit)
    job_id = providers.post(spec)
    providers.take(job_id, spec, provider)
    boa.env.time_travel(seconds=60)
    providers.commit_result(job_id, spec, 0, 60)
    with boa.env.prank(requester):
        market.accept_result(job_id, spec, 0)
    providers.settle(job_id, spec, 0)
    assert market.jobs(job_id).status == JOB_CLOSED
    assert_solvent(market, token, [job_id])


# ---------------------------------------------------------------- paid at once


def test_settle__accounts_paid_at_once__receive_tokens_in_the_settlement__and_no_credit(
    market, token, providers, provider, requester, treasury, leased, ispec
):
    for account in (provider, requester):
        with boa.env.prank(account):
            market.set_direct_payout(True)
        log = one_event(market, "DirectPayoutSet")
        assert (log.account, log.direct) == (account, True)
        assert market.direct_payout(account)
    boa.env.time_travel(seconds=1_800)
    providers.commit_result(leased, ispec, 0, 1_800)
    provider_before, requester_before = token.balanceOf(provider), token.balanceOf(requester)
    credits_before = market.total_credits()
    travel_to(window_end(market, leased, ispec))
    providers.settle(leased, ispec, 0)
    paid = value(PRICE, 1_800)
    fee = paid * FEE_BPS // 10_000
    assert token.balanceOf(provider) - provider_before == paid - fee
    assert token.balanceOf(requester) - requester_before == SLOT_VALUE - paid
    # The refund credited at the take, before the requester opted in, stays to withdraw.
    assert (market.credits(provider), market.credits(requester)) == (0, EARLY_REFUND)
    # The treasury is credited as before; nothing else was.
    assert market.total_credits() - credits_before == fee
    assert token.balanceOf(market.address) == market.total_credits()
    with boa.env.prank(provider), boa.reverts("market: nothing to withdraw"):
        market.withdraw()


def test_set_direct_payout__off_again__credits_the_account(market, providers, provider, committed, ispec):
    with boa.env.prank(provider):
        market.set_direct_payout(True)
        market.set_direct_payout(False)
    assert not market.direct_payout(provider)
    travel_to(window_end(market, committed, ispec))
    providers.settle(committed, ispec, 0)
    paid = value(PRICE, 1_800)
    assert market.credits(provider) == paid - paid * FEE_BPS // 10_000


REFUSING_TOKEN = """
# pragma version ~=0.4.3
# A token that refuses transfers to the accounts it lists, as tokens with a blocklist do.
from snekmate.auth import ownable
from snekmate.tokens import erc20

initializes: ownable
initializes: erc20[ownable := ownable]

exports: (erc20.balanceOf, erc20.allowance, erc20.approve, erc20.transferFrom, erc20.mint, erc20.totalSupply)

refused: public(HashMap[address, bool])


@deploy
def __init__():
    ownable.__init__()
    erc20.__init__("Refusing", "RFS", 18, "Refusing", "1")


@external
def refuse(account: address, refused_: bool):
    self.refused[account] = refused_


@external
def transfer(to: address, amount: uint256) -> bool:
    assert not self.refused[to], "token: recipient refused"
    erc20._transfer(msg.sender, to, amount)
    return True
"""


def test_settle__a_direct_payment_the_token_refuses__is_kept_as_a_credit(owner, treasury, requester, provider):
    from tests.contracts.contract_helpers import deploy_over, loads

    with boa.env.prank(owner):
        token = loads(REFUSING_TOKEN)
        for account in (provider, requester):
            token.mint(account, 10_000 * E18)
    d = deploy_over(token, owner, treasury)
    registry, market = d.registry, d.market
    with boa.env.prank(provider):
        token.approve(registry.address, MIN_PROVIDER_STAKE)
        registry.stake(MIN_PROVIDER_STAKE)
        registry.register_provider(make_offer(provider))
        market.set_direct_payout(True)
    token.refuse(provider, True)
    spec = make_spec(requester, auction=AUCTION_INSTANT)
    with boa.env.prank(requester):
        token.approve(market.address, market.escrow_for(spec))
        job_id = market.post_job(spec)
    with boa.env.prank(provider):
        market.take_job(job_id, spec)
    boa.env.time_travel(seconds=1_800)
    with boa.env.prank(provider):
        market.commit_result(job_id, spec, 0, b"\x77" * 32, 1_800)
    travel_to(market.slots(job_id, 0).committed_at + spec.challenge_window)
    balance_before = token.balanceOf(provider)
    with boa.env.prank(requester):
        market.settle(job_id, spec, 0)
    # The settlement went through; the refused payment waits as a credit, and the books still balance.
    paid = value(PRICE, 1_800)
    assert settled(market).status == SLOT_PAID
    assert token.balanceOf(provider) == balance_before
    assert market.credits(provider) == paid - paid * FEE_BPS // 10_000
    assert token.balanceOf(market.address) == market.total_credits()
    token.refuse(provider, False)
    with boa.env.prank(provider):
        assert market.withdraw() == paid - paid * FEE_BPS // 10_000
    assert token.balanceOf(provider) == balance_before + paid - paid * FEE_BPS // 10_000
