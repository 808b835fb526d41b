"""The market's money at risk matches the money at stake: each attack of the economics review
(docs/economics.md) as a test that fails on the contracts before the fix and passes after.

Tests are named ``test_<what>__<condition>__<outcome>``.
"""

from __future__ import annotations

from typing import Any

import boa
import pytest
from eth_account import Account

from tests.contracts.contract_helpers import (
    BASE_SLASH,
    DISPUTE_BOND,
    E18,
    MAX_UINT,
    MIN_PROVIDER_STAKE,
    UNBONDING_PERIOD,
    make_spec,
    now,
    sign_permit,
    travel_to,
    value,
)
from tests.contracts.test_reservations import DAY, DURATION, ESCROW, GPUS, PRICE, deploy_reservations

# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def res(deployment, providers, owner, treasury, requester, provider, provider2, verifier, stranger) -> Any:
    r = deploy_reservations(deployment.token, deployment.registry, owner, treasury)
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
