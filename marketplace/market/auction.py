"""The market's clearing rules in pure Python, mirroring ``contracts/JobMarket.vy``.

Two ways a job finds its providers:

``sealed`` (spot): a reverse Vickrey auction with ``k`` winners. Providers commit sealed asks,
    then reveal them. An ask counts only if it is above zero and at or below the requester's
    max price (the chain refuses other reveals). The ``k`` lowest asks win, earlier reveals
    first among equal asks, and every winner is paid the same price: the ``(k+1)``-th lowest
    ask, or the requester's max if there were only ``k`` asks. Fewer than ``k`` asks: no
    lease, and the escrow goes back in full.

``instant`` (on-demand): providers take slots in the order their takes land; each takes one
    slot at its own posted price, which must be at or below the max. The job is leased when
    ``k`` distinct providers hold a slot.

Payment is ``price × gpu_seconds // 3600`` (prices are per GPU-hour, work is in GPU-seconds),
rounded down as the contract does, and capped by what the escrow holds for the slot.

The simulator in ``benchmarks/allocation.py`` and the tests of the contract use these
functions as the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = [
    "SECONDS_PER_HOUR",
    "Ask",
    "Clearing",
    "Settlement",
    "instant_take",
    "sealed_vickrey",
    "settle",
    "slot_value",
]

SECONDS_PER_HOUR = 3_600
"""Prices are per GPU-hour and work is in GPU-seconds."""

P = TypeVar("P", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Ask(Generic[P]):
    """One provider's ask for a job, in token units per GPU-hour."""

    provider: P
    price: int


@dataclass(frozen=True, slots=True)
class Clearing(Generic[P]):
    """A leased job: who won and the price per GPU-hour each winner is paid."""

    winners: tuple[P, ...]
    """Winning providers, cheapest first (earlier reveal first among equal asks)."""
    prices: tuple[int, ...]
    """Price per GPU-hour of each winner's slot, in the order of ``winners``."""

    @property
    def price(self) -> int:
        """The price of the first slot: the uniform price of a sealed auction."""
        return self.prices[0]


@dataclass(frozen=True, slots=True)
class Settlement:
    """How the escrow of one slot is split when its work settles."""

    payout: int
    """Credited to the provider: ``price × gpu_seconds // 3600``, capped by the escrow."""
    refund: int
    """Credited back to the requester: the rest of the slot's escrow."""


def slot_value(price: int, gpu_seconds: int) -> int:
    """Returns what ``gpu_seconds`` cost at ``price`` per GPU-hour, rounded down (as on chain)."""
    if price < 0 or gpu_seconds < 0:
        raise ValueError("auction: price and GPU-seconds must not be negative")
    return price * gpu_seconds // SECONDS_PER_HOUR


def _check_terms(max_price: int, k: int) -> None:
    if max_price <= 0:
        raise ValueError("auction: max price must be positive")
    if k < 1:
        raise ValueError("auction: a job needs at least one slot (k >= 1)")


def sealed_vickrey(asks: Sequence[Ask[P]], *, max_price: int, k: int = 1) -> Clearing[P] | None:
    """Clears a sealed reverse Vickrey auction with ``k`` winners.

    ``asks`` are the revealed asks in reveal order; that order breaks ties between equal asks.
    Asks of zero or above ``max_price`` are ignored (the chain refuses their reveals). Returns
    ``None`` when fewer than ``k`` asks count: no lease, full refund. Otherwise each of the
    ``k`` lowest asks wins at the ``(k+1)``-th lowest ask, or at ``max_price`` if there is
    none; so no winner is ever paid less than it asked or more than the max.

    Raises :class:`ValueError` for a negative ask, a provider revealing twice, a max price
    of zero or ``k < 1``.
    """
    _check_terms(max_price, k)
    seen: set[P] = set()
    valid: list[Ask[P]] = []
    for ask in asks:
        if ask.price < 0:
            raise ValueError(f"auction: negative ask from {ask.provider!r}")
        if ask.provider in seen:
            raise ValueError(f"auction: {ask.provider!r} revealed twice")
        seen.add(ask.provider)
        if 0 < ask.price <= max_price:
            valid.append(ask)
    if len(valid) < k:
        return None
    valid.sort(key=lambda a: a.price)  # stable: earlier reveals stay first among equals
    clearing = valid[k].price if len(valid) > k else max_price
    return Clearing(winners=tuple(a.provider for a in valid[:k]), prices=(clearing,) * k)


def instant_take(
    offers: Iterable[Ask[P]],
    *,
    max_price: int,
    k: int = 1,
    eligible: Callable[[P], bool] | None = None,
) -> Clearing[P] | None:
    """Fills an instant job's ``k`` slots from ``offers`` in the order the takes land.

    Each offer is a provider's posted price. The first ``k`` distinct eligible providers whose
    price is above zero and at or below ``max_price`` take a slot each, at their own price.
    ``offers`` is consumed lazily, so a caller can price providers one by one as they come.
    Returns ``None`` when fewer than ``k`` take a slot (the job expires, full refund).
    """
    _check_terms(max_price, k)
    winners: list[P] = []
    prices: list[int] = []
    for offer in offers:
        if offer.price < 0:
            raise ValueError(f"auction: negative price from {offer.provider!r}")
        if not 0 < offer.price <= max_price or offer.provider in winners:
            continue
        if eligible is not None and not eligible(offer.provider):
            continue
        winners.append(offer.provider)
        prices.append(offer.price)
        if len(winners) == k:
            return Clearing(winners=tuple(winners), prices=tuple(prices))
    return None


def settle(price: int, gpu_seconds: int, *, max_gpu_seconds: int, max_price: int) -> Settlement:
    """Splits one slot's escrow (``max_price × max_gpu_seconds // 3600``) after its work.

    The provider is paid ``price × gpu_seconds // 3600`` for the GPU-seconds it delivered,
    never more than the escrow of its slot; the requester gets the rest back.
    """
    if price > max_price:
        raise ValueError("auction: lease price above the max price")
    escrow = slot_value(max_price, max_gpu_seconds)
    payout = min(slot_value(price, gpu_seconds), escrow)
    return Settlement(payout=payout, refund=escrow - payout)
