"""The revert reasons the Python side acts on are, verbatim, reasons the contracts give."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from marketplace.contracts import reverts
from marketplace.errors import ContractRevert

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"


def _statements(source: str) -> list[str]:
    """The source's logical lines: physical lines joined while a bracket is open, comments dropped."""
    out: list[str] = []
    pending: list[str] = []
    depth = 0
    for line in source.splitlines():
        code = re.sub(r"#.*$", "", re.sub(r'"[^"]*"', lambda m: m.group(0).replace("#", "\0"), line))
        code = code.replace("\0", "#")
        pending.append(code.strip())
        depth += sum(code.count(c) for c in "([{") - sum(code.count(c) for c in ")]}")
        if depth <= 0:
            out.append(" ".join(pending))
            pending, depth = [], 0
    return out


def contract_reasons() -> set[str]:
    """Every reason an ``assert ..., "reason"`` or ``raise "reason"`` of contracts/*.vy gives."""
    found: set[str] = set()
    for path in sorted(CONTRACTS.glob("*.vy")):
        for statement in _statements(path.read_text()):
            if statement.startswith("assert "):
                match = re.search(r',\s*"([^"]*)"\s*$', statement)
            else:
                match = re.match(r'raise\s+"([^"]*)"\s*$', statement)
            if match:
                found.add(match.group(1))
    return found


def test_the_contracts_have_reasons_to_check_against() -> None:
    reasons = contract_reasons()
    assert len(reasons) > 50
    assert "market: slot cannot settle yet" in reasons  # a raise
    assert "market: job is not open" in reasons  # an assert


@pytest.mark.parametrize("reason", reverts.REASONS)
def test_every_constant_is_a_contract_reason_verbatim(reason: str) -> None:
    assert reason in contract_reasons()


def test_every_constant_is_listed() -> None:
    constants = {v for k, v in vars(reverts).items() if k.isupper() and isinstance(v, str)}
    assert constants == set(reverts.REASONS)


def test_the_predicates_match_exactly_their_reasons() -> None:
    assert reverts.auction_over(ContractRevert(reverts.BIDDING_CLOSED))
    assert reverts.auction_over(ContractRevert(reverts.JOB_NOT_OPEN, function="take_job"))
    assert not reverts.auction_over(ContractRevert("market: bidding closed!"))
    assert reverts.settled_by_another(ContractRevert(reverts.SLOT_ALREADY_SETTLED))
    assert reverts.settled_by_another(ContractRevert(reverts.JOB_NOT_LEASED))
    assert reverts.too_early_to_settle(ContractRevert(reverts.SLOT_CANNOT_SETTLE_YET))
    assert reverts.already_booked(ContractRevert(reverts.SLOT_ALREADY_BOOKED))
    assert reverts.job_not_open(ContractRevert(reverts.JOB_NOT_OPEN))
    assert not reverts.job_not_open(ValueError(reverts.JOB_NOT_OPEN))
    assert reverts.auction_still_open(ContractRevert(reverts.REVEAL_STILL_OPEN))
    assert reverts.auction_still_open(ContractRevert(reverts.BIDDING_STILL_OPEN, function="finalize_auction"))
    assert not reverts.auction_still_open(ContractRevert(reverts.BIDDING_CLOSED))
