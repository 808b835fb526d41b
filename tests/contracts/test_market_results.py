"""JobMarket: committing results, accepting, disputing and attesting them."""

from __future__ import annotations

import boa
import pytest

from tests.contracts.contract_helpers import (
    AUCTION_INSTANT,
    DISPUTE_BOND,
    OUTCOME_ACCEPT,
    OUTCOME_REJECT,
    OUTCOME_VOID,
    ROOT_HASH,
    SLOT_ACCEPTED,
    SLOT_COMMITTED,
    SLOT_DISPUTED,
    SLOT_REJECTED,
    SLOT_VOIDED,
    assert_solvent,
    deploy,
    make_spec,
    now,
    one_event,
    travel_to,
)


@pytest.fixture
def ispec(requester):
    """An instant, redundancy-1 job of ``requester``."""
    return make_spec(requester, auction=AUCTION_INSTANT)


@pytest.fixture
def leased(providers, provider, ispec):
    """``ispec`` posted and taken by ``provider``: its job id."""
    job_id = providers.post(ispec)
    providers.take(job_id, ispec, provider)
    return job_id


@pytest.fixture
def committed(providers, leased, ispec):
    """``leased`` with a result of 1,800 GPU-seconds committed after 1,800 seconds."""
    boa.env.time_travel(seconds=1_800)
    providers.commit_result(leased, ispec, 0, 1_800)
    return leased


# ---------------------------------------------------------------- commit_result


def test_commit_result__stores_root_and_claim__and_logs(market, providers, provider, leased, ispec):
    boa.env.time_travel(seconds=1_000)
    with boa.env.prank(provider):
        market.commit_result(leased, ispec, 0, ROOT_HASH, 900)
    log = one_event(market, "ResultCommitted")
    assert (log.job_id, log.slot, log.provider, log.result_root, log.gpu_seconds) == (
        leased,
        0,
        provider,
        ROOT_HASH,
        900,
    )
    s = market.slots(leased, 0)
    assert (s.status, s.result_root, s.gpu_seconds, s.committed_at) == (SLOT_COMMITTED, ROOT_HASH, 900, now())


def test_commit_result__by_another_provider__reverts(market, leased, provider2, ispec):
    with boa.env.prank(provider2), boa.reverts("market: caller is not the slot's provider"):
        market.commit_result(leased, ispec, 0, ROOT_HASH, 0)


def test_commit_result__before_the_job_is_leased__reverts(market, providers, provider, requester):
    spec = make_spec(requester, auction=AUCTION_INSTANT, redundancy=2)
    job_id = providers.post(spec)
    providers.take(job_id, spec, provider)
    with boa.env.prank(provider), boa.reverts("market: job is not leased"):
        market.commit_result(job_id, spec, 0, ROOT_HASH, 0)


def test_commit_result__twice__reverts(market, provider, committed, ispec):
    with boa.env.prank(provider), boa.reverts("market: result already committed"):
        market.commit_result(committed, ispec, 0, ROOT_HASH, 0)


def test_commit_result__at_the_run_deadline__commits(market, providers, leased, ispec):
    travel_to(market.jobs(leased).lease_start + ispec.run_duration)
    providers.commit_result(leased, ispec, 0, 3_600)
    assert market.slots(leased, 0).status == SLOT_COMMITTED


def test_commit_result__after_the_run_deadline__reverts(market, provider, leased, ispec):
    travel_to(market.jobs(leased).lease_start + ispec.run_duration + 1)
    with boa.env.prank(provider), boa.reverts("market: run deadline passed"):
        market.commit_result(leased, ispec, 0, ROOT_HASH, 0)


def test_commit_result__above_the_max_gpu_seconds__reverts(market, provider, leased, ispec):
    boa.env.time_travel(seconds=10_000)
    with boa.env.prank(provider), boa.reverts("market: claim above max GPU-seconds"):
        market.commit_result(leased, ispec, 0, ROOT_HASH, ispec.max_gpu_seconds + 1)


def test_commit_result__above_the_device_time_held__reverts(market, provider, leased, ispec):
    boa.env.time_travel(seconds=100)
    with boa.env.prank(provider), boa.reverts("market: claim above device time held"):
        market.commit_result(leased, ispec, 0, ROOT_HASH, 101)


def test_commit_result__with_several_gpus__may_claim_gpus_times_the_time_held(market, providers, provider, requester):
    spec = make_spec(requester, auction=AUCTION_INSTANT, gpus=4)
    job_id = providers.post(spec)
    providers.take(job_id, spec, provider)
    boa.env.time_travel(seconds=100)
    providers.commit_result(job_id, spec, 0, 400)
    assert market.slots(job_id, 0).gpu_seconds == 400


# ---------------------------------------------------------------- accept


def test_accept_result__by_the_requester__accepts_the_claim__and_logs(market, requester, committed, ispec):
    with boa.env.prank(requester):
        market.accept_result(committed, ispec, 0)
    log = one_event(market, "ResultAccepted")
    assert (log.job_id, log.slot, log.gpu_seconds) == (committed, 0, 1_800)
    assert market.slots(committed, 0).status == SLOT_ACCEPTED


def test_accept_result__by_a_stranger__reverts(market, stranger, committed, ispec):
    with boa.env.prank(stranger), boa.reverts("market: caller is not the requester"):
        market.accept_result(committed, ispec, 0)


def test_accept_result__before_a_commit__reverts(market, requester, leased, ispec):
    with boa.env.prank(requester), boa.reverts("market: result is not committed"):
        market.accept_result(leased, ispec, 0)


# ---------------------------------------------------------------- dispute


def test_dispute_result__by_the_requester__takes_the_bond__and_logs(market, token, requester, committed, ispec):
    before = token.balanceOf(requester)
    escrow = market.jobs(committed).escrow
    with boa.env.prank(requester):
        market.dispute_result(committed, ispec, 0)
    log = one_event(market, "ResultDisputed")
    assert (log.job_id, log.slot, log.disputer, log.bond) == (committed, 0, requester, DISPUTE_BOND)
    s = market.slots(committed, 0)
    assert (s.status, s.disputer) == (SLOT_DISPUTED, requester)
    assert market.dispute_bonds(committed, 0) == DISPUTE_BOND
    assert market.jobs(committed).escrow == escrow + DISPUTE_BOND
    assert token.balanceOf(requester) == before - DISPUTE_BOND
    assert_solvent(market, token, [committed])


def test_dispute_result__by_a_staked_verifier__disputes(market, verifier, committed, ispec):
    with boa.env.prank(verifier):
        market.dispute_result(committed, ispec, 0)
    assert market.slots(committed, 0).disputer == verifier


def test_dispute_result__without_stake__reverts(market, stranger, committed, ispec):
    with boa.env.prank(stranger), boa.reverts("market: caller may not dispute"):
        market.dispute_result(committed, ispec, 0)


def test_dispute_result__by_its_own_provider__reverts(market, registry, provider, committed, ispec):
    with boa.env.prank(provider):
        registry.register_verifier()
        with boa.reverts("market: provider cannot dispute itself"):
            market.dispute_result(committed, ispec, 0)


def test_dispute_result__at_the_end_of_the_challenge_window__reverts(market, requester, committed, ispec):
    travel_to(market.slots(committed, 0).committed_at + ispec.challenge_window)
    with boa.env.prank(requester), boa.reverts("market: challenge window closed"):
        market.dispute_result(committed, ispec, 0)


def test_dispute_result__one_second_before_the_window_ends__disputes(market, requester, committed, ispec):
    travel_to(market.slots(committed, 0).committed_at + ispec.challenge_window - 1)
    with boa.env.prank(requester):
        market.dispute_result(committed, ispec, 0)


def test_dispute_result__before_a_commit__reverts(market, requester, leased, ispec):
    with boa.env.prank(requester), boa.reverts("market: result is not committed"):
        market.dispute_result(leased, ispec, 0)


def test_dispute_result__twice__reverts(market, requester, verifier, committed, ispec):
    with boa.env.prank(requester):
        market.dispute_result(committed, ispec, 0)
    with boa.env.prank(verifier), boa.reverts("market: result is not committed"):
        market.dispute_result(committed, ispec, 0)


def test_dispute_result__without_allowance_for_the_bond__reverts(market, token, requester, committed, ispec):
    with boa.env.prank(requester):
        token.approve(market.address, 0)
        with boa.reverts("erc20: insufficient allowance"):
            market.dispute_result(committed, ispec, 0)


# ---------------------------------------------------------------- attest


@pytest.mark.parametrize(
    ("outcome", "verified", "status", "stored"),
    [
        (OUTCOME_ACCEPT, 1_000, SLOT_ACCEPTED, 1_000),
        (OUTCOME_ACCEPT, 5_000, SLOT_ACCEPTED, 1_800),  # never above the claim
        (OUTCOME_REJECT, 1_000, SLOT_REJECTED, 1_800),
        (OUTCOME_VOID, 1_000, SLOT_VOIDED, 1_800),
    ],
)
def test_attest__on_a_committed_result__rules__and_logs(
    market, verifier, committed, ispec, outcome, verified, status, stored
):
    with boa.env.prank(verifier):
        market.attest(committed, ispec, 0, outcome, verified)
    log = one_event(market, "ResultAttested")
    expected_verified = min(verified, 1_800) if outcome == OUTCOME_ACCEPT else 0
    assert (log.job_id, log.slot, log.verifier, log.outcome) == (committed, 0, verifier, outcome)
    assert (log.claimed_gpu_seconds, log.verified_gpu_seconds) == (1_800, expected_verified)
    s = market.slots(committed, 0)
    assert (s.status, s.gpu_seconds) == (status, stored)


@pytest.mark.parametrize("outcome", [OUTCOME_ACCEPT, OUTCOME_REJECT, OUTCOME_VOID])
def test_attest__on_a_disputed_result__rules(market, requester, verifier, committed, ispec, outcome):
    with boa.env.prank(requester):
        market.dispute_result(committed, ispec, 0)
    with boa.env.prank(verifier):
        market.attest(committed, ispec, 0, outcome, 1_800)
    assert (
        market.slots(committed, 0).status
        == {
            OUTCOME_ACCEPT: SLOT_ACCEPTED,
            OUTCOME_REJECT: SLOT_REJECTED,
            OUTCOME_VOID: SLOT_VOIDED,
        }[outcome]
    )


def test_attest__by_anyone_but_the_court__reverts(market, providers, stranger, provider, requester, committed, ispec):
    # Staked verifiers, the parties and strangers alike: only the court's final ruling counts.
    providers.register_verifier(requester)
    providers.register_verifier(provider, stake=0)
    for caller in (stranger, requester, provider):
        with boa.env.prank(caller), boa.reverts("market: caller is not the court"):
            market.attest(committed, ispec, 0, OUTCOME_REJECT, 0)


def test_set_court__a_second_time_or_by_a_stranger__reverts(market, owner, stranger):
    with boa.env.prank(stranger), boa.reverts("ownable: caller is not the owner"):
        market.set_court(stranger)
    with boa.env.prank(owner), boa.reverts("market: court already set"):
        market.set_court(stranger)


def test_set_court__to_the_zero_address__reverts(owner, treasury):
    fresh = deploy(owner, treasury)
    with boa.env.prank(owner), boa.reverts("market: court is the zero address"):
        fresh.market.set_court("0x" + "00" * 20)


def test_attest__with_an_unknown_outcome__reverts(market, verifier, committed, ispec):
    with boa.env.prank(verifier), boa.reverts("market: unknown outcome"):
        market.attest(committed, ispec, 0, 3, 0)


def test_attest__before_a_commit__reverts(market, verifier, leased, ispec):
    with boa.env.prank(verifier), boa.reverts("market: result is not committed"):
        market.attest(leased, ispec, 0, OUTCOME_ACCEPT, 0)


def test_attest__after_a_ruling__reverts(market, verifier, committed, ispec):
    with boa.env.prank(verifier):
        market.attest(committed, ispec, 0, OUTCOME_ACCEPT, 1)
        with boa.reverts("market: result is not committed"):
            market.attest(committed, ispec, 0, OUTCOME_REJECT, 0)


def test_attest__at_the_end_of_the_challenge_window__reverts(market, verifier, committed, ispec):
    travel_to(market.slots(committed, 0).committed_at + ispec.challenge_window)
    with boa.env.prank(verifier), boa.reverts("market: attestation window closed"):
        market.attest(committed, ispec, 0, OUTCOME_ACCEPT, 1)


def test_attest__on_a_dispute__has_a_second_window(market, requester, verifier, providers, committed, ispec):
    with boa.env.prank(requester):
        market.dispute_result(committed, ispec, 0)
    end = market.slots(committed, 0).committed_at + 2 * ispec.challenge_window
    travel_to(end - 1)
    with boa.env.anchor(), boa.env.prank(verifier):
        market.attest(committed, ispec, 0, OUTCOME_ACCEPT, 1)
    travel_to(end)
    with boa.env.prank(verifier), boa.reverts("market: attestation window closed"):
        market.attest(committed, ispec, 0, OUTCOME_ACCEPT, 1)
