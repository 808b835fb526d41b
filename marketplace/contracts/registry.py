"""Binding of the provider registry (``contracts/ProviderRegistry.vy``): stakes, offers, verifiers,
reputation and attested throughput.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eth_account.signers.local import LocalAccount

from marketplace.contracts.base import Bound
from marketplace.errors import ChainError, ConfigError
from marketplace.types import (
    JobSpec,
    Offer,
)

if TYPE_CHECKING:
    pass

__all__ = ["Registry"]


@dataclass(frozen=True)
class StakeState:
    """An account's stake in the registry."""

    active: int
    unbonding: int
    unbond_at: int
    active_jobs: int
    locked: int = 0  # part of ``active`` running leases lock as collateral

    @property
    def free(self) -> int:
        """Active stake no lease locks: what backs new leases and may unbond."""
        return max(self.active - self.locked, 0)


class Registry(Bound):
    """The provider registry: stakes, offers, verifiers, reputation."""

    NAME = "ProviderRegistry"

    def stake(self, account: LocalAccount, amount: int) -> Any:
        """Stake ``amount`` (approve the registry first)."""
        return self.transact(account, "stake", amount)

    def request_unbond(self, account: LocalAccount, amount: int) -> Any:
        """Start unbonding ``amount`` of active stake."""
        return self.transact(account, "request_unbond", amount)

    def withdraw_unbonded(self, account: LocalAccount) -> Any:
        """Withdraw unbonded stake after the delay."""
        return self.transact(account, "withdraw_unbonded")

    def register_provider(self, account: LocalAccount, offer: Offer) -> Any:
        """Register ``account`` as a provider with ``offer`` (or replace its offer)."""
        return self.transact(account, "register_provider", offer.as_tuple())

    def set_price_floor(self, account: LocalAccount, price_floor: int) -> Any:
        """Change ``account``'s posted price per GPU-hour (what an instant take pays), nothing else."""
        return self.transact(account, "set_price_floor", price_floor)

    def deregister_provider(self, account: LocalAccount) -> Any:
        """Withdraw ``account``'s offer."""
        return self.transact(account, "deregister_provider")

    def register_verifier(self, account: LocalAccount) -> Any:
        """Register ``account`` as a verifier."""
        return self.transact(account, "register_verifier")

    def attest_throughput(self, verifier: LocalAccount, provider: str, gflops: int) -> Any:
        """Record a measured throughput for ``provider``."""
        return self.transact(verifier, "attest_throughput", provider, gflops)

    def stakes(self, account: str) -> StakeState:
        """``account``'s stake."""
        return StakeState(*self.call("stakes", account))

    def offer(self, provider: str) -> Offer:
        """``provider``'s current offer."""
        return Offer.from_abi(self.call("offers", provider))

    def price_floor(self, provider: str) -> int:
        """``provider``'s posted price per GPU-hour: what an instant take pays."""
        return int(self.call("price_floor", provider))

    def is_provider(self, account: str) -> bool:
        """Whether ``account`` has a registered offer."""
        return bool(self.call("is_provider", account))

    def is_active_verifier(self, account: str) -> bool:
        """Whether ``account`` may attest."""
        return bool(self.call("is_active_verifier", account))

    def is_eligible(self, provider: str, spec: JobSpec, collateral: int = 0) -> bool:
        """Whether ``provider`` may bid for a job with ``spec`` and lock ``collateral`` of free stake for it
        (the market asks for the slot's value at the max price plus the base slash)."""
        return bool(
            self.call("is_eligible", provider, int(spec.device_kind), spec.gpus, spec.min_memory_mb, collateral)
        )

    def free_stake(self, account: str) -> int:
        """Active stake no lease locks: what backs new leases and may unbond."""
        return int(self.call("free_stake", account))

    def reputation(self, provider: str) -> tuple[int, int, int]:
        """``(completed, failed, slashed)`` counters."""
        completed, failed, slashed = self.call("reputation", provider)
        return int(completed), int(failed), int(slashed)

    def attestation(self, provider: str) -> tuple[int, str, int, bool]:
        """``(gflops, verifier, attested_at, flagged)`` of the latest capacity attestation."""
        gflops, verifier, at, flagged = self.call("attestations", provider)
        return int(gflops), str(verifier), int(at), bool(flagged)

    def total_stake(self, account: str) -> int:
        """Active plus unbonding stake."""
        return int(self.call("total_stake", account))

    def min_provider_stake(self) -> int:
        """Least stake to register."""
        return int(self.call("min_provider_stake"))

    def owner(self) -> str:
        """The registry's owner (it sets parameters and authorizes lockers)."""
        return str(self.call("owner"))

    def is_authorized(self, account: str) -> bool:
        """Whether ``account`` (a contract such as the reservations one) may lock, release and slash stakes."""
        return bool(self.call("authorized", account))

    def market(self) -> str:
        """The job market the registry serves (the zero address until it is set)."""
        return str(self.call("market"))

    def set_market(self, owner: LocalAccount, market: str) -> Any:
        """Link the registry to its job market (the owner's, once at deployment)."""
        return self.transact(owner, "set_market", market)

    def authorize(self, owner: LocalAccount, account: str, what: str) -> Any:
        """Let contract ``account`` (``what`` names it in errors) lock, release and slash stakes.

        Before the market is set this is at once. Next to a live market the authorization waits out
        the registry's change delay: it is queued, and a dev chain's clock is moved past the delay;
        on any other chain a :class:`ConfigError` says when the owner can make it.
        """
        if int(self.market(), 16) != 0:
            ready = self.queue_change(owner, "set_authorized", account, True)
            try:
                self.chain.time_travel(max(0, ready - self.chain.now()))
            except ChainError as exc:
                raise ConfigError(
                    f"{what} deployed at {account}; its authorization in the registry is queued: "
                    f"the registry's owner can make it (set_authorized) at {ready}"
                ) from exc
        return self.set_authorized(owner, account, True)

    def set_authorized(self, owner: LocalAccount, account: str, allowed: bool) -> Any:
        """Let ``account`` lock, release and slash stakes, or stop it (the owner's).

        Once the market is set, an authorization must have been queued ``CHANGE_DELAY`` before
        (``queue_change(owner, "set_authorized", account, True)``); a revocation is made at once.
        """
        return self.transact(owner, "set_authorized", account, allowed)
