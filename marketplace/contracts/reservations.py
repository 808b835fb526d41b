"""Typed bindings for reserved capacity (``contracts/Reservations.vy``) and its deployment.

A reservation is a forward contract on a provider's devices: the provider offers a future window
(start, duration, GPUs, price per GPU-hour), a requester buys it into escrow, may resell it before
the window starts, and during the window its jobs run on those devices without an auction. After
the window and a challenge period anyone settles: the provider is paid the whole price unless a
verifier attested it failed to serve, in which case the holder is refunded and the provider
slashed. See docs/reservations.md.

:func:`deploy_reservations` deploys the contract next to an existing deployment and authorizes it
in the registry (the deployer must own the registry); :func:`marketplace.contracts.deployment.deploy_all`
does so for every new deployment. :class:`Reservations` wraps every function; transactions take
the sending account first, as in :mod:`marketplace.contracts.deployment`.

Jobs in a reservation run on the provider's worker without an auction and without a market job.
A worker tells them from market jobs by their id: :func:`reserved_job_id` sets
:data:`RESERVED_JOB_FLAG` (bit 62; market job ids count up from 1 and never reach it) over the
reservation id and a sequence number the holder picks::

    job id = 2**62 | reservation_id << 24 | seq        reservation_id < 2**38, seq < 2**24

Ids stay below 2**63, so they fit the worker's 64-bit job ids and its SQLite store.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from marketplace.chain.client import Chain
from marketplace.contracts.base import Bound, artifact
from marketplace.contracts.registry import Registry
from marketplace.contracts.token import Token
from marketplace.errors import ChainError, ConfigError
from marketplace.types import ONE_TOKEN, SECONDS_PER_HOUR, TokenAmount

__all__ = [
    "RESERVED_JOB_FLAG",
    "ReservationEvent",
    "ReservationParameters",
    "ReservationState",
    "ReservationStatus",
    "Reservations",
    "deploy_reservations",
    "load_reservations",
    "reservation_price",
    "reserved_job",
    "reserved_job_id",
    "reserved_job_ids",
]

RESERVED_JOB_FLAG = 1 << 62
"""Set in the id of every job that runs in a reservation."""
_SEQ_BITS = 24
_ID_BITS = 62 - _SEQ_BITS


def reserved_job_id(reservation_id: int, seq: int) -> int:
    """The worker job id of job ``seq`` in reservation ``reservation_id``."""
    if not 0 < reservation_id < 1 << _ID_BITS:
        raise ConfigError(f"reservation id {reservation_id} is out of range (1..2**{_ID_BITS}-1)")
    if not 0 <= seq < 1 << _SEQ_BITS:
        raise ConfigError(f"job sequence number {seq} is out of range (0..2**{_SEQ_BITS}-1)")
    return RESERVED_JOB_FLAG | reservation_id << _SEQ_BITS | seq


def reserved_job_ids(reservation_id: int) -> tuple[int, int]:
    """The first and last job id of reservation ``reservation_id``'s jobs."""
    first = reserved_job_id(reservation_id, 0)
    return first, first + (1 << _SEQ_BITS) - 1


def reserved_job(job_id: int) -> tuple[int, int] | None:
    """``(reservation_id, seq)`` of a job id made by :func:`reserved_job_id`; None for a market job."""
    if not RESERVED_JOB_FLAG <= job_id < RESERVED_JOB_FLAG << 1:
        return None
    reservation_id = (job_id >> _SEQ_BITS) & ((1 << _ID_BITS) - 1)
    if reservation_id == 0:
        return None
    return reservation_id, job_id & ((1 << _SEQ_BITS) - 1)


class ReservationStatus(IntEnum):
    """Where a reservation stands (Reservations' ``Status`` flag)."""

    NONE = 0
    OFFERED = 1
    CANCELLED = 2
    RESERVED = 4
    DISPUTED = 8
    SERVED = 16
    FAILED = 32
    PAID = 64
    SLASHED = 128
    REFUNDED = 256

    @property
    def serving(self) -> bool:
        """True while the holder's jobs are served and their usage recorded (bought, not settled or failed)."""
        return self in (ReservationStatus.RESERVED, ReservationStatus.DISPUTED, ReservationStatus.SERVED)

    @property
    def terminal(self) -> bool:
        """True once nothing more can happen to the reservation."""
        return self in (
            ReservationStatus.CANCELLED,
            ReservationStatus.PAID,
            ReservationStatus.SLASHED,
            ReservationStatus.REFUNDED,
        )


@dataclass(frozen=True)
class ReservationParameters:
    """Settings fixed at deployment (the owner may change all but the challenge period)."""

    challenge_period: int = 3_600
    fee_bps: int = 100
    dispute_bond: int = 10 * ONE_TOKEN
    base_slash: int = 50 * ONE_TOKEN
    slash_holder_bps: int = 5_000


@dataclass(frozen=True)
class ReservationState:
    """A reservation's terms and state on chain."""

    reservation_id: int
    provider: str
    status: ReservationStatus
    start: int
    gpus: int
    price: int  # token units per GPU-hour
    duration: int  # seconds
    used_gpu_seconds: int
    usage_records: int
    holder: str | None  # None until bought
    resale_price: int  # 0 when not listed
    usage_digest: bytes
    escrow: int  # held for it now, dispute bond included

    @property
    def end(self) -> int:
        """When the window closes."""
        return self.start + self.duration

    @property
    def value(self) -> int:
        """What the window costs: ``gpus x duration x price / 3600``."""
        return reservation_price(self.gpus, self.duration, self.price)

    def for_sale(self, now: int) -> bool:
        """Whether it can be bought at ``now``: offered, or listed for resale, before its window starts."""
        return now < self.start and (self.status == ReservationStatus.OFFERED or self.resale_price > 0)


@dataclass(frozen=True)
class ReservationEvent:
    """A Reservations event, undecoded: its name, arguments and block."""

    name: str
    args: dict[str, Any]
    block_number: int


def reservation_price(gpus: int, duration: int, price: int) -> TokenAmount:
    """What a window of ``gpus`` devices for ``duration`` seconds costs at ``price`` per GPU-hour."""
    return TokenAmount(gpus * duration * price // SECONDS_PER_HOUR)


class Reservations(Bound):
    """The reservations contract. Transactions take the sending account first."""

    NAME = "Reservations"

    def __init__(self, chain: Chain, address: str, start_block: int = 0) -> None:
        super().__init__(chain, address)
        #: Where event scans start: the block the deployment began at.
        self.start_block = start_block

    # ------------------------------------------------------------------ provider

    def offer(self, account: LocalAccount, start: int, duration: int, gpus: int, price: int) -> int:
        """Offer ``gpus`` devices for ``[start, start + duration)`` at ``price`` per GPU-hour; returns the id."""
        receipt = self.transact(account, "offer", start, duration, gpus, price)
        for item in self.events_of(receipt):
            if item.name == "OfferPosted":
                return int(item.args["reservation_id"])
        raise ChainError("offer emitted no OfferPosted event")

    def cancel_offer(self, account: LocalAccount, reservation_id: int) -> Any:
        """Withdraw an offer nobody bought (anyone may, once its window started)."""
        return self.transact(account, "cancel_offer", reservation_id)

    def record_usage(self, account: LocalAccount, reservation_id: int, gpu_seconds: int, result_root: bytes) -> Any:
        """Record GPU-seconds served to the holder by one job, with the job's result root."""
        return self.transact(account, "record_usage", reservation_id, gpu_seconds, result_root)

    # ------------------------------------------------------------------ requester

    def buy(self, account: LocalAccount, reservation_id: int) -> Any:
        """Buy an offer into escrow (approve :meth:`ReservationState.value` first)."""
        return self.transact(account, "buy", reservation_id)

    def buy_with_permit(self, account: LocalAccount, reservation_id: int, token: Token, deadline: int) -> Any:
        """Buy an offer, approving its price with an EIP-2612 permit in the same transaction."""
        v, r, s = token.sign_permit(account, self.address, self.reservation(reservation_id).value, deadline)
        return self.transact(account, "buy_with_permit", reservation_id, deadline, v, r, s)

    def list_for_resale(self, account: LocalAccount, reservation_id: int, price: int) -> Any:
        """List a held reservation for resale at ``price`` (before its window starts)."""
        return self.transact(account, "list_for_resale", reservation_id, price)

    def cancel_resale(self, account: LocalAccount, reservation_id: int) -> Any:
        """Take a held reservation off the resale market."""
        return self.transact(account, "cancel_resale", reservation_id)

    def buy_resale(self, account: LocalAccount, reservation_id: int, max_price: int | None = None) -> Any:
        """Buy a listed reservation (approve its price first); ``max_price`` defaults to the listing seen now."""
        if max_price is None:
            max_price = self.reservation(reservation_id).resale_price
        return self.transact(account, "buy_resale", reservation_id, max_price)

    def report_not_served(self, account: LocalAccount, reservation_id: int) -> Any:
        """The holder reports it was not served (approve the dispute bond first)."""
        return self.transact(account, "report_not_served", reservation_id)

    # ------------------------------------------------------------------ verifier and anyone

    def attest_failure(self, account: LocalAccount, reservation_id: int) -> Any:
        """A verifier attests the provider did not serve the reservation."""
        return self.transact(account, "attest_failure", reservation_id)

    def attest_served(self, account: LocalAccount, reservation_id: int) -> Any:
        """A verifier rules a holder's report against it."""
        return self.transact(account, "attest_served", reservation_id)

    def settle(self, account: LocalAccount, reservation_id: int) -> Any:
        """Settle a reservation that can end."""
        return self.transact(account, "settle", reservation_id)

    def set_court(self, owner: LocalAccount, court: str) -> Any:
        """Name the verifier court, whose rulings alone ``attest_failure``/``attest_served`` take (once)."""
        return self.transact(owner, "set_court", court)

    def withdraw(self, account: LocalAccount) -> TokenAmount:
        """Withdraw all of ``account``'s credit; returns the amount."""
        before = self.credits(account.address)
        self.transact(account, "withdraw")
        return before

    # ------------------------------------------------------------------ views

    def offered_by(self, provider: str) -> list[int]:
        """Ids of every reservation ``provider`` offered, oldest first."""
        events = self.history("OfferPosted", provider=to_checksum_address(provider))
        return sorted(int(e.args["reservation_id"]) for e in events)

    def held_by(self, holder: str) -> list[int]:
        """Ids of the reservations ``holder`` holds now (bought or bought on resale, not resold)."""
        holder = to_checksum_address(holder)
        ids = {int(e.args["reservation_id"]) for e in self.history("ReservationBought", buyer=holder)}
        ids |= {int(e.args["reservation_id"]) for e in self.history("ReservationResold", buyer=holder)}
        return sorted(i for i in ids if self.reservation(i).holder == holder)

    def reservation(self, reservation_id: int) -> ReservationState:
        """Reservation ``reservation_id``'s terms and state."""
        (provider, status, start, gpus, price, duration, used, records, holder, resale, digest, escrow) = self.call(
            "reservations", reservation_id
        )
        return ReservationState(
            reservation_id=reservation_id,
            provider=str(provider),
            status=ReservationStatus(status),
            start=int(start),
            gpus=int(gpus),
            price=int(price),
            duration=int(duration),
            used_gpu_seconds=int(used),
            usage_records=int(records),
            holder=None if int(holder, 16) == 0 else str(holder),
            resale_price=int(resale),
            usage_digest=bytes(digest),
            escrow=int(escrow),
        )

    def escrow_of(self, reservation_id: int) -> TokenAmount:
        """Tokens held for a reservation now."""
        return TokenAmount(self.call("escrow_of", reservation_id))

    def credits(self, account: str) -> TokenAmount:
        """Tokens ``account`` can withdraw."""
        return TokenAmount(self.call("credits", account))

    def total_credits(self) -> TokenAmount:
        """All credits outstanding."""
        return TokenAmount(self.call("total_credits"))

    def offer_count(self) -> int:
        """Offers made so far (ids run from 1 to this)."""
        return int(self.call("offer_count"))

    def challenge_period(self) -> int:
        """Seconds after a window for usage records and failure reports."""
        return int(self.call("challenge_period"))

    def dispute_bond(self) -> TokenAmount:
        """Bond a holder puts up to report it was not served."""
        return TokenAmount(self.call("dispute_bond"))

    def fee_bps(self) -> int:
        """Protocol fee in basis points."""
        return int(self.call("fee_bps"))

    def events_of(self, receipt: Any) -> list[ReservationEvent]:
        """This contract's events in a transaction receipt, by name."""
        return [ReservationEvent(d["event"], dict(d["args"]), int(d["blockNumber"])) for d in self.logs_in(receipt)]

    def history(self, name: str, from_block: int | None = None, **filters: Any) -> list[ReservationEvent]:
        """Events ``name`` since ``from_block`` (the deployment's first block), filtered on indexed arguments."""
        with self.chain.locked():
            logs = getattr(self.contract.events, name)().get_logs(
                from_block=self.start_block if from_block is None else from_block, argument_filters=filters or None
            )
        return [ReservationEvent(log["event"], dict(log["args"]), int(log["blockNumber"])) for log in logs]


def deploy_reservations(
    chain: Chain,
    deployer: LocalAccount,
    token: Token,
    registry: Registry,
    *,
    treasury: str,
    parameters: ReservationParameters | None = None,
) -> Reservations:
    """Deploy Reservations over ``token`` and ``registry`` and authorize it in the registry.

    ``deployer`` must own the registry (it does after :func:`marketplace.contracts.deployment.deploy_all`)
    and owns the new contract; ``treasury`` receives its fees.
    """
    params = parameters or ReservationParameters()
    treasury = to_checksum_address(treasury)
    owner = registry.owner()
    if to_checksum_address(owner) != deployer.address:
        raise ConfigError(f"only the registry's owner {owner} can authorize a reservations contract")
    art = artifact(Reservations.NAME)
    receipt = chain.deploy(
        deployer,
        art["abi"],
        art["bytecode"],
        token.address,
        registry.address,
        params.challenge_period,
        treasury,
        params.fee_bps,
        params.dispute_bond,
        params.base_slash,
        params.slash_holder_bps,
    )
    reservations = Reservations(chain, str(receipt["contractAddress"]))
    registry.authorize(deployer, reservations.address, "reservations")
    return reservations


def load_reservations(chain: Chain, address: str, start_block: int = 0) -> Reservations:
    """Bind to a deployed reservations contract; checks that code exists at ``address``."""
    with chain.locked():
        code = chain.w3.eth.get_code(to_checksum_address(address))
    if not code:
        raise ConfigError(f"no reservations contract at {address} on this chain")
    return Reservations(chain, address, start_block)
