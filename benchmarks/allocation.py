"""Allocation benchmark: how well each allocation policy uses a market's GPUs.

A seeded, deterministic discrete-event simulation (a heapq event queue) of a flopex market:
providers with mixed devices, requesters posting jobs in bursts, and five ways of matching
them. The market policies drive the same code the daemons and the contract use: providers
price jobs with :mod:`marketplace.market.pricing` strategies, and leases clear with
:mod:`marketplace.market.auction` (sealed reverse Vickrey, instant take, settlement).

Policies:

``fcfs``      a central queue in arrival order; the head job goes to the first provider (in
              registration order) that can hold it; when it fits nowhere, everyone waits.
``priority``  the same, ordered by the requester's priority class first.
``quota``     ``fcfs`` where a requester holding its quota of devices is passed over.
``instant``   on-demand: a job is taken at once by whichever eligible provider's take lands
              first, at that provider's posted price; a freed provider takes the oldest job
              it can hold. No central queue, no packing.
``auction``   sealed spot auctions: the market shortlists the eligible providers that fit the
              job best (fewest devices left idle, then least memory to spare), they ask by
              their pricing strategy, and the lowest ask wins at the second-lowest ask
              (capped by the job's max). Higher bids are cleared first. The lease starts one
              bid window (commit + reveal) after the auction.

Run ``python -m benchmarks.allocation --help``; the result is one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import heapq
import math
import os
import sys
import time
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import islice
from typing import Any, Literal

import numpy as np

from benchmarks._env import emit, environment
from marketplace.errors import ConfigError
from marketplace.market.auction import Ask, instant_take, sealed_vickrey, settle
from marketplace.market.pricing import FixedFloor, PricingContext, PricingStrategy, strategy_from_spec

__all__ = [
    "DEVICE_CLASSES",
    "POLICIES",
    "DeviceClass",
    "RunResult",
    "SimulationParams",
    "Workload",
    "main",
    "make_workload",
    "policy_rng_seed",
    "run_benchmark",
    "simulate",
]

Policy = Literal["fcfs", "priority", "quota", "instant", "auction"]
POLICIES: tuple[Policy, ...] = ("fcfs", "priority", "quota", "instant", "auction")

TOKEN = 10**18
"""Token units in one token (18 decimals)."""
MILLI = 10**15
"""Prices in the simulation are whole milli-tokens per GPU-hour, so numpy masks compare them exactly."""

PRIORITY_NAMES = ("high", "normal", "low")


@dataclass(frozen=True, slots=True)
class DeviceClass:
    """A kind of GPU offered on the market."""

    name: str
    memory_gb: int
    reference_price: Fraction
    """Typical market price, tokens per GPU-hour (1 token is taken as 1 USD)."""
    provider_share: float
    """Share of providers offering this device."""
    count_weights: tuple[tuple[int, float], ...]
    """Devices per provider and their weights."""


DEVICE_CLASSES: tuple[DeviceClass, ...] = (
    DeviceClass("H100 80GB", 80, Fraction("2.49"), 0.20, ((1, 0.1), (2, 0.1), (4, 0.3), (8, 0.5))),
    DeviceClass("A100 40GB", 40, Fraction("1.29"), 0.25, ((1, 0.2), (2, 0.2), (4, 0.3), (8, 0.3))),
    DeviceClass("RTX 4090 24GB", 24, Fraction("0.39"), 0.30, ((1, 0.3), (2, 0.3), (4, 0.25), (8, 0.15))),
    DeviceClass("L4 24GB", 24, Fraction("0.49"), 0.25, ((1, 0.3), (2, 0.2), (4, 0.3), (8, 0.2))),
)

PROVIDER_STRATEGIES: tuple[tuple[str, float], ...] = (
    ("fixed", 0.35),
    ("ramp:slope=0.5", 0.25),
    ("decay:start=1.5,min=1,half_life=1800", 0.25),
    ("follow:undercut=0.02", 0.15),
)
"""Pricing strategies run by the providers in the market policies, and their shares."""

JOB_GPUS: tuple[tuple[int, float], ...] = ((1, 0.40), (2, 0.20), (3, 0.05), (4, 0.20), (8, 0.15))
MEMORY_STEPS_GB = (8, 12, 16, 24, 32, 40, 48, 64, 80)


@dataclass(frozen=True, slots=True)
class SimulationParams:
    """Knobs of one benchmark run."""

    providers: int = 1_000
    jobs: int = 10_000
    seed: int = 1
    loads: tuple[float, ...] = (0.5, 0.9, 1.2, 1.5)
    policies: tuple[Policy, ...] = POLICIES
    requesters: int = 200
    quota_share: float = 0.03
    """Devices one requester may hold at once under ``quota``, as a share of all devices."""
    bid_window_s: int = 60
    """Commit + reveal time of a sealed auction; the won devices are held, idle, meanwhile."""
    max_bidders: int = 8
    """Best-fitting eligible providers asked to bid in one sealed auction."""
    strategies: tuple[tuple[str, float], ...] = PROVIDER_STRATEGIES
    """Pricing strategy specs the providers run in the market policies, and their shares."""
    best_fit: Literal["memory", "devices", "none"] = "memory"
    """Order of the auction's shortlist: smallest devices first then fullest provider
    (``memory``), fullest provider first then smallest devices (``devices``), or random."""
    tick_s: int = 600
    """How often providers re-price jobs that no ask cleared (idle prices decay)."""
    warmup_share: float = 0.1
    """Share of the arrival horizon left out of the utilization window (the market fills up)."""


# ---------------------------------------------------------------- workload


@dataclass(slots=True)
class Workload:
    """Providers and jobs of one run: the same for every policy at a given load."""

    # providers, in registration order
    p_class: np.ndarray
    p_devices: np.ndarray
    p_memory: np.ndarray
    p_floor: list[int]
    """Price floors, token units per GPU-hour."""
    p_strategy: list[str]
    # jobs, in arrival order; times in whole seconds
    arrival: list[int]
    gpus: list[int]
    memory_gb: list[int]
    duration: list[int]
    max_price: list[int]
    """Token units per GPU-hour."""
    max_gpu_seconds: list[int]
    requester: list[int]
    priority: list[int]
    deadline: list[int]
    """Seconds since start by which the job should be finished."""
    patience: list[int]
    """Seconds since start after which a job still waiting is cancelled (escrow refunded)."""
    horizon: int
    """Time of the last arrival."""
    offered_load: float
    fixups: int = 0
    """Jobs whose size or max price was adjusted so some provider could ever run them."""
    capacity: int = field(init=False)

    def __post_init__(self) -> None:
        self.capacity = int(self.p_devices.sum())


def _choice(rng: np.random.Generator, table: Sequence[tuple[Any, float]], size: int) -> np.ndarray:
    values = np.array([v for v, _ in table])
    weights = np.array([w for _, w in table], dtype=float)
    return values[rng.choice(len(values), size=size, p=weights / weights.sum())]


def _to_milli(value: Fraction | float) -> int:
    """Rounds a price in tokens to whole milli-tokens, returned in token units."""
    return max(1, round(Fraction(value) * 1_000)) * MILLI


def _mmpp_arrivals(rng: np.random.Generator, n: int) -> np.ndarray:
    """Arrival times (arbitrary units) of a Poisson process switching between calm and bursts.

    Calm spells last 3 units on average at rate 1; bursts last 1 unit at rate 5.
    """
    times: list[np.ndarray] = []
    now, count, burst = 0.0, 0, False
    while count < n:
        length = rng.exponential(1.0 if burst else 3.0)
        k = rng.poisson((5.0 if burst else 1.0) * length * max(1.0, n / 200))
        times.append(now + np.sort(rng.random(k)) * length)
        count += k
        now += length
        burst = not burst
    return np.concatenate(times)[:n]


def make_workload(providers: int, jobs: int, seed: int, load: float, params: SimulationParams) -> Workload:
    """Draws the providers and jobs of one run; the same ``seed`` gives the same market at every load.

    Job sizes and kinds do not depend on ``load``; only the arrival times are compressed so the
    offered work (GPU-seconds) is ``load`` × the market's devices × the arrival horizon.
    """
    rng = np.random.default_rng([seed, 0])
    n_classes = len(DEVICE_CLASSES)
    shares = np.array([c.provider_share for c in DEVICE_CLASSES])
    p_class = rng.choice(n_classes, size=providers, p=shares / shares.sum())
    p_devices = np.zeros(providers, dtype=np.int64)
    for c, cls in enumerate(DEVICE_CLASSES):
        mask = p_class == c
        p_devices[mask] = _choice(rng, cls.count_weights, int(mask.sum()))
    p_memory = np.array([DEVICE_CLASSES[c].memory_gb for c in p_class], dtype=np.int64)
    noise = rng.lognormal(0.0, 0.12, size=providers)
    p_floor = [
        _to_milli(DEVICE_CLASSES[c].reference_price * Fraction(float(z))) for c, z in zip(p_class, noise, strict=True)
    ]
    p_strategy = [str(s) for s in _choice(rng, params.strategies, providers)]

    # Jobs target a device class in proportion to its devices, so no class is starved by design.
    class_devices = np.array([p_devices[p_class == c].sum() for c in range(n_classes)], dtype=float)
    target = rng.choice(n_classes, size=jobs, p=class_devices / class_devices.sum())
    gpus = _choice(rng, JOB_GPUS, jobs)
    memory = np.empty(jobs, dtype=np.int64)
    for j in range(jobs):
        top = DEVICE_CLASSES[target[j]].memory_gb
        lower = max((c.memory_gb for c in DEVICE_CLASSES if c.memory_gb < top), default=0)
        steps = [m for m in MEMORY_STEPS_GB if m <= top]
        big = [m for m in steps if m > lower]
        # Most jobs need the memory their target class offers; the rest would fit smaller cards.
        memory[j] = rng.choice(big) if rng.random() < 0.6 or not lower else rng.choice(steps)
    duration = np.clip(rng.lognormal(math.log(40 * 60), 1.0, size=jobs), 5 * 60, 8 * 3600).astype(np.int64)
    markup = np.maximum(rng.lognormal(math.log(1.6), 0.35, size=jobs), 1.05)
    max_price = [
        _to_milli(DEVICE_CLASSES[t].reference_price * Fraction(float(m))) for t, m in zip(target, markup, strict=True)
    ]

    # Make every job runnable somewhere: a provider with enough devices and memory at or below its max.
    fixups = 0
    floors_milli = np.array([f // MILLI for f in p_floor])
    for j in range(jobs):
        while True:
            fit = (p_devices >= gpus[j]) & (p_memory >= memory[j])
            if fit.any():
                break
            gpus[j] = max(1, gpus[j] // 2)
            fixups += 1
        cheapest = int(floors_milli[fit].min()) * MILLI
        if max_price[j] < cheapest:
            max_price[j] = cheapest
            fixups += 1

    # Requesters: a few heavy users post most jobs (Zipf-like); priority is a requester's tier.
    weights = 1.0 / np.arange(1, params.requesters + 1) ** 0.8
    requester = rng.choice(params.requesters, size=jobs, p=weights / weights.sum())
    tier = rng.choice(3, size=params.requesters, p=[0.1, 0.6, 0.3])

    capacity = int(p_devices.sum())
    work = float((gpus * duration).sum())
    horizon = work / (load * capacity)
    raw = _mmpp_arrivals(rng, jobs)
    arrival = np.floor(raw / raw[-1] * horizon).astype(np.int64)
    slack = np.maximum(1_800, duration * rng.uniform(1.0, 4.0, size=jobs)).astype(np.int64)
    return Workload(
        p_class=p_class,
        p_devices=p_devices,
        p_memory=p_memory,
        p_floor=p_floor,
        p_strategy=p_strategy,
        arrival=arrival.tolist(),
        gpus=gpus.astype(int).tolist(),
        memory_gb=memory.astype(int).tolist(),
        duration=duration.astype(int).tolist(),
        max_price=max_price,
        max_gpu_seconds=[int(g * math.ceil(d * 1.25)) for g, d in zip(gpus, duration, strict=True)],
        requester=requester.astype(int).tolist(),
        priority=[int(tier[r]) for r in requester],
        deadline=(arrival + duration + slack).astype(int).tolist(),
        patience=(arrival + 2 * slack).astype(int).tolist(),
        horizon=int(arrival[-1]),
        offered_load=work / (capacity * max(1, int(arrival[-1]))),
        fixups=fixups,
    )


# ---------------------------------------------------------------- simulation

WAITING, RUNNING, DONE, DROPPED = 0, 1, 2, 3
# Event kinds, in the order they are handled at the same instant: free devices first.
COMPLETE, ARRIVE, EXPIRE, TICK = 0, 1, 2, 3


@dataclass(slots=True)
class RunResult:
    """What one policy did with one workload; ``summary()`` is its JSON entry."""

    policy: str
    load: float
    workload: Workload
    state: list[int]
    provider: list[int]
    start: list[int]
    end: list[int]
    price: list[int]
    payout: list[int]
    busy_device_seconds: list[int]
    """Per provider: device-seconds spent running jobs."""
    window: tuple[int, int]
    window_busy_by_class: list[int]
    makespan: int
    events: int
    runtime_s: float
    bids: dict[int, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    """Per job leased by a sealed auction: that auction's ``(provider, ask)`` pairs in reveal order."""

    def summary(self) -> dict[str, Any]:
        """Returns the figures of this run as a JSON-ready dict."""
        w = self.workload
        n = len(self.state)
        done = [j for j in range(n) if self.state[j] == DONE]
        waits = np.array([self.start[j] - w.arrival[j] for j in done], dtype=float)
        served = [0] * (max(w.requester) + 1)
        asked = [0] * (max(w.requester) + 1)
        for j in range(n):
            asked[w.requester[j]] += w.gpus[j] * w.duration[j]
            if self.state[j] == DONE:
                served[w.requester[j]] += w.gpus[j] * w.duration[j]
        ratios = np.array([s / a for s, a in zip(served, asked, strict=True) if a > 0])
        jain = float(ratios.sum() ** 2 / (len(ratios) * (ratios**2).sum())) if (ratios > 0).any() else 0.0
        gpu_seconds = sum(w.gpus[j] * w.duration[j] for j in done)
        revenue = sum(self.payout[j] for j in done)
        floor_value = sum(w.p_floor[self.provider[j]] * w.gpus[j] * w.duration[j] // 3_600 for j in done)
        lo, hi = self.window
        class_devices = [int(w.p_devices[w.p_class == c].sum()) for c in range(len(DEVICE_CLASSES))]
        span = max(1, hi - lo)
        met = sum(1 for j in done if self.end[j] <= w.deadline[j])
        by_priority: dict[str, Any] = {}
        for tier, name in enumerate(PRIORITY_NAMES):
            jobs_t = [j for j in range(n) if w.priority[j] == tier]
            done_t = [j for j in jobs_t if self.state[j] == DONE]
            waits_t = [self.start[j] - w.arrival[j] for j in done_t]
            by_priority[name] = {
                "jobs": len(jobs_t),
                "completed_share": round(len(done_t) / max(1, len(jobs_t)), 4),
                "wait_mean_s": round(float(np.mean(waits_t)), 1) if waits_t else None,
            }
        return {
            "policy": self.policy,
            "load": self.load,
            "utilization": round(sum(self.window_busy_by_class) / (w.capacity * span), 4),
            "utilization_by_class": {
                cls.name: round(busy / max(1, devs * span), 4)
                for cls, busy, devs in zip(DEVICE_CLASSES, self.window_busy_by_class, class_devices, strict=True)
            },
            "wait_mean_s": round(float(waits.mean()), 1) if len(done) else None,
            "wait_p99_s": round(float(np.percentile(waits, 99)), 1) if len(done) else None,
            "deadlines_met": round(met / n, 4),
            "completed": len(done),
            "dropped": sum(1 for s in self.state if s == DROPPED),
            "mean_price_per_gpu_hour": round(revenue * 3_600 / max(1, gpu_seconds) / TOKEN, 4),
            "price_over_floor": round(revenue / floor_value, 4) if floor_value else None,
            "provider_revenue_tokens": round(revenue / TOKEN, 2),
            "provider_revenue_units": str(revenue),
            "jain_fairness": round(jain, 4),
            "by_priority": by_priority,
            "makespan_s": self.makespan,
            "events": self.events,
            "runtime_s": round(self.runtime_s, 3),
        }


class _Market:
    """The event loop of one run: one policy, one workload."""

    def __init__(self, w: Workload, policy: Policy, params: SimulationParams, rng: np.random.Generator) -> None:
        self.w, self.policy, self.params, self.rng = w, policy, params, rng
        n, m = len(w.arrival), len(w.p_floor)
        self.state = [WAITING] * n
        self.provider = [-1] * n
        self.start = [-1] * n
        self.end = [-1] * n
        self.price = [0] * n
        self.payout = [0] * n
        self.free = w.p_devices.copy()
        self.floor_milli = np.array([f // MILLI for f in w.p_floor], dtype=np.int64)
        self.max_milli = [p // MILLI for p in w.max_price]
        self.rank = rng.permutation(m)  # stable tie-break between equally good fits
        self.last_end = [0] * m
        self.busy_device_seconds = [0] * m
        self.window = (int(w.horizon * params.warmup_share), w.horizon)
        self.window_busy = [0] * len(DEVICE_CLASSES)
        market = policy in ("instant", "auction")
        fixed = FixedFloor()
        cache: dict[str, PricingStrategy] = {}
        self.strategy: list[PricingStrategy] = [
            cache.setdefault(s, strategy_from_spec(s)) if market else fixed for s in w.p_strategy
        ]
        self.recent: list[deque[int]] = [deque(maxlen=16) for _ in DEVICE_CLASSES]
        self.recent_tuple: list[tuple[int, ...]] = [() for _ in DEVICE_CLASSES]
        self.usage = [0] * (max(w.requester) + 1)
        self.quota = max(8, round(params.quota_share * w.capacity))
        self.events: list[tuple[int, int, int, int]] = []
        self.seq = 0
        self.queue: list[tuple[tuple[int, ...], int]] = []  # central-queue policies (a heap)
        self.parked: dict[int, list[int]] = {}
        self.waiting: list[tuple[tuple[int, ...], int]] = []  # market policies (sorted)
        self.price_blocked: set[int] = set()
        self.bids: dict[int, tuple[tuple[int, int], ...]] = {}
        self.tick_pending = False
        self.now = 0
        self.handled = 0

    # -- bookkeeping

    def push(self, t: int, kind: int, item: int) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, kind, self.seq, item))

    def key(self, j: int) -> tuple[int, ...]:
        w = self.w
        if self.policy == "priority":
            return (w.priority[j], w.arrival[j], j)
        if self.policy == "auction":
            return (-self.max_milli[j], w.arrival[j], j)
        return (w.arrival[j], j)

    def eligible(self, j: int) -> np.ndarray:
        w = self.w
        mask = (self.free >= w.gpus[j]) & (w.p_memory >= w.memory_gb[j]) & (self.floor_milli <= self.max_milli[j])
        return np.flatnonzero(mask)

    def context(self, j: int, p: int) -> PricingContext:
        w = self.w
        devices = int(w.p_devices[p])
        free = int(self.free[p])
        return PricingContext(
            max_price=w.max_price[j],
            gpus=w.gpus[j],
            max_gpu_seconds=w.max_gpu_seconds[j],
            floor=w.p_floor[p],
            utilization=Fraction(devices - free, devices),
            idle_seconds=self.now - self.last_end[p] if free == devices else 0,
            recent_prices=self.recent_tuple[w.p_class[p]],
        )

    def place(self, j: int, p: int, price: int, run_at: int) -> None:
        """Leases ``gpus[j]`` devices of provider ``p`` now; the job runs from ``run_at``."""
        w = self.w
        g, d = w.gpus[j], w.duration[j]
        assert self.state[j] == WAITING, f"job {j} placed twice"
        assert w.p_memory[p] >= w.memory_gb[j], f"job {j} placed on a provider without enough memory"
        assert self.free[p] >= g, f"provider {p} double-booked"
        assert w.p_floor[p] <= price <= w.max_price[j], f"job {j} priced outside [floor, max]"
        self.free[p] -= g
        self.state[j] = RUNNING
        self.provider[j], self.price[j] = p, price
        self.start[j], self.end[j] = run_at, run_at + d
        self.payout[j] = settle(price, g * d, max_gpu_seconds=w.max_gpu_seconds[j], max_price=w.max_price[j]).payout
        self.busy_device_seconds[p] += g * d
        lo, hi = self.window
        overlap = min(hi, run_at + d) - max(lo, run_at)
        if overlap > 0:
            self.window_busy[w.p_class[p]] += g * overlap
        self.usage[w.requester[j]] += g
        self.push(run_at + d, COMPLETE, j)

    def record_clearing(self, p: int, price: int) -> None:
        c = self.w.p_class[p]
        self.recent[c].append(price)
        self.recent_tuple[c] = tuple(self.recent[c])

    # -- central queue: fcfs, priority, quota

    def dispatch_queue(self) -> None:
        w, queue = self.w, self.queue
        while queue:
            _, j = queue[0]
            if self.state[j] != WAITING:
                heapq.heappop(queue)
                continue
            r = w.requester[j]
            if self.policy == "quota" and self.usage[r] + w.gpus[j] > self.quota:
                heapq.heappop(queue)
                self.parked.setdefault(r, []).append(j)
                continue
            fits = self.eligible(j)
            if not len(fits):
                return  # head-of-line: nothing behind it starts
            p = int(fits[0])
            heapq.heappop(queue)
            ask = self.strategy[p].ask(self.context(j, p))
            assert ask is not None
            self.place(j, p, ask, self.now)

    # -- market: instant and auction

    def try_market(self, j: int) -> bool:
        """Tries to lease job ``j`` now on any eligible provider; True when leased."""
        fits = self.eligible(j)
        if not len(fits):
            return False
        w = self.w
        if self.policy == "instant":
            order = fits[self.rng.permutation(len(fits))]  # whose take lands first
            clearing = instant_take(self._offers(j, order), max_price=w.max_price[j])
            run_at = self.now
        else:
            # Best fit: the smallest devices that hold the job, then the provider it fills best.
            # Providers reveal in that order; the first `max_bidders` that bid are the auction.
            leftover = self.free[fits] - w.gpus[j]
            spare_memory = w.p_memory[fits] - w.memory_gb[j]
            if self.params.best_fit == "memory":
                keys = (self.rank[fits], leftover, spare_memory)
            elif self.params.best_fit == "devices":
                keys = (self.rank[fits], spare_memory, leftover)
            else:  # "none": providers reveal in a random order
                keys = (self.rng.random(len(fits)),)
            order = fits[np.lexsort(keys)]
            asks = [Ask(p, a) for p, a in islice(self._asks(j, order), self.params.max_bidders)]
            clearing = sealed_vickrey(asks, max_price=w.max_price[j])
            run_at = self.now + self.params.bid_window_s
        if clearing is None:
            self.price_blocked.add(j)
            return False
        p, price = clearing.winners[0], clearing.price
        if self.policy == "auction":
            self.bids[j] = tuple((a.provider, a.price) for a in asks)
        self.price_blocked.discard(j)
        self.place(j, p, price, run_at)
        self.record_clearing(p, price)
        return True

    def _asks(self, j: int, providers: np.ndarray) -> Iterator[tuple[int, int]]:
        for p in providers.tolist():
            ask = self.strategy[p].ask(self.context(j, p))
            if ask is not None:
                yield p, ask

    def _offers(self, j: int, providers: np.ndarray) -> Iterator[Ask[int]]:
        for p, ask in self._asks(j, providers):
            yield Ask(p, ask)

    def offer_freed(self, p: int) -> None:
        """A provider freed devices: match the waiting jobs it could hold, best first."""
        w, waiting = self.w, self.waiting
        mem, floor = int(w.p_memory[p]), int(self.floor_milli[p])
        taken: list[int] = []
        for idx, (_, j) in enumerate(waiting):
            free = int(self.free[p])
            if free == 0:
                break
            if w.gpus[j] > free or w.memory_gb[j] > mem or self.max_milli[j] < floor:
                continue
            if self.policy == "instant":
                ask = self.strategy[p].ask(self.context(j, p))
                clearing = None if ask is None else instant_take([Ask(p, ask)], max_price=w.max_price[j])
                if clearing is not None:
                    self.place(j, p, clearing.price, self.now)
                    self.record_clearing(p, clearing.price)
                    taken.append(idx)
                else:
                    self.price_blocked.add(j)
            elif self.try_market(j):
                taken.append(idx)
        for idx in reversed(taken):
            del waiting[idx]

    def retry_blocked(self) -> None:
        """Periodic re-pricing: jobs no ask cleared may clear now that idle prices decayed."""
        for j in sorted(self.price_blocked, key=self.key):
            if self.state[j] == WAITING and self.try_market(j):
                k = self.key(j)
                del self.waiting[bisect_left(self.waiting, (k, j))]
        self.price_blocked = {j for j in self.price_blocked if self.state[j] == WAITING}

    # -- the loop

    def run(self) -> None:
        w = self.w
        for j, t in enumerate(w.arrival):
            self.push(t, ARRIVE, j)
        central = self.policy in ("fcfs", "priority", "quota")
        events = self.events
        while events:
            t, kind, _, j = heapq.heappop(events)
            self.now = t
            self.handled += 1
            if kind == ARRIVE:
                self.push(w.patience[j], EXPIRE, j)
                if central:
                    heapq.heappush(self.queue, (self.key(j), j))
                    self.dispatch_queue()
                elif not self.try_market(j):
                    insort(self.waiting, (self.key(j), j))
                    self._schedule_tick()
            elif kind == COMPLETE:
                p = self.provider[j]
                self.free[p] += w.gpus[j]
                assert self.free[p] <= w.p_devices[p], f"provider {p} freed more devices than it has"
                self.state[j] = DONE
                self.last_end[p] = t
                r = w.requester[j]
                self.usage[r] -= w.gpus[j]
                if central:
                    for parked in self.parked.pop(r, []):
                        heapq.heappush(self.queue, (self.key(parked), parked))
                    self.dispatch_queue()
                else:
                    self.offer_freed(p)
            elif kind == EXPIRE:
                if self.state[j] == WAITING:
                    self.state[j] = DROPPED
                    if not central:
                        del self.waiting[bisect_left(self.waiting, (self.key(j), j))]
                        self.price_blocked.discard(j)
                    else:
                        self.dispatch_queue()  # a dropped head may unblock the queue
            else:  # TICK
                self.tick_pending = False
                self.retry_blocked()
                self._schedule_tick()

    def _schedule_tick(self) -> None:
        if self.price_blocked and not self.tick_pending:
            self.tick_pending = True
            self.push(self.now + self.params.tick_s, TICK, -1)


def simulate(w: Workload, policy: Policy, params: SimulationParams, *, load: float, rng_seed: int) -> RunResult:
    """Runs one policy over a workload and checks the books: no device used twice, payments exact."""
    if policy not in POLICIES:
        raise ValueError(f"allocation: unknown policy {policy!r}; expected one of {', '.join(POLICIES)}")
    began = time.perf_counter()
    market = _Market(w, policy, params, np.random.default_rng(rng_seed))
    market.run()
    makespan = max([w.horizon, *market.end])
    for p, busy in enumerate(market.busy_device_seconds):
        assert busy <= int(w.p_devices[p]) * makespan, f"provider {p} ran more device-time than it has"
    assert all(s in (DONE, DROPPED) for s in market.state), "a job was left waiting or running"
    assert (market.free == w.p_devices).all(), "devices still held after every job ended"
    return RunResult(
        policy=policy,
        load=load,
        workload=w,
        state=market.state,
        provider=market.provider,
        start=market.start,
        end=market.end,
        price=market.price,
        payout=market.payout,
        busy_device_seconds=market.busy_device_seconds,
        window=market.window,
        window_busy_by_class=market.window_busy,
        makespan=makespan,
        events=market.handled,
        runtime_s=time.perf_counter() - began,
        bids=market.bids,
    )


# ---------------------------------------------------------------- benchmark


def policy_rng_seed(seed: int, policy: Policy, load: float) -> int:
    """The seed of one policy's own randomness in a benchmark run.

    It depends on the seed, the policy and the load, not on what else runs.
    """
    return seed * 1_000_000 + POLICIES.index(policy) * 10_000 + round(load * 1_000)


def _run_one(args: tuple[SimulationParams, int, int]) -> dict[str, Any]:
    params, li, pi = args
    load, policy = params.loads[li], params.policies[pi]
    workload = make_workload(params.providers, params.jobs, params.seed, load, params)
    result = simulate(workload, policy, params, load=load, rng_seed=policy_rng_seed(params.seed, policy, load))
    return result.summary()


def _market_summary(params: SimulationParams) -> dict[str, Any]:
    w = make_workload(params.providers, params.jobs, params.seed, params.loads[0], params)
    classes = {}
    for c, cls in enumerate(DEVICE_CLASSES):
        mask = w.p_class == c
        floors = [w.p_floor[p] for p in np.flatnonzero(mask)]
        classes[cls.name] = {
            "providers": int(mask.sum()),
            "devices": int(w.p_devices[mask].sum()),
            "memory_gb": cls.memory_gb,
            "reference_price": str(cls.reference_price),
            "median_floor": round(float(np.median(floors)) / TOKEN, 3) if floors else None,
        }
    return {
        "providers": params.providers,
        "devices": w.capacity,
        "by_class": classes,
        "pricing_strategies": dict(params.strategies),
        "jobs": params.jobs,
        "requesters": params.requesters,
        "job_fixups": w.fixups,
        "mean_job_gpus": round(float(np.mean(w.gpus)), 3),
        "median_job_duration_s": float(np.median(w.duration)),
    }


def run_benchmark(params: SimulationParams, *, workers: int = 1) -> dict[str, Any]:
    """Runs every policy at every load and returns the JSON document."""
    began = time.perf_counter()
    tasks = [(params, li, pi) for li in range(len(params.loads)) for pi in range(len(params.policies))]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_run_one, tasks))
    else:
        results = [_run_one(task) for task in tasks]
    return {
        "benchmark": "allocation",
        "params": {
            "providers": params.providers,
            "jobs": params.jobs,
            "seed": params.seed,
            "loads": list(params.loads),
            "policies": list(params.policies),
            "quota_share": params.quota_share,
            "bid_window_s": params.bid_window_s,
            "max_bidders": params.max_bidders,
            "tick_s": params.tick_s,
            "best_fit": params.best_fit,
            "warmup_share": params.warmup_share,
        },
        "market": _market_summary(params),
        "results": results,
        "elapsed_s": round(time.perf_counter() - began, 2),
        "workers": workers,
        "environment": environment(),
    }


def draw_chart(doc: dict[str, Any], path: str) -> None:
    """Draws utilization, p99 wait, deadlines met and mean price per policy and load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = doc["params"]["policies"]
    loads = doc["params"]["loads"]
    by = {(r["policy"], r["load"]): r for r in doc["results"]}
    panels = [
        ("utilization", "device utilization", 1.0),
        ("wait_p99_s", "p99 wait (hours)", 1 / 3_600),
        ("deadlines_met", "share of jobs meeting their deadline", 1.0),
        ("mean_price_per_gpu_hour", "mean price paid (tokens / GPU-hour)", 1.0),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    width = 0.8 / len(loads)
    x = np.arange(len(policies))
    for ax, (key, title, scale) in zip(axes.flat, panels, strict=True):
        for i, load in enumerate(loads):
            values = [(by[(p, load)][key] or 0) * scale for p in policies]
            ax.bar(x + (i - (len(loads) - 1) / 2) * width, values, width, label=f"offered load {load}")
        ax.set_xticks(x, policies)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        if key == "utilization":
            ax.axhspan(0.4, 0.7, color="grey", alpha=0.15, label="40-70 % typical today")
            ax.axhline(0.9, color="black", lw=0.8, ls="--", label="90 %")
            ax.set_ylim(0, 1.3)
            ax.legend(fontsize=7, loc="upper left", ncol=3)
    market = doc["market"]
    fig.suptitle(
        f"flopex allocation: {market['providers']} providers ({market['devices']} GPUs), "
        f"{market['jobs']} jobs, seed {doc['params']['seed']}"
    )
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.allocation", description=__doc__.splitlines()[0])
    parser.add_argument("--providers", type=int, default=None, help="providers (default 1000; 100 with --quick)")
    parser.add_argument("--jobs", type=int, default=None, help="jobs (default 10000; 1000 with --quick)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--loads", default="0.5,0.9,1.2,1.5", help="offered loads, comma-separated")
    parser.add_argument("--policies", default=",".join(POLICIES), help="policies, comma-separated")
    parser.add_argument(
        "--pricing", default=None, help="one strategy spec for every provider (default: a mix), e.g. fixed"
    )
    parser.add_argument(
        "--best-fit", default="memory", choices=("memory", "devices", "none"), help="auction shortlist order"
    )
    parser.add_argument("--quick", action="store_true", help="a small market, for tests: seconds")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: usable cores, max 8)")
    parser.add_argument("--chart", default=None, help="write the comparison chart (PNG) here")
    parser.add_argument("--out", default=None, help="also write the JSON document here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark from the command line, prints its JSON and returns it."""
    args = _parse_args(argv)
    try:
        loads = tuple(float(x) for x in args.loads.split(","))
    except ValueError:
        raise SystemExit(f"allocation: bad --loads {args.loads!r}") from None
    policies = tuple(p.strip() for p in args.policies.split(","))
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not all(load > 0 for load in loads):
        raise SystemExit(f"allocation: unknown policy {unknown} or non-positive load in {loads}")
    strategies = PROVIDER_STRATEGIES
    if args.pricing:
        try:
            strategies = ((strategy_from_spec(args.pricing).spec, 1.0),)
        except ConfigError as exc:
            raise SystemExit(f"allocation: {exc}") from None
    params = SimulationParams(
        strategies=strategies,
        best_fit=args.best_fit,
        providers=args.providers or (100 if args.quick else 1_000),
        jobs=args.jobs or (1_000 if args.quick else 10_000),
        seed=args.seed,
        loads=loads,
        policies=policies,  # type: ignore[arg-type]
        requesters=50 if args.quick else 200,
    )
    workers = args.workers or min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    doc = run_benchmark(params, workers=workers)
    if args.chart:
        draw_chart(doc, args.chart)
        doc["chart"] = args.chart
    emit(doc, args.out)
    return doc


if __name__ == "__main__":
    main(sys.argv[1:])
