"""The provider daemon: stake and register, watch the market, bid, run, commit, settle, withdraw.

A :class:`ProviderDaemon` drives one provider account on the market for one worker (the gRPC
server that runs the jobs). Each :meth:`~ProviderDaemon.step`:

1. reads new ``JobPosted`` events and keeps the open jobs its devices can run;
2. bids by its pricing strategy (its :class:`~worker.provider.bidding.Bidder`): sealed jobs get a
   commitment before the bid deadline and a reveal after it (salts are kept on disk, so a
   restarted daemon still reveals); instant jobs are taken while the worker has a free device at
   the posted price, which the strategy's ask moves first (``set_price_floor``: an idle
   provider's decaying ask reaches on-demand buyers too);
3. ends auctions it bid in once the reveal deadline passes (anyone may; the first call wins);
4. for each slot it holds, commits the worker's result root and metered device-seconds once the
   job has ended (capped by the job's max and by the device time since the lease); a job whose
   requester delivered nothing runnable (no upload, an archive the worker refused, an upload never
   started, a job cancelled before it ran) is reported on chain as a no-show half-way through the run
   window: the slot settles without a slash and pays the no-show fee, and a late upload is refused;
5. settles its slots once they can end and withdraws its credit;
6. serves its reservations (:mod:`worker.provider.reservations`): records the usage of the holder's jobs, settles
   and withdraws, and keeps reserved devices out of the job market while their windows overlap a
   job's run.

Its memory (last block read, bids, slots) lives in a JSON file in the worker's data directory, and
its loop is :class:`~worker.provider.loop.ChainDaemon`'s: it steps on each new block and the moment
its worker ends a job (so the result is committed at once), and at the latest every
``poll_interval_s``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount

from marketplace.contracts.deployment import Contracts
from marketplace.errors import ConfigError, ContractRevert, WorkerError
from marketplace.market.pricing import PricingStrategy
from marketplace.protocol.merkle import EMPTY_ROOT
from marketplace.protocol.tls import ensure_certificate, is_loopback
from marketplace.types import NO_SHOW_ROOT, DeviceKind, JobSpec, JobStatus, Offer, SlotStatus
from worker.node.chain_leases import ChainLeases
from worker.node.config import WorkerConfig
from worker.node.environments import EnvironmentSettings
from worker.node.jobs import unbuildable
from worker.node.service import WorkerServer, create_server
from worker.node.store import JobRecord
from worker.provider.bidding import Bidder, BidTerms, MarketVenue
from worker.provider.loop import ChainDaemon, can_settle
from worker.provider.reservations import ReservedCapacity
from worker.sandbox.runner import Limits

__all__ = ["ProviderDaemon", "ProviderSettings", "chain_worker", "device_terms"]

log = logging.getLogger("flopex.provider")

#: Fraction of the run window after which a lease whose requester delivered nothing runnable is
#: reported as a no-show (the market allows it from a quarter on; half leaves a late upload room).
NO_SHOW_REPORT_AT = Fraction(1, 2)
#: Fraction of the run window after which a commit no longer waits for the chain's clock to catch up.
CLOCK_WAIT_UNTIL = Fraction(3, 4)
#: Worker states of a job whose requester has not (yet) delivered a runnable bundle.
NOT_DELIVERED = ("uploading", "ready")


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
    #: The longest run duration, challenge window and wait for an instant job's other slots it bids for.
    max_run_s: int = 2 * 86_400
    max_challenge_s: int = 86_400
    max_fill_wait_s: int = 3_600


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
    tls: bool | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    advertise_host: str | None = None,
    environments: EnvironmentSettings | None = None,
) -> tuple[WorkerServer, str]:
    """A worker whose leases are read from the chain, bound (not yet started); returns it and its endpoint.

    With ``tls`` (the default off loopback) it serves TLS with ``tls_cert``/``tls_key``, or with a
    self-signed certificate made on first start in ``data_dir`` (``tls.crt``, ``tls.key``), and the
    endpoint pins its key (``host:port#tls-spki=<hex>``, :mod:`marketplace.protocol.tls`). Plaintext
    is served only on loopback. ``advertise_host`` is the host the offer names (default ``host``).
    """
    if tls is None:
        tls = not is_loopback(host) or tls_cert is not None
    if not tls and not is_loopback(host):
        raise ConfigError(f"provider: plaintext is served on loopback only, not on {host}")
    if tls and (tls_cert is None) != (tls_key is None):
        raise ConfigError("provider: give both --tls-cert and --tls-key, or neither")
    if tls and tls_cert is None:
        tls_cert, tls_key = data_dir / "tls.crt", data_dir / "tls.key"
        ensure_certificate(tls_cert, tls_key)
    if advertise_host is None:
        if host in ("0.0.0.0", "::", ""):
            raise ConfigError(
                f"provider: bound to {host or 'every address'}; name the address offers carry (--advertise)"
            )
        advertise_host = host
    config = WorkerConfig(
        data_dir=data_dir,
        leases=ChainLeases(contracts, refresh_s=lease_refresh_s),
        chain_id=contracts.chain.chain_id,
        market_address=contracts.market.address,
        allow_unsandboxed=allow_unsandboxed,
        cpu_slots=cpu_slots,
        limits=Limits() if memory_limit_mb is None else Limits(memory_bytes=memory_limit_mb << 20),
        tls_cert=tls_cert if tls else None,
        tls_key=tls_key if tls else None,
        environments=environments,
    )
    server, _ = create_server(config, f"{host}:{port}")
    return server, server.endpoint(advertise_host)


def device_terms(worker: WorkerServer) -> dict[str, Any]:
    """What a worker's devices put in an offer: model, kind, count and the smallest memory (MB)."""
    devices = worker.manager.devices
    return {
        "device_model": devices[0].model[:64],
        "device_kind": DeviceKind.CUDA if devices[0].kind == "cuda" else DeviceKind.CPU,
        "gpu_count": len(devices),
        "memory_mb": min(d.memory_bytes for d in devices) >> 20,
    }


class ProviderDaemon(ChainDaemon):
    """One provider account on the market, serving jobs through ``worker``.

    Its :class:`~worker.provider.bidding.Bidder` bids at the market for the worker's devices (it is
    the bidder's :class:`~worker.provider.bidding.Supply`).
    """

    #: Whether it offers and serves reservations (a registered provider does; a pool's members do not).
    SERVES_RESERVATIONS = True

    def __init__(
        self,
        contracts: Contracts,
        account: LocalAccount,
        worker: WorkerServer,
        settings: ProviderSettings,
        state_path: Path,
        *,
        role: str = "provider",
    ) -> None:
        super().__init__(contracts, account, state_path, poll_interval_s=settings.poll_interval_s, role=role, log=log)
        self.worker = worker
        self.settings = settings
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
                nudge_clock=self.nudge_clock,
            )
        terms = BidTerms(
            settings.price_floor,
            settings.strategy,
            settings.device_kind,
            max_run_s=settings.max_run_s,
            max_challenge_s=settings.max_challenge_s,
            max_fill_wait_s=settings.max_fill_wait_s,
        )
        #: Bids at the market for the worker's devices.
        self.bidder = Bidder(contracts, account, self.memory, terms, MarketVenue(contracts, account), self, role=role)

    def run(self, stop: threading.Event | None = None) -> None:
        """Step until stopped, also woken the moment the worker ends a job (to commit its result)."""
        manager = self.worker.manager
        manager.add_end_listener(self._job_ended)
        try:
            super().run(stop)
        finally:
            manager.remove_end_listener(self._job_ended)

    def _job_ended(self, _job_id: int) -> None:
        self.wake()

    @property
    def holder(self) -> str:
        """The address that holds its slots at the market (a pool's member serves the pool's)."""
        return self.address

    # ------------------------------------------------------------------ market calls (a pool's member routes them)

    def _commit(self, job_id: int, index: int, root: bytes, claimed: int) -> None:
        self.contracts.market.commit_result(self.account, job_id, index, root, claimed)

    def _settle(self, job_id: int, index: int) -> None:
        self.contracts.market.settle(self.account, job_id, index)

    def _withdraw(self) -> None:
        if self.contracts.market.credits(self.address) > 0:
            self.contracts.market.withdraw(self.account)

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
        self.worker.advertise(self.address, {offer.device_kind.name.lower(): offer.price_floor})

    # ------------------------------------------------------------------ the bidder's supply: the worker's devices

    def fits(self, spec: JobSpec) -> bool:
        """Whether the worker has the devices and memory per device for a slot of ``spec``."""
        return spec.gpus <= self.settings.gpu_count and spec.min_memory_mb <= self.settings.memory_mb

    def capacity(self) -> int:
        """Slots it can run at once: one per device."""
        return max(1, len(self.worker.manager.devices))

    def busy(self) -> int:
        """Devices busy now."""
        return len(self.worker.manager.busy_devices())

    def free_for(self, spec: JobSpec, lease_start: int) -> bool:
        """Whether the job's run, leased at ``lease_start``, leaves it enough devices its reservations do not hold."""
        if self.reserved is None:
            return True
        reserved = self.reserved.reserved_gpus(lease_start, lease_start + spec.run_duration)
        return self.settings.gpu_count - reserved >= spec.gpus

    # ------------------------------------------------------------------ one pass

    def step(self) -> None:
        """Do everything that can be done now."""
        self.bidder.read_new_jobs(*([self.reserved.scan] if self.reserved is not None else []))
        now = self.now()
        if self.reserved is not None:
            self.reserved.step(now)
        self.bidder.bid(now)
        for job_id in list(self.memory.slots):
            if job_id not in self.memory.done:
                self._serve(job_id, now)
        if self.settings.withdraw:
            self._withdraw()
        self._save()

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
            elif can_settle(slot.status, slot.committed_at, spec, now):
                self._settle(job_id, index)
                self.memory.done.add(job_id)
                log.info("provider %s: settled job %d", self.address, job_id)
        except ContractRevert as exc:
            log.info("provider %s: job %d: %s", self.address, job_id, exc.reason)

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
        if _no_show(record):
            if now - lease_start >= spec.run_duration * NO_SHOW_REPORT_AT:
                self._report_no_show(job_id, index, record)
            return
        if record is not None and record.terminal:
            root = record.result_root or EMPTY_ROOT
            claimed = int((record.metering or {}).get("device_millis", 0) + 999) // 1000
        else:
            return
        claimed = min(claimed, spec.max_gpu_seconds)
        held = max(0, (now - lease_start)) * spec.gpus
        if claimed > held:
            # The chain has not seen as much time pass since the lease as the device was metered
            # for: a dev chain whose clock ran ahead of the wall clock (a burst of blocks, a time
            # travel) only moves it with new blocks. Ask for one (dev chains mine on request; other
            # chains refuse and make blocks on their own) and wait, unless the run deadline nears.
            if now - lease_start < spec.run_duration * CLOCK_WAIT_UNTIL:
                self.nudge_clock()
                return
            claimed = held
        self._commit(job_id, index, root, claimed)
        log.info("provider %s: committed job %d: %d GPU-s, root %s", self.address, job_id, claimed, root.hex()[:16])

    def _report_no_show(self, job_id: int, index: int, record: JobRecord | None) -> None:
        # Close the job first, so that a late upload cannot make the worker run unpaid work.
        if not self.worker.manager.refuse(
            job_id, "its provider reported a no-show: no runnable bundle arrived in time"
        ):
            return  # an upload is streaming in right now: look again next step
        self._commit(job_id, index, NO_SHOW_ROOT, 0)
        state = record.state if record is not None else "no upload"
        log.warning(
            "provider %s: job %d: reported a no-show (%s); the slot settles unslashed with the no-show fee",
            self.address,
            job_id,
            state,
        )


def _no_show(record: JobRecord | None) -> bool:
    """Whether the requester has delivered nothing runnable: no upload, one unfinished or refused
    (the worker keeps such a job ``uploading``), one never started, a job it cancelled before it ran,
    or one whose declared environment does not build here (it never ran)."""
    if record is None or record.state in NOT_DELIVERED:
        return True
    return (record.state == "cancelled" and record.started is None) or unbuildable(record)
