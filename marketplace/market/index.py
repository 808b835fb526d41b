"""The compute price index: what GPU time cleared at, per device class, read from the chain alone.

Everything here is recomputed from on-chain events and views, so anyone with a node reproduces
the same figures for the same block: no local state, no oracle. See ``docs/market-index.md``.

**Device class.** A lease's class is the job's device kind (``JobPosted``'s spec) plus the device
model the winning provider had registered at the lease's block (``ProviderRegistry.offers`` read at
the block of the provider's latest ``ProviderRegistered`` before the lease), e.g.
``cuda:NVIDIA H100 80GB HBM3`` or ``cpu:cpu``; just the kind (``cuda``) when no model is known
(a provider with no offer, or a node that cannot answer calls at old blocks).

**Prices.** Each ``SlotLeased`` is one clearing price: token units (10⁻¹⁸ token) per GPU-hour, at
the timestamp of its block. In one class the prices form a step function: a price stands from its
lease until the next lease of that class (or until ``now``); of several leases at the same
timestamp the last (by block and log index) stands.

**TWAP** over a window ``[now - W, now]`` (``all``: from the class's first lease)::

    TWAP = floor( Σ pᵢ × dᵢ / Σ dᵢ )

where ``dᵢ`` is how many seconds of the window price ``pᵢ`` stood. The price that stood when the
window opened counts for its part of the window; the sum starts at the class's first lease if that
came later. With no time covered (every lease at ``now``) the TWAP is the last price. Integers
throughout; the only rounding is the final floor division.

**Volume.** Leased GPU-seconds: each leased slot's ``max_gpu_seconds`` (what its escrow pays for
at most), summed over the leases in the window, with their value ``floor(price × max_gpu_seconds /
3600)`` per slot as the contract computes it; settled GPU-seconds and gross pay (fee included)
from ``SlotSettled`` events in the window (only paid slots carry seconds). ``vwap`` is the leased
price weighted by leased GPU-seconds, floored.

**Forward prices.** Reserved capacity (``contracts/Reservations.vy``) is GPU time sold ahead: each
``ReservationBought`` is a forward price (the offer's price per GPU-hour) for ``gpus × duration``
GPU-seconds starting later, and each ``ReservationResold`` one more (the resale price of the whole
window over its GPU-hours, floored). Their class is the provider's device kind and model as
registered at the sale's block. Per window: how many were sold, the GPU-seconds they cover, their
price weighted by those GPU-seconds (``reserved_vwap``, floored) and the last one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from marketplace.contracts.deployment import Contracts
from marketplace.contracts.events import ProviderRegistered, SlotLeased, SlotSettled
from marketplace.contracts.reservations import reservation_price
from marketplace.errors import ConfigError
from marketplace.types import SECONDS_PER_HOUR, DeviceKind, JobSpec, SlotStatus, format_tokens, slot_value

__all__ = [
    "DEFAULT_WINDOWS",
    "ClassStats",
    "History",
    "LeaseRecord",
    "MarketIndex",
    "ReservationRecord",
    "SettlementRecord",
    "assemble_history",
    "compute_index",
    "index_document",
    "offer_at_block",
    "parse_window",
    "read_history",
    "twap",
]

DEFAULT_WINDOWS = ("1h", "24h", "all")
_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
_WINDOW = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)


def parse_window(text: str) -> int | None:
    """Seconds in a window such as ``90s``, ``30m``, ``1h``, ``24h``, ``7d``, ``2w``; None for ``all``."""
    if text.strip().lower() == "all":
        return None
    match = _WINDOW.match(text)
    if match is None or int(match.group(1)) == 0:
        raise ConfigError(f"index: window {text!r} is not a positive duration like 1h, 24h, 7d or 'all'")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


@dataclass(frozen=True)
class LeaseRecord:
    """One leased slot: a clearing price in a device class at a time."""

    device_class: str
    block: int
    log_index: int
    time: int
    job_id: int
    slot: int
    provider: str
    price: int
    max_gpu_seconds: int

    @property
    def value(self) -> int:
        """The most the slot can pay: ``floor(price × max_gpu_seconds / 3600)``."""
        return int(slot_value(self.price, self.max_gpu_seconds))


@dataclass(frozen=True)
class SettlementRecord:
    """One settled slot, in the class of its lease."""

    device_class: str
    block: int
    time: int
    job_id: int
    slot: int
    provider: str
    status: str
    gpu_seconds: int
    paid: int
    fee: int


@dataclass(frozen=True)
class ReservationRecord:
    """One sale of reserved capacity: a forward price in a device class at a time."""

    device_class: str
    block: int
    time: int
    reservation_id: int
    provider: str
    sale: str  # "bought" (from the provider) or "resold" (from a holder)
    price: int  # per GPU-hour
    gpus: int
    start: int
    duration: int
    value: int  # what the buyer paid for the whole window

    @property
    def gpu_seconds(self) -> int:
        """The GPU time the window holds."""
        return self.gpus * self.duration


@dataclass(frozen=True)
class History:
    """Every lease, settlement and reservation sale of a market up to one block, in chain order."""

    chain_id: int
    market: str
    start_block: int
    block: int
    now: int
    leases: tuple[LeaseRecord, ...]
    settlements: tuple[SettlementRecord, ...]
    reservations: tuple[ReservationRecord, ...] = ()

    @property
    def classes(self) -> list[str]:
        """Device classes with at least one lease or reservation sale, sorted."""
        return sorted({lease.device_class for lease in self.leases} | {r.device_class for r in self.reservations})


def _device_class(kind: str, model: str) -> str:
    model = model.strip()
    return f"{kind}:{model}" if model else kind


def read_history(contracts: Contracts, *, block: int | None = None) -> History:
    """Read the market's leases and settlements up to ``block`` (default: the latest) from the chain."""
    chain, market, registry = contracts.chain, contracts.market, contracts.registry
    start = contracts.deployment.start_block
    latest = chain.block_number()
    block = latest if block is None else block
    if not start <= block <= latest:
        raise ConfigError(f"index: block {block} is outside this market's history ({start}..{latest})")
    times: dict[int, int] = {}

    def time_of(number: int) -> int:
        if number not in times:
            with chain.locked():
                times[number] = int(chain.w3.eth.get_block(number)["timestamp"])
        return times[number]

    terms: dict[int, Any] = {}
    sales: list[tuple[int, int, str, Any]] = []
    if contracts.reservations is not None:
        terms = {int(e.args["reservation_id"]): e.args for e in contracts.reservations.history("OfferPosted")}
        for name, sale in (("ReservationBought", "bought"), ("ReservationResold", "resold")):
            sales += [
                (e.block_number, int(e.args["reservation_id"]), sale, e.args)
                for e in contracts.reservations.history(name)
            ]
    return assemble_history(
        chain.chain_id,
        market.address,
        start,
        block,
        posted=market.get_events("JobPosted", start),
        leased=market.get_events("SlotLeased", start),
        settled=market.get_events("SlotSettled", start),
        registered=registry.get_events("ProviderRegistered", start),
        offer_terms=terms,
        sales=sales,
        time_of=time_of,
        offer_at=lambda provider, at: offer_at_block(contracts, provider, at),
    )


def offer_at_block(contracts: Contracts, provider: str, block: int) -> tuple[str, int | None]:
    """(device model, device kind) of ``provider``'s offer as it stood at ``block``.

    A node that cannot answer calls at old blocks gives the current offer; no offer gives ``("", None)``.
    """
    chain, registry = contracts.chain, contracts.registry
    fn = registry.contract.functions.offers(provider)
    try:
        with chain.locked():
            offer = fn.call(block_identifier=block)
    except Exception:  # a node without old state: the current offer
        try:
            offer = registry.call("offers", provider)
        except Exception:
            offer = ("", None)
    return str(offer[0]), None if offer[1] is None else int(offer[1])


def assemble_history(
    chain_id: int,
    market: str,
    start: int,
    block: int,
    *,
    posted: Iterable[Any],
    leased: Iterable[Any],
    settled: Iterable[Any],
    registered: Iterable[Any],
    offer_terms: dict[int, Any],
    sales: Iterable[tuple[int, int, str, Any]],
    time_of: Callable[[int], int],
    offer_at: Callable[[str, int], tuple[str, int | None]],
) -> History:
    """The :class:`History` up to ``block`` from a market's decoded events, wherever they were read.

    ``posted``, ``leased``, ``settled`` and ``registered`` are ``JobPosted``, ``SlotLeased``,
    ``SlotSettled`` and ``ProviderRegistered`` events (:mod:`marketplace.contracts.events`);
    ``offer_terms`` maps a reservation id to its ``OfferPosted`` arguments and ``sales`` lists
    ``(block, reservation id, "bought" | "resold", arguments)``; ``time_of`` gives a block's
    timestamp and ``offer_at`` a provider's ``(model, kind)`` as registered at a block.
    :func:`read_history` reads them from the chain; a cache of the same events gives the same history.
    """

    def upto(items: Iterable[Any]) -> list[Any]:
        return sorted((e for e in items if e.block_number <= block), key=lambda e: (e.block_number, e.log_index))

    specs: dict[int, JobSpec] = {e.job_id: e.spec for e in upto(posted)}
    registrations: dict[str, list[int]] = {}
    for reg in upto(registered):
        assert isinstance(reg, ProviderRegistered)
        registrations.setdefault(reg.provider, []).append(reg.block_number)
    offers: dict[tuple[str, int], tuple[str, int | None]] = {}

    def offer_of(provider: str, at: int) -> tuple[str, int | None]:
        """(device model, device kind) of ``provider``'s offer as registered by block ``at``."""
        regs = [b for b in registrations.get(provider, []) if b <= at]
        if not regs:
            return "", None
        key = (provider, regs[-1])
        if key not in offers:
            offers[key] = offer_at(provider, regs[-1])
        return offers[key]

    leases: list[LeaseRecord] = []
    class_of: dict[tuple[int, int], str] = {}
    for e in upto(leased):
        assert isinstance(e, SlotLeased)
        spec = specs[e.job_id]
        cls = _device_class(spec.device_kind.name.lower(), offer_of(e.provider, e.block_number)[0])
        class_of[(e.job_id, e.slot)] = cls
        leases.append(
            LeaseRecord(
                cls,
                e.block_number,
                e.log_index,
                time_of(e.block_number),
                e.job_id,
                e.slot,
                e.provider,
                e.price,
                spec.max_gpu_seconds,
            )
        )
    settlements: list[SettlementRecord] = []
    for s in upto(settled):
        assert isinstance(s, SlotSettled)
        cls = class_of.get((s.job_id, s.slot), specs[s.job_id].device_kind.name.lower())
        settlements.append(
            SettlementRecord(
                cls,
                s.block_number,
                time_of(s.block_number),
                s.job_id,
                s.slot,
                s.provider,
                SlotStatus(s.status).name.lower(),
                s.gpu_seconds,
                s.paid,
                s.fee,
            )
        )
    reservations = _reservation_sales(
        {rid: args for rid, args in offer_terms.items()},
        [sale for sale in sales if sale[0] <= block],
        offer_of=offer_of,
        time_of=time_of,
    )
    return History(chain_id, market, start, block, time_of(block), tuple(leases), tuple(settlements), reservations)


def _reservation_sales(
    terms: dict[int, Any],
    sales: list[tuple[int, int, str, Any]],
    *,
    offer_of: Callable[[str, int], tuple[str, int | None]],
    time_of: Callable[[int], int],
) -> tuple[ReservationRecord, ...]:
    """Every reservation bought or resold, oldest first, with the terms of its offer."""
    records = []
    for block, rid, sale, args in sorted(sales, key=lambda x: (x[0], x[1], x[2] == "resold")):
        offer = terms[rid]
        provider, gpus, duration = str(offer["provider"]), int(offer["gpus"]), int(offer["duration"])
        model, kind = offer_of(provider, block)
        kind_name = DeviceKind(kind).name.lower() if kind is not None else "cuda"
        if sale == "bought":
            price = int(offer["price"])
            value = int(reservation_price(gpus, duration, price))
        else:
            value = int(args["price"])
            price = value * SECONDS_PER_HOUR // (gpus * duration)
        records.append(
            ReservationRecord(
                _device_class(kind_name, model),
                block,
                time_of(block),
                rid,
                provider,
                sale,
                price,
                gpus,
                int(offer["start"]),
                duration,
                value,
            )
        )
    return tuple(records)


def twap(points: Sequence[tuple[int, int]], start: int | None, end: int) -> tuple[int | None, int]:
    """Time-weighted average of a step function over ``[start, end]``: ``(floor TWAP, seconds covered)``.

    ``points`` are ``(time, price)`` in chain order; each price stands until the next point (or
    ``end``). ``start`` None means from the first point. Returns ``(None, 0)`` when no price
    stood by ``end``; ``(last price, 0)`` when prices exist but cover no time.
    """
    numerator = covered = 0
    current: int | None = None
    since = start if start is not None else (points[0][0] if points else end)
    for t, price in points:
        if t > end:
            break
        if t <= since:  # stood when the window opened (or at the same instant): the latest wins
            current = price
            continue
        if current is not None:
            numerator += current * (t - since)
            covered += t - since
        current, since = price, t
    if current is None:
        return None, 0
    numerator += current * (end - since)
    covered += end - since
    if covered == 0:
        return current, 0
    return numerator // covered, covered


@dataclass(frozen=True)
class ClassStats:
    """The index of one device class over one window. Money in token units per GPU-hour."""

    device_class: str
    window: str
    window_start: int
    window_end: int
    leases: int
    twap: int | None
    twap_seconds: int
    vwap: int | None
    min: int | None
    max: int | None
    open: int | None
    last: int | None
    leased_gpu_seconds: int
    leased_value: int
    settled_slots: int
    settled_gpu_seconds: int
    settled_paid: int
    reservations: int = 0
    reserved_gpu_seconds: int = 0
    reserved_vwap: int | None = None
    reserved_last: int | None = None


@dataclass(frozen=True)
class MarketIndex:
    """The index of every class over every window, as of one block."""

    history: History
    windows: dict[str, dict[str, ClassStats]] = field(default_factory=dict)


def class_stats(history: History, device_class: str, window: str) -> ClassStats:
    """The index of ``device_class`` over ``window`` (``1h``, ``24h``, ``all``, ...)."""
    seconds = parse_window(window)
    end = history.now
    all_leases = [lease for lease in history.leases if lease.device_class == device_class and lease.time <= end]
    first = (
        all_leases[0].time
        if all_leases
        else min((r.time for r in history.reservations if r.device_class == device_class), default=end)
    )
    start = first if seconds is None else end - seconds
    inside = [lease for lease in all_leases if lease.time >= start]
    price, covered = twap([(lease.time, lease.price) for lease in all_leases], start, end)
    leased_seconds = sum(lease.max_gpu_seconds for lease in inside)
    weighted = sum(lease.price * lease.max_gpu_seconds for lease in inside)
    settled = [s for s in history.settlements if s.device_class == device_class and start <= s.time <= end]
    before = [lease for lease in all_leases if lease.time < start]
    sold = [r for r in history.reservations if r.device_class == device_class and r.time <= end]
    sold_inside = [r for r in sold if r.time >= start]
    reserved_seconds = sum(r.gpu_seconds for r in sold_inside)
    return ClassStats(
        device_class=device_class,
        window=window,
        window_start=start,
        window_end=end,
        leases=len(inside),
        twap=price,
        twap_seconds=covered,
        vwap=weighted // leased_seconds if leased_seconds else None,
        min=min((lease.price for lease in inside), default=None),
        max=max((lease.price for lease in inside), default=None),
        open=before[-1].price if before else (inside[0].price if inside else None),
        last=all_leases[-1].price if all_leases else None,
        leased_gpu_seconds=leased_seconds,
        leased_value=sum(lease.value for lease in inside),
        settled_slots=len(settled),
        settled_gpu_seconds=sum(s.gpu_seconds for s in settled),
        settled_paid=sum(s.paid for s in settled),
        reservations=len(sold_inside),
        reserved_gpu_seconds=reserved_seconds,
        reserved_vwap=(
            sum(r.price * r.gpu_seconds for r in sold_inside) // reserved_seconds if reserved_seconds else None
        ),
        reserved_last=sold[-1].price if sold else None,
    )


def compute_index(history: History, windows: Sequence[str] = DEFAULT_WINDOWS) -> MarketIndex:
    """The index of every class in ``history`` over each window."""
    for window in windows:
        parse_window(window)
    return MarketIndex(history, {w: {c: class_stats(history, c, w) for c in history.classes} for w in windows})


def index_document(index: MarketIndex, *, series_window: str | None = None) -> dict[str, Any]:
    """A JSON-ready document: where and when, per window and class the stats, and the price series.

    The series holds the leases of the widest window (or ``series_window``) per class.
    """
    h = index.history
    windows = list(index.windows)
    widest = series_window or max(windows, key=lambda w: parse_window(w) or 10**18, default="all")
    seconds = parse_window(widest)
    since = h.now - seconds if seconds is not None else None

    def by_class(records: Iterable[LeaseRecord | ReservationRecord]) -> dict[str, list[dict[str, Any]]]:
        grouped: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            if since is None or record.time >= since:
                row = asdict(record)
                del row["device_class"]
                grouped.setdefault(record.device_class, []).append(row)
        return grouped

    series, forward = by_class(h.leases), by_class(h.reservations)
    return {
        "chain_id": h.chain_id,
        "market": h.market,
        "block": h.block,
        "now": h.now,
        "start_block": h.start_block,
        "units": "token units (1e-18 token) per GPU-hour; volumes in GPU-seconds",
        "classes": h.classes,
        "windows": {
            w: {
                c: {k: v for k, v in asdict(stats).items() if k not in ("device_class", "window")}
                for c, stats in by_class.items()
            }
            for w, by_class in index.windows.items()
        },
        "series_window": widest,
        "series": series,
        "reservations": forward,
    }


def format_index(index: MarketIndex) -> list[str]:
    """Lines for a terminal: one block per window, one line per class."""
    h = index.history
    lines = [f"price index of market {h.market} at block {h.block} (time {h.now}); tokens per GPU-hour"]
    if not h.classes:
        lines.append("  no leases yet")
    for window, by_class in index.windows.items():
        lines.append(f"window {window}:")
        for cls, s in by_class.items():

            def tok(v: int | None) -> str:
                return "-" if v is None else format_tokens(v)

            lines.append(
                f"  {cls:<28} twap {tok(s.twap):>10}  last {tok(s.last):>10}  min {tok(s.min):>10}  "
                f"max {tok(s.max):>10}  leases {s.leases:>4}  leased {s.leased_gpu_seconds / 3600:.2f} GPU-h  "
                f"settled {s.settled_gpu_seconds / 3600:.2f} GPU-h"
                + (
                    f"  reserved {s.reservations} ({s.reserved_gpu_seconds / 3600:.2f} GPU-h) at {tok(s.reserved_vwap)}"
                    if s.reservations
                    else ""
                )
            )
    return lines
