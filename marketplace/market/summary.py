"""Jobs and reservations as JSON-ready data, the same for the command line and the console."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from marketplace.types import JobSpec, SlotStatus

if TYPE_CHECKING:  # the command line imports this module at start: keep web3 out of it
    from marketplace.contracts.deployment import Contracts
    from marketplace.contracts.reservations import ReservationState

__all__ = ["job_summary", "reservation_summary"]


def job_summary(contracts: Contracts, job_id: int, spec: JobSpec | None = None) -> dict[str, Any]:
    """Where job ``job_id`` stands on chain: its terms, status, escrow and every slot with a provider.

    ``spec`` saves looking the terms up from the job's ``JobPosted`` event when the caller has them.
    """
    market = contracts.market
    spec = spec or market.spec(job_id)
    state = market.job(job_id)
    slots = [market.slot(job_id, i) for i in range(spec.redundancy)]
    return {
        "job_id": job_id,
        "status": state.status.name.lower(),
        "requester": spec.requester,
        "auction": spec.auction.name.lower(),
        "policy": spec.policy.name.lower(),
        "redundancy": spec.redundancy,
        "max_price": spec.max_price,
        "max_gpu_seconds": spec.max_gpu_seconds,
        "escrow": state.escrow,
        "slots": [
            {
                "slot": s.slot,
                "provider": s.provider,
                "status": s.status.name.lower(),
                "price": s.price,
                "gpu_seconds": s.gpu_seconds,
                "result_root": "0x" + s.result_root.hex(),
            }
            for s in slots
            if s.status != SlotStatus.NONE
        ],
    }


def reservation_summary(state: ReservationState, now: int) -> dict[str, Any]:
    """A reservation as JSON data: terms, holder, usage, money (token units), open window, for sale now."""
    return {
        "reservation_id": state.reservation_id,
        "provider": state.provider,
        "status": state.status.name.lower(),
        "start": state.start,
        "end": state.end,
        "duration": state.duration,
        "gpus": state.gpus,
        "price": state.price,
        "value": state.value,
        "holder": state.holder,
        "resale_price": state.resale_price,
        "used_gpu_seconds": state.used_gpu_seconds,
        "usage_records": state.usage_records,
        "escrow": state.escrow,
        "window_open": state.start <= now < state.end,
        "for_sale": state.for_sale(now),
    }
