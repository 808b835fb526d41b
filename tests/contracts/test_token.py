"""ComputeToken: the snekmate ERC-20 jobs are paid in, and its EIP-2612 permit."""

from __future__ import annotations

import boa
from eth_account import Account

from tests.contracts.contract_helpers import E18, one_event, sign_permit


def test_token__deploys_with_its_names__and_eighteen_decimals(token, owner):
    assert token.name() == "Compute"
    assert token.symbol() == "FLOP"
    assert token.decimals() == 18
    assert token.owner() == owner
    assert token.is_minter(owner)


def test_mint__by_a_stranger__reverts(token, stranger):
    with boa.env.prank(stranger), boa.reverts("erc20: access is denied"):
        token.mint(stranger, 1)


def test_transfer__moves_tokens__and_logs_transfer(token, requester, stranger):
    before = token.balanceOf(stranger)
    with boa.env.prank(requester):
        token.transfer(stranger, 5 * E18)
    log = one_event(token, "Transfer")
    assert token.balanceOf(stranger) == before + 5 * E18
    assert (log.sender, log.receiver, log.value) == (requester, stranger, 5 * E18)


def test_permit__with_a_valid_signature__sets_the_allowance(token, market):
    acct = Account.from_key(b"\x42" * 32)
    deadline = boa.env.evm.patch.timestamp + 600
    v, r, s = sign_permit(token, acct.key, market.address, 7 * E18, deadline)
    token.permit(acct.address, market.address, 7 * E18, deadline, v, r, s)
    assert token.allowance(acct.address, market.address) == 7 * E18
    assert token.nonces(acct.address) == 1


def test_permit__replayed__reverts(token, market):
    acct = Account.from_key(b"\x42" * 32)
    deadline = boa.env.evm.patch.timestamp + 600
    v, r, s = sign_permit(token, acct.key, market.address, 7 * E18, deadline)
    token.permit(acct.address, market.address, 7 * E18, deadline, v, r, s)
    with boa.reverts("erc20: invalid signature"):
        token.permit(acct.address, market.address, 7 * E18, deadline, v, r, s)


def test_permit__past_its_deadline__reverts(token, market):
    acct = Account.from_key(b"\x42" * 32)
    deadline = boa.env.evm.patch.timestamp + 600
    v, r, s = sign_permit(token, acct.key, market.address, 7 * E18, deadline)
    boa.env.time_travel(seconds=601)
    with boa.reverts("erc20: expired deadline"):
        token.permit(acct.address, market.address, 7 * E18, deadline, v, r, s)
