"""Typed bindings for provider pools (``contracts/ProviderPool.vy``) and the routing helpers.

A pool is one provider address at the registry and the market. Its registry offer names one
member's worker (the ``covering_member``), but each slot the pool wins runs on the member the
operator assigned (``assignments(job, slot)``). :func:`slot_worker` resolves, for any slot, the
worker that runs it: the provider's own offer, or the assigned member's endpoint and signer when
the provider is a pool. :func:`pool_at` tells pools from plain providers by asking the address.
"""

from __future__ import annotations

import secrets
import weakref
from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from marketplace.chain.client import Chain
from marketplace.contracts.base import Bound, artifact
from marketplace.contracts.deployment import Contracts
from marketplace.contracts.market import Market
from marketplace.errors import ChainError, ConfigError, ContractRevert
from marketplace.types import Offer

__all__ = ["ZERO_ADDRESS", "Pool", "PoolEvent", "PoolMember", "deploy_pool", "load_pool", "pool_at"]

ZERO_ADDRESS = "0x" + "00" * 20


@dataclass(frozen=True)
class PoolMember:
    """One member of a pool, as the contract keeps it."""

    address: str
    stake: int
    unbonding: int
    unbond_at: int
    assignments: int
    gpu_seconds: int
    gpus: int
    memory_mb: int
    signer: str
    endpoint: str
    joined: bool

    def fits(self, gpus: int, memory_mb: int, min_stake: int) -> bool:
        """Whether the member may be assigned a slot needing ``gpus`` devices of ``memory_mb`` each."""
        return self.joined and self.stake >= min_stake and self.gpus >= gpus and self.memory_mb >= memory_mb


@dataclass(frozen=True)
class PoolEvent:
    """A pool event, undecoded: its name, arguments and block."""

    name: str
    args: dict[str, Any]
    block_number: int


class Pool(Bound):
    """A provider pool. Transactions take the sending account first; job terms come from ``market``."""

    NAME = "ProviderPool"

    def __init__(self, chain: Chain, address: str, market: Market) -> None:
        super().__init__(chain, address)
        self.market = market

    # ------------------------------------------------------------------ members

    def join(self, account: LocalAccount, stake: int, gpus: int, memory_mb: int, signer: str, endpoint: str) -> Any:
        """Join with ``stake`` (approve the pool first) and the member's worker."""
        return self.transact(account, "join", stake, gpus, memory_mb, to_checksum_address(signer), endpoint)

    def add_stake(self, account: LocalAccount, amount: int) -> Any:
        """Bond ``amount`` more (approve the pool first)."""
        return self.transact(account, "add_stake", amount)

    def update_devices(self, account: LocalAccount, gpus: int, memory_mb: int, signer: str, endpoint: str) -> Any:
        """Replace the description of the member's worker."""
        return self.transact(account, "update_devices", gpus, memory_mb, to_checksum_address(signer), endpoint)

    def request_leave(self, account: LocalAccount, amount: int) -> Any:
        """Move ``amount`` of bonded stake to unbonding."""
        return self.transact(account, "request_leave", amount)

    def withdraw_stake(self, account: LocalAccount) -> Any:
        """Withdraw unbonding stake once due."""
        return self.transact(account, "withdraw_stake")

    def sync(self, account: LocalAccount) -> Any:
        """Move members' exits through the registry."""
        return self.transact(account, "sync")

    # ------------------------------------------------------------------ operator

    def register(self, account: LocalAccount, offer: Offer, covering_member: str) -> Any:
        """Register (or update) the pool's offer, covered by ``covering_member``'s worker."""
        return self.transact(account, "register", offer.as_tuple(), to_checksum_address(covering_member))

    def deregister(self, account: LocalAccount) -> Any:
        """Withdraw the pool's offer."""
        return self.transact(account, "deregister")

    def commit_bid(self, account: LocalAccount, job_id: int, price: int, salt: bytes | None = None) -> bytes:
        """Commit a sealed ask for the pool; returns the salt needed to reveal it."""
        salt = salt or secrets.token_bytes(32)
        commitment = self.market.bid_commitment(job_id, self.address, price, salt)
        self.transact(account, "commit_bid", job_id, self.market.spec(job_id).as_tuple(), commitment)
        return salt

    def reveal_bid(self, account: LocalAccount, job_id: int, price: int, salt: bytes) -> Any:
        """Reveal the pool's sealed ask."""
        return self.transact(account, "reveal_bid", job_id, self.market.spec(job_id).as_tuple(), price, salt)

    def take_job(self, account: LocalAccount, job_id: int) -> Any:
        """Take a slot of an instant job at the pool's price floor."""
        return self.transact(account, "take_job", job_id, self.market.spec(job_id).as_tuple())

    def assign(self, account: LocalAccount, job_id: int, slot: int, member: str) -> Any:
        """Assign (or move) the pool's slot to ``member``."""
        return self.transact(
            account, "assign", job_id, self.market.spec(job_id).as_tuple(), slot, to_checksum_address(member)
        )

    # ------------------------------------------------------------------ work and money

    def commit_result(self, account: LocalAccount, job_id: int, slot: int, result_root: bytes, gpu_seconds: int) -> Any:
        """Commit an assigned slot's result (the operator or the assigned member)."""
        return self.transact(
            account, "commit_result", job_id, self.market.spec(job_id).as_tuple(), slot, result_root, gpu_seconds
        )

    def settle(self, account: LocalAccount, job_id: int, slot: int) -> Any:
        """Book a slot's outcome to its member (settling it at the market first if needed)."""
        return self.transact(account, "settle", job_id, self.market.spec(job_id).as_tuple(), slot)

    def collect(self, account: LocalAccount) -> Any:
        """Withdraw the pool's market credit into the pool."""
        return self.transact(account, "collect")

    def withdraw(self, account: LocalAccount) -> int:
        """Withdraw all of ``account``'s pool credit; returns the amount."""
        before = self.credits(account.address)
        self.transact(account, "withdraw")
        return before

    def reconcile(self, account: LocalAccount) -> Any:
        """Book leftovers once no assignment is open."""
        return self.transact(account, "reconcile")

    # ------------------------------------------------------------------ views

    def member(self, address: str) -> PoolMember:
        """``address``'s membership (``joined`` is False for strangers)."""
        (stake, unbonding, unbond_at, assignments, gpu_seconds, gpus, memory_mb, signer, endpoint, joined) = self.call(
            "members", to_checksum_address(address)
        )
        return PoolMember(
            to_checksum_address(address),
            int(stake),
            int(unbonding),
            int(unbond_at),
            int(assignments),
            int(gpu_seconds),
            int(gpus),
            int(memory_mb),
            to_checksum_address(signer),
            str(endpoint),
            bool(joined),
        )

    def member_addresses(self) -> list[str]:
        """Every member, in list order."""
        return [to_checksum_address(self.call("member_list", i)) for i in range(self.member_count())]

    def members(self) -> list[PoolMember]:
        """Every member's state, in list order."""
        return [self.member(a) for a in self.member_addresses()]

    def member_count(self) -> int:
        """Number of members."""
        return int(self.call("member_count"))

    def credits(self, account: str) -> int:
        """Pool credit ``account`` can withdraw."""
        return int(self.call("credits", to_checksum_address(account)))

    def assignment(self, job_id: int, slot: int) -> str | None:
        """The member assigned to the pool's slot, or None."""
        member = to_checksum_address(self.call("assignments", job_id, slot))
        return None if int(member, 16) == 0 else member

    def booked(self, job_id: int, slot: int) -> bool:
        """Whether the slot's outcome is booked."""
        return bool(self.call("booked", job_id, slot))

    def operator(self) -> str:
        """Who bids and assigns."""
        return to_checksum_address(self.call("operator"))

    def fee_bps(self) -> int:
        """The operator's share of each payment, in basis points."""
        return int(self.call("fee_bps"))

    def min_member_stake(self) -> int:
        """Least bonded stake to join and be assigned work."""
        return int(self.call("min_member_stake"))

    def unbonding_period(self) -> int:
        """Seconds a leaving member waits."""
        return int(self.call("unbonding_period"))

    def total_stake(self) -> int:
        """Sum of bonded member stake."""
        return int(self.call("total_stake"))

    def total_unbonding(self) -> int:
        """Sum of unbonding member stake."""
        return int(self.call("total_unbonding"))

    def total_credits(self) -> int:
        """Sum of all pool credits."""
        return int(self.call("total_credits"))

    def total_gpus(self) -> int:
        """Sum of every member's devices."""
        return int(self.call("total_gpus"))

    def open_assignments(self) -> int:
        """Assignments not yet booked."""
        return int(self.call("open_assignments"))

    def unattributed(self) -> tuple[int, int]:
        """``(income, loss)`` not yet booked."""
        income, loss = self.call("unattributed")
        return int(income), int(loss)

    def draining(self) -> bool:
        """Whether bidding is paused for members' exits."""
        return bool(self.call("draining"))

    def released(self) -> int:
        """Tokens out of the registry, held for leaving members."""
        return int(self.call("released"))

    def pot(self, member: str) -> int:
        """Released stake earmarked for ``member``'s exit (its alone; withdrawn by ``withdraw_stake``)."""
        return int(self.call("pots", member))

    def cash(self) -> int:
        """Collected tokens not yet withdrawn as credit."""
        return int(self.call("cash"))

    # ------------------------------------------------------------------ events

    def pool_events(self, name: str, from_block: int = 0, **filters: Any) -> list[PoolEvent]:
        """The pool's own events ``name`` since ``from_block`` (the registry's same-named events excluded).

        Pool events have no dataclasses in :mod:`marketplace.contracts.events`; ``StakeWithdrawn`` shares its
        name with the registry's, so logs are taken from the pool's address only.
        """
        with self.chain.locked():
            logs = getattr(self.contract.events, name)().get_logs(
                from_block=from_block, argument_filters=filters or None
            )
        return [
            PoolEvent(name, dict(log["args"]), int(log.get("blockNumber") or 0))
            for log in logs
            if to_checksum_address(log["address"]) == self.address
        ]


def load_pool(contracts: Contracts, address: str) -> Pool:
    """Bind the pool at ``address``; a clear :class:`ConfigError` when no pool of this market is there."""
    pool = pool_at(contracts, address)
    if pool is None:
        raise ConfigError(f"no pool of this market at {address}")
    return pool


#: Addresses already classified, per chain client and market: (market, address) -> is a pool.
_KNOWN: weakref.WeakKeyDictionary[Chain, dict[tuple[str, str], bool]] = weakref.WeakKeyDictionary()


def _known(chain: Chain) -> dict[tuple[str, str], bool]:
    found = _KNOWN.get(chain)
    if found is None:
        found = _KNOWN[chain] = {}
    return found


def pool_at(contracts: Contracts, address: str) -> Pool | None:
    """The pool at ``address`` when it is a pool over ``contracts``' market, else None.

    An account without code is no pool; a contract is a pool when it answers ``market()`` and
    ``operator()`` with this market and an operator. The answer is cached per chain client and
    address (code at an address does not change); a chain that does not answer raises ChainError
    rather than guess.
    """
    try:
        address = to_checksum_address(address)
    except (ValueError, TypeError):
        raise ConfigError(f"not an address: {address!r}") from None
    cache = _known(contracts.chain)
    key = (contracts.market.address, address)
    known = cache.get(key)
    if known is False:
        return None
    pool = Pool(contracts.chain, address, contracts.market)
    if known:
        return pool
    with contracts.chain.locked():
        code = contracts.chain.w3.eth.get_code(address)
    if not code:
        cache[key] = False
        return None
    try:
        is_pool = to_checksum_address(pool.call("market")) == contracts.market.address and int(pool.operator(), 16) != 0
    except ContractRevert:
        is_pool = False  # a contract without the pool's views
    except ChainError as exc:
        if not any(name in str(exc) for name in ("BadFunctionCallOutput", "InsufficientDataBytes")):
            raise  # the chain is away: no answer rather than a wrong one
        is_pool = False
    except (ValueError, TypeError):
        is_pool = False
    cache[key] = is_pool
    return pool if is_pool else None


def deploy_pool(
    chain: Chain,
    operator_account: LocalAccount,
    contracts: Contracts,
    fee_bps: int,
    min_member_stake: int,
    unbonding_period: int,
) -> Pool:
    """Deploy a pool over ``contracts``' token, registry and market, run by ``operator_account``."""
    art = artifact(Pool.NAME)
    receipt = chain.deploy(
        operator_account,
        art["abi"],
        art["bytecode"],
        contracts.token.address,
        contracts.registry.address,
        contracts.market.address,
        operator_account.address,
        fee_bps,
        min_member_stake,
        unbonding_period,
    )
    pool = Pool(chain, str(receipt["contractAddress"]), contracts.market)
    _known(chain)[(contracts.market.address, pool.address)] = True
    return pool
