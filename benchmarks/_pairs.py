"""Ratios that hold on a busy host: both sides measured as interleaved pairs in one run.

A ratio of two medians taken minutes apart drifts with whatever else the host is doing. Here each
round times ``numerator`` and then ``denominator`` back to back (the order alternating from round to
round, so neither side always runs on a warmer cache), the round's ratio is taken, and the report is
the median of those per-round ratios with its spread. Load that comes and goes moves both halves of
a pair together, so the median ratio stays put while the absolute times wander.

``interleaved_pairs(numerator, denominator, rounds=15)`` returns a :class:`PairStats`;
``PairStats.as_json()`` is what a benchmark puts in its JSON document.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

__all__ = ["PairStats", "busy_processes", "interleaved_pairs", "pair_stats", "spread", "wilson_interval"]


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile ``q`` of an ascending sequence."""
    if not ordered:
        raise ValueError("no samples")
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def spread(samples: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, 10th/90th percentiles, min and max of ``samples`` (rounded to 4 places)."""
    ordered = sorted(samples)
    return {
        "median": round(statistics.median(ordered), 4),
        "p25": round(_quantile(ordered, 0.25), 4),
        "p75": round(_quantile(ordered, 0.75), 4),
        "p10": round(_quantile(ordered, 0.10), 4),
        "p90": round(_quantile(ordered, 0.90), 4),
        "min": round(ordered[0], 4),
        "max": round(ordered[-1], 4),
    }


@dataclass(frozen=True, slots=True)
class PairStats:
    """Interleaved measurements of two things: the per-round ratios and each side's seconds."""

    numerator_s: tuple[float, ...]
    denominator_s: tuple[float, ...]

    @property
    def ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.numerator_s, self.denominator_s, strict=True) if b > 0]

    @property
    def median_ratio(self) -> float:
        return statistics.median(self.ratios)

    def as_json(self) -> dict[str, object]:
        return {
            "pairs": len(self.numerator_s),
            "ratio": spread(self.ratios),
            "numerator_ms": spread([s * 1000 for s in self.numerator_s]),
            "denominator_ms": spread([s * 1000 for s in self.denominator_s]),
        }


def pair_stats(numerator_s: Sequence[float], denominator_s: Sequence[float]) -> PairStats:
    """A :class:`PairStats` from seconds already measured as pairs (same length, same rounds)."""
    if len(numerator_s) != len(denominator_s) or not numerator_s:
        raise ValueError("pairs need the same, non-zero number of samples on both sides")
    return PairStats(tuple(numerator_s), tuple(denominator_s))


def interleaved_pairs(
    numerator: Callable[[], object],
    denominator: Callable[[], object],
    *,
    rounds: int = 15,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> PairStats:
    """Time ``numerator`` and ``denominator`` back to back ``rounds`` times (order alternating).

    ``warmup`` untimed rounds run first. Each callable is timed alone with ``clock``; what they
    return is ignored.
    """
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    for _ in range(max(0, warmup)):
        numerator()
        denominator()
    num: list[float] = []
    den: list[float] = []

    def timed(fn: Callable[[], object]) -> float:
        t0 = clock()
        fn()
        return clock() - t0

    for i in range(rounds):
        if i % 2 == 0:
            num.append(timed(numerator))
            den.append(timed(denominator))
        else:
            den.append(timed(denominator))
            num.append(timed(numerator))
    return PairStats(tuple(num), tuple(den))


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95 % by default) of a rate ``successes / trials``."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * ((p * (1 - p) / trials + z * z / (4 * trials * trials)) ** 0.5) / denom
    return (round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4))


def _spin() -> None:
    while True:
        pass


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[int]:
    """Keep ``count`` processes spinning on the CPU for the ``with`` block (one per core is "busy")."""
    import multiprocessing

    procs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(max(0, count))]
    for proc in procs:
        proc.start()
    try:
        yield len(procs)
    finally:
        for proc in procs:
            proc.terminate()
            proc.join()
