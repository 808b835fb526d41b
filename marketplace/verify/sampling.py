"""Replay sampling: which segments a verifier re-runs, and the chance that it finds a faked one.

The seed a verifier draws its samples from is fixed only after the result is committed (it
hashes the block that holds the ``ResultCommitted`` event), so a provider cannot know which
segments will be replayed.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

from eth_hash.auto import keccak

if TYPE_CHECKING:
    pass

__all__ = ["detection_probability", "replay_samples", "sample_segments", "theoretical_detection", "verification_seed"]


def verification_seed(block_hash: bytes, job_id: int, slot: int, salt: bytes = b"") -> int:
    """The seed of a slot's verification: keccak256 of the commit block's hash, the job and the slot.

    The block hash is unknown until the ``ResultCommitted`` transaction is mined, so the provider
    cannot choose its result knowing the sample. ``salt`` lets a verifier add private randomness.
    """
    data = bytes(block_hash) + job_id.to_bytes(32, "big") + slot.to_bytes(8, "big") + salt
    return int.from_bytes(keccak(data), "big")


def replay_samples(segments: int, fraction: float = 0.07, minimum: int = 7) -> int:
    """How many of ``segments`` to replay: ``max(minimum, ceil(fraction·segments))``, at most all.

    With 7 samples a job that faked half its segments is caught with probability 1 - 2**-7 > 99%.
    """
    if segments <= 0:
        return 0
    return min(segments, max(minimum, math.ceil(round(fraction * segments, 9))))


def sample_segments(seed: int, segments: int, count: int) -> list[int]:
    """``count`` distinct segment indices out of ``range(segments)``, drawn from ``seed``, sorted."""
    rng = random.Random(seed)
    return sorted(rng.sample(range(segments), min(count, segments)))


def detection_probability(segments: int, bad: int, samples: int) -> float:
    """Chance that ``samples`` segments drawn without replacement include at least one of ``bad``."""
    if bad <= 0:
        return 0.0
    if samples > segments - bad:
        return 1.0
    miss = math.comb(segments - bad, samples) / math.comb(segments, samples)
    return 1.0 - miss


def theoretical_detection(fraction: float, samples: int) -> float:
    """The textbook figure ``1 - (1 - f)**s`` (sampling with replacement)."""
    return 1.0 - (1.0 - fraction) ** samples
