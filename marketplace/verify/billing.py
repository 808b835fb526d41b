"""Billing caps: the GPU-seconds that the verified work and the attested throughput make plausible.

A verifier attests ``min(claim, cap)``; :func:`attested_gflops` is the throughput a verifier
attests from a timed capacity challenge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

__all__ = [
    "CAPACITY_ATTEMPTS",
    "CAPACITY_FLAG_BPS",
    "CAPACITY_MARGIN",
    "BillingEstimate",
    "attested_gflops",
    "billing_cap",
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

#: Challenges a verifier runs, while the best so far would flag the claim, before it attests.
CAPACITY_ATTEMPTS = 5


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
