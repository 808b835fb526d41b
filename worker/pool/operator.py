"""Provider pools off chain: the operator's daemon and the member's daemon.

A pool (``contracts/ProviderPool.vy``, bound by :mod:`marketplace.contracts.pool`) is one provider address
at the market. Two daemons drive it:

- :class:`PoolOperatorDaemon` (the operator's account, no worker of its own) registers the pool's
  offer, covered by its best-equipped bonded member, watches ``JobPosted`` and bids through the
  pool (sealed commit/reveal or instant take, by its pricing strategy), assigns each slot the pool
  wins to a member whose devices fit (the least loaded: fewest open assignments, then fewest
  assignments ever, then list order, so equal members take turns), books each slot at the pool
  once it can end (``pool.settle``), collects the pool's market credit and withdraws its fee. It
  bids with the provider's :class:`~worker.provider.bidding.Bidder`, through a :class:`PoolVenue`,
  with the pool's members as the bidder's supply.
- :class:`MemberDaemon` (a member's account, with its own worker) joins the pool with its worker's
  devices, receipt signer and endpoint, watches ``SlotAssigned`` for slots assigned to it, commits
  its worker's result root and metered GPU-seconds through the pool (``pool.commit_result``),
  books the slot when it can end and withdraws its pool credit. It is a
  :class:`~worker.provider.daemon.ProviderDaemon` whose market calls go through the pool and
  which never bids.

The requester and the member's worker find the member from the chain (``pool.assignments``), see
:func:`marketplace.market.routing.slot_worker`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from eth_account.signers.local import LocalAccount

from marketplace.contracts import reverts
from marketplace.contracts.deployment import Contracts
from marketplace.contracts.pool import Pool, PoolMember
from marketplace.errors import ConfigError, ContractRevert
from marketplace.market.pricing import PricingStrategy
from marketplace.types import DeviceKind, JobSpec, JobStatus, Offer, SlotStatus, format_tokens
from worker.node.service import WorkerServer
from worker.provider.bidding import Bidder, BidTerms
from worker.provider.daemon import ProviderDaemon, ProviderSettings
from worker.provider.loop import ChainDaemon, can_settle

__all__ = [
    "MemberDaemon",
    "OperatorSettings",
    "PoolOperatorDaemon",
    "PoolVenue",
    "pick_member",
    "pool_offer",
    "register_pool",
]

log = logging.getLogger("flopex.pool")

#: Seconds between checks that the pool's registry offer still matches its members.
OFFER_REFRESH_S = 10.0


@dataclass(frozen=True)
class OperatorSettings:
    """How a pool presents itself and bids; devices per slot come from its covering member."""

    price_floor: int
    strategy: PricingStrategy
    device_model: str
    device_kind: DeviceKind
    claimed_gflops: int = 0
    poll_interval_s: float = 0.5
    withdraw: bool = True


def pick_member(members: list[PoolMember], spec: JobSpec, min_stake: int, ever: dict[str, int]) -> PoolMember | None:
    """The member to run a slot of ``spec``: one that fits, least loaded first.

    Among bonded members with enough devices and memory: fewest open assignments, then fewest
    assignments ever (``ever``, by address), then the earliest in the pool's list.
    """
    fitting = [
        (m.assignments, ever.get(m.address, 0), i, m)
        for i, m in enumerate(members)
        if m.fits(spec.gpus, spec.min_memory_mb, min_stake)
    ]
    if not fitting:
        return None
    return min(fitting, key=lambda t: t[:3])[3]


def pool_offer(
    members: list[PoolMember], min_stake: int, settings: OperatorSettings
) -> tuple[Offer, PoolMember] | None:
    """The pool's offer and the member covering it: the bonded member with the most devices, then memory.

    A slot runs on one member, so the offer promises that member's devices and names its worker.
    """
    bonded = [m for m in members if m.joined and m.stake >= min_stake]
    if not bonded:
        return None
    cover = max(bonded, key=lambda m: (m.gpus, m.memory_mb))
    offer = Offer(
        device_model=settings.device_model[:64],
        device_kind=settings.device_kind,
        gpu_count=cover.gpus,
        memory_mb=cover.memory_mb,
        claimed_gflops=settings.claimed_gflops,
        price_floor=settings.price_floor,
        endpoint=cover.endpoint,
        signer=cover.signer,
    )
    return offer, cover


def register_pool(
    contracts: Contracts,
    pool: Pool,
    account: LocalAccount,
    settings: OperatorSettings,
    members: list[PoolMember] | None = None,
) -> PoolMember | None:
    """Register (or refresh) the pool's offer; returns the covering member, or None with no bonded member."""
    wanted = pool_offer(pool.members() if members is None else members, pool.min_member_stake(), settings)
    if wanted is None:
        return None
    offer, cover = wanted
    registry = contracts.registry
    if not registry.is_provider(pool.address) or registry.offer(pool.address) != offer:
        pool.register(account, offer, cover.address)
        log.info("pool %s: registered, covered by %s (%d device(s))", pool.address, cover.address, cover.gpus)
    return cover


class PoolVenue:
    """Bids through the pool contract, which holds the slots; an instant take pays the pool's registered price."""

    def __init__(self, pool: Pool, account: LocalAccount, price_floor: int) -> None:
        self.pool = pool
        self.account = account
        self.price_floor = price_floor

    @property
    def holder(self) -> str:
        """The pool holds the slots."""
        return self.pool.address

    def instant_price(self, ask: Callable[[], int | None]) -> int | None:
        """The pool's registered price: its offer is the pool contract's, posted by the operator."""
        return self.price_floor

    def post_price(self, price: int) -> None:
        """The pool's price is posted with its registration (``register_pool``), not per take."""

    def take(self, job_id: int) -> None:
        self.pool.take_job(self.account, job_id)

    def commit_bid(self, job_id: int, price: int) -> bytes:
        return self.pool.commit_bid(self.account, job_id, price)

    def reveal(self, job_id: int, price: int, salt: bytes) -> None:
        self.pool.reveal_bid(self.account, job_id, price, salt)


class PoolOperatorDaemon(ChainDaemon):
    """The operator of one pool: register, bid, assign, book, collect.

    Its :class:`~worker.provider.bidding.Bidder` bids through the pool (a :class:`PoolVenue`) for
    the pool's members (the daemon is the bidder's :class:`~worker.provider.bidding.Supply`).
    """

    def __init__(
        self,
        contracts: Contracts,
        account: LocalAccount,
        pool: Pool,
        settings: OperatorSettings,
        state_path: Path,
    ) -> None:
        if pool.operator() != account.address:
            raise ConfigError(f"{account.address} is not the operator of pool {pool.address}")
        super().__init__(
            contracts, account, state_path, poll_interval_s=settings.poll_interval_s, role="pool operator", log=log
        )
        self.pool = pool
        self.settings = settings
        self.min_stake = pool.min_member_stake()
        self.members: list[PoolMember] = []
        self._ever: dict[str, int] = {}
        self._assigned_block = -1
        self._offer_checked = 0.0
        terms = BidTerms(settings.price_floor, settings.strategy, settings.device_kind)
        venue = PoolVenue(pool, account, settings.price_floor)
        #: Bids through the pool for its members.
        self.bidder = Bidder(contracts, account, self.memory, terms, venue, self, role="pool operator")

    @property
    def holder(self) -> str:
        """The pool holds the slots."""
        return self.pool.address

    # ------------------------------------------------------------------ registration

    def bonded(self) -> list[PoolMember]:
        """Members with at least the minimum stake."""
        return [m for m in self.members if m.joined and m.stake >= self.min_stake]

    def desired_offer(self) -> tuple[Offer, PoolMember] | None:
        """The offer the pool should have and its covering member, or None with no bonded member."""
        return pool_offer(self.members, self.min_stake, self.settings)

    def ensure_registered(self) -> None:
        """Register (or refresh) the pool's offer; a :class:`ConfigError` while no member is bonded."""
        if not self.try_register():
            raise ConfigError(f"pool {self.pool.address} has no bonded member to cover its offer")

    def try_register(self) -> bool:
        """Register (or refresh) the pool's offer; False while no member is bonded."""
        self.members = self.pool.members()
        self._offer_checked = time.monotonic()
        return register_pool(self.contracts, self.pool, self.account, self.settings, self.members) is not None

    def _withdraw(self) -> None:
        if self.pool.credits(self.address) > 0:
            amount = self.pool.withdraw(self.account)
            log.info("pool %s: operator withdrew %s FLOP", self.pool.address, format_tokens(amount))

    # ------------------------------------------------------------------ the bidder's supply: the members

    def fits(self, spec: JobSpec) -> bool:
        """Whether some bonded member has the devices and memory per device for a slot of ``spec``."""
        return any(m.fits(spec.gpus, spec.min_memory_mb, self.min_stake) for m in self.members)

    def capacity(self) -> int:
        """Slots it can run at once: one per bonded member."""
        return max(1, len(self.bonded()))

    def busy(self) -> int:
        """Members busy now: the pool's open assignments."""
        return self.pool.open_assignments()

    def free_for(self, spec: JobSpec, lease_start: int) -> bool:
        """A pool offers no reservations: nothing of its members is reserved."""
        return True

    # ------------------------------------------------------------------ one pass

    def step(self) -> None:
        """Refresh members (and the offer), bid, assign and book slots, collect, withdraw."""
        if time.monotonic() - self._offer_checked >= OFFER_REFRESH_S:
            self.try_register()
        else:
            self.members = self.pool.members()
        self._read_assignments()
        self.bidder.read_new_jobs()
        now = self.now()
        self.bidder.bid(now)
        for job_id in list(self.memory.slots):
            if job_id not in self.memory.done:
                self._serve(job_id, now)
        if self.contracts.market.credits(self.pool.address) > 0:
            self.pool.collect(self.account)
        if self.settings.withdraw:
            self._withdraw()
        self._save()

    def _read_assignments(self) -> None:
        """Count every member's assignments ever (for taking turns), from ``SlotAssigned``."""
        latest = self.contracts.chain.block_number()
        start = max(self._assigned_block + 1, self.contracts.market.start_block)
        if start > latest:
            return
        for event in self.pool.pool_events("SlotAssigned", start):
            member = event.args["member"]
            self._ever[member] = self._ever.get(member, 0) + 1
        self._assigned_block = latest

    def _serve(self, job_id: int, now: int) -> None:
        market = self.contracts.market
        index = self.memory.slots[job_id]
        slot = market.slot(job_id, index)
        spec = market.spec(job_id)
        try:
            if slot.status == SlotStatus.ASSIGNED:
                if self.pool.assignment(job_id, index) is None:
                    self._assign(job_id, index, spec)
                else:
                    job = market.job(job_id)
                    if job.status == JobStatus.LEASED and now > job.lease_start + spec.run_duration:
                        # The member missed the run deadline: settle and book the slash to it.
                        self._book(job_id, index)
                return
            if slot.status.terminal or can_settle(slot.status, slot.committed_at, spec, now):
                self._book(job_id, index)
        except ContractRevert as exc:
            log.info("pool %s: job %d: %s", self.pool.address, job_id, exc.reason)
            if reverts.already_booked(exc):
                self.memory.done.add(job_id)

    def _assign(self, job_id: int, index: int, spec: JobSpec) -> None:
        member = pick_member(self.members, spec, self.min_stake, self._ever)
        if member is None:
            log.warning(
                "pool %s: job %d: no bonded member fits it (%d device(s), %d MB)",
                self.pool.address,
                job_id,
                spec.gpus,
                spec.min_memory_mb,
            )
            return
        self.pool.assign(self.account, job_id, index, member.address)
        self._ever[member.address] = self._ever.get(member.address, 0) + 1
        self._assigned_block = max(self._assigned_block, self.contracts.chain.block_number())
        self.members = self.pool.members()
        log.info("pool %s: job %d slot %d assigned to %s", self.pool.address, job_id, index, member.address)

    def _book(self, job_id: int, index: int) -> None:
        if not self.pool.booked(job_id, index):
            self.pool.settle(self.account, job_id, index)
            log.info("pool %s: booked job %d slot %d", self.pool.address, job_id, index)
        self.memory.done.add(job_id)


class MemberDaemon(ProviderDaemon):
    """One member of a pool with its worker: join, run what is assigned, commit, book, withdraw.

    ``settings`` describe the worker (``endpoint``, ``gpu_count``, ``memory_mb``) and the stake
    to keep bonded in the pool (``stake``); its prices are the operator's business and unused.
    """

    SERVES_RESERVATIONS = False  # the pool is the registered provider; it offers no reservations

    def __init__(
        self,
        contracts: Contracts,
        account: LocalAccount,
        worker: WorkerServer,
        pool: Pool,
        settings: ProviderSettings,
        state_path: Path,
    ) -> None:
        super().__init__(contracts, account, worker, settings, state_path, role="member")
        self.pool = pool

    @property
    def holder(self) -> str:
        """The pool holds the slots."""
        return self.pool.address

    def ensure_registered(self) -> None:
        """Join the pool (or top up the stake and refresh the worker's description)."""
        s, pool, token = self.settings, self.pool, self.contracts.token
        signer = self.worker.provider_address
        member = pool.member(self.address)
        if not member.joined:
            minimum = pool.min_member_stake()
            if s.stake < minimum:
                raise ConfigError(
                    f"stake {format_tokens(s.stake)} FLOP is below the pool's minimum of {format_tokens(minimum)} FLOP"
                )
            balance = token.balance_of(self.address)
            if balance < s.stake:
                raise ConfigError(
                    f"{self.address} holds {format_tokens(balance)} FLOP; the stake needs {format_tokens(s.stake)}"
                )
            token.approve(self.account, pool.address, s.stake)
            pool.join(self.account, s.stake, s.gpu_count, s.memory_mb, signer, s.endpoint)
            log.info("member %s: joined pool %s with %s FLOP", self.address, pool.address, format_tokens(s.stake))
            return
        if member.stake < s.stake:
            missing = s.stake - member.stake
            token.approve(self.account, pool.address, missing)
            pool.add_stake(self.account, missing)
        if (member.gpus, member.memory_mb, member.signer, member.endpoint) != (
            s.gpu_count,
            s.memory_mb,
            signer,
            s.endpoint,
        ):
            pool.update_devices(self.account, s.gpu_count, s.memory_mb, signer, s.endpoint)

    # ------------------------------------------------------------------ market calls, through the pool

    def _commit(self, job_id: int, index: int, root: bytes, claimed: int) -> None:
        self.pool.commit_result(self.account, job_id, index, root, claimed)

    def _settle(self, job_id: int, index: int) -> None:
        self.pool.settle(self.account, job_id, index)

    def _withdraw(self) -> None:
        if self.pool.credits(self.address) > 0:
            amount = self.pool.withdraw(self.account)
            log.info("member %s: withdrew %s FLOP of pay", self.address, format_tokens(amount))

    # ------------------------------------------------------------------ one pass

    def step(self) -> None:
        """Pick up new assignments, commit and book assigned slots, withdraw pay."""
        self._read_assignments()
        now = self.now()
        for job_id in list(self.memory.slots):
            if job_id not in self.memory.done:
                self._serve(job_id, now)
        if self.settings.withdraw:
            self._withdraw()
        self._save()

    def _read_assignments(self) -> None:
        latest = self.contracts.chain.block_number()
        start = max(self.memory.last_block + 1, self.contracts.market.start_block)
        if start > latest:
            return
        for event in self.pool.pool_events("SlotAssigned", start, member=self.address):
            job_id, index = int(event.args["job_id"]), int(event.args["slot"])
            if job_id not in self.memory.done:
                self.memory.slots[job_id] = index
                log.info("member %s: assigned job %d slot %d", self.address, job_id, index)
        self.memory.last_block = latest

    def _serve(self, job_id: int, now: int) -> None:
        market = self.contracts.market
        index = self.memory.slots[job_id]
        try:
            if self.pool.assignment(job_id, index) != self.address:
                self.memory.done.add(job_id)  # moved to another member
                return
            slot = market.slot(job_id, index)
            spec = market.spec(job_id)
            if slot.status == SlotStatus.ASSIGNED:
                self._maybe_commit(job_id, index, spec, now)
            elif slot.status.terminal or can_settle(slot.status, slot.committed_at, spec, now):
                if not self.pool.booked(job_id, index):
                    self._settle(job_id, index)
                self.memory.done.add(job_id)
        except ContractRevert as exc:
            log.info("member %s: job %d: %s", self.address, job_id, exc.reason)
            if reverts.already_booked(exc):
                self.memory.done.add(job_id)
