"""The contracts' revert reasons that the Python side acts on, named once.

A daemon or the requester reacts to a few reverts in particular: a race lost to another account
(somebody else finalized the auction or settled the slot first), or a call made too early. Those
reasons are the exact strings of ``contracts/*.vy``; they are constants here, and code asks the
predicates below rather than comparing strings by hand. ``tests/marketplace/test_reverts.py``
checks that every constant is, verbatim, the reason of an ``assert`` or ``raise`` in a contract,
so a reason renamed in a contract fails a test instead of silently changing what the daemons do.
"""

from __future__ import annotations

from marketplace.errors import ContractRevert

__all__ = [
    "BIDDING_CLOSED",
    "BIDDING_STILL_OPEN",
    "JOB_NOT_LEASED",
    "JOB_NOT_OPEN",
    "REASONS",
    "REVEAL_STILL_OPEN",
    "SLOT_ALREADY_BOOKED",
    "SLOT_ALREADY_SETTLED",
    "SLOT_CANNOT_SETTLE_YET",
    "already_booked",
    "auction_over",
    "auction_still_open",
    "is_revert",
    "job_not_open",
    "settled_by_another",
    "too_early_to_settle",
]

#: ``JobMarket``: bidding, taking or finalizing a job that is no longer open (leased, cancelled, expired).
JOB_NOT_OPEN = "market: job is not open"
#: ``JobMarket``: a sealed commitment or an instant take after the job's bid deadline.
BIDDING_CLOSED = "market: bidding closed"
#: ``JobMarket``: finalizing an instant job (or revealing a sealed bid) before its bid deadline.
BIDDING_STILL_OPEN = "market: bidding still open"
#: ``JobMarket``: finalizing a sealed auction before its reveal deadline.
REVEAL_STILL_OPEN = "market: reveal still open"
#: ``JobMarket``: committing or settling a slot of a job that is not (or no longer) leased.
JOB_NOT_LEASED = "market: job is not leased"
#: ``JobMarket``: settling a slot that is already paid, slashed or refunded.
SLOT_ALREADY_SETTLED = "market: slot already settled"
#: ``JobMarket``: settling a slot whose challenge window (or run deadline) has not passed.
SLOT_CANNOT_SETTLE_YET = "market: slot cannot settle yet"
#: ``ProviderPool``: booking a slot the pool has booked already.
SLOT_ALREADY_BOOKED = "pool: slot already booked"

#: Every reason above.
REASONS = (
    JOB_NOT_OPEN,
    BIDDING_CLOSED,
    BIDDING_STILL_OPEN,
    REVEAL_STILL_OPEN,
    JOB_NOT_LEASED,
    SLOT_ALREADY_SETTLED,
    SLOT_CANNOT_SETTLE_YET,
    SLOT_ALREADY_BOOKED,
)


def is_revert(exc: BaseException, *reasons: str) -> bool:
    """Whether ``exc`` is a contract revert for one of ``reasons``."""
    return isinstance(exc, ContractRevert) and exc.reason in reasons


def job_not_open(exc: BaseException) -> bool:
    """The job is past its auction: somebody finalized it (or it was cancelled or expired)."""
    return is_revert(exc, JOB_NOT_OPEN)


def auction_over(exc: BaseException) -> bool:
    """No more bids for this job: it is no longer open, or its bid deadline has passed."""
    return is_revert(exc, JOB_NOT_OPEN, BIDDING_CLOSED)


def auction_still_open(exc: BaseException) -> bool:
    """Too early to end the auction: the block the call ran in is before its bid or reveal deadline.

    A node judges a call by its pending block, whose time may trail the wall clock (anvil with
    ``--block-time`` stamps it with the latest block's time); the next block settles it.
    """
    return is_revert(exc, BIDDING_STILL_OPEN, REVEAL_STILL_OPEN)


def settled_by_another(exc: BaseException) -> bool:
    """The slot was settled (or its job ended) by another account between a read and the call."""
    return is_revert(exc, SLOT_ALREADY_SETTLED, JOB_NOT_LEASED)


def too_early_to_settle(exc: BaseException) -> bool:
    """The slot cannot settle yet: its challenge window or run deadline has not passed."""
    return is_revert(exc, SLOT_CANNOT_SETTLE_YET)


def already_booked(exc: BaseException) -> bool:
    """The pool has booked this slot already (another member, or the operator, did it first)."""
    return is_revert(exc, SLOT_ALREADY_BOOKED)
