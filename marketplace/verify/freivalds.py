"""Pure verification checks: tolerant result comparison, Freivalds, replay sampling, billing caps.

Nothing here runs job code or talks to a chain; the verifier daemon (``worker.verifier.daemon``) and the
benchmark build on these functions, and so can anyone who wants to re-check a verdict.

- :func:`compare_tensors` / :func:`compare_results`: two runs' outputs agree when every
  safetensors tensor is within ``|a - b| <= atol + rtol * |b|`` elementwise (same names, shapes
  and dtypes) and every other file is byte-for-byte equal. The defaults (:data:`RTOL`,
  :data:`ATOL`) are calibrated on honest reruns (docs/verification.md).
- :func:`majority`: groups k results by agreement; the largest group wins if it is a strict
  majority.
- :func:`freivalds_check`: checks ``C = A·B`` with random vectors in O(n²) per vector, with a
  per-row tolerance fitted to the product's dtype and dimensions (:func:`freivalds_tolerance`) and
  to the sizes of its terms, entries and partial sums.
- :func:`verification_seed`, :func:`sample_segments`, :func:`replay_samples`: the seed a verifier
  draws its samples from is fixed only after the result is committed (it hashes the block that
  holds the ``ResultCommitted`` event), so a provider cannot know which segments will be replayed.
- :func:`detection_probability`: the chance that ``s`` sampled segments out of ``n`` find at least
  one of ``bad`` faked ones.
- :func:`billing_cap`: the GPU-seconds the verified work and the attested throughput make
  plausible; a verifier attests ``min(claim, cap)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["freivalds_check", "freivalds_tolerance", "freivalds_vector", "unit_roundoff"]


# ------------------------------------------------------------------ tolerant comparison


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
    roundoff times the size of the sum's terms and running totals (random-walk bound; the worst
    case is ``inner``); ``factor`` covers blocked kernels and the rounding of the output itself.
    :func:`freivalds_check` multiplies it by that size, row by row.
    """
    return factor * unit_roundoff(dtype) * (math.sqrt(max(1, inner)) + 1.0)


#: Contiguous strips of the inner dimension (at least; ``sqrt(k)/16`` for a larger k) in
#: :func:`freivalds_check`: ``a·x`` is summed strip by strip, and the running sums at the strips'
#: ends stand for the partial sums of each row's dot products. Between two ends, partial sums can
#: rise and fall by at most a strip's terms, which the terms' root sum of squares covers while a
#: strip holds at most ~16·sqrt(k) of them.
FREIVALDS_STRIPS = 8
#: Entries of the blocks of rows :func:`freivalds_check` reads its matrices in (1 MiB in float32,
#: fewer rows when a BLAS call would exceed :data:`_BLAS_CALL_MAX`). A block stays in cache for all
#: the products formed from it, so each matrix is read from memory once.
FREIVALDS_BLOCK = 1 << 18
#: Largest magnitude of a Freivalds vector's entries (they are uniform in ±[1, 2)).
FREIVALDS_R_MAX = 2.0


def freivalds_vector(n: int, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """A random vector for :func:`freivalds_check`: random signs, magnitudes uniform in [1, 2).

    No entry is near zero, so a wrong entry ``δ`` of ``c`` moves its row of ``c·r`` by at least
    ``|δ|`` in every round; and since ``r_j² ≤ 4``, the tolerance's sizes ``(c∘c)·(r∘r)`` and
    ``(b∘b)·(r∘r)`` are bounded by 4 × the rows' squared norms, which one pass computes for all
    rounds. Continuous magnitudes leave two wrong entries of a row no chance to cancel exactly
    (as ``±1`` would half of the time).
    """
    import torch

    v = torch.rand(n, generator=generator, dtype=dtype).mul_(2.0).sub_(1.0)  # [-1, 1)
    return torch.where(v < 0, v - 1.0, v + 1.0)


#: Most multiply-adds of one BLAS call in :func:`_row_pass` and :func:`_check_strips` (a block of
#: rows times a few vectors): numpy's OpenBLAS runs calls this small on the calling thread.
_BLAS_CALL_MAX = 1 << 19


def _block_rows(cols: int, vectors: int, width: int | None = None) -> int:
    """Rows per block: :data:`FREIVALDS_BLOCK` entries, fewer when a BLAS call would exceed :data:`_BLAS_CALL_MAX`."""
    per_row = max(1, width if width is not None else cols) * max(1, vectors)
    return max(1, min(FREIVALDS_BLOCK // max(1, cols), _BLAS_CALL_MAX // per_row))


def _row_pass(
    m: torch.Tensor,
    xs: Sequence[torch.Tensor],
    *,
    column_sums: np.ndarray | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``m·x`` for each ``x`` and the rows' squared norms ``(m∘m)·1`` (float64), one pass over ``m``.

    Block by block of rows, while the block is in cache: one BLAS product with all the ``x`` at
    once, and the squared norms as one BLAS dot product per row (numpy's batched matmul), no
    temporary. With ``column_sums`` (zeros, one per column), also adds ``1·m`` to it (numpy's
    sum over the block's rows).
    """
    import numpy as np
    import torch

    rows, cols = m.shape
    entries = m.numpy()
    dtype = entries.dtype
    vectors = np.stack([x.numpy() for x in xs], axis=1) if xs else np.zeros((cols, 0), dtype=dtype)
    step = _block_rows(cols, len(xs))
    outs = np.empty((rows, len(xs)), dtype=dtype)
    norms = np.empty(rows, dtype=dtype)
    column = np.empty(cols, dtype=dtype) if column_sums is not None else None
    for lo in range(0, rows, step):
        block = np.ascontiguousarray(entries[lo : lo + step])  # a strided view: a copy of the block only
        np.matmul(block, vectors, out=outs[lo : lo + step])
        if column_sums is not None and column is not None:
            column_sums += np.add.reduce(block, axis=0, out=column)
        np.matmul(block[:, None, :], block[:, :, None], out=norms[lo : lo + step].reshape(-1, 1, 1))
    products = np.ascontiguousarray(outs.T)
    return [torch.from_numpy(p) for p in products], torch.from_numpy(norms).to(torch.float64)


def _mat_vec(m: torch.Tensor, x: np.ndarray) -> torch.Tensor:
    """``m·x`` block by block of rows: BLAS mat-vecs small enough to run on the calling thread."""
    import numpy as np
    import torch

    entries = m.numpy()
    out = np.empty(m.shape[0], dtype=entries.dtype)
    step = _block_rows(m.shape[1], 1)
    for lo in range(0, m.shape[0], step):
        np.matmul(np.ascontiguousarray(entries[lo : lo + step]), x, out=out[lo : lo + step])
    return torch.from_numpy(out)


def _check_strips(
    a: torch.Tensor,
    xs: Sequence[torch.Tensor],
    w: torch.Tensor,
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """``a·x`` and the mean square of its running sums for each ``x``, and ``(a∘a)·w``: one pass over ``a``.

    Block by block of rows, while the block is in cache: numpy squares it in a reused buffer and a
    BLAS mat-vec weighs the squares (``(a∘a)·w``); then ``a·x`` for every ``x`` at once, strip by
    strip of :data:`FREIVALDS_STRIPS` strips of columns, as one batched BLAS product of the
    block's strips (rows × width) with the vectors' strips (width × len(xs)): a strip's terms are
    few, so whatever order they are summed in their rounding stays small, and the strips' sums
    are added up in float64. Returns the sums and the mean squares of their running sums
    (float64), and ``(a∘a)·w``.
    """
    import numpy as np
    import torch

    rows, cols = a.shape
    width = -(-max(1, cols) // max(FREIVALDS_STRIPS, math.isqrt(cols) // 16))
    full = cols // width  # strips of exactly ``width`` columns; the last one may be narrower
    tail = cols - full * width
    strips = max(1, full + (1 if tail else 0))  # one strip of zeros when there are no columns
    q = len(xs)
    entries_all = a.numpy()
    dtype = entries_all.dtype
    step = min(_block_rows(cols, 1), _block_rows(cols, q, width))
    vectors = np.stack([x.numpy() for x in xs], axis=1) if q else np.zeros((cols, 0), dtype=dtype)  # cols × q
    x_full = np.ascontiguousarray(vectors[: full * width].reshape(full, width, q))
    x_tail = np.ascontiguousarray(vectors[full * width :])
    weights = w.numpy()
    s_sq = np.empty(rows, dtype=dtype)
    squares = np.empty((min(step, rows), cols), dtype=dtype)
    parts = np.zeros((strips, min(step, rows), q), dtype=dtype)  # stays 0 with no columns
    running = np.empty((strips, min(step, rows), q), dtype=np.float64)
    sums = np.empty((q, rows), dtype=np.float64)
    drifts = np.empty((q, rows), dtype=np.float64)
    for top in range(0, rows, step):
        entries = np.ascontiguousarray(entries_all[top : top + step])  # a strided view: a copy of the block only
        h = entries.shape[0]
        sq = squares[:h]
        np.multiply(entries, entries, out=sq)
        np.matmul(sq, weights, out=s_sq[top : top + h])
        if full:
            pieces = entries[:, : full * width].reshape(h, full, width).transpose(1, 0, 2)
            np.matmul(pieces, x_full, out=parts[:full, :h])
        if tail:
            np.matmul(entries[:, full * width :], x_tail, out=parts[full, :h])
        run = running[:, :h]
        np.cumsum(parts[:, :h], axis=0, dtype=np.float64, out=run)
        sums[:, top : top + h] = run[-1].T
        np.square(run, out=run)
        drifts[:, top : top + h] = run.sum(axis=0).T
    drifts *= width / max(1, cols)
    return list(torch.from_numpy(sums)), list(torch.from_numpy(drifts)), torch.from_numpy(s_sq)


def _freivalds_worst(
    a: torch.Tensor,
    b: torch.Tensor,
    rs: Sequence[torch.Tensor],
    got: Sequence[torch.Tensor],
    c_sq: torch.Tensor,
    tol: float,
    floor: float,
) -> float | None:
    """The largest row error over its tolerance (see :func:`freivalds_check`); None when a size overflowed.

    ``got`` holds ``c·r`` for each ``r`` and ``c_sq`` the rows' squared norms of ``c``.
    """
    import numpy as np
    import torch

    cols = b.shape[1]
    r_max_sq = FREIVALDS_R_MAX * FREIVALDS_R_MAX
    common = torch.full((cols,), FREIVALDS_R_MAX / math.sqrt(max(1, cols)), dtype=b.dtype)
    means = np.zeros(cols, dtype=b.numpy().dtype)  # b's column sums: its rows' common part
    xs, w = _row_pass(b, [*rs, common], column_sums=means)
    w.mul_(r_max_sq)  # ≥ (b∘b)·(r∘r)
    size = float(np.linalg.norm(means))
    if not math.isfinite(size):
        return None
    # A second pass over b: b·μ along the rows' common part μ, whatever its columns' signs.
    xs.append(_mat_vec(b, means * (FREIVALDS_R_MAX / size)) if size > 0.0 else torch.zeros(b.shape[0], dtype=b.dtype))
    sums, drifts, s_sq = _check_strips(a, xs, w.to(a.dtype))
    # C + S² + P(b·1) + P(b·μ)
    base = c_sq.mul(r_max_sq).add_(s_sq.to(torch.float64)).add_(drifts[-2]).add_(drifts[-1])
    if not (bool(torch.isfinite(w).all()) and bool(torch.isfinite(base).all())):
        return None
    worst = 0.0
    for g, want, drift in zip(got, sums[:-2], drifts[:-2], strict=True):
        scale = drift.add_(base).sqrt_().mul_(tol).add_(floor).clamp_min_(1e-300)
        worst = max(worst, float(g.to(torch.float64).sub_(want).abs_().div_(scale).max()))
    return worst


def _subnormal_step(dtype: torch.dtype) -> float:
    """The spacing of a floating dtype's subnormal numbers (2**-149 for float32; 0 for integers)."""
    import torch

    if not dtype.is_floating_point:
        return 0.0
    info = torch.finfo(dtype)
    return float(info.tiny) * float(info.eps)


def _power_of_two_below(x: torch.Tensor) -> float:
    """A power of two that brings ``max|x|`` to [0.5, 1) (1 for an all-zero ``x``): exact scaling."""
    top = float(x.abs().max()) if x.numel() else 0.0
    return math.ldexp(1.0, -math.frexp(top)[1]) if 0.0 < top < math.inf else 1.0


def _verdict(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    rs: Sequence[torch.Tensor],
    *,
    tol: float,
    floor: float,
    work: torch.dtype,
) -> tuple[bool, float]:
    """:func:`freivalds_check` past its argument checks: ``(ok, worst)`` for vectors ``rs`` in ``work``."""
    import torch

    a_, b_, c_ = (x.detach().to("cpu", work) for x in (a, b, c))
    got, c_sq = _row_pass(c_, rs)
    # A NaN or infinity anywhere in c reaches c·r (r has no zero entries): no O(n²) scan needed.
    finite = all(bool(torch.isfinite(g).all()) for g in got)
    if not finite and not bool(torch.isfinite(c_).all()):
        return False, math.inf
    # Squared norms of rows whose entries are far from 1 may overflow or underflow in ``work``.
    top = max(float(g.abs().max()) for g in got) if finite else math.inf
    usual = 2.0 ** (math.frexp(float(torch.finfo(work).max))[1] // 4)  # 2**32 in float32
    worst = _freivalds_worst(a_, b_, rs, got, c_sq, tol, floor) if 1.0 / usual <= top <= usual else None
    if worst is None:  # unusual sizes: bring a's and b's largest entries to [0.5, 1), once
        fa, fb = _power_of_two_below(a_), _power_of_two_below(b_)
        a_, b_, c_ = a_ * fa, b_ * fb, c_ * fa * fb
        got, c_sq = _row_pass(c_, rs)
        worst = (
            _freivalds_worst(a_, b_, rs, got, c_sq, tol, floor * fa * fb)
            if all(bool(torch.isfinite(g).all()) for g in got)
            else None
        )
    if worst is None or not math.isfinite(worst):  # c too large for any product of a and b, or NaN/inf inputs
        return False, math.inf
    return worst <= 1.0, worst


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
    (``ok`` when it is at most 1). For each vector ``r`` (:func:`freivalds_vector`), row ``i``
    fails when ``|(c·r)_i - (a·(b·r))_i| > tol · sqrt(S_i² + C_i + P_i)``, with ``tol`` from
    :func:`freivalds_tolerance` (the product's declared ``dtype`` over the inner dimension, plus
    the check's own rounding over the inner and the outer dimension) and three sizes an honest
    rounding error grows with:

    - ``S_i² = 4·((a∘a)·‖b_l‖²)_i ≥ ((a∘a)·((b∘b)·(r∘r)))_i``: the terms' root sum of squares
      (what a sum of terms of random signs rounds with);
    - ``C_i = 4·‖c_i‖² ≥ ((c∘c)·(r∘r))_i``: the entries themselves (terms of one sign add up: a
      sequential sum's rounding grows with its running total, not with the terms' RSS);
    - ``P_i``: the mean square of the running sums of ``a_i∘(b·r)``, of ``a_i∘(b·1)·2/sqrt(cols)``
      and of ``a_i∘(b·μ)·2/‖μ‖`` (``μ = 1·b``, ``b``'s column sums) at the ends of
      :data:`FREIVALDS_STRIPS` strips of the inner dimension: ``c_i``'s running sums (what its
      rounding grows with) projected on ``r``, and their common part bounded for every ``r``:
      offsets of ``b``'s rows along ``1`` and along their mean row ``μ``, whatever the signs of its
      columns (offsets of alternating sign cancel in ``b·1``, and ``r``'s random signs may all
      but cancel them in ``b·r``). It covers rows whose partial sums rise and cancel again.

    The check runs in float32 (float64 for float64 products). Cost: each matrix is read from
    memory once, block by block of rows, and ``b`` once more for ``b·μ``: ``c`` and ``b`` for one
    BLAS product of the block with all the vectors (``c·r``; ``b·r``, ``b·1``: terms of random
    signs, so the order they are summed in does not matter), their rows' squared norms (a BLAS dot
    per row) and ``1·b`` (:func:`_row_pass`); ``a`` for ``(a∘a)·w`` and ``a·x`` strip by strip
    while the block is in cache (:func:`_check_strips`). ``S``, ``C`` and the common part of ``P``
    serve every round. No n×n temporary is allocated (but for inputs in another dtype; strided
    inputs are copied a block at a time), and no call is split among threads: every BLAS call is
    small enough (:data:`_BLAS_CALL_MAX`) that numpy's OpenBLAS runs it on the calling thread; on a
    loaded host an op split among threads waits for the slowest thread's time slice (4-8 ms here).
    Products far
    from 1 in size (``c·r`` beyond ``2**±32`` in float32) are checked on ``a``, ``b`` and ``c``
    rescaled by powers of two, which changes no rounding but keeps squared norms in range; below
    the smallest normal number an absolute allowance covers the subnormal steps. NaN or infinity
    anywhere in ``c`` (or inputs that make the check itself non-finite) fails.
    """
    import numpy as np
    import torch

    if a.dim() != 2 or b.dim() != 2 or c.dim() != 2 or a.shape[1] != b.shape[0] or c.shape != (a.shape[0], b.shape[1]):
        return False, math.inf
    dtype = dtype or c.dtype
    # Products declared in float64 are checked in float64, others in float32; the check's own
    # rounding is added to the tolerance of the product's.
    work = torch.float64 if dtype == torch.float64 else torch.float32
    inner, cols = a.shape[1], b.shape[1]
    tol = (
        freivalds_tolerance(dtype, inner, factor=factor)
        + freivalds_tolerance(work, inner, factor=2.0)
        + freivalds_tolerance(work, cols, factor=2.0)
    )
    gen = torch.Generator().manual_seed(seed % (1 << 63))
    rs = [freivalds_vector(cols, gen, work) for _ in range(max(0, rounds))]
    if not rs or c.numel() == 0:
        return True, 0.0
    # Below the smallest normal number, rounding errors are absolute: a subnormal step per term
    # and per addition, of the product and of the check.
    step = max(_subnormal_step(dtype), _subnormal_step(work))
    floor = 4.0 * (inner + 1) * math.sqrt(cols) * FREIVALDS_R_MAX * step
    # numpy's BLAS calls report the overflow of an unusual product's sizes, which the check
    # handles (non-finite sizes are rescaled or fail): no warning.
    with np.errstate(all="ignore"):
        return _verdict(a, b, c, rs, tol=tol, floor=floor, work=work)


# ------------------------------------------------------------------ seeds and sampling


# ------------------------------------------------------------------ billing and capacity
