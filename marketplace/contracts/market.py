"""Binding of the job market (``contracts/JobMarket.vy``): jobs, auctions, slots, results, settlement
and credits.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from marketplace.chain.client import Chain
from marketplace.contracts import events as ev
from marketplace.contracts.base import Bound
from marketplace.contracts.token import Token
from marketplace.errors import ChainError
from marketplace.types import (
    NO_SHOW_ROOT,
    JobSpec,
    JobStatus,
    Outcome,
    SlotStatus,
)

if TYPE_CHECKING:
    pass

__all__ = ["JobState", "Market", "SlotState"]


@dataclass(frozen=True)
class JobState:
    """A job's mutable state on chain."""

    job_id: int
    status: JobStatus
    escrow: int
    count: int
    lease_start: int


@dataclass(frozen=True)
class SlotState:
    """One provider's slot of a job."""

    job_id: int
    slot: int
    provider: str
    status: SlotStatus
    price: int
    result_root: bytes
    gpu_seconds: int
    committed_at: int
    disputer: str


class Market(Bound):
    """The job market and escrow. Job terms are looked up from ``JobPosted`` and cached."""

    NAME = "JobMarket"

    def __init__(self, chain: Chain, address: str, start_block: int = 0) -> None:
        super().__init__(chain, address)
        self.start_block = start_block
        self._specs: dict[int, JobSpec] = {}

    # --------------------------------------------------------------- jobs

    def spec(self, job_id: int) -> JobSpec:
        """The terms of job ``job_id`` (from its ``JobPosted`` event)."""
        if job_id not in self._specs:
            posted = self.get_events("JobPosted", self.start_block, job_id=job_id)
            if not posted:
                raise ChainError(f"no job {job_id} on this market")
            self._specs[job_id] = posted[0].spec
        return self._specs[job_id]

    def post_job(self, account: LocalAccount, spec: JobSpec) -> int:
        """Post a job (approve ``spec.escrow`` first); returns its id."""
        receipt = self.transact(account, "post_job", spec.as_tuple())
        return self._posted_id(receipt, spec)

    def post_job_with_permit(self, account: LocalAccount, spec: JobSpec, token: Token, deadline: int) -> int:
        """Post a job, approving its escrow with an EIP-2612 permit in the same transaction."""
        v, r, s = token.sign_permit(account, self.address, spec.escrow, deadline)
        receipt = self.transact(account, "post_job_with_permit", spec.as_tuple(), deadline, v, r, s)
        return self._posted_id(receipt, spec)

    def _posted_id(self, receipt: Any, spec: JobSpec) -> int:
        for item in self.events_in(receipt):
            if isinstance(item, ev.JobPosted):
                self._specs[item.job_id] = spec
                return item.job_id
        raise ChainError("post_job emitted no JobPosted event")

    def cancel_job(self, account: LocalAccount, job_id: int) -> Any:
        """Withdraw an open job before its bid deadline."""
        return self.transact(account, "cancel_job", job_id, self.spec(job_id).as_tuple())

    def commit_bid(self, account: LocalAccount, job_id: int, price: int, salt: bytes | None = None) -> bytes:
        """Commit a sealed ask; returns the salt needed to reveal it."""
        salt = salt or secrets.token_bytes(32)
        commitment = self.bid_commitment(job_id, account.address, price, salt)
        self.transact(account, "commit_bid", job_id, self.spec(job_id).as_tuple(), commitment)
        return salt

    def reveal_bid(self, account: LocalAccount, job_id: int, price: int, salt: bytes) -> Any:
        """Reveal a committed ask."""
        return self.transact(account, "reveal_bid", job_id, self.spec(job_id).as_tuple(), price, salt)

    def finalize_auction(self, account: LocalAccount, job_id: int) -> Any:
        """End bidding: lease the winners, or expire the job and refund it."""
        return self.transact(account, "finalize_auction", job_id, self.spec(job_id).as_tuple())

    def take_job(self, account: LocalAccount, job_id: int) -> Any:
        """Take a slot of an instant job at the caller's price floor."""
        return self.transact(account, "take_job", job_id, self.spec(job_id).as_tuple())

    def commit_result(self, account: LocalAccount, job_id: int, slot: int, result_root: bytes, gpu_seconds: int) -> Any:
        """Commit a result root and the GPU-seconds claimed for a slot."""
        return self.transact(
            account, "commit_result", job_id, self.spec(job_id).as_tuple(), slot, result_root, gpu_seconds
        )

    def accept_result(self, account: LocalAccount, job_id: int, slot: int) -> Any:
        """The requester accepts a committed result."""
        return self.transact(account, "accept_result", job_id, self.spec(job_id).as_tuple(), slot)

    def dispute_result(self, account: LocalAccount, job_id: int, slot: int) -> Any:
        """Dispute a committed result (approve the dispute bond first)."""
        return self.transact(account, "dispute_result", job_id, self.spec(job_id).as_tuple(), slot)

    def attest(
        self, account: LocalAccount, job_id: int, slot: int, outcome: Outcome, verified_gpu_seconds: int = 0
    ) -> Any:
        """The court passes on its final ruling on a committed or disputed result (only the court may)."""
        return self.transact(
            account, "attest", job_id, self.spec(job_id).as_tuple(), slot, int(outcome), verified_gpu_seconds
        )

    def set_court(self, owner: LocalAccount, court: str) -> Any:
        """Name the verifier court, whose rulings alone ``attest`` takes (once, by the owner)."""
        return self.transact(owner, "set_court", court)

    def court(self) -> str:
        """The verifier court's address (the zero address before it is set)."""
        return str(self.call("court"))

    def settle(self, account: LocalAccount, job_id: int, slot: int) -> Any:
        """Settle a slot that can end."""
        return self.transact(account, "settle", job_id, self.spec(job_id).as_tuple(), slot)

    def withdraw(self, account: LocalAccount) -> int:
        """Withdraw all of ``account``'s credit; returns the amount."""
        before = self.credits(account.address)
        self.transact(account, "withdraw")
        return before

    def set_direct_payout(self, account: LocalAccount, direct: bool = True) -> Any:
        """Have ``account`` paid at once, by a token transfer inside the settlement or refund that pays
        it, instead of credited (False: back to credits; a transfer that fails is kept as a credit)."""
        return self.transact(account, "set_direct_payout", direct)

    # --------------------------------------------------------------- views

    def direct_payout(self, account: str) -> bool:
        """Whether ``account`` is paid at once rather than credited."""
        return bool(self.call("direct_payout", account))

    def job(self, job_id: int) -> JobState:
        """Job ``job_id``'s state."""
        _hash, status, escrow, count, lease_start = self.call("jobs", job_id)
        return JobState(job_id, JobStatus(status), int(escrow), int(count), int(lease_start))

    def slot(self, job_id: int, slot: int) -> SlotState:
        """Slot ``slot`` of job ``job_id``."""
        provider, status, price, root, seconds, committed_at, disputer = self.call("slots", job_id, slot)
        return SlotState(
            job_id,
            slot,
            provider,
            SlotStatus(status),
            int(price),
            bytes(root),
            int(seconds),
            int(committed_at),
            disputer,
        )

    def slots_of(self, job_id: int) -> list[SlotState]:
        """Every slot of job ``job_id`` that has a provider."""
        spec = self.spec(job_id)
        found = [self.slot(job_id, i) for i in range(spec.redundancy)]
        return [s for s in found if s.status != SlotStatus.NONE]

    def credits(self, account: str) -> int:
        """Tokens ``account`` can withdraw."""
        return int(self.call("credits", account))

    def total_credits(self) -> int:
        """All credits outstanding."""
        return int(self.call("total_credits"))

    def job_count(self) -> int:
        """Jobs posted so far."""
        return int(self.call("job_count"))

    def bid_commitment(self, job_id: int, provider: str, price: int, salt: bytes) -> bytes:
        """The commitment of a sealed ask (computed locally, as the contract does)."""
        from eth_abi.abi import encode

        return keccak(encode(["uint256", "address", "uint256", "bytes32"], [job_id, provider, price, salt]))

    def fee_bps(self) -> int:
        """Protocol fee in basis points."""
        return int(self.call("fee_bps"))

    def dispute_bond(self) -> int:
        """The bond a dispute locks now (a slot keeps the bond it was disputed with)."""
        return int(self.call("dispute_bond"))

    def treasury(self) -> str:
        """Where fees go."""
        return str(self.call("treasury"))

    def over_claim(self, job_id: int, slot: int) -> int:
        """The GPU-seconds slot ``slot`` claimed when a verifier accepted fewer; 0 when none were cut."""
        return int(self.call("over_claims", job_id, slot))

    def set_window_bounds(self, owner: LocalAccount, bid: int, run: int, challenge: int) -> Any:
        """Change the longest windows a new job may ask for (the owner's; each at most ``MAX_WINDOW``).

        The change must have been queued ``change_delay()`` seconds before:
        ``queue_change(owner, "set_window_bounds", bid, run, challenge)``.
        """
        return self.transact(owner, "set_window_bounds", bid, run, challenge)

    def base_slash(self) -> int:
        """Slashed on top of a failed slot's value for new leases; also a sealed bid's reveal bond."""
        return int(self.call("base_slash"))

    def change_delay(self) -> int:
        """Seconds between queueing an owner's change and making it."""
        return int(self.call("CHANGE_DELAY"))

    def forfeit_unrevealed(self, account: LocalAccount, job_id: int, provider: str) -> int:
        """Take the reveal bond of ``provider``'s unrevealed sealed bid for the treasury; returns it."""
        spec = self.spec(job_id)
        receipt = self.transact(account, "forfeit_unrevealed", job_id, spec.as_tuple(), provider)
        for log in self.logs_in(receipt):
            if log["event"] == "BidForfeited":
                return int(log["args"]["amount"])
        return 0

    def bidders(self, job_id: int) -> list[str]:
        """Providers that committed a sealed bid on ``job_id``, in commit order."""
        committed = self.get_events("BidCommitted", self.start_block, job_id=job_id)
        return list(dict.fromkeys(e.provider for e in committed))

    def report_no_show(self, account: LocalAccount, job_id: int, slot: int) -> Any:
        """Report that the requester delivered no runnable bundle for ``slot``: it settles unslashed, with a fee."""
        return self.commit_result(account, job_id, slot, NO_SHOW_ROOT, 0)

    def unrevealed_bids(self, job_id: int) -> list[str]:
        """Providers whose sealed bid on ``job_id`` is committed and not revealed (nor forfeited)."""
        return [p for p in self.bidders(job_id) if self.call("commitments", job_id, p) != bytes(32)]

    def max_window(self) -> int:
        """The hard limit, in the contract's code, on every window bound."""
        return int(self.call("MAX_WINDOW"))

    def window_bounds(self) -> tuple[int, int, int]:
        """The longest bid (and reveal) window, run duration and challenge window a new job may ask for."""
        bid, run, challenge = self.call("window_bounds")
        return int(bid), int(run), int(challenge)
