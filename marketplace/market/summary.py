"""Jobs and reservations as JSON-ready data, the same for the command line and the console."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from marketplace.types import NO_SHOW_ROOT, Auction, JobSpec, SlotStatus, format_tokens

if TYPE_CHECKING:  # the command line imports this module at start: keep web3 out of it
    from marketplace.contracts.deployment import Contracts
    from marketplace.contracts.reservations import ReservationState

__all__ = ["OUTCOME_NAMES", "job_reasons", "job_summary", "reservation_summary"]

#: ``ResultAttested.outcome`` codes (``OUTCOME_*`` in JobMarket.vy) by name.
OUTCOME_NAMES = {0: "accept", 1: "reject", 2: "void"}


def job_reasons(
    contracts: Contracts,
    job_id: int,
    spec: JobSpec | None = None,
    events: Callable[[str], Iterable[Any]] | None = None,
) -> dict[str, Any]:
    """Why job ``job_id`` and each of its slots stand as they do, read from the market's events.

    Returns ``{"reason": str | None, "slots": {slot: {"reason", "rulings", "disputed", "accepted_by"}}}``:
    the job's reason when it expired or was cancelled (how many asks it drew against how many
    slots), and per slot the verifiers' rulings (``ResultAttested``), whether it was disputed and
    one line saying why it was paid, refunded or slashed. ``events(name)`` gives the job's decoded
    events of one kind (:mod:`marketplace.contracts.events`) where the caller has them already (an
    index of the chain's logs); by default they are read from the chain.
    """
    market = contracts.market
    spec = spec or market.spec(job_id)
    start = market.start_block

    def read(name: str) -> Iterable[Any]:
        return events(name) if events is not None else market.get_events(name, start, job_id=job_id)

    reason: str | None = None
    for expired in read("JobExpired"):
        deadline = "reveal" if spec.auction == Auction.SEALED else "bid"
        reason = (
            f"{expired.asks} valid ask(s) at or below {format_tokens(spec.max_price)} FLOP/GPU-h for "
            f"{spec.redundancy} slot(s) by the {deadline} deadline; escrow of {format_tokens(expired.refunded)} "
            "FLOP refunded"
        )
    for cancelled in read("JobCancelled"):
        reason = f"cancelled by the requester; {format_tokens(cancelled.refunded)} FLOP refunded"
    slots: dict[int, dict[str, Any]] = {}

    def entry(slot: int) -> dict[str, Any]:
        return slots.setdefault(slot, {"reason": None, "rulings": [], "disputed": False, "accepted_by": None})

    committed: set[int] = set()
    if reason is None:
        for event in read("ResultCommitted"):
            committed.add(event.slot)
            if event.result_root == NO_SHOW_ROOT:
                entry(event.slot)["no_show"] = True
        for event in read("ResultAccepted"):
            entry(event.slot)["accepted_by"] = "requester"
        for event in read("ResultDisputed"):
            entry(event.slot)["disputed"] = True
        for event in read("ResultAttested"):
            entry(event.slot)["rulings"].append(
                {
                    "verifier": event.verifier,
                    "outcome": OUTCOME_NAMES.get(event.outcome, str(event.outcome)),
                    "claimed_gpu_seconds": event.claimed_gpu_seconds,
                    "verified_gpu_seconds": event.verified_gpu_seconds,
                }
            )
        for event in read("SlotSettled"):
            e = entry(event.slot)
            e["reason"] = _settled_reason(event.status, e, event.slot in committed)
            if e.get("no_show"):
                e["reason"] = (
                    "the provider reported a no-show: no runnable bundle arrived (none uploaded, one refused, "
                    "or never started); nobody slashed, the provider paid a no-show fee of "
                    f"{format_tokens(event.paid)} FLOP, {format_tokens(event.refunded)} FLOP refunded"
                )
    return {"reason": reason, "slots": slots}


def _settled_reason(status: SlotStatus, slot: dict[str, Any], committed: bool) -> str:
    """One line saying why a settled slot ended ``status``."""
    ruling = slot["rulings"][-1] if slot["rulings"] else None
    by = f"verifier {ruling['verifier']}" if ruling else ""
    if status == SlotStatus.PAID:
        if ruling and ruling["outcome"] == "accept":
            head = (
                f"verified by {by}: {ruling['verified_gpu_seconds']} of {ruling['claimed_gpu_seconds']} claimed GPU-s"
            )
            if ruling["verified_gpu_seconds"] < ruling["claimed_gpu_seconds"]:
                # An over-claim: the stake paid for the cut and a dispute's bond went back.
                return (
                    head
                    + "; the claim was cut, the provider's stake paid in proportion"
                    + ("; the dispute's bond returned" if slot["disputed"] else "")
                )
            return head + (
                "; the requester's dispute was lost (its bond went to the provider)" if slot["disputed"] else ""
            )
        if slot["disputed"]:
            return (
                "disputed and no verifier ruled within the second window: paid on its claim; "
                "the dispute was lost (its bond went to the provider)"
            )
        if slot["accepted_by"] == "requester":
            return "accepted by the requester (no verifier ruled)"
        return "unchallenged past the challenge window (no verifier ruled)"
    if status == SlotStatus.SLASHED:
        if ruling and ruling["outcome"] == "reject":
            return (
                f"rejected by {by}: claimed {ruling['claimed_gpu_seconds']} GPU-s, "
                f"{ruling['verified_gpu_seconds']} verified; the requester refunded, the provider's stake slashed"
            )
        if not committed:
            return "no result committed by the run deadline; the requester refunded, the provider's stake slashed"
        return "rejected; the requester refunded, the provider's stake slashed"
    if status == SlotStatus.REFUNDED:
        if ruling and ruling["outcome"] == "void":
            return f"voided by {by}: the check could not decide; refunded, nobody slashed"
        return "refunded, nobody slashed"
    return status.name.lower()


def job_summary(
    contracts: Contracts,
    job_id: int,
    spec: JobSpec | None = None,
    events: Callable[[str], Iterable[Any]] | None = None,
) -> dict[str, Any]:
    """Where job ``job_id`` stands on chain: its terms, status, escrow and every slot with a provider.

    ``spec`` saves looking the terms up from the job's ``JobPosted`` event, and ``events`` reading
    its events (see :func:`job_reasons`), when the caller has them.
    """
    market = contracts.market
    spec = spec or market.spec(job_id)
    state = market.job(job_id)
    slots = [market.slot(job_id, i) for i in range(spec.redundancy)]
    reasons = job_reasons(contracts, job_id, spec, events)
    none: dict[str, Any] = {"reason": None, "rulings": []}
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
        "reason": reasons["reason"],
        "slots": [
            {
                "slot": s.slot,
                "provider": s.provider,
                "status": s.status.name.lower(),
                "price": s.price,
                "gpu_seconds": s.gpu_seconds,
                "result_root": "0x" + s.result_root.hex(),
                "reason": reasons["slots"].get(s.slot, none)["reason"],
                "rulings": reasons["slots"].get(s.slot, none)["rulings"],
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
