"""JobMarket: parameters, posting with escrow (approve or permit), cancelling."""

from __future__ import annotations

import boa
import pytest
from eth_account import Account
from eth_utils import keccak

from tests.contracts.contract_helpers import (
    AUCTION_INSTANT,
    AUCTION_SEALED,
    BASE_SLASH,
    CHANGE_DELAY,
    DEFAULT_PRICE_FLOOR,
    DISPUTE_BOND,
    E18,
    FEE_BPS,
    JOB_CANCELLED,
    JOB_OPEN,
    POLICY_OPTIMISTIC,
    POLICY_REDUNDANT,
    SLASH_REQUESTER_BPS,
    SLOT_RELEASED,
    assert_solvent,
    deploy_with_false_token,
    fund,
    make_spec,
    now,
    one_event,
    owner_change,
    queue_owner_change,
    sign_permit,
    value,
)

ZERO = "0x" + "00" * 20

# ---------------------------------------------------------------- parameters


def test_market__deploys_with_its_parameters(market, token, registry, owner, treasury):
    assert market.token() == token.address
    assert market.registry() == registry.address
    assert market.owner() == owner
    assert market.treasury() == treasury
    assert market.fee_bps() == FEE_BPS
    assert market.dispute_bond() == DISPUTE_BOND
    assert market.base_slash() == BASE_SLASH
    assert market.slash_requester_bps() == SLASH_REQUESTER_BPS
    assert market.job_count() == 0
    assert market.total_credits() == 0
    assert (market.POLICY_NONE(), market.POLICY_OPTIMISTIC()) == (0, 4)
    assert (market.AUCTION_SEALED(), market.AUCTION_INSTANT()) == (0, 1)
    assert (market.OUTCOME_ACCEPT(), market.OUTCOME_REJECT(), market.OUTCOME_VOID()) == (0, 1, 2)
    assert market.MAX_REDUNDANCY() == 5
    assert market.MAX_PRICE() == 2**96 - 1


def test_set_parameters__by_the_owner__changes_them__and_logs(market, owner, stranger):
    owner_change(market, owner, "set_parameters", stranger, 1_000, 1, 2, 10_000)
    log = one_event(market, "ParametersChanged")
    assert (log.treasury, log.fee_bps, log.dispute_bond, log.base_slash, log.slash_requester_bps) == (
        stranger,
        1_000,
        1,
        2,
        10_000,
    )
    assert market.treasury() == stranger
    assert market.fee_bps() == 1_000
    assert market.dispute_bond() == 1
    assert market.base_slash() == 2
    assert market.slash_requester_bps() == 10_000


def test_set_parameters__by_a_stranger__reverts(market, stranger):
    with boa.env.prank(stranger), boa.reverts("ownable: caller is not the owner"):
        market.set_parameters(stranger, 0, 0, 0, 0)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ((ZERO, 100, 0, 0, 0), "market: treasury is the zero address"),
        (("treasury", 1_001, 0, 0, 0), "market: fee above 10%"),
        (("treasury", 100, 0, 0, 10_001), "market: share above 100%"),
    ],
)
def test_set_parameters__out_of_range__reverts(market, owner, treasury, args, reason):
    args = tuple(treasury if a == "treasury" else a for a in args)
    queue_owner_change(market, owner, "set_parameters", *args)
    with boa.env.prank(owner), boa.reverts(reason):
        market.set_parameters(*args)


def test_set_parameters__not_queued_or_before_the_delay__reverts__and_is_made_once(market, owner, treasury):
    args = (treasury, 200, 0, 0, 0)
    with boa.env.prank(owner), boa.reverts("market: change not queued"):
        market.set_parameters(*args)
    with boa.env.prank(owner):
        market.queue_change(keccak(market.set_parameters.prepare_calldata(*args)))
    assert one_event(market, "ChangeQueued").eta == now() + CHANGE_DELAY == now() + market.CHANGE_DELAY()
    boa.env.time_travel(seconds=CHANGE_DELAY - 1)
    with boa.env.prank(owner), boa.reverts("market: change still delayed"):
        market.set_parameters(*args)
    # Only the queued change: other values are not covered by it.
    boa.env.time_travel(seconds=1)
    with boa.env.prank(owner), boa.reverts("market: change not queued"):
        market.set_parameters(treasury, 300, 0, 0, 0)
    with boa.env.prank(owner):
        market.set_parameters(*args)
    assert market.fee_bps() == 200
    with boa.env.prank(owner), boa.reverts("market: change not queued"):
        market.set_parameters(*args)


def test_queue_change__by_a_stranger__reverts(market, stranger):
    with boa.env.prank(stranger), boa.reverts("ownable: caller is not the owner"):
        market.queue_change(b"\x01" * 32)


def test_transfer_ownership__hands_the_owner_role_over(market, owner, stranger, treasury):
    with boa.env.prank(owner):
        market.transfer_ownership(stranger)
    owner_change(market, stranger, "set_parameters", treasury, 0, 0, 0, 0)
    with boa.env.prank(owner), boa.reverts("ownable: caller is not the owner"):
        market.set_parameters(treasury, 0, 0, 0, 0)


# ---------------------------------------------------------------- post


def test_post_job__locks_the_escrow__stores_the_spec_hash__and_logs_the_spec(market, token, requester, spec):
    before = token.balanceOf(requester)
    with boa.env.prank(requester):
        job_id = market.post_job(spec)
    log = one_event(market, "JobPosted")
    assert job_id == 1
    assert (log.job_id, log.requester, log.escrow) == (1, requester, 10 * E18)
    assert tuple(log.spec) == tuple(spec)
    job = market.jobs(job_id)
    assert job.spec_hash == market.spec_hash(spec)
    assert (job.status, job.escrow, job.count, job.lease_start) == (JOB_OPEN, 10 * E18, 0, 0)
    assert market.job_count() == 1
    assert token.balanceOf(requester) == before - 10 * E18
    assert token.balanceOf(market.address) == 10 * E18
    assert_solvent(market, token, [job_id])


def test_escrow_for__is_redundancy_times_max_price_times_hours(market, requester):
    spec = make_spec(requester, redundancy=3, max_price=7 * E18, max_gpu_seconds=1_800)
    assert market.escrow_for(spec) == 3 * value(7 * E18, 1_800) == 3 * 35 * E18 // 10


def test_post_job__ids_count_up(market, flow, requester, spec):
    assert [flow.post(spec) for _ in range(3)] == [1, 2, 3]


def test_post_job__instant__ignores_the_reveal_deadline(flow, requester):
    spec = make_spec(requester, auction=AUCTION_INSTANT, reveal_deadline=0)
    assert flow.post(spec) == 1


def test_post_job__for_someone_else__reverts(market, requester, stranger, spec):
    with boa.env.prank(stranger), boa.reverts("market: requester is not the caller"):
        market.post_job(spec)


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"redundancy": 0}, "market: bad redundancy"),
        ({"redundancy": 6}, "market: bad redundancy"),
        ({"policy": 5}, "market: unknown policy"),
        ({"policy": POLICY_REDUNDANT, "redundancy": 1}, "market: redundant policy needs redundancy >= 2"),
        ({"auction": 2}, "market: unknown auction"),
        ({"device_kind": 2}, "market: unknown device kind"),
        ({"gpus": 0}, "market: no devices"),
        ({"max_price": 0}, "market: bad max price"),
        ({"max_price": 2**96}, "market: bad max price"),
        ({"max_gpu_seconds": 0}, "market: no GPU-seconds"),
        ({"bid_deadline": "now"}, "market: bid deadline passed"),
        ({"reveal_deadline": "bid"}, "market: reveal deadline before bid deadline"),
        ({"run_duration": 0}, "market: no run time"),
        ({"challenge_window": 0}, "market: no challenge window"),
        ({"max_price": 1, "max_gpu_seconds": 3_599}, "market: escrow rounds to zero"),
    ],
)
def test_post_job__with_bad_terms__reverts(market, requester, override, reason):
    fields = dict(override)
    if fields.get("bid_deadline") == "now":
        fields["bid_deadline"] = now()
    spec = make_spec(requester, **fields)
    if fields.get("reveal_deadline") == "bid":
        spec = spec._replace(reveal_deadline=spec.bid_deadline)
    with boa.env.prank(requester), boa.reverts(reason):
        market.post_job(spec)


def test_post_job__redundant_policy_with_two_providers__posts(flow, requester):
    assert flow.post(make_spec(requester, policy=POLICY_REDUNDANT, redundancy=2)) == 1


def test_post_job__at_the_largest_terms__posts(deployment, market, flow, requester):
    spec = make_spec(requester, redundancy=5, max_price=2**96 - 1, max_gpu_seconds=2**64 - 1, policy=POLICY_OPTIMISTIC)
    fund(deployment, requester, market.escrow_for(spec))
    assert flow.post(spec) == 1
    assert market.jobs(1).escrow == 5 * ((2**96 - 1) * (2**64 - 1) // 3_600)


def test_post_job__without_allowance__reverts(market, token, requester, spec):
    with boa.env.prank(requester):
        token.approve(market.address, 0)
        with boa.reverts("erc20: insufficient allowance"):
            market.post_job(spec)


def test_post_job__when_the_token_returns_false__reverts(owner, treasury, requester, spec):
    d = deploy_with_false_token(owner, treasury)
    d.token.set_failing(True)
    with boa.env.prank(requester), boa.reverts("market: transfer failed"):
        d.market.post_job(spec)


# ---------------------------------------------------------------- permit


def _permit_requester(deployment):
    acct = Account.from_key(b"\x07" * 32)
    with boa.env.prank(deployment.owner):
        deployment.token.mint(acct.address, 100 * E18)
    return acct


def test_post_job_with_permit__without_prior_approval__locks_the_escrow(deployment, market, token):
    acct = _permit_requester(deployment)
    spec = make_spec(acct.address)
    deadline = now() + 600
    v, r, s = sign_permit(token, acct.key, market.address, market.escrow_for(spec), deadline)
    with boa.env.prank(acct.address):
        job_id = market.post_job_with_permit(spec, deadline, v, r, s)
    assert one_event(market, "JobPosted").escrow == 10 * E18
    assert market.jobs(job_id).escrow == 10 * E18
    assert token.balanceOf(acct.address) == 90 * E18
    assert token.allowance(acct.address, market.address) == 0


def test_post_job_with_permit__signed_for_another_amount__reverts(deployment, market, token):
    acct = _permit_requester(deployment)
    spec = make_spec(acct.address)
    deadline = now() + 600
    v, r, s = sign_permit(token, acct.key, market.address, market.escrow_for(spec) + 1, deadline)
    with boa.env.prank(acct.address), boa.reverts("erc20: invalid signature"):
        market.post_job_with_permit(spec, deadline, v, r, s)


def test_post_job_with_permit__sent_by_another_account__reverts(deployment, market, token, stranger):
    acct = _permit_requester(deployment)
    spec = make_spec(acct.address)
    deadline = now() + 600
    v, r, s = sign_permit(token, acct.key, market.address, market.escrow_for(spec), deadline)
    # The permit fails and the stranger's own allowance is no way around the requester check.
    with boa.env.prank(stranger), boa.reverts("market: requester is not the caller"):
        market.post_job_with_permit(spec, deadline, v, r, s)


def test_post_job_with_permit__past_its_deadline__reverts(deployment, market, token):
    acct = _permit_requester(deployment)
    spec = make_spec(acct.address, bid_deadline=now() + 10_000, reveal_deadline=now() + 20_000)
    deadline = now() + 600
    v, r, s = sign_permit(token, acct.key, market.address, market.escrow_for(spec), deadline)
    boa.env.time_travel(seconds=601)
    with boa.env.prank(acct.address), boa.reverts("erc20: expired deadline"):
        market.post_job_with_permit(spec, deadline, v, r, s)


# ---------------------------------------------------------------- cancel


def test_cancel_job__before_the_bid_deadline__refunds_the_escrow_as_credit__and_logs(
    market, token, flow, requester, spec
):
    job_id = flow.post(spec)
    with boa.env.prank(requester):
        market.cancel_job(job_id, spec)
    log = one_event(market, "JobCancelled")
    assert (log.job_id, log.refunded) == (job_id, 10 * E18)
    job = market.jobs(job_id)
    assert (job.status, job.escrow) == (JOB_CANCELLED, 0)
    assert market.credits(requester) == 10 * E18
    assert market.total_credits() == 10 * E18
    assert_solvent(market, token, [job_id])


def test_cancel_job__with_committed_sealed_bids__cancels(market, providers, provider, requester, spec):
    job_id = providers.post(spec)
    providers.commit(job_id, spec, provider, 5 * E18)
    with boa.env.prank(requester):
        market.cancel_job(job_id, spec)
    assert market.jobs(job_id).status == JOB_CANCELLED


def test_cancel_job__with_an_instant_slot_taken__releases_the_provider_unharmed(
    market, token, registry, providers, provider, requester
):
    spec = make_spec(requester, auction=AUCTION_INSTANT, redundancy=2)
    job_id = providers.post(spec)
    providers.take(job_id, spec, provider)
    early_refund = value(10 * E18 - DEFAULT_PRICE_FLOOR, 3_600)
    assert market.credits(requester) == early_refund
    assert registry.stakes(provider).active_jobs == 1
    with boa.env.prank(requester):
        market.cancel_job(job_id, spec)
    assert one_event(market, "JobCancelled").refunded == 20 * E18 - early_refund
    released = one_event(market, "StakeReleased")  # the registry's event, in the same call
    assert (released.provider, released.completed, released.active_jobs) == (provider, False, 0)
    assert market.slots(job_id, 0).status == SLOT_RELEASED
    assert registry.stakes(provider).active_jobs == 0
    assert registry.stakes(provider).active == registry.min_provider_stake()
    assert market.credits(requester) == 20 * E18
    assert market.jobs(job_id).escrow == 0
    assert_solvent(market, token, [job_id])


def test_cancel_job__by_a_stranger__reverts(market, flow, stranger, spec):
    job_id = flow.post(spec)
    with boa.env.prank(stranger), boa.reverts("market: caller is not the requester"):
        market.cancel_job(job_id, spec)


def test_cancel_job__at_the_bid_deadline__reverts(market, flow, requester, spec):
    job_id = flow.post(spec)
    boa.env.time_travel(seconds=spec.bid_deadline - now())
    with boa.env.prank(requester), boa.reverts("market: bid deadline passed"):
        market.cancel_job(job_id, spec)


def test_cancel_job__twice__reverts(market, flow, requester, spec):
    job_id = flow.post(spec)
    with boa.env.prank(requester):
        market.cancel_job(job_id, spec)
        with boa.reverts("market: job is not open"):
            market.cancel_job(job_id, spec)


def test_cancel_job__of_an_unknown_job__reverts(market, requester, spec):
    with boa.env.prank(requester), boa.reverts("market: unknown job"):
        market.cancel_job(1, spec)


def test_cancel_job__with_altered_terms__reverts(market, flow, requester, spec):
    job_id = flow.post(spec)
    with boa.env.prank(requester), boa.reverts("market: spec does not match job"):
        market.cancel_job(job_id, spec._replace(max_price=spec.max_price + 1))


def test_withdraw__of_a_refund__pays_the_requester__and_logs(market, token, flow, requester, spec):
    job_id = flow.post(spec)
    before = token.balanceOf(requester)
    with boa.env.prank(requester):
        market.cancel_job(job_id, spec)
        assert market.withdraw() == 10 * E18
    log = one_event(market, "Withdrawn")
    assert (log.account, log.amount) == (requester, 10 * E18)
    assert token.balanceOf(requester) == before + 10 * E18
    assert market.credits(requester) == 0
    assert market.total_credits() == 0
    assert token.balanceOf(market.address) == 0


def test_withdraw__of_another_accounts_credit__is_impossible(market, flow, requester, stranger, spec):
    job_id = flow.post(spec)
    with boa.env.prank(requester):
        market.cancel_job(job_id, spec)
    with boa.env.prank(stranger), boa.reverts("market: nothing to withdraw"):
        market.withdraw()
    assert market.credits(requester) == 10 * E18


def test_withdraw__when_the_token_returns_false__reverts_and_keeps_the_credit(owner, treasury, requester):
    d = deploy_with_false_token(owner, treasury)
    fund_false = d.token
    fund_false.mint(requester, 100 * E18)
    spec = make_spec(requester)
    with boa.env.prank(requester):
        job_id = d.market.post_job(spec)
        d.market.cancel_job(job_id, spec)
    fund_false.set_failing(True)
    with boa.env.prank(requester), boa.reverts("market: transfer failed"):
        d.market.withdraw()
    assert d.market.credits(requester) == 10 * E18


def test_fund_helper__approves_both_contracts(deployment, stranger):
    # Sanity of the fixtures the rest of the suite relies on.
    fund(deployment, stranger, 1)
    assert deployment.token.allowance(stranger, deployment.market.address) == 2**256 - 1
    assert deployment.token.allowance(stranger, deployment.registry.address) == 2**256 - 1


def test_spec_hash__is_keccak_of_the_abi_encoded_spec(market, requester, spec):
    from eth_abi import encode
    from eth_utils import keccak

    types = "(address,bytes32,uint8,uint16,uint32,uint8,uint8,uint8,uint256,uint64,uint64,uint64,uint64,uint64)"
    assert market.spec_hash(spec) == keccak(encode([types], [tuple(spec)]))
    assert spec.auction == AUCTION_SEALED
