"""An account's money across the contracts: wallet, credits to withdraw, stake; and pulling every credit.

:func:`account_balance` reads, for one address, its token wallet and ether, what it can withdraw
from the market, the reservations contract and each pool of the market (every pool registered as
a provider), and its stake at the registry (active, locked by running leases, free, unbonding) and
in pools. :func:`withdraw_all` pulls every credit it has. Amounts are token units.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from eth_utils.address import is_address, to_checksum_address

from marketplace.errors import ConfigError

if TYPE_CHECKING:  # the command line imports this module inside commands; keep web3 out of its start
    from eth_account.signers.local import LocalAccount

    from marketplace.contracts.deployment import Contracts
    from marketplace.contracts.pool import Pool

__all__ = ["account_balance", "checked_address", "pools_of_market", "withdraw_all"]


def checked_address(text: str) -> str:
    """``text`` as a checksummed address, or :class:`ConfigError` saying it is none."""
    if not isinstance(text, str) or not is_address(text):
        raise ConfigError(f"not an address: {text!r} (expected 0x and 40 hex digits)")
    return to_checksum_address(text)


def pools_of_market(contracts: Contracts) -> list[Pool]:
    """Every pool of this market: the registered providers that are pools."""
    from marketplace.contracts.pool import pool_at

    seen: dict[str, Pool] = {}
    for event in contracts.registry.get_events("ProviderRegistered", contracts.deployment.start_block):
        if event.provider not in seen:
            pool = pool_at(contracts, event.provider)
            if pool is not None:
                seen[event.provider] = pool
    return list(seen.values())


def account_balance(contracts: Contracts, address: str) -> dict[str, Any]:
    """``address``'s money as JSON-ready data (token units; ether in wei)."""
    address = checked_address(address)
    stake = contracts.registry.stakes(address)
    credits: dict[str, Any] = {"market": contracts.market.credits(address)}
    if contracts.reservations is not None:
        credits["reservations"] = int(contracts.reservations.credits(address))
    pool_credits: dict[str, int] = {}
    pool_stakes: dict[str, dict[str, int]] = {}
    for pool in pools_of_market(contracts):
        credit = pool.credits(address)
        if credit:
            pool_credits[pool.address] = credit
        member = pool.member(address)
        if member.stake or member.unbonding:
            pool_stakes[pool.address] = {
                "stake": member.stake,
                "unbonding": member.unbonding,
                "unbond_at": member.unbond_at,
            }
    credits["pools"] = pool_credits
    credit_total = credits["market"] + credits.get("reservations", 0) + sum(pool_credits.values())
    wallet = contracts.token.balance_of(address)
    staked = stake.active + stake.unbonding + sum(s["stake"] + s["unbonding"] for s in pool_stakes.values())
    return {
        "address": address,
        "wallet": int(wallet),
        "ether_wei": contracts.chain.balance_of_ether(address),
        "credits": credits,
        "credits_total": credit_total,
        "stake": {
            "active": stake.active,
            "locked": stake.locked,
            "free": max(stake.active - stake.locked, 0),
            "unbonding": stake.unbonding,
            "unbond_at": stake.unbond_at,
            "active_jobs": stake.active_jobs,
        },
        "pool_stakes": pool_stakes,
        "total": int(wallet) + credit_total + staked,
    }


def withdraw_all(contracts: Contracts, account: LocalAccount) -> dict[str, int]:
    """Pull every credit ``account`` has (market, reservations, pools) into its wallet; returns what came from where."""
    pulled: dict[str, int] = {}
    if contracts.market.credits(account.address):
        pulled["market"] = contracts.market.withdraw(account)
    if contracts.reservations is not None and contracts.reservations.credits(account.address):
        pulled["reservations"] = int(contracts.reservations.withdraw(account))
    for pool in pools_of_market(contracts):
        if pool.credits(account.address):
            pulled[f"pool {pool.address}"] = pool.withdraw(account)
    return pulled
