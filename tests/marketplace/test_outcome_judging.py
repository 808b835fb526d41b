"""How a settled job is judged and each slot's reason worded, from synthetic bills and rulings."""

from __future__ import annotations

from typing import Any

from marketplace.market.summary import _settled_reason
from marketplace.requester.requester import JobOutcome, _judge
from marketplace.types import SlotStatus

VERIFIER = "0x" + "ab" * 20


def _slot(**changes: Any) -> dict[str, Any]:
    return {"reason": None, "rulings": [], "disputed": False, "accepted_by": None, **changes}


def _ruling(outcome: str, claimed: int = 10, verified: int = 10) -> dict[str, Any]:
    return {"verifier": VERIFIER, "outcome": outcome, "claimed_gpu_seconds": claimed, "verified_gpu_seconds": verified}


def _bill(slot: int, status: str, reason: str | None, gpu_seconds: int = 10, paid: int = 5) -> dict[str, Any]:
    return {"slot": slot, "status": status, "reason": reason, "gpu_seconds": gpu_seconds, "paid": paid}


def test_settled_reasons__name_who_ruled_and_why() -> None:
    verified = _settled_reason(SlotStatus.PAID, _slot(rulings=[_ruling("accept", 12, 12)]), True)
    assert verified == f"verified by verifier {VERIFIER}: 12 of 12 claimed GPU-s"
    cut = _settled_reason(SlotStatus.PAID, _slot(rulings=[_ruling("accept", 12, 9)]), True)
    assert cut.startswith(f"verified by verifier {VERIFIER}: 9 of 12 claimed GPU-s; the claim was cut")
    lost = _settled_reason(SlotStatus.PAID, _slot(rulings=[_ruling("accept")], disputed=True), True)
    assert lost.endswith("the requester's dispute was lost (its bond went to the provider)")
    assert "no verifier ruled" in _settled_reason(SlotStatus.PAID, _slot(accepted_by="requester"), True)
    assert "unchallenged" in _settled_reason(SlotStatus.PAID, _slot(), True)
    rejected = _settled_reason(SlotStatus.SLASHED, _slot(rulings=[_ruling("reject", 10, 4)]), True)
    assert rejected.startswith(f"rejected by verifier {VERIFIER}: claimed 10 GPU-s, 4 verified")
    assert _settled_reason(SlotStatus.SLASHED, _slot(), False).startswith("no result committed by the run deadline")
    assert "could not decide" in _settled_reason(SlotStatus.REFUNDED, _slot(rulings=[_ruling("void")]), True)
    unruled = _settled_reason(SlotStatus.PAID, _slot(disputed=True), True)
    assert "no verifier ruled" in unruled and "dispute was lost" in unruled


def _outcome(bills: list[dict[str, Any]], runs: dict[int, dict[str, Any]], **changes: Any) -> JobOutcome:
    outcome = JobOutcome(1, slots=bills, runs=runs, **changes)
    outcome.status, outcome.reason = _judge(outcome)
    return outcome


OK_RUN = {"state": "succeeded", "exit_code": 0, "reason": None}


def test_judge__worst_first_and_only_success_is_ok() -> None:
    good = _outcome([_bill(0, "paid", "accepted by the requester (no verifier ruled)")], {0: OK_RUN})
    assert (good.status, good.reason, good.ok) == ("succeeded", None, True)

    lost = _outcome([_bill(0, "paid", "verified by x; the requester's dispute was lost (...)")], {0: OK_RUN})
    assert lost.status == "dispute_lost" and not lost.ok

    failed_run = {"state": "failed", "exit_code": 2, "reason": "the job exited with status 2"}
    failed = _outcome([_bill(0, "paid", "accepted")], {0: failed_run})
    assert failed.status == "failed"
    assert failed.reason is not None and "(exit status 2)" in failed.reason and "billed" in failed.reason

    both = _outcome(
        [_bill(0, "paid", "accepted"), _bill(1, "slashed", "rejected by verifier v", 0, 0)], {0: failed_run, 1: OK_RUN}
    )
    assert both.status == "slashed" and both.reason == "slot 1: rejected by verifier v"

    voided = _outcome([_bill(0, "refunded", "voided by verifier v: the check could not decide")], {0: OK_RUN})
    assert voided.status == "refunded"

    unseen = _outcome([_bill(0, "paid", "unchallenged")], {})
    assert unseen.status == "failed" and "never seen" in (unseen.reason or "")

    undelivered = _outcome([_bill(0, "refunded", "disputed")], {0: OK_RUN}, unverified=[0])
    assert undelivered.status == "undelivered"
