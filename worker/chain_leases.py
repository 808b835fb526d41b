"""Leases read from the market on chain: the worker serves a job only if the chain says so.

:class:`ChainLeases` implements :class:`worker.leases.LeaseLookup` for a worker whose provider
account holds slots in the market. A lease names the worker's receipt key (the ``signer`` of each
leased provider's registry offer), the requester who posted the job, the bundle hash it posted and
the run deadline. Leases are cached once they exist; a job that is not leased yet is asked again
at most every ``refresh_s`` seconds.
"""

from __future__ import annotations

import threading
import time

from marketplace.bindings import Contracts
from marketplace.errors import ChainError
from marketplace.types import DeviceKind, JobStatus, SlotStatus
from worker.leases import DeviceRequirements, Lease

__all__ = ["ChainLeases", "lease_from_chain"]

MIB = 1 << 20


def lease_from_chain(contracts: Contracts, job_id: int) -> Lease | None:
    """The lease of ``job_id`` as the market has it, or None when it is not leased."""
    market = contracts.market
    try:
        job = market.job(job_id)
    except ChainError:
        return None
    if job.status not in (JobStatus.LEASED, JobStatus.CLOSED):
        return None
    spec = market.spec(job_id)
    providers = []
    for slot in market.slots_of(job_id):
        if slot.status == SlotStatus.RELEASED:
            continue
        providers.append(contracts.registry.offer(slot.provider).signer)
    if not providers:
        return None
    return Lease(
        job_id=job_id,
        requester=spec.requester,
        providers=tuple(providers),
        bundle_hash=spec.bundle_hash,
        deadline=job.lease_start + spec.run_duration,
        devices=DeviceRequirements(
            kind="cuda" if spec.device_kind == DeviceKind.CUDA else "cpu",
            count=spec.gpus,
            min_memory_bytes=spec.min_memory_mb * MIB,
        ),
    )


class ChainLeases:
    """A thread-safe, caching :class:`~worker.leases.LeaseLookup` backed by the market."""

    def __init__(self, contracts: Contracts, *, refresh_s: float = 1.0) -> None:
        self.contracts = contracts
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._leases: dict[int, Lease] = {}
        self._misses: dict[int, float] = {}

    def verifier_may_read(self, job_id: int, account: str, worker: str) -> bool:
        """True when ``account`` is an active verifier and the slot ``worker`` runs is committed.

        Verifiers read results and bundles only after the provider has committed its result root
        on chain, so reading cannot help anyone change a result.
        """
        registry, market = self.contracts.registry, self.contracts.market
        if not registry.is_active_verifier(account):
            return False
        for slot in market.slots_of(job_id):
            if slot.status in (SlotStatus.ASSIGNED, SlotStatus.RELEASED, SlotStatus.NONE):
                continue
            if registry.offer(slot.provider).signer.lower() == worker.lower():
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
        lease = lease_from_chain(self.contracts, job_id)
        with self._lock:
            if lease is None:
                self._misses[job_id] = time.monotonic()
            else:
                self._leases[job_id] = lease
                self._misses.pop(job_id, None)
        return lease
