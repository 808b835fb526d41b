"""Billing caps: the GPU-seconds that the verified work and the attested throughput make plausible.

A verifier attests ``min(claim, cap)``; :func:`attested_gflops` is the throughput a verifier
attests from a timed capacity challenge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

__all__ = [
    "CAPACITY_ATTEMPTS",
    "CAPACITY_FALSE_FLAG_RATE",
    "CAPACITY_FLAG_BPS",
    "CAPACITY_MARGIN",
    "CAPACITY_QUIET_FRACTION",
    "BillingEstimate",
    "CapacityDecision",
    "attested_gflops",
    "billing_cap",
    "capacity_attempts_for",
    "capacity_decision",
    "capacity_flagged",
]


#: A verifier attests this fraction of the throughput it measured, so that measurement noise never
#: lifts a provider that claims exactly 2x its real throughput under the registry's 2x flag.
CAPACITY_MARGIN = 0.8


@dataclass(frozen=True, slots=True)
class BillingEstimate:
    """Why a verifier attests the GPU-seconds it does."""

    claimed: int
    plausible: int
    verified: int
    basis: str

    @property
    def capped(self) -> bool:
        """True when the cap bit (the attestation pays less than the claim)."""
        return self.verified < self.claimed


def billing_cap(
    claimed: int,
    *,
    estimated_seconds: float | None = None,
    flops: float | None = None,
    attested_gflops: float | None = None,
    gpus: int = 1,
    slack: float = 1.5,
    overhead_s: float = 5.0,
) -> BillingEstimate:
    """The GPU-seconds to attest: the claim, capped by what the verified work makes plausible.

    Two bounds, the smaller wins when both are known:

    - ``estimated_seconds``: the job's device time as the verifier measured or extrapolated it
      (a replay's segment times × the number of segments, the median of k redundant claims);
    - ``flops / attested_gflops``: the known work of the job (a matrix product's ``2n³``) at the
      provider's attested throughput.

    Each is multiplied by ``slack`` and ``gpus`` and given ``overhead_s`` of start-up time, so an
    honest provider is never cut; a claim far above them is.
    """
    bounds: list[tuple[float, str]] = []
    if estimated_seconds is not None:
        bounds.append((estimated_seconds, "measured work"))
    if flops is not None and attested_gflops:
        bounds.append((flops / (attested_gflops * 1e9), "work at attested throughput"))
    if not bounds:
        return BillingEstimate(claimed, claimed, claimed, "claim (no bound known)")
    seconds, basis = min(bounds)
    plausible = math.ceil((seconds * slack + overhead_s) * max(1, gpus))
    return BillingEstimate(claimed, plausible, min(claimed, plausible), basis)


#: ProviderRegistry's CAPACITY_FLAG_BPS: a claim beyond twice the attested throughput is flagged.
CAPACITY_FLAG_BPS = 20_000

#: The stated false-flag rate of the capacity test: the most often an honest provider is flagged.
CAPACITY_FALSE_FLAG_RATE = 0.01

#: The test's assumption about honest providers: in at least this fraction of challenges, sent at
#: unpredictable times, an honest provider's measured throughput reaches what its claim needs
#: (claim <= 2 x attested). A busy host slows many products; it does not slow this many of them.
CAPACITY_QUIET_FRACTION = 0.3


def capacity_attempts_for(false_flag_rate: float, quiet_fraction: float) -> int:
    """Challenges without one that meets the claim before the test may flag: the least ``k`` with
    ``(1 - quiet_fraction)^k <= false_flag_rate``."""
    if not 0 < false_flag_rate < 1 or not 0 < quiet_fraction <= 1:
        raise ValueError("capacity test: the false-flag rate must be in (0, 1) and the quiet fraction in (0, 1]")
    if quiet_fraction == 1:
        return 1
    return max(1, math.ceil(math.log(false_flag_rate) / math.log(1 - quiet_fraction) - 1e-12))


#: Challenges a verifier runs, while none so far meets the claim, before it attests (and so flags).
CAPACITY_ATTEMPTS = capacity_attempts_for(CAPACITY_FALSE_FLAG_RATE, CAPACITY_QUIET_FRACTION)


@dataclass(frozen=True, slots=True)
class CapacityDecision:
    """Where the capacity test stands after the challenges measured so far.

    ``decided`` False means "challenge again later"; once decided, ``attest`` is what the verifier
    attests and ``flagged`` is what the registry's rule will make of it. ``p_value`` is the
    probability, were the provider honest (the test's assumption), of seeing no challenge meet the
    claim in ``attempts`` tries.
    """

    decided: bool
    flagged: bool
    attest: int
    attempts: int
    meeting_claim: int
    p_value: float


def capacity_decision(
    claimed_gflops: int,
    measured: Sequence[int],
    *,
    false_flag_rate: float = CAPACITY_FALSE_FLAG_RATE,
    quiet_fraction: float = CAPACITY_QUIET_FRACTION,
    max_attempts: int | None = None,
) -> CapacityDecision:
    """A one-sided sign test on the distribution of a provider's measured (attestable) GFLOP/s.

    H0 (honest): at least ``quiet_fraction`` of the measured rates reach the claim's need, i.e.
    ``not capacity_flagged(claimed, rate)``. Load only slows a product, so one rate that meets the
    claim settles it: the claim stands and the best rate is attested. While none does, the chance
    of that under H0 is ``(1 - quiet_fraction)^k`` after ``k`` challenges; the test flags (attests
    the best, which the registry flags) only once that is at most ``false_flag_rate``, so an
    honest provider is flagged at most that often. ``max_attempts`` (a verifier's setting) caps
    the challenges: the test then decides early, with the larger p-value it reports.
    A failed challenge counts as a rate of 0.
    """
    rates = [max(0, int(r)) for r in measured]
    if not rates:
        return CapacityDecision(False, False, 0, 0, 0, 1.0)
    best = max(rates)
    meeting = sum(not capacity_flagged(claimed_gflops, r) for r in rates)
    if meeting:
        return CapacityDecision(True, False, best, len(rates), meeting, 1.0)
    p_value = (1 - quiet_fraction) ** len(rates)
    needed = capacity_attempts_for(false_flag_rate, quiet_fraction)
    if max_attempts is not None:
        needed = min(needed, max(1, max_attempts))
    decided = len(rates) >= needed
    return CapacityDecision(decided, decided, best, len(rates), 0, p_value)


def capacity_flagged(claimed_gflops: int, attested: int) -> bool:
    """The registry's rule: whether a claim of ``claimed_gflops`` is flagged against ``attested``."""
    return claimed_gflops * 10_000 > attested * CAPACITY_FLAG_BPS


def attested_gflops(flops: int, reported_s: float, wall_s: float, *, margin: float = CAPACITY_MARGIN) -> int:
    """The throughput to attest for a capacity challenge, in GFLOP/s.

    The worker reports its device time; the verifier timed the whole call. A worker may report
    less time than it took, so at least half the wall time counts, and the verifier keeps a margin.
    """
    seconds = max(reported_s, 0.5 * wall_s, 1e-9)
    return max(0, int(flops / seconds / 1e9 * margin))
