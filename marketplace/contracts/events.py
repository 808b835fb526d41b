"""The contracts' events, decoded into frozen dataclasses.

Each event of the registry and the market has a dataclass here whose fields are the event's
arguments plus where it happened (``block_number``, ``tx_hash``, ``log_index``). :func:`decode`
turns a web3 event log into the matching dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from marketplace.types import JobSpec, SlotStatus

__all__ = [
    "BidCommitted",
    "BidForfeited",
    "BidRevealed",
    "ChainEvent",
    "JobCancelled",
    "JobClosed",
    "JobExpired",
    "JobLeased",
    "JobPosted",
    "PriceFloorChanged",
    "ProviderRegistered",
    "ResultAccepted",
    "ResultAttested",
    "ResultCommitted",
    "ResultDisputed",
    "SlotLeased",
    "SlotSettled",
    "StakeSlashed",
    "Staked",
    "ThroughputAttested",
    "Withdrawn",
    "decode",
]


@dataclass(frozen=True, kw_only=True)
class ChainEvent:
    """Where an event happened; every decoded event carries these."""

    block_number: int = field(default=0, compare=False)
    tx_hash: str = field(default="", compare=False)
    log_index: int = field(default=0, compare=False)


@dataclass(frozen=True, kw_only=True)
class JobPosted(ChainEvent):
    """A requester posted a job and locked its escrow."""

    job_id: int
    requester: str
    spec: JobSpec
    escrow: int


@dataclass(frozen=True, kw_only=True)
class JobCancelled(ChainEvent):
    """The requester withdrew an open job."""

    job_id: int
    refunded: int


@dataclass(frozen=True, kw_only=True)
class JobExpired(ChainEvent):
    """Bidding ended with too few asks; the escrow was refunded."""

    job_id: int
    asks: int
    refunded: int


@dataclass(frozen=True, kw_only=True)
class JobLeased(ChainEvent):
    """Every slot has a provider; the escrow above the price was refunded."""

    job_id: int
    clearing_price: int
    refunded: int


@dataclass(frozen=True, kw_only=True)
class JobClosed(ChainEvent):
    """Every slot of the job is settled."""

    job_id: int


@dataclass(frozen=True, kw_only=True)
class BidCommitted(ChainEvent):
    """A provider committed a sealed ask."""

    job_id: int
    provider: str


@dataclass(frozen=True, kw_only=True)
class BidForfeited(ChainEvent):
    """A sealed bid was not revealed: its reveal bond went to the treasury."""

    job_id: int
    provider: str
    amount: int


@dataclass(frozen=True, kw_only=True)
class BidRevealed(ChainEvent):
    """A provider revealed its ask; ``rank`` is its place among the kept asks."""

    job_id: int
    provider: str
    price: int
    rank: int


@dataclass(frozen=True, kw_only=True)
class SlotLeased(ChainEvent):
    """A provider won a slot of a job at ``price`` per GPU-hour."""

    job_id: int
    slot: int
    provider: str
    price: int


@dataclass(frozen=True, kw_only=True)
class ResultCommitted(ChainEvent):
    """A provider committed a result root and the GPU-seconds it claims."""

    job_id: int
    slot: int
    provider: str
    result_root: bytes
    gpu_seconds: int


@dataclass(frozen=True, kw_only=True)
class ResultAccepted(ChainEvent):
    """The requester accepted a result."""

    job_id: int
    slot: int
    gpu_seconds: int


@dataclass(frozen=True, kw_only=True)
class ResultDisputed(ChainEvent):
    """A result was disputed and a bond put up."""

    job_id: int
    slot: int
    disputer: str
    bond: int


@dataclass(frozen=True, kw_only=True)
class ResultAttested(ChainEvent):
    """A verifier ruled on a result."""

    job_id: int
    slot: int
    verifier: str
    outcome: int
    claimed_gpu_seconds: int
    verified_gpu_seconds: int


@dataclass(frozen=True, kw_only=True)
class SlotSettled(ChainEvent):
    """A slot ended: who was paid, refunded and slashed how much."""

    job_id: int
    slot: int
    provider: str
    status: SlotStatus
    gpu_seconds: int
    paid: int
    fee: int
    refunded: int
    slashed: int


@dataclass(frozen=True, kw_only=True)
class Withdrawn(ChainEvent):
    """An account withdrew its credit."""

    account: str
    amount: int


@dataclass(frozen=True, kw_only=True)
class Staked(ChainEvent):
    """An account added stake."""

    account: str
    amount: int
    active: int


@dataclass(frozen=True, kw_only=True)
class ProviderRegistered(ChainEvent):
    """A provider registered or changed its offer."""

    provider: str
    device_kind: int
    gpu_count: int
    memory_mb: int
    price_floor: int
    endpoint: str
    signer: str


@dataclass(frozen=True, kw_only=True)
class PriceFloorChanged(ChainEvent):
    """A provider posted a new price per GPU-hour (what instant takes pay)."""

    provider: str
    price_floor: int


@dataclass(frozen=True, kw_only=True)
class ThroughputAttested(ChainEvent):
    """A verifier measured a provider's throughput."""

    provider: str
    verifier: str
    gflops: int
    claimed_gflops: int
    flagged: bool


@dataclass(frozen=True, kw_only=True)
class StakeSlashed(ChainEvent):
    """Stake was taken from a provider."""

    provider: str
    amount: int


_TYPES: dict[str, type[ChainEvent]] = {
    cls.__name__: cls
    for cls in (
        JobPosted,
        JobCancelled,
        JobExpired,
        JobLeased,
        JobClosed,
        BidCommitted,
        BidForfeited,
        BidRevealed,
        SlotLeased,
        ResultCommitted,
        ResultAccepted,
        ResultDisputed,
        ResultAttested,
        SlotSettled,
        Withdrawn,
        Staked,
        ProviderRegistered,
        PriceFloorChanged,
        ThroughputAttested,
        StakeSlashed,
    )
}


def decode(log: Any) -> ChainEvent | None:
    """Turn a web3 event log (``AttributeDict`` with ``event`` and ``args``) into its dataclass.

    Returns None for events that have no dataclass here.
    """
    cls = _TYPES.get(log["event"])
    if cls is None:
        return None
    args = dict(log["args"])
    if "spec" in args:
        args["spec"] = JobSpec.from_abi(args["spec"])
    if cls is SlotSettled:
        args["status"] = SlotStatus(args["status"])
    for name in ("result_root",):
        if name in args:
            args[name] = bytes(args[name])
    known = {f.name for f in fields(cls)}
    tx_hash = log.get("transactionHash")
    return cls(
        **{k: v for k, v in args.items() if k in known},
        block_number=int(log.get("blockNumber") or 0),
        tx_hash=tx_hash.to_0x_hex() if hasattr(tx_hash, "to_0x_hex") else str(tx_hash or ""),
        log_index=int(log.get("logIndex") or 0),
    )
