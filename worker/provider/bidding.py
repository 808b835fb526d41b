"""The auction side of a daemon: watch ``JobPosted``, price, bid sealed or take instant, finalize.

A :class:`Bidder` bids for one account, on the market directly (a provider) or through a pool
contract in front of it (a pool's operator). Each :meth:`~Bidder.read_new_jobs` and
:meth:`~Bidder.bid` pass:

1. reads new ``JobPosted`` events and keeps the open jobs its :class:`Supply` can run (and the
   recent clearing prices, from ``BidRevealed``, for strategies that follow the market);
2. bids by its pricing strategy: sealed jobs get a commitment before the bid deadline and a reveal
   after it (salts are kept in the daemon's memory on disk, so a restarted daemon still reveals);
   instant jobs are taken while there is room, at the :class:`Venue`'s instant price;
3. ends auctions it bid in once the reveal deadline passes (anyone may; the first call wins) and
   records the slots its holder won in the daemon's memory.

Where the bids go is its :class:`Venue` (:class:`MarketVenue` for a provider; a pool's in
:mod:`worker.pool.operator`); what the account can run is its :class:`Supply` (a worker's devices,
a pool's members).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

from eth_account.signers.local import LocalAccount

from marketplace.contracts import reverts
from marketplace.contracts.deployment import Contracts
from marketplace.contracts.events import BidRevealed, JobPosted
from marketplace.errors import ContractRevert
from marketplace.market.pricing import PricingContext, PricingStrategy
from marketplace.types import Auction, DeviceKind, JobSpec, JobStatus, SlotStatus, format_tokens, slot_value
from worker.provider.loop import Memory

__all__ = ["BidTerms", "Bidder", "MarketVenue", "Supply", "Venue"]

log = logging.getLogger("flopex.provider")


@dataclass(frozen=True)
class BidTerms:
    """What a bidder prices by: its floor per GPU-hour, its strategy and the kind of device it offers;
    and the longest a job may hold its stake: run duration, challenge window, and (for an instant
    job with several slots, whose first takers wait for the rest) time left to fill."""

    price_floor: int
    strategy: PricingStrategy
    device_kind: DeviceKind
    max_run_s: int = 2 * 86_400
    max_challenge_s: int = 86_400
    max_fill_wait_s: int = 3_600


class Venue(Protocol):
    """Where an account's bids go, and who holds the slots they win."""

    @property
    def holder(self) -> str:
        """The address that holds the slots at the market."""
        ...

    def instant_price(self, ask: Callable[[], int | None]) -> int | None:
        """What an instant take pays here (None: do not take); ``ask`` is the strategy's ask now."""
        ...

    def post_price(self, price: int) -> None:
        """Make ``price`` what an instant take pays, if the venue lets the bidder post it."""
        ...

    def take(self, job_id: int) -> None:
        """Take a slot of an instant job (at the price an instant take pays here)."""
        ...

    def commit_bid(self, job_id: int, price: int) -> bytes:
        """Commit a sealed bid of ``price``; returns the salt to reveal it with."""
        ...

    def reveal(self, job_id: int, price: int, salt: bytes) -> None:
        """Reveal a sealed bid."""
        ...


class Supply(Protocol):
    """What the account can run: a worker's devices, or a pool's members."""

    def fits(self, spec: JobSpec) -> bool:
        """Whether some device set it has can run a slot of ``spec`` (its kind is checked already)."""
        ...

    def capacity(self) -> int:
        """Slots it can run at once."""
        ...

    def busy(self) -> int:
        """Slots (devices, or pool members) busy now."""
        ...

    def free_for(self, spec: JobSpec, lease_start: int) -> bool:
        """Whether a run of ``spec`` leased at ``lease_start`` leaves it enough devices nobody reserved."""
        ...


class MarketVenue:
    """Bids straight at the market; an instant take pays the provider's posted price, moved to its ask first."""

    def __init__(self, contracts: Contracts, account: LocalAccount) -> None:
        self.contracts = contracts
        self.account = account

    @property
    def holder(self) -> str:
        return self.account.address

    def instant_price(self, ask: Callable[[], int | None]) -> int | None:
        return ask()

    def take(self, job_id: int) -> None:
        self.contracts.market.take_job(self.account, job_id)

    def commit_bid(self, job_id: int, price: int) -> bytes:
        return self.contracts.market.commit_bid(self.account, job_id, price)

    def reveal(self, job_id: int, price: int, salt: bytes) -> None:
        self.contracts.market.reveal_bid(self.account, job_id, price, salt)

    def post_price(self, price: int) -> None:
        """Post ``price`` as its price per GPU-hour (an instant take pays the posted price) if it is not already."""
        registry = self.contracts.registry
        if registry.price_floor(self.account.address) != price:
            registry.set_price_floor(self.account, price)
            log.info("provider %s: posted %d per GPU-hour", self.account.address, price)


class Bidder:
    """Bids for one account: reads jobs, prices them, commits, reveals, takes, finalizes.

    It shares the daemon's :class:`~worker.provider.loop.Memory` (last block read, bids, slots won,
    jobs ignored), which the daemon saves.
    """

    def __init__(
        self,
        contracts: Contracts,
        account: LocalAccount,
        memory: Memory,
        terms: BidTerms,
        venue: Venue,
        supply: Supply,
        *,
        role: str = "provider",
    ) -> None:
        self.contracts = contracts
        self.account = account
        self.memory = memory
        self.terms = terms
        self.venue = venue
        self.supply = supply
        self.role = role
        #: Open jobs it may still bid for, by id.
        self.open_jobs: dict[int, JobSpec] = {}
        #: The last prices revealed at the market (at most 32), oldest first.
        self.recent_prices: list[int] = []
        #: When a device (or member) was last seen busy, by the wall clock.
        self.last_busy = time.time()
        #: Bids since start, by ``(auction, outcome)``: outcome ``committed`` (a sealed commitment),
        #: ``won`` (a slot held) or ``lost`` (a sealed bid that won nothing, a take that reverted).
        self.bid_counts: dict[tuple[str, str], int] = {}
        #: The last price it bid or took a slot at, per GPU-hour.
        self.last_bid_price: int | None = None
        self._tallied: set[int] = set()

    @property
    def address(self) -> str:
        """The account that bids."""
        return self.account.address

    # ------------------------------------------------------------------ jobs

    def read_new_jobs(self, *also: Callable[[int], None]) -> None:
        """Read the ``JobPosted`` and ``BidRevealed`` events since the last block read.

        Each of ``also`` is called with the first new block, to read its own events over the same
        range, before the last block read moves on.
        """
        market = self.contracts.market
        latest = self.contracts.chain.block_number()
        start = max(self.memory.last_block + 1, market.start_block)
        if start > latest:
            return
        for event in market.get_events("JobPosted", start):
            assert isinstance(event, JobPosted)
            if event.job_id in self.memory.ignored or event.job_id in self.memory.slots:
                continue
            if self.can_run(event.spec):
                self.open_jobs[event.job_id] = event.spec
            else:
                self.memory.ignored.add(event.job_id)
        for revealed in market.get_events("BidRevealed", start):
            assert isinstance(revealed, BidRevealed)
            self.recent_prices = [*self.recent_prices, revealed.price][-32:]
        for read in also:
            read(start)
        self.memory.last_block = latest

    def can_run(self, spec: JobSpec) -> bool:
        """Whether it bids for ``spec``: not its own job, its kind of device, its supply fits it, and
        the job holds its stake no longer than its own bounds allow."""
        return (
            spec.requester not in (self.address, self.venue.holder)
            and spec.device_kind == self.terms.device_kind
            and self.supply.fits(spec)
            and spec.run_duration <= self.terms.max_run_s
            and spec.challenge_window <= self.terms.max_challenge_s
        )

    # ------------------------------------------------------------------ pricing

    def utilization(self) -> Fraction:
        """Busy over capacity, in [0, 1]; a busy supply also moves :attr:`last_busy` to now."""
        capacity = self.supply.capacity()
        busy = self.supply.busy()
        if busy:
            self.last_busy = time.time()
        return Fraction(min(busy, capacity), capacity)

    def ask(self, spec: JobSpec) -> int | None:
        """What its strategy asks for ``spec`` now, per GPU-hour (None: it will not bid)."""
        ctx = PricingContext(
            max_price=spec.max_price,
            gpus=spec.gpus,
            max_gpu_seconds=spec.max_gpu_seconds,
            floor=self.terms.price_floor,
            utilization=self.utilization(),
            idle_seconds=int(time.time() - self.last_busy),
            recent_prices=tuple(self.recent_prices),
        )
        return self.terms.strategy.ask(ctx)

    # ------------------------------------------------------------------ bidding

    def bid(self, now: int) -> None:
        """Bid for every open job as far as ``now`` allows."""
        for job_id, spec in list(self.open_jobs.items()):
            self._bid(job_id, spec, now)

    def _bid(self, job_id: int, spec: JobSpec, now: int) -> None:
        market = self.contracts.market
        bid = self.memory.bids.get(job_id)
        try:
            if spec.auction == Auction.INSTANT:
                # A slot of a job with several holds its collateral until the last is taken or the
                # bid deadline passes: only take it when that wait is within bounds.
                if spec.redundancy > 1 and spec.bid_deadline - now > self.terms.max_fill_wait_s:
                    return  # look again when the deadline is nearer
                if now < spec.bid_deadline and self._has_room() and self.supply.free_for(spec, now):
                    price = self.venue.instant_price(lambda: self.ask(spec))
                    if price is not None and price <= spec.max_price:
                        self.venue.post_price(price)
                        self.last_bid_price = price
                        self.venue.take(job_id)
                        self._track_slots(job_id)
                        self._tally(job_id, spec)
                self.open_jobs.pop(job_id, None)
                return
            if bid is None:
                if now < spec.bid_deadline:
                    price = self.ask(spec) if self.supply.free_for(spec, spec.reveal_deadline) else None
                    if price is None:
                        self.memory.ignored.add(job_id)
                        self.open_jobs.pop(job_id, None)
                        return
                    salt = self.venue.commit_bid(job_id, price)
                    self.memory.bids[job_id] = {"price": price, "salt": salt.hex(), "revealed": False}
                    self.last_bid_price = price
                    self._count_bid(spec, "committed")
                    log.info("%s %s: committed a sealed bid for job %d", self.role, self.address, job_id)
                else:
                    self.open_jobs.pop(job_id, None)
                return
            if not bid["revealed"] and spec.bid_deadline <= now < spec.reveal_deadline:
                self.venue.reveal(job_id, int(bid["price"]), bytes.fromhex(bid["salt"]))
                bid["revealed"] = True
                return
            if now >= spec.reveal_deadline:
                if market.job(job_id).status == JobStatus.OPEN:
                    market.finalize_auction(self.account, job_id)
                self._forfeit_unrevealed(job_id)
                self._track_slots(job_id)
                self._tally(job_id, spec)
                self.open_jobs.pop(job_id, None)
        except ContractRevert as exc:
            if "not eligible" in (exc.reason or ""):
                self._say_why_not_eligible(job_id, spec)
            else:
                log.info("%s %s: job %d: %s", self.role, self.address, job_id, exc.reason)
            if spec.auction == Auction.INSTANT or reverts.auction_over(exc):
                self._track_slots(job_id)
                if spec.auction == Auction.INSTANT or bid is not None:
                    self._tally(job_id, spec)
                self.open_jobs.pop(job_id, None)

    def _forfeit_unrevealed(self, job_id: int) -> None:
        """Take the reveal bonds of bids committed on ``job_id`` and never revealed (for the treasury).

        A sealed bid left unrevealed is how a shill moves the clearing price after seeing the
        honest reveals; every bidder of the job has a stake in making that cost its bond.
        """
        market = self.contracts.market
        for provider in market.unrevealed_bids(job_id):
            if provider == self.venue.holder:
                continue
            try:
                taken = market.forfeit_unrevealed(self.account, job_id, provider)
                log.info(
                    "%s %s: job %d: took %d of %s's unrevealed bid", self.role, self.address, job_id, taken, provider
                )
            except ContractRevert as exc:
                log.info("%s %s: job %d: forfeit of %s: %s", self.role, self.address, job_id, provider, exc.reason)

    def _say_why_not_eligible(self, job_id: int, spec: JobSpec) -> None:
        """One warning saying what stake the market asks for and what the holder has free."""
        registry, market = self.contracts.registry, self.contracts.market
        holder = self.venue.holder
        free, minimum = registry.free_stake(holder), registry.min_provider_stake()
        stake = registry.stakes(holder).active
        needed = slot_value(spec.max_price, spec.max_gpu_seconds) + 2 * market.base_slash()
        log.warning(
            "%s %s: not eligible to bid on job %d: stake %s FLOP (minimum %s), free %s FLOP; a bid locks up to "
            "%s FLOP (the lease at the max price, its base slash and the reveal bond): stake more or wait for "
            "running leases to end",
            self.role,
            self.address,
            job_id,
            format_tokens(stake),
            format_tokens(minimum),
            format_tokens(free),
            format_tokens(needed),
        )

    def _count_bid(self, spec: JobSpec, outcome: str) -> None:
        key = (spec.auction.name.lower(), outcome)
        self.bid_counts[key] = self.bid_counts.get(key, 0) + 1

    def _tally(self, job_id: int, spec: JobSpec) -> None:
        """Count a bid's outcome once it is known: won when the holder holds a slot of the job."""
        if job_id in self._tallied:
            return
        self._tallied.add(job_id)
        self._count_bid(spec, "won" if job_id in self.memory.slots else "lost")

    def _has_room(self) -> bool:
        active = sum(1 for j in self.memory.slots if j not in self.memory.done)
        return active < self.supply.capacity()

    def _track_slots(self, job_id: int) -> None:
        for slot in self.contracts.market.slots_of(job_id):
            if slot.provider == self.venue.holder and slot.status != SlotStatus.RELEASED:
                self.memory.slots[job_id] = slot.slot
