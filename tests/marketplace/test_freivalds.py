"""Freivalds' check of matrix products (marketplace.verify.freivalds.freivalds_check): honest products of any
shape, dtype and structure pass; wrong precision, random outputs and single wrong entries fail."""

from __future__ import annotations

import math

import pytest
import torch

from marketplace.verify import freivalds

SHAPES = [(96, 128, 80), (300, 2, 500), (17, 4, 20000), (64, 4096, 64), (1, 3000, 1), (512, 512, 512)]
KINDS = [
    "gauss",
    "relu",
    "uniform",
    "offset",
    "scaled rows of b",
    "outliers",
    "low rank",
    "cancelling rows",
    "cancelling rows, alternating offsets",
]


def operands(kind: str, n: int, k: int, m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``a`` (n×k) and ``b`` (k×m) of a given structure."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    if kind == "gauss":
        return randn(n, k), randn(k, m)
    if kind == "relu":  # non-negative, like activations: every sum is a sum of one sign
        return randn(n, k).clamp_min(0), randn(k, m).clamp_min(0)
    if kind == "uniform":
        return torch.rand(n, k, generator=gen), torch.rand(k, m, generator=gen)
    if kind == "offset":
        return randn(n, k) + 3, randn(k, m) + 3
    if kind == "scaled rows of b":
        return randn(n, k), randn(k, m) * torch.logspace(-3, 3, k)[:, None]
    if kind == "outliers":
        a, b = randn(n, k), randn(k, m)
        a[0, 0], b[-1, -1] = 1e4, 1e4
        return a, b
    if kind == "low rank":
        return randn(n, 2) @ randn(2, k), randn(k, 2) @ randn(2, m)
    # Rows positive over the first half of the inner dimension and negative over the second: the
    # partial sums of each entry rise far above the entry and cancel again.
    a = randn(n, k).abs()
    a[:, k // 2 :] *= -1
    if kind == "cancelling rows":
        return a, randn(k, m) + 3
    signs = torch.ones(m)
    signs[1::2] = -1
    return a, randn(k, m) + 3 * signs


@pytest.mark.parametrize("kind", KINDS)
def test_honest_float32_and_float64_products__pass_with_room__for_every_shape_and_seed(kind: str) -> None:
    worst = 0.0
    for shape in SHAPES:
        a, b = operands(kind, *shape, seed=len(kind))
        products = [(a @ b, a, b), (a.double() @ b.double(), a.double(), b.double())]
        for c, x, y in products:
            for seed in range(3):
                ok, w = freivalds.freivalds_check(x, y, c, seed=seed, rounds=2)
                assert ok, (kind, shape, c.dtype, seed, w)
                worst = max(worst, w)
    assert worst < 0.6  # honest rounding uses well under the tolerance


@pytest.mark.parametrize("k", [4096, 8192])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cancelling_rows_with_alternating_column_offsets__pass_for_every_vector(k: int, dtype: torch.dtype) -> None:
    # Rows that rise over half the inner dimension and cancel over the other, times columns whose
    # offsets alternate in sign: b·1 cancels the offsets, and a random r all but cancels them for a
    # few % of vectors, while a float64 product summed in one long sequence rounds with them. The
    # running sums along b's rows' common part (its column sums) bound them for every r.
    a, b = operands("cancelling rows, alternating offsets", 128, k, 128, seed=k)
    a, b = a.to(dtype), b.to(dtype)
    c = a @ b
    verdicts = [freivalds.freivalds_check(a, b, c, seed=seed, rounds=1) for seed in range(200)]
    rejected = [seed for seed, (ok, _) in enumerate(verdicts) if not ok]
    worst = max(w for _, w in verdicts)
    assert not rejected and worst < 0.5, (rejected, worst)


@pytest.mark.parametrize("kind", ["gauss", "relu", "uniform", "offset", "scaled rows of b", "outliers", "low rank"])
def test_half_precision_and_random_outputs__fail(kind: str) -> None:
    for shape in [(96, 128, 80), (300, 2, 500), (512, 512, 512)]:
        a, b = operands(kind, *shape, seed=3)
        c = a @ b
        for seed in range(3):
            assert not freivalds.freivalds_check(a, b, c.half().float(), seed=seed, dtype=torch.float32)[0]
            assert not freivalds.freivalds_check(a, b, c.bfloat16().float(), seed=seed, dtype=torch.float32)[0]
            assert not freivalds.freivalds_check(a, b, torch.randn_like(c) * c.std(), seed=seed)[0]


def test_a_single_wrong_entry_above_the_rows_tolerance__is_caught_every_time() -> None:
    # Every entry of r has |r_j| >= 1, so a wrong entry moves its row by at least its own size:
    # no unlucky draw hides it. At n = 1024 the rows' tolerance is ~0.3% of the mean |c|.
    gen = torch.Generator().manual_seed(5)
    n = 1024
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    c = a @ b
    size = 0.01 * float(c.abs().mean())
    for seed in range(40):
        wrong = c.clone()
        wrong[(37 * seed) % n, (91 * seed) % n] += size if seed % 2 else -size
        ok, worst = freivalds.freivalds_check(a, b, wrong, seed=seed, rounds=1)
        assert not ok and worst > 2, (seed, worst)


def test_freivalds_vector__has_random_signs_and_magnitudes_in_1_to_2() -> None:
    r = freivalds.freivalds_vector(10_000, torch.Generator().manual_seed(1), torch.float32)
    assert bool((r.abs() >= 1).all()) and bool((r.abs() < 2).all())
    assert 0.45 < float((r > 0).float().mean()) < 0.55
    again = freivalds.freivalds_vector(10_000, torch.Generator().manual_seed(1), torch.float32)
    assert torch.equal(r, again)


@pytest.mark.parametrize(("strips", "block"), [(1, 1 << 18), (7, 1 << 18), (301, 1 << 18), (16, 1000), (16, 1)])
def test_any_strips_and_blocks__give_the_same_verdicts(
    strips: int, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(203, 301, generator=gen), torch.randn(301, 77, generator=gen) + 1  # 301: ragged strips
    c = a @ b
    cheat = c.half().float()
    expected = [freivalds.freivalds_check(a, b, x, seed=9, rounds=3, dtype=torch.float32) for x in (c, cheat)]
    default_strips = freivalds.FREIVALDS_STRIPS
    monkeypatch.setattr(freivalds, "FREIVALDS_STRIPS", strips)
    monkeypatch.setattr(freivalds, "FREIVALDS_BLOCK", block)
    again = [freivalds.freivalds_check(a, b, x, seed=9, rounds=3, dtype=torch.float32) for x in (c, cheat)]
    assert [ok for ok, _ in again] == [ok for ok, _ in expected] == [True, False]
    assert again[1][1] == pytest.approx(expected[1][1], rel=0.5)  # the running sums are sampled elsewhere
    if strips == default_strips:  # blocks of rows change the BLAS kernels' rounding, no more
        assert again[1][1] == pytest.approx(expected[1][1], rel=1e-2)


def test_more_rounds__draw_more_vectors_and_report_the_worst_of_them() -> None:
    gen = torch.Generator().manual_seed(4)
    a, b = torch.randn(128, 96, generator=gen), torch.randn(96, 160, generator=gen)
    c = a @ b
    one = freivalds.freivalds_check(a, b, c, seed=3, rounds=1)
    three = freivalds.freivalds_check(a, b, c, seed=3, rounds=3)
    assert one[0] and three[0] and one[1] <= three[1]
    wrong = c.clone()
    wrong[7, 11] += 0.05 * float(c.abs().mean())
    assert not freivalds.freivalds_check(a, b, wrong, seed=3, rounds=1)[0]
    assert not freivalds.freivalds_check(a, b, wrong, seed=3, rounds=3)[0]


def test_the_figure__matches_the_documented_tolerance_computed_directly_in_float64() -> None:
    gen = torch.Generator().manual_seed(6)
    n, k, m = 150, 200, 90
    a, b = torch.randn(n, k, generator=gen), torch.randn(k, m, generator=gen) + 1
    c = a @ b
    c[3, 5] += 0.01
    ok, worst = freivalds.freivalds_check(a, b, c, seed=8, rounds=1)
    r = freivalds.freivalds_vector(m, torch.Generator().manual_seed(8), torch.float32).double()
    ad, bd, cd = a.double(), b.double(), c.double()
    s_sq = 4 * (ad * ad) @ (bd * bd).sum(1)
    c_sq = 4 * (cd * cd).sum(1)
    width = math.ceil(k / freivalds.FREIVALDS_STRIPS)
    drift = torch.zeros(n, dtype=torch.float64)
    mean = bd.sum(0)
    for x in (bd @ r, bd.sum(1) * 2 / math.sqrt(m), bd @ mean * 2 / mean.norm()):
        running = torch.stack([(ad[:, :e] * x[:e]).sum(1) for e in range(width, k + width, width)], 1)
        drift += (running * running).sum(1) * width / k
    tol = (
        freivalds.freivalds_tolerance(torch.float32, k)
        + freivalds.freivalds_tolerance(torch.float32, k, factor=2.0)
        + freivalds.freivalds_tolerance(torch.float32, m, factor=2.0)
    )
    expected = float(((cd @ r - ad @ (bd @ r)).abs() / (tol * (s_sq + c_sq + drift).sqrt())).max())
    assert not ok and worst == pytest.approx(expected, rel=1e-3)


def test_nan_or_infinity_in_c__or_entries_no_product_of_a_and_b_can_reach__fail() -> None:
    gen = torch.Generator().manual_seed(7)
    a, b = torch.randn(64, 48, generator=gen), torch.randn(48, 32, generator=gen)
    c = a @ b
    for value in (math.nan, math.inf, -math.inf, 1e20, 3e37):
        bad = c.clone()
        bad[5, 6] = value
        assert freivalds.freivalds_check(a, b, bad, seed=1)[0] is False
    nan_a = a.clone()
    nan_a[0, 0] = math.nan
    assert freivalds.freivalds_check(nan_a, b, c, seed=1) == (False, math.inf)


@pytest.mark.parametrize("exponent", [60, 30, -30, -60, -75])
def test_honest_products_far_from_1__pass_and_wrong_ones_fail(exponent: int) -> None:
    gen = torch.Generator().manual_seed(8)
    a = torch.randn(96, 80, generator=gen) * 2.0**exponent
    b = torch.randn(80, 64, generator=gen) * 2.0**exponent
    c = a @ b
    assert freivalds.freivalds_check(a, b, c, seed=2)[0]
    if exponent > -70:  # above float32's subnormal range
        assert not freivalds.freivalds_check(a, b, c.half().float(), seed=2, dtype=torch.float32)[0]
        assert not freivalds.freivalds_check(a, b, -c, seed=2)[0]


def test_products_declared_in_half_precision__pass_when_rounded_honestly() -> None:
    gen = torch.Generator().manual_seed(9)
    a, b = torch.randn(128, 256, generator=gen), torch.randn(256, 64, generator=gen)
    exact = a.double() @ b.double()
    for dtype in (torch.float16, torch.bfloat16):
        assert freivalds.freivalds_check(a, b, exact.to(dtype), seed=1, dtype=dtype)[0]
        assert not freivalds.freivalds_check(a, b, torch.randn(128, 64, generator=gen).to(dtype), seed=1)[0]


def test_strided_views_and_other_input_dtypes__give_the_same_verdict() -> None:
    gen = torch.Generator().manual_seed(10)
    a, b = torch.randn(70, 50, generator=gen), torch.randn(50, 40, generator=gen)
    c = a @ b
    ok, worst = freivalds.freivalds_check(a, b, c, seed=4)
    ok_t, worst_t = freivalds.freivalds_check(
        a.t().contiguous().t(), b.t().contiguous().t(), c.t().contiguous().t(), seed=4
    )
    assert ok and ok_t and worst_t == pytest.approx(worst, rel=0.3)  # mat-vecs of strided views round differently
    assert freivalds.freivalds_check(b.t(), a.t(), c.t(), seed=4)[0]
    ai, bi = torch.randint(-5, 5, (30, 20), generator=gen), torch.randint(-5, 5, (20, 10), generator=gen)
    assert freivalds.freivalds_check(ai, bi, (ai @ bi).float(), seed=4)[0]
    assert not freivalds.freivalds_check(ai, bi, (ai @ bi).float() + 1, seed=4)[0]


def test_degenerate_shapes() -> None:
    a, b = torch.randn(4, 3), torch.randn(3, 5)
    assert freivalds.freivalds_check(a, b, (a @ b).t(), seed=1) == (False, math.inf)
    assert freivalds.freivalds_check(a, b, a @ b, seed=1, rounds=0) == (True, 0.0)
    assert freivalds.freivalds_check(torch.empty(0, 3), b, torch.empty(0, 5), seed=1) == (True, 0.0)
    assert freivalds.freivalds_check(torch.empty(4, 0), torch.empty(0, 5), torch.zeros(4, 5), seed=1)[0]
    assert not freivalds.freivalds_check(torch.empty(4, 0), torch.empty(0, 5), torch.ones(4, 5), seed=1)[0]
