"""A small market for the console's tests: providers, a verifier, a pool, jobs paid, slashed and open."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.console import build_market
from marketplace.chain.client import Chain, dev_account
from marketplace.contracts.deployment import Contracts
from marketplace.contracts.devmarket import setup_dev_market
from marketplace.contracts.pool import Pool, deploy_pool
from marketplace.types import ONE_TOKEN, DeviceKind, Offer

OPERATOR, MEMBER = 10, 11
POOL_FEE_BPS = 500


@dataclass
class SmallMarket:
    """The market and what was made on it."""

    contracts: Contracts
    made: dict[str, Any]
    pool: Pool


def small_market(chain: Chain | None = None, accounts: int = 12) -> SmallMarket:
    """Six providers in three device classes, a verifier; jobs 1 (sealed) and 2 paid, 3 slashed, 4 and 5 open;
    a reservation for sale; a pool of one member registered as a provider."""
    contracts = setup_dev_market(chain or Chain.embedded(), accounts=max(12, accounts))
    made = build_market(contracts, providers=6, jobs=5, settled=3)
    operator, member = dev_account(OPERATOR), dev_account(MEMBER)
    pool = deploy_pool(contracts.chain, operator, contracts, POOL_FEE_BPS, 100 * ONE_TOKEN, 3_600)
    contracts.token.approve(member, pool.address, 150 * ONE_TOKEN)
    pool.join(member, 150 * ONE_TOKEN, 2, 16_384, member.address, "127.0.0.1:19")
    offer = Offer("pooled CPU", DeviceKind.CPU, 2, 16_384, 0, ONE_TOKEN // 2, "127.0.0.1:19", member.address)
    pool.register(operator, offer, member.address)
    return SmallMarket(contracts, made, pool)
