"""A funded flopex market on a dev chain: deploy every contract and give dev accounts ether and tokens."""

from __future__ import annotations

from marketplace.chain.client import DEV_ETHER, Chain, dev_account
from marketplace.contracts.court import CourtParameters
from marketplace.contracts.deployment import Contracts, MarketParameters, deploy_all
from marketplace.types import ONE_TOKEN

__all__ = ["setup_dev_market"]


def setup_dev_market(
    chain: Chain,
    *,
    accounts: int = 10,
    tokens_each: int = 100_000 * ONE_TOKEN,
    parameters: MarketParameters | None = None,
    court_parameters: CourtParameters | None = None,
) -> Contracts:
    """Deploy flopex on a dev chain and fund dev accounts 0..``accounts``-1 with ether and tokens.

    Account 0 deploys and owns the contracts and is the token's minter (the faucet); account 1 is
    the treasury.
    """
    keys = [dev_account(i) for i in range(accounts)]
    for key in keys:
        if chain.balance_of_ether(key.address) < DEV_ETHER // 2:
            chain.fund_ether(key.address)
    contracts = deploy_all(
        chain,
        keys[0],
        treasury=keys[1].address if accounts > 1 else None,
        parameters=parameters,
        court_parameters=court_parameters,
    )
    for key in keys:
        contracts.token.mint(keys[0], key.address, tokens_each)
    return contracts
