"""Leases read from the market on chain: the worker serves a job only if the chain says so.

:class:`ChainLeases` implements :class:`worker.node.leases.LeaseLookup` for a worker whose provider
account holds slots in the market. A lease names the worker's receipt key (the ``signer`` of each
leased provider's registry offer), the requester who posted the job, the bundle hash it posted and
the run deadline. Leases are cached once they exist; a job that is not leased yet is asked again
at most every ``refresh_s`` seconds.

A slot held by a provider pool (:mod:`marketplace.contracts.pool`) runs on the member its operator assigned,
so the lease names that member's signer (``pool.members(member).signer``), not the pool's offer:
only the assigned member's worker serves the job. An unassigned pool slot names nobody yet. The
operator may move a slot to another member until a result is committed, so a lease with a pool
slot still awaiting its result is cached for ``refresh_s`` seconds only.

A job id with :data:`~marketplace.contracts.reservations.RESERVED_JOB_FLAG` set names a job in a
reservation (:func:`~marketplace.contracts.reservations.reserved_job`): its lease exists while the
reservation is bought and unsettled, from the window's start until the end of its challenge
period, names the reservation's current holder as requester and the provider's worker, lets the
holder run any bundle it signs on up to the reserved devices at once (one device group per
reservation), and takes uploads and starts until the window ends. It is never cached for longer
than ``refresh_s`` seconds: a verifier's ruling or the clock can end it.
"""

from __future__ import annotations

import threading
import time

from marketplace.contracts.deployment import Contracts
from marketplace.contracts.pool import pool_at
from marketplace.contracts.reservations import reserved_job
from marketplace.errors import ChainError
from marketplace.market.routing import slot_worker
from marketplace.types import JobStatus, SlotStatus
from worker.node.leases import DeviceRequirements, Lease

__all__ = ["ChainLeases", "lease_from_chain"]

MIB = 1 << 20


def lease_from_chain(contracts: Contracts, job_id: int) -> Lease | None:
    """The lease of ``job_id`` as the market has it, or None when it is not leased."""
    return _lease_from_chain(contracts, job_id)[0]


def _reserved_lease(contracts: Contracts, job_id: int, reservation_id: int) -> Lease | None:
    """The lease of a job in reservation ``reservation_id``, or None outside its window."""
    if contracts.reservations is None:
        return None
    try:
        r = contracts.reservations.reservation(reservation_id)
    except ChainError:
        return None
    if r.holder is None or not r.status.serving:
        return None
    now = contracts.chain.next_timestamp()
    if not r.start <= now < r.end + contracts.reservations.challenge_period():
        return None
    offer = contracts.registry.offer(r.provider)
    return Lease(
        job_id=job_id,
        requester=r.holder,
        providers=(offer.signer,),
        bundle_hash=None,
        deadline=r.end,
        devices=DeviceRequirements(kind=offer.device_kind.name.lower(), count=r.gpus),
        device_group=f"reservation:{reservation_id}",
    )


def _lease_from_chain(contracts: Contracts, job_id: int) -> tuple[Lease | None, bool]:
    """The lease and whether it is final (no pool slot that may still move to another member)."""
    reserved = reserved_job(job_id)
    if reserved is not None:
        return _reserved_lease(contracts, job_id, reserved[0]), False
    market = contracts.market
    try:
        job = market.job(job_id)
    except ChainError:
        return None, False
    if job.status not in (JobStatus.LEASED, JobStatus.CLOSED):
        return None, False
    spec = market.spec(job_id)
    providers = []
    final = True
    for slot in market.slots_of(job_id):
        if slot.status == SlotStatus.RELEASED:
            continue
        if pool_at(contracts, slot.provider) is not None:
            # A pool's slot: its assigned member's worker, which may change until a result is in.
            final = final and slot.status != SlotStatus.ASSIGNED
            worker = slot_worker(contracts, job_id, slot.slot, slot.provider)
            if worker is not None:
                providers.append(worker.signer)
            continue
        providers.append(contracts.registry.offer(slot.provider).signer)
    if not providers:
        return None, False
    lease = Lease(
        job_id=job_id,
        requester=spec.requester,
        providers=tuple(providers),
        bundle_hash=spec.bundle_hash,
        deadline=job.lease_start + spec.run_duration,
        devices=DeviceRequirements(
            kind=spec.device_kind.name.lower(),
            count=spec.gpus,
            min_memory_bytes=spec.min_memory_mb * MIB,
        ),
    )
    return lease, final


class ChainLeases:
    """A thread-safe, caching :class:`~worker.node.leases.LeaseLookup` backed by the market."""

    def __init__(self, contracts: Contracts, *, refresh_s: float = 1.0) -> None:
        self.contracts = contracts
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._leases: dict[int, Lease] = {}
        self._misses: dict[int, float] = {}
        self._provisional: dict[int, tuple[Lease, float]] = {}  # pool slots that may still move

    def verifier_may_read(self, job_id: int, account: str, worker: str) -> bool:
        """True when ``account`` is an active verifier and the slot ``worker`` runs is committed.

        Verifiers read results and bundles only after the provider has committed its result root
        on chain, so reading cannot help anyone change a result.
        """
        registry, market = self.contracts.registry, self.contracts.market
        if reserved_job(job_id) is not None or not registry.is_active_verifier(account):
            return False
        for slot in market.slots_of(job_id):
            if slot.status in (SlotStatus.ASSIGNED, SlotStatus.RELEASED, SlotStatus.NONE):
                continue
            runs = slot_worker(self.contracts, job_id, slot.slot, slot.provider)
            if runs is not None and runs.signer.lower() == worker.lower():
                return True
        return False

    def lease(self, job_id: int) -> Lease | None:
        """The lease of ``job_id``, or None when the market has not leased it."""
        with self._lock:
            if job_id in self._leases:
                return self._leases[job_id]
            missed = self._misses.get(job_id)
            if missed is not None and time.monotonic() - missed < self.refresh_s:
                return None
            provisional = self._provisional.get(job_id)
            if provisional is not None and time.monotonic() - provisional[1] < self.refresh_s:
                return provisional[0]
        lease, final = _lease_from_chain(self.contracts, job_id)
        with self._lock:
            if lease is None:
                self._misses[job_id] = time.monotonic()
            elif final:
                self._leases[job_id] = lease
                self._misses.pop(job_id, None)
                self._provisional.pop(job_id, None)
            else:
                self._provisional[job_id] = (lease, time.monotonic())
                self._misses.pop(job_id, None)
        return lease
