"""Which worker runs a slot: the provider's own (its registry offer), or a pool member's.

The requester, the verifier and the worker's chain leases all ask :func:`slot_worker`, so a job
held by a pool goes straight to the member the operator assigned.
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_utils.address import to_checksum_address

from marketplace.contracts.deployment import Contracts
from marketplace.contracts.pool import pool_at

__all__ = ["SlotWorker", "slot_worker"]


@dataclass(frozen=True)
class SlotWorker:
    """Who runs a slot: the worker's gRPC endpoint and receipt signer, and the account answering for it."""

    endpoint: str
    signer: str
    provider: str
    member: str | None = None  # the assigned member when the provider is a pool


def slot_worker(contracts: Contracts, job_id: int, slot: int, provider: str) -> SlotWorker | None:
    """The worker that runs ``slot`` of ``job_id`` held by ``provider``.

    A plain provider's worker is its registry offer's. A pool's is the assigned member's (from
    the pool), or None while the operator has not assigned the slot.
    """
    pool = pool_at(contracts, provider)
    if pool is None:
        offer = contracts.registry.offer(provider)
        return SlotWorker(offer.endpoint, to_checksum_address(offer.signer), to_checksum_address(provider))
    member = pool.assignment(job_id, slot)
    if member is None:
        return None
    m = pool.member(member)
    return SlotWorker(m.endpoint, m.signer, pool.address, member)
