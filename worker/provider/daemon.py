"""The provider daemon: stake and register, watch the market, bid, run, commit, settle, withdraw.

A :class:`ProviderDaemon` drives one provider account on the market for one worker (the gRPC
server that runs the jobs). Each :meth:`~ProviderDaemon.step`:

1. reads new ``JobPosted`` events and keeps the open jobs its devices can run;
2. bids by its pricing strategy: sealed jobs get a commitment before the bid deadline and a reveal
   after it (salts are kept on disk, so a restarted daemon still reveals); instant jobs are taken
   while the worker has a free device at the posted price, which the strategy's ask moves first
   (``set_price_floor``: an idle provider's decaying ask reaches on-demand buyers too);
3. ends auctions it bid in once the reveal deadline passes (anyone may; the first call wins);
4. for each slot it holds, commits the worker's result root and metered device-seconds once the
   job has ended (capped by the job's max and by the device time since the lease); a job whose
   requester never uploaded is committed empty, with zero seconds, before the run deadline so the
   provider is not slashed for the requester's absence;
5. settles its slots once they can end and withdraws its credit;
6. serves its reservations (:mod:`worker.provider.reservations`): records the usage of the holder's jobs, settles
   and withdraws, and keeps reserved devices out of the job market while their windows overlap a
   job's run.

Its memory (last block read, bids, slots) lives in a JSON file in the worker's data directory.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount

from marketplace.contracts.deployment import Contracts
from marketplace.contracts.events import BidRevealed, JobPosted
from marketplace.errors import ContractRevert, FlopexError, WorkerError
from marketplace.market.pricing import PricingContext, PricingStrategy
from marketplace.protocol.merkle import EMPTY_ROOT
from marketplace.types import Auction, DeviceKind, JobSpec, JobStatus, Offer, SlotStatus
from worker.node.chain_leases import ChainLeases
from worker.node.config import WorkerConfig
from worker.node.service import WorkerServer, create_server
from worker.provider.reservations import ReservedCapacity
from worker.sandbox.runner import Limits

__all__ = ["ProviderDaemon", "ProviderSettings", "chain_worker", "device_terms"]

log = logging.getLogger("flopex.provider")

#: Fraction of the run window after which a lease with no upload is committed empty.
NO_UPLOAD_COMMIT_AT = Fraction(3, 4)


@dataclass(frozen=True)
class ProviderSettings:
    """How a provider presents itself and bids."""

    endpoint: str
    price_floor: int
    strategy: PricingStrategy
    stake: int
    device_model: str
    device_kind: DeviceKind
    gpu_count: int
    memory_mb: int
    claimed_gflops: int = 0
    poll_interval_s: float = 0.5
    withdraw: bool = True


def chain_worker(
    contracts: Contracts,
    data_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    cpu_slots: int = 1,
    allow_unsandboxed: bool = False,
    memory_limit_mb: int | None = None,
    lease_refresh_s: float = 1.0,
) -> tuple[WorkerServer, str]:
    """A worker whose leases are read from the chain, bound (not yet started); returns it and its endpoint."""
    config = WorkerConfig(
        data_dir=data_dir,
        leases=ChainLeases(contracts, refresh_s=lease_refresh_s),
        chain_id=contracts.chain.chain_id,
        market_address=contracts.market.address,
        allow_unsandboxed=allow_unsandboxed,
        cpu_slots=cpu_slots,
        limits=Limits() if memory_limit_mb is None else Limits(memory_bytes=memory_limit_mb << 20),
    )
    server, bound = create_server(config, f"{host}:{port}")
    return server, f"{host}:{bound}"


def device_terms(worker: WorkerServer) -> dict[str, Any]:
    """What a worker's devices put in an offer: model, kind, count and the smallest memory (MB)."""
    devices = worker.manager.devices
    return {
        "device_model": devices[0].model[:64],
        "device_kind": DeviceKind.CUDA if devices[0].kind == "cuda" else DeviceKind.CPU,
        "gpu_count": len(devices),
        "memory_mb": min(d.memory_bytes for d in devices) >> 20,
    }


@dataclass
class _Memory:
    """What the daemon must not forget across restarts."""

    last_block: int = -1
    bids: dict[int, dict[str, Any]] = field(default_factory=dict)  # job -> price, salt, revealed
    slots: dict[int, int] = field(default_factory=dict)  # job -> slot index
    done: set[int] = field(default_factory=set)  # jobs whose slot is settled
    ignored: set[int] = field(default_factory=set)  # jobs it will not bid for
    reservations: set[int] = field(default_factory=set)  # offered reservations not yet settled
    recorded: set[int] = field(default_factory=set)  # reserved jobs whose usage is on chain
    recording: set[int] = field(default_factory=set)  # reserved jobs whose record_usage may be in flight

    def to_json(self) -> dict[str, Any]:
        return {
            "last_block": self.last_block,
            "bids": {str(k): v for k, v in self.bids.items()},
            "slots": {str(k): v for k, v in self.slots.items()},
            "done": sorted(self.done),
            "ignored": sorted(self.ignored),
            "reservations": sorted(self.reservations),
            "recorded": sorted(self.recorded),
            "recording": sorted(self.recording),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Memory:
        return cls(
            last_block=int(data.get("last_block", -1)),
            bids={int(k): v for k, v in data.get("bids", {}).items()},
            slots={int(k): int(v) for k, v in data.get("slots", {}).items()},
            done=set(map(int, data.get("done", []))),
            ignored=set(map(int, data.get("ignored", []))),
            reservations=set(map(int, data.get("reservations", []))),
            recorded=set(map(int, data.get("recorded", []))),
            recording=set(map(int, data.get("recording", []))),
        )


class ProviderDaemon:
    """One provider account on the market, serving jobs through ``worker``."""

    #: Whether it offers and serves reservations (a registered provider does; a pool's daemons do not).
    SERVES_RESERVATIONS = True

    def __init__(
        self,
        contracts: Contracts,
        account: LocalAccount,
        worker: WorkerServer,
        settings: ProviderSettings,
        state_path: Path,
    ) -> None:
        self.contracts = contracts
        self.account = account
        self.worker = worker
        self.settings = settings
        self.state_path = state_path
        self.memory = self._load()
        self.open_jobs: dict[int, JobSpec] = {}
        self.recent_prices: list[int] = []
        self.last_busy = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Why the daemon stopped by itself, if it did.
        self.fatal: str | None = None
        #: Bids since start, by ``(auction, outcome)``: outcome ``committed`` (a sealed commitment),
        #: ``won`` (a slot held) or ``lost`` (a sealed bid that won nothing, a take that reverted).
        self.bid_counts: dict[tuple[str, str], int] = {}
        #: The last price this daemon bid or took a slot at, per GPU-hour.
        self.last_bid_price: int | None = None
        self._tallied: set[int] = set()
        #: The provider's reservations, when the deployment has the contract.
        self.reserved: ReservedCapacity | None = None
        if self.SERVES_RESERVATIONS and contracts.reservations is not None:
            self.reserved = ReservedCapacity(
                contracts.reservations,
                account,
                worker,
                tracked=self.memory.reservations,
                recorded=self.memory.recorded,
                recording=self.memory.recording,
                save=self._save,
                nudge_clock=self._nudge_clock,
            )

    # ------------------------------------------------------------------ lifecycle

    @property
    def address(self) -> str:
        """The provider's account on chain."""
        return self.account.address

    @property
    def holder(self) -> str:
        """The address that holds slots at the market (a pool's operator bids for the pool's)."""
        return self.address

    # ------------------------------------------------------------------ market hooks (pools override)

    def _take(self, job_id: int) -> None:
        self.contracts.market.take_job(self.account, job_id)

    def _commit_bid(self, job_id: int, price: int) -> bytes:
        return self.contracts.market.commit_bid(self.account, job_id, price)

    def _reveal(self, job_id: int, price: int, salt: bytes) -> None:
        self.contracts.market.reveal_bid(self.account, job_id, price, salt)

    def _commit(self, job_id: int, index: int, root: bytes, claimed: int) -> None:
        self.contracts.market.commit_result(self.account, job_id, index, root, claimed)

    def _settle(self, job_id: int, index: int) -> None:
        self.contracts.market.settle(self.account, job_id, index)

    def _withdraw(self) -> None:
        if self.contracts.market.credits(self.address) > 0:
            self.contracts.market.withdraw(self.account)

    def _capacity(self) -> int:
        """Slots it can run at once."""
        return max(1, len(self.worker.manager.devices))

    def ensure_registered(self) -> None:
        """Stake up to the configured amount and register (or refresh) the offer."""
        registry, token = self.contracts.registry, self.contracts.token
        stake = registry.stakes(self.address).active
        if stake < self.settings.stake:
            missing = self.settings.stake - stake
            token.approve(self.account, registry.address, missing)
            registry.stake(self.account, missing)
        offer = Offer(
            device_model=self.settings.device_model,
            device_kind=self.settings.device_kind,
            gpu_count=self.settings.gpu_count,
            memory_mb=self.settings.memory_mb,
            claimed_gflops=self.settings.claimed_gflops,
            price_floor=self.settings.price_floor,
            endpoint=self.settings.endpoint,
            signer=self.worker.provider_address,
        )
        if not registry.is_provider(self.address) or registry.offer(self.address) != offer:
            registry.register_provider(self.account, offer)

    def start(self) -> None:
        """Run :meth:`step` in a background thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self.run, name=f"provider-{self.address[:8]}", daemon=True)
        self._thread.start()

    def run(self) -> None:
        """Step until stopped; errors of one step are logged and the next step tries again.

        An unreachable chain is retried; a chain that no longer has the market (a dev chain that
        was restarted) stops the daemon with a clear reason in :attr:`fatal`.
        """
        while not self._stop.is_set():
            try:
                self.step()
            except FlopexError as exc:
                if self._market_gone():
                    self.fatal = (
                        f"the chain no longer has the market at {self.contracts.market.address} "
                        "(was it restarted?); redeploy and start again"
                    )
                    log.error("provider %s: %s", self.address, self.fatal)
                    self._stop.set()
                    break
                log.warning("provider %s: %s", self.address, exc)
            except Exception as exc:
                if self._stop.is_set():
                    break  # stopping: the worker may already be closed under us
                # A bug, not a condition of the market: stop with the reason rather than hang on
                # a dead thread while the process looks alive.
                log.exception("provider %s: unexpected error", self.address)
                self.fatal = f"unexpected error: {type(exc).__name__}: {exc}"
                self._stop.set()
                break
            self._stop.wait(self.settings.poll_interval_s)

    def _market_gone(self) -> bool:
        """True when the chain answers but has no code at the market's address."""
        try:
            with self.contracts.chain.locked():
                return not self.contracts.chain.w3.eth.get_code(self.contracts.market.address)
        except Exception:  # unreachable: not gone, just away
            return False

    @property
    def stopped(self) -> bool:
        """True once the loop has ended (stopped or failed)."""
        return self._stop.is_set()

    def stop(self) -> None:
        """Stop the loop (the worker is stopped by its owner) and save the memory."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._save()

    # ------------------------------------------------------------------ one pass

    def now(self) -> int:
        """The time deadlines are judged by: the chain's, or the wall clock if the chain is idle."""
        return self.contracts.chain.next_timestamp()

    def step(self) -> None:
        """Do everything that can be done now."""
        self._read_new_jobs()
        now = self.now()
        if self.reserved is not None:
            self.reserved.step(now)
        for job_id, spec in list(self.open_jobs.items()):
            self._bid(job_id, spec, now)
        for job_id in list(self.memory.slots):
            if job_id not in self.memory.done:
                self._serve(job_id, now)
        if self.settings.withdraw:
            self._withdraw()
        self._save()

    def _read_new_jobs(self) -> None:
        market = self.contracts.market
        latest = self.contracts.chain.block_number()
        start = max(self.memory.last_block + 1, market.start_block)
        if start > latest:
            return
        for event in market.get_events("JobPosted", start):
            assert isinstance(event, JobPosted)
            if event.job_id in self.memory.ignored or event.job_id in self.memory.slots:
                continue
            if self._can_run(event.spec):
                self.open_jobs[event.job_id] = event.spec
            else:
                self.memory.ignored.add(event.job_id)
        for revealed in market.get_events("BidRevealed", start):
            assert isinstance(revealed, BidRevealed)
            self.recent_prices = [*self.recent_prices, revealed.price][-32:]
        if self.reserved is not None:
            self.reserved.scan(start)
        self.memory.last_block = latest

    def _can_run(self, spec: JobSpec) -> bool:
        s = self.settings
        return (
            spec.requester not in (self.address, self.holder)
            and spec.device_kind == s.device_kind
            and spec.gpus <= s.gpu_count
            and spec.min_memory_mb <= s.memory_mb
        )

    def _busy(self) -> int:
        """Devices (or, for a pool, members) busy now."""
        return len(self.worker.manager.busy_devices())

    def _utilization(self) -> Fraction:
        devices = self._capacity()
        busy = self._busy()
        if busy:
            self.last_busy = time.time()
        return Fraction(min(busy, devices), devices)

    def _ask(self, spec: JobSpec) -> int | None:
        ctx = PricingContext(
            max_price=spec.max_price,
            gpus=spec.gpus,
            max_gpu_seconds=spec.max_gpu_seconds,
            floor=self.settings.price_floor,
            utilization=self._utilization(),
            idle_seconds=int(time.time() - self.last_busy),
            recent_prices=tuple(self.recent_prices),
        )
        return self.settings.strategy.ask(ctx)

    def _bid(self, job_id: int, spec: JobSpec, now: int) -> None:
        market = self.contracts.market
        bid = self.memory.bids.get(job_id)
        try:
            if spec.auction == Auction.INSTANT:
                if now < spec.bid_deadline and self._has_room() and self._free_of_reservations(spec, now):
                    price = self._instant_price(spec)
                    if price is not None and price <= spec.max_price:
                        self._post_price(price)
                        self.last_bid_price = price
                        self._take(job_id)
                        self._track_slots(job_id)
                        self._tally(job_id, spec)
                self.open_jobs.pop(job_id, None)
                return
            if bid is None:
                if now < spec.bid_deadline:
                    price = self._ask(spec) if self._free_of_reservations(spec, spec.reveal_deadline) else None
                    if price is None:
                        self.memory.ignored.add(job_id)
                        self.open_jobs.pop(job_id, None)
                        return
                    salt = self._commit_bid(job_id, price)
                    self.memory.bids[job_id] = {"price": price, "salt": salt.hex(), "revealed": False}
                    self.last_bid_price = price
                    self._count_bid(spec, "committed")
                    log.info("provider %s: committed a sealed bid for job %d", self.address, job_id)
                else:
                    self.open_jobs.pop(job_id, None)
                return
            if not bid["revealed"] and spec.bid_deadline <= now < spec.reveal_deadline:
                self._reveal(job_id, int(bid["price"]), bytes.fromhex(bid["salt"]))
                bid["revealed"] = True
                return
            if now >= spec.reveal_deadline:
                if market.job(job_id).status == JobStatus.OPEN:
                    market.finalize_auction(self.account, job_id)
                self._track_slots(job_id)
                self._tally(job_id, spec)
                self.open_jobs.pop(job_id, None)
        except ContractRevert as exc:
            log.info("provider %s: job %d: %s", self.address, job_id, exc.reason)
            if spec.auction == Auction.INSTANT or exc.reason in ("market: job is not open", "market: bidding closed"):
                self._track_slots(job_id)
                if spec.auction == Auction.INSTANT or bid is not None:
                    self._tally(job_id, spec)
                self.open_jobs.pop(job_id, None)

    def _instant_price(self, spec: JobSpec) -> int | None:
        """What it charges to take an instant job now: its strategy's ask (None: it will not take it)."""
        return self._ask(spec)

    def _post_price(self, price: int) -> None:
        """Post ``price`` as its price per GPU-hour (an instant take pays the posted price) if it is not already."""
        registry = self.contracts.registry
        if registry.price_floor(self.address) != price:
            registry.set_price_floor(self.account, price)
            log.info("provider %s: posted %d per GPU-hour", self.address, price)

    def _count_bid(self, spec: JobSpec, outcome: str) -> None:
        key = (spec.auction.name.lower(), outcome)
        self.bid_counts[key] = self.bid_counts.get(key, 0) + 1

    def _tally(self, job_id: int, spec: JobSpec) -> None:
        """Count a bid's outcome once it is known: won when the daemon holds a slot of the job."""
        if job_id in self._tallied:
            return
        self._tallied.add(job_id)
        self._count_bid(spec, "won" if job_id in self.memory.slots else "lost")

    def _free_of_reservations(self, spec: JobSpec, lease_start: int) -> bool:
        """Whether the job's run, leased at ``lease_start``, leaves it enough devices its reservations do not hold."""
        if self.reserved is None:
            return True
        reserved = self.reserved.reserved_gpus(lease_start, lease_start + spec.run_duration)
        return self.settings.gpu_count - reserved >= spec.gpus

    def _has_room(self) -> bool:
        active = sum(1 for j in self.memory.slots if j not in self.memory.done)
        return active < self._capacity()

    def _track_slots(self, job_id: int) -> None:
        for slot in self.contracts.market.slots_of(job_id):
            if slot.provider == self.holder and slot.status != SlotStatus.RELEASED:
                self.memory.slots[job_id] = slot.slot

    # ------------------------------------------------------------------ serving a slot

    def _serve(self, job_id: int, now: int) -> None:
        market = self.contracts.market
        index = self.memory.slots[job_id]
        slot = market.slot(job_id, index)
        spec = market.spec(job_id)
        try:
            if slot.status == SlotStatus.ASSIGNED:
                self._maybe_commit(job_id, index, spec, now)
            elif slot.status.terminal:
                self.memory.done.add(job_id)
            elif self._can_settle(slot.status, slot.committed_at, spec, now):
                self._settle(job_id, index)
                self.memory.done.add(job_id)
                log.info("provider %s: settled job %d", self.address, job_id)
        except ContractRevert as exc:
            log.info("provider %s: job %d: %s", self.address, job_id, exc.reason)

    @staticmethod
    def _can_settle(status: SlotStatus, committed_at: int, spec: JobSpec, now: int) -> bool:
        if status in (SlotStatus.ACCEPTED, SlotStatus.REJECTED, SlotStatus.VOIDED):
            return True
        if status == SlotStatus.COMMITTED:
            return now >= committed_at + spec.challenge_window
        if status == SlotStatus.DISPUTED:
            return now >= committed_at + 2 * spec.challenge_window
        return False

    def _maybe_commit(self, job_id: int, index: int, spec: JobSpec, now: int) -> None:
        market = self.contracts.market
        job = market.job(job_id)
        if job.status != JobStatus.LEASED:
            # Not every slot is taken yet (an instant job with k > 1): the lease, and its clock, has
            # not started; reading a zero lease start as "long ago" would commit an empty result.
            return
        lease_start = job.lease_start
        try:
            record = self.worker.manager.get(job_id)
        except WorkerError:
            record = None
        if record is not None and record.terminal:
            root = record.result_root or EMPTY_ROOT
            claimed = int((record.metering or {}).get("device_millis", 0) + 999) // 1000
        elif record is None and now - lease_start >= spec.run_duration * NO_UPLOAD_COMMIT_AT:
            # The requester never uploaded: commit nothing done rather than be slashed.
            root, claimed = EMPTY_ROOT, 0
        else:
            return
        claimed = min(claimed, spec.max_gpu_seconds)
        held = max(0, (now - lease_start)) * spec.gpus
        if claimed > held:
            # The chain has not seen as much time pass since the lease as the device was metered
            # for: a dev chain whose clock ran ahead of the wall clock (a burst of blocks, a time
            # travel) only moves it with new blocks. Ask for one (dev chains mine on request; other
            # chains refuse and make blocks on their own) and wait, unless the run deadline nears.
            if now - lease_start < spec.run_duration * NO_UPLOAD_COMMIT_AT:
                self._nudge_clock()
                return
            claimed = held
        self._commit(job_id, index, root, claimed)
        log.info("provider %s: committed job %d: %d GPU-s, root %s", self.address, job_id, claimed, root.hex()[:16])

    def _nudge_clock(self) -> None:
        try:
            self.contracts.chain.mine()
        except FlopexError:
            pass  # not a dev chain: its blocks come on their own

    # ------------------------------------------------------------------ memory

    def _load(self) -> _Memory:
        try:
            return _Memory.from_json(json.loads(self.state_path.read_text()))
        except FileNotFoundError:
            return _Memory()
        except (json.JSONDecodeError, ValueError, TypeError) as exc:
            raise WorkerError(f"provider state {self.state_path} is corrupt: {exc}") from exc

    def _save(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(self.memory.to_json()))
        os.replace(tmp, self.state_path)
