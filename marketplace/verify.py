"""Pure verification checks: tolerant result comparison, Freivalds, replay sampling, billing caps.

Nothing here runs job code or talks to a chain; the verifier daemon (``worker.verifier``) and the
benchmark build on these functions, and so can anyone who wants to re-check a verdict.

- :func:`compare_tensors` / :func:`compare_results`: two runs' outputs agree when every
  safetensors tensor is within ``|a - b| <= atol + rtol * |b|`` elementwise (same names, shapes
  and dtypes) and every other file is byte-for-byte equal. The defaults (:data:`RTOL`,
  :data:`ATOL`) are calibrated on honest reruns (docs/verification.md).
- :func:`majority`: groups k results by agreement; the largest group wins if it is a strict
  majority.
- :func:`freivalds_check`: checks ``C = A·B`` with random vectors in O(n²) per vector, with a
  per-row tolerance fitted to the product's dtype and inner dimension (:func:`freivalds_tolerance`).
- :func:`verification_seed`, :func:`sample_segments`, :func:`replay_samples`: the seed a verifier
  draws its samples from is fixed only after the result is committed (it hashes the block that
  holds the ``ResultCommitted`` event), so a provider cannot know which segments will be replayed.
- :func:`detection_probability`: the chance that ``s`` sampled segments out of ``n`` find at least
  one of ``bad`` faked ones.
- :func:`billing_cap`: the GPU-seconds the verified work and the attested throughput make
  plausible; a verifier attests ``min(claim, cap)``.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from eth_hash.auto import keccak

from marketplace.errors import VerificationError

if TYPE_CHECKING:
    import torch

__all__ = [
    "ATOL",
    "CAPACITY_MARGIN",
    "RTOL",
    "BillingEstimate",
    "Comparison",
    "Mismatch",
    "attested_gflops",
    "billing_cap",
    "compare_results",
    "compare_tensors",
    "detection_probability",
    "freivalds_check",
    "freivalds_tolerance",
    "majority",
    "replay_samples",
    "sample_segments",
    "theoretical_detection",
    "unit_roundoff",
    "verification_seed",
]

#: Relative tolerance of tensor comparisons. Honest reruns of the example jobs on this machine
#: differ by at most ~1e-6 relative when the thread count changes (0 when it does not); a run in
#: half precision differs by more than 1e-3. See docs/verification.md.
RTOL = 1e-4
#: Absolute tolerance of tensor comparisons (for entries near zero).
ATOL = 1e-6
#: A verifier attests this fraction of the throughput it measured, so that measurement noise never
#: lifts a provider that claims exactly 2x its real throughput under the registry's 2x flag.
CAPACITY_MARGIN = 0.8


# ------------------------------------------------------------------ tolerant comparison


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One difference between two results: the file, the tensor (or ``""``) and why."""

    path: str
    tensor: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.tensor}" if self.tensor else self.path
        return f"{where}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Comparison:
    """The outcome of comparing two results; truthy when they agree."""

    mismatches: tuple[Mismatch, ...] = ()
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    compared_files: tuple[str, ...] = field(default=())

    @property
    def agree(self) -> bool:
        """True when nothing differs beyond the tolerances."""
        return not self.mismatches

    def __bool__(self) -> bool:
        return self.agree

    def describe(self) -> str:
        """One line: agreement, or the first few mismatches."""
        if self.agree:
            return f"agree (max abs diff {self.max_abs_diff:.3g}, max rel diff {self.max_rel_diff:.3g})"
        return "; ".join(str(m) for m in self.mismatches[:3]) + (
            f" (+{len(self.mismatches) - 3} more)" if len(self.mismatches) > 3 else ""
        )


def compare_tensors(
    got: Mapping[str, torch.Tensor],
    want: Mapping[str, torch.Tensor],
    *,
    rtol: float = RTOL,
    atol: float = ATOL,
    path: str = "",
) -> Comparison:
    """Compare two name→tensor maps: same names, shapes, dtypes; values within the tolerances.

    Non-finite values must sit at the same places (NaN equals NaN here; a job that diverges
    diverges the same way on a rerun).
    """
    import torch

    mismatches: list[Mismatch] = []
    max_abs = max_rel = 0.0
    for name in sorted(set(got) | set(want)):
        if name not in got or name not in want:
            mismatches.append(Mismatch(path, name, "missing in one result"))
            continue
        a, b = got[name], want[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            mismatches.append(Mismatch(path, name, f"{a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"))
            continue
        if not (a.is_floating_point() or a.is_complex()):
            if not torch.equal(a, b):
                mismatches.append(Mismatch(path, name, "integer tensors differ"))
            continue
        a64, b64 = a.double(), b.double()
        finite_a, finite_b = torch.isfinite(a64), torch.isfinite(b64)
        if not torch.equal(finite_a, finite_b) or not torch.equal(
            torch.nan_to_num(a64[~finite_a], nan=0.0), torch.nan_to_num(b64[~finite_b], nan=0.0)
        ):
            mismatches.append(Mismatch(path, name, "non-finite values differ"))
            continue
        if a64.numel() == 0:
            continue
        diff = (a64[finite_a] - b64[finite_b]).abs()
        scale = b64[finite_b].abs()
        if diff.numel():
            max_abs = max(max_abs, float(diff.max()))
            max_rel = max(max_rel, float((diff / scale.clamp_min(atol if atol > 0 else 1e-300)).max()))
            bad = diff > atol + rtol * scale
            if bool(bad.any()):
                mismatches.append(Mismatch(
                    path, name, f"{int(bad.sum())} of {diff.numel()} values beyond rtol={rtol:g} atol={atol:g} "
                    f"(max abs diff {float(diff.max()):.3g})"))
    return Comparison(tuple(mismatches), max_abs, max_rel, (path,) if path else ())


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise VerificationError(f"verify: {path.name} is not a valid safetensors file: {exc}") from None


def _files(root: Path) -> dict[str, Path]:
    from marketplace.merkle import list_files

    return dict(list_files(root)) if root.is_dir() else {}


def compare_results(
    got: str | Path,
    want: str | Path,
    *,
    subdir: str = "output",
    rtol: float = RTOL,
    atol: float = ATOL,
) -> Comparison:
    """Compare the ``subdir`` files of two downloaded results (default: the job's outputs).

    ``.safetensors`` files are compared tensor by tensor with the tolerances, every other file
    exactly. Logs and checkpoints are not part of a job's answer and are not compared here.
    """
    a_files, b_files = _files(Path(got) / subdir), _files(Path(want) / subdir)
    mismatches: list[Mismatch] = []
    max_abs = max_rel = 0.0
    for rel in sorted(set(a_files) | set(b_files)):
        if rel not in a_files or rel not in b_files:
            mismatches.append(Mismatch(rel, "", "present in only one result"))
            continue
        if rel.endswith(".safetensors"):
            try:
                cmp = compare_tensors(_load_safetensors(a_files[rel]), _load_safetensors(b_files[rel]),
                                      rtol=rtol, atol=atol, path=rel)
            except VerificationError as exc:
                mismatches.append(Mismatch(rel, "", str(exc)))
                continue
            mismatches.extend(cmp.mismatches)
            max_abs, max_rel = max(max_abs, cmp.max_abs_diff), max(max_rel, cmp.max_rel_diff)
        elif _sha256(a_files[rel]) != _sha256(b_files[rel]):
            mismatches.append(Mismatch(rel, "", "files differ"))
    return Comparison(tuple(mismatches), max_abs, max_rel, tuple(sorted(set(a_files) | set(b_files))))


def _sha256(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.digest()


def majority(results: Sequence[str | Path], **tolerances: float) -> tuple[list[int] | None, list[list[int]]]:
    """Group results by agreement; return ``(winners, groups)``.

    Each result joins the first group whose first member it agrees with. ``winners`` is the
    indices of the group holding a strict majority, or None (no majority: void the job).
    """
    groups: list[list[int]] = []
    for i, path in enumerate(results):
        for group in groups:
            if compare_results(path, results[group[0]], **tolerances).agree:  # type: ignore[arg-type]
                group.append(i)
                break
        else:
            groups.append([i])
    best = max(groups, key=len) if groups else []
    return (best if 2 * len(best) > len(results) else None), groups


# ------------------------------------------------------------------ Freivalds


def unit_roundoff(dtype: torch.dtype) -> float:
    """Unit roundoff of a floating dtype (2**-24 for float32, 2**-11 for float16, 2**-8 for bfloat16)."""
    import torch

    if not dtype.is_floating_point:
        return 0.0
    return float(torch.finfo(dtype).eps) / 2


def freivalds_tolerance(dtype: torch.dtype, inner: int, *, factor: float = 8.0) -> float:
    """Relative tolerance of one row of ``(A·B)·r`` for a product computed in ``dtype``.

    Rounding errors of a length-``inner`` dot product grow like ``sqrt(inner)`` times the unit
    roundoff (random-walk bound; the worst case is ``inner``); ``factor`` covers blocked kernels
    and the rounding of the output itself. The error is measured against the root of the sum of
    the squares of the terms, ``sqrt((A∘A)·((B∘B)·(r∘r)))_i``, the size an honest rounding error
    scales with (see :func:`freivalds_check`).
    """
    return factor * unit_roundoff(dtype) * (math.sqrt(max(1, inner)) + 1.0)


def freivalds_check(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    *,
    seed: int,
    rounds: int = 2,
    dtype: torch.dtype | None = None,
    factor: float = 8.0,
) -> tuple[bool, float]:
    """Check ``c == a @ b`` with ``rounds`` random vectors drawn from ``seed``; O(rounds·n²).

    Returns ``(ok, worst)`` where ``worst`` is the largest row error divided by its tolerance
    (``ok`` when it is at most 1). The check runs in float32 (float64 for float64 products), five
    passes over n² entries per vector; its own rounding is added to the tolerance of ``dtype``
    (the product's declared dtype; by default ``c``'s).
    """
    import torch

    if a.dim() != 2 or b.dim() != 2 or c.dim() != 2 or a.shape[1] != b.shape[0] or c.shape != (a.shape[0], b.shape[1]):
        return False, math.inf
    dtype = dtype or c.dtype
    # The check's own float32 rounding is a fraction of the float32 tolerance; products declared in
    # float64 are checked in float64.
    work = torch.float64 if dtype == torch.float64 else torch.float32
    tol = freivalds_tolerance(dtype, a.shape[1], factor=factor) + freivalds_tolerance(work, a.shape[1], factor=2.0)
    a_, b_, c_ = a.to(work), b.to(work), c.to(work)
    gen = torch.Generator().manual_seed(seed % (1 << 63))
    worst = 0.0
    a_sq = a_ * a_
    b_sq = b_ * b_
    for _ in range(rounds):
        r = torch.randn(b.shape[1], generator=gen, dtype=work)
        got = c_ @ r
        # A NaN or infinity anywhere in c reaches c·r (r has no zero entries): no O(n²) scan needed.
        if not bool(torch.isfinite(got).all()):
            return False, math.inf
        want = a_ @ (b_ @ r)
        scale = (a_sq @ (b_sq @ (r * r))).sqrt()
        ratio = ((got - want).abs() / (tol * scale).clamp_min(1e-30)).max()
        worst = max(worst, float(ratio))
    return worst <= 1.0, worst


# ------------------------------------------------------------------ seeds and sampling


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


# ------------------------------------------------------------------ billing and capacity


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


def attested_gflops(flops: int, reported_s: float, wall_s: float, *, margin: float = CAPACITY_MARGIN) -> int:
    """The throughput to attest for a capacity challenge, in GFLOP/s.

    The worker reports its device time; the verifier timed the whole call. A worker may report
    less time than it took, so at least half the wall time counts, and the verifier keeps a margin.
    """
    seconds = max(reported_s, 0.5 * wall_s, 1e-9)
    return max(0, int(flops / seconds / 1e9 * margin))


def stable_hash(parts: Iterable[bytes]) -> bytes:
    """keccak256 of the concatenation (a helper for seeds)."""
    return bytes(keccak(b"".join(parts)))
