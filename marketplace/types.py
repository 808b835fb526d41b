"""Domain types shared by the chain client, the requester, the verifier and the worker.

Money is an integer number of the token's smallest unit (18 decimals) everywhere; prices are token
units per GPU-hour; work is GPU-seconds. The enums mirror the contracts' constants and flags.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import astuple, dataclass, fields
from decimal import Decimal, InvalidOperation
from enum import IntEnum
from typing import Any, NewType

from marketplace.errors import ConfigError

__all__ = [
    "DECIMALS",
    "NO_SHOW_ROOT",
    "ONE_TOKEN",
    "Address",
    "Auction",
    "DeviceKind",
    "JobSpec",
    "JobStatus",
    "Offer",
    "Outcome",
    "Policy",
    "SlotStatus",
    "TokenAmount",
    "format_tokens",
    "parse_tokens",
    "slot_value",
]

#: An amount in the token's smallest unit.
TokenAmount = NewType("TokenAmount", int)
#: A checksummed 0x-prefixed address.
Address = NewType("Address", str)

DECIMALS = 18
ONE_TOKEN = 10**DECIMALS
SECONDS_PER_HOUR = 3_600


class Policy(IntEnum):
    """Verification policies (JobMarket.POLICY_*)."""

    NONE = 0
    REDUNDANT = 1
    REPLAY = 2
    FREIVALDS = 3
    OPTIMISTIC = 4


class Auction(IntEnum):
    """Auction modes (JobMarket.AUCTION_*)."""

    SEALED = 0
    INSTANT = 1


class Outcome(IntEnum):
    """Attestation outcomes (JobMarket.OUTCOME_*)."""

    ACCEPT = 0
    REJECT = 1
    VOID = 2


class DeviceKind(IntEnum):
    """Device kinds (ProviderRegistry.DEVICE_*)."""

    CPU = 0
    CUDA = 1


class JobStatus(IntEnum):
    """Where a job stands (JobMarket's JobStatus flag: one bit each)."""

    NONE = 0
    OPEN = 1
    LEASED = 2
    CLOSED = 4
    EXPIRED = 8
    CANCELLED = 16

    @property
    def terminal(self) -> bool:
        """True once the job can change no more."""
        return self in (JobStatus.CLOSED, JobStatus.EXPIRED, JobStatus.CANCELLED)


#: The result root a provider commits, with 0 GPU-seconds, to report that the requester delivered
#: no runnable bundle (JobMarket's ``NO_SHOW_ROOT``).
NO_SHOW_ROOT = (1).to_bytes(32, "big")


class SlotStatus(IntEnum):
    """Where one provider's slot of a job stands (JobMarket's SlotStatus flag)."""

    NONE = 0
    ASSIGNED = 1
    COMMITTED = 2
    DISPUTED = 4
    ACCEPTED = 8
    REJECTED = 16
    VOIDED = 32
    PAID = 64
    SLASHED = 128
    REFUNDED = 256
    RELEASED = 512
    NO_SHOW = 1024

    @property
    def terminal(self) -> bool:
        """True once the slot is settled or released."""
        return self in (SlotStatus.PAID, SlotStatus.SLASHED, SlotStatus.REFUNDED, SlotStatus.RELEASED)


def parse_tokens(text: str | int | Decimal) -> TokenAmount:
    """Parse a decimal token amount (``"2.5"``) into smallest units; rejects negatives and dust."""
    try:
        value = Decimal(str(text))
    except InvalidOperation as exc:
        raise ConfigError(f"not a token amount: {text!r}") from exc
    if not value.is_finite() or value < 0:
        raise ConfigError(f"not a token amount: {text!r}")
    units = value * ONE_TOKEN
    if units != units.to_integral_value():
        raise ConfigError(f"token amount {text!r} has more than {DECIMALS} decimals")
    return TokenAmount(int(units))


def format_tokens(units: int, places: int = 6) -> str:
    """Format smallest units as a decimal token amount, trimmed to ``places`` decimals."""
    sign = "-" if units < 0 else ""
    value = Decimal(abs(units)) / ONE_TOKEN
    text = f"{value:.{places}f}".rstrip("0").rstrip(".")
    return sign + (text or "0")


def slot_value(price: int, gpu_seconds: int) -> TokenAmount:
    """What ``gpu_seconds`` cost at ``price`` per GPU-hour, rounded down as the contract does."""
    return TokenAmount(price * gpu_seconds // SECONDS_PER_HOUR)


@dataclass(frozen=True)
class JobSpec:
    """A job's immutable terms, as the market stores them (hashed) and every call passes them."""

    requester: str
    bundle_hash: bytes
    device_kind: DeviceKind
    gpus: int
    min_memory_mb: int
    policy: Policy
    auction: Auction
    redundancy: int
    max_price: int
    max_gpu_seconds: int
    bid_deadline: int
    reveal_deadline: int
    run_duration: int
    challenge_window: int

    def as_tuple(self) -> tuple[Any, ...]:
        """The ABI tuple the contract takes."""
        return tuple(int(v) if isinstance(v, IntEnum) else v for v in astuple(self))

    @classmethod
    def from_abi(cls, value: Any) -> JobSpec:
        """Build from a decoded ABI tuple or dict (an event's ``spec`` argument)."""
        names = [f.name for f in fields(cls)]
        data = dict(value) if isinstance(value, Mapping) else dict(zip(names, value, strict=True))
        data["device_kind"] = DeviceKind(data["device_kind"])
        data["policy"] = Policy(data["policy"])
        data["auction"] = Auction(data["auction"])
        data["bundle_hash"] = bytes(data["bundle_hash"])
        return cls(**{n: data[n] for n in names})

    @property
    def escrow(self) -> TokenAmount:
        """Tokens posting this job locks."""
        return TokenAmount(self.redundancy * slot_value(self.max_price, self.max_gpu_seconds))


@dataclass(frozen=True)
class Offer:
    """What a provider offers in the registry."""

    device_model: str
    device_kind: DeviceKind
    gpu_count: int
    memory_mb: int
    claimed_gflops: int
    price_floor: int
    endpoint: str
    signer: str

    def as_tuple(self) -> tuple[Any, ...]:
        """The ABI tuple the contract takes."""
        return tuple(int(v) if isinstance(v, IntEnum) else v for v in astuple(self))

    @classmethod
    def from_abi(cls, value: Any) -> Offer:
        """Build from a decoded ABI tuple."""
        names = [f.name for f in fields(cls)]
        data = dict(zip(names, value, strict=True))
        data["device_kind"] = DeviceKind(data["device_kind"])
        return cls(**data)
