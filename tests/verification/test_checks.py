"""The pure checks of marketplace.verify.freivalds: tolerant comparison, majority, Freivalds, sampling, billing."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from marketplace.errors import VerificationError
from marketplace.verify import billing, compare, freivalds, sampling
from worker.testing.cheats import Cheat, cheat_run, honest_run
from worker.verifier.daemon import read_checkpoint_log


def write_result(root: Path, tensors: dict[str, torch.Tensor], extra: str = "{}") -> Path:
    (root / "output").mkdir(parents=True)
    save_file(tensors, str(root / "output" / "model.safetensors"))
    (root / "output" / "metrics.json").write_text(extra)
    return root


def test_tensors_within_tolerance__agree__and_beyond_it__do_not() -> None:
    base = {"w": torch.linspace(-1, 1, 100)}
    near = {"w": base["w"] * (1 + 1e-6)}
    far = {"w": base["w"] * (1 + 1e-3)}
    assert compare.compare_tensors(near, base).agree
    result = compare.compare_tensors(far, base)
    assert not result.agree and "beyond rtol" in result.describe()


def test_tensors_with_other_names_shapes_or_dtypes__never_agree() -> None:
    base = {"w": torch.zeros(3)}
    assert not compare.compare_tensors({"v": torch.zeros(3)}, base)
    assert not compare.compare_tensors({"w": torch.zeros(4)}, base)
    assert not compare.compare_tensors({"w": torch.zeros(3, dtype=torch.float16)}, base)


def test_non_float_files__are_compared_exactly(tmp_path: Path) -> None:
    t = {"w": torch.ones(4)}
    a = write_result(tmp_path / "a", t, '{"loss": 0.5}')
    b = write_result(tmp_path / "b", t, '{"loss": 0.5}')
    c = write_result(tmp_path / "c", t, '{"loss": 0.50001}')
    assert compare.compare_results(a, b).agree
    assert [m.path for m in compare.compare_results(a, c).mismatches] == ["metrics.json"]


def test_majority__three_results_one_dissenting__names_the_two_that_agree(tmp_path: Path) -> None:
    good = {"w": torch.arange(8.0)}
    paths = [write_result(tmp_path / str(i), t) for i, t in enumerate([good, {"w": torch.randn(8)}, good])]
    winners, groups = compare.majority(paths)
    assert winners == [0, 2] and len(groups) == 2


def test_majority__two_results_that_disagree__has_no_winner(tmp_path: Path) -> None:
    paths = [write_result(tmp_path / str(i), {"w": torch.full((4,), float(i))}) for i in range(2)]
    assert compare.majority(paths)[0] is None


@pytest.mark.parametrize("n", [64, 512, 1024])
def test_freivalds__passes_honest_float32_products_and_fails_half_precision_and_single_wrong_entries(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    c = a @ b
    ok, worst = freivalds.freivalds_check(a, b, c, seed=7)
    assert ok and worst < 0.5  # honest reruns use under half of the tolerance
    assert not freivalds.freivalds_check(a, b, c.half().float(), seed=7, dtype=torch.float32)[0]
    assert not freivalds.freivalds_check(a, b, torch.randn(n, n), seed=7)[0]
    wrong = c.clone()
    wrong[n // 2, n // 3] += 0.01 * float(c.abs().mean())
    assert not freivalds.freivalds_check(a, b, wrong, seed=7)[0]


def test_freivalds_tolerance__grows_with_the_inner_dimension_and_the_dtypes_roundoff() -> None:
    assert freivalds.freivalds_tolerance(torch.float32, 4096) > freivalds.freivalds_tolerance(torch.float32, 64)
    assert freivalds.freivalds_tolerance(torch.float16, 64) > 1000 * freivalds.freivalds_tolerance(torch.float32, 64)


def test_segment_samples__are_fixed_by_the_seed_and_distinct() -> None:
    picks = sampling.sample_segments(12345, 100, 7)
    assert picks == sampling.sample_segments(12345, 100, 7) and len(set(picks)) == 7
    assert picks != sampling.sample_segments(12346, 100, 7)
    assert sampling.replay_samples(100) == 7 and sampling.replay_samples(4) == 4 and sampling.replay_samples(1000) == 70


def test_verification_seed__depends_on_the_commit_block_job_and_slot() -> None:
    seeds = {sampling.verification_seed(h, j, s) for h in (b"\1" * 32, b"\2" * 32) for j in (1, 2) for s in (0, 1)}
    assert len(seeds) == 8


def test_detection_probability__matches_the_textbook_figure_for_large_jobs() -> None:
    assert sampling.detection_probability(1000, 500, 7) == pytest.approx(
        sampling.theoretical_detection(0.5, 7), abs=2e-3
    )
    assert sampling.detection_probability(100, 0, 7) == 0.0
    assert sampling.detection_probability(10, 10, 1) == 1.0


def test_billing_cap__leaves_an_honest_claim_and_cuts_an_inflated_one() -> None:
    assert not billing.billing_cap(10, estimated_seconds=10.0).capped
    cut = billing.billing_cap(30, estimated_seconds=10.0, slack=1.5, overhead_s=0)
    assert cut.capped and cut.verified == 15
    by_flops = billing.billing_cap(100, flops=2e12, attested_gflops=100.0, slack=1.0, overhead_s=0)
    assert by_flops.verified == 20 and by_flops.basis == "work at attested throughput"
    assert billing.billing_cap(7).verified == 7


def test_attested_throughput__discounts_a_worker_that_reports_less_time_than_it_took() -> None:
    flops = 2 * 1024**3
    honest = billing.attested_gflops(flops, reported_s=0.1, wall_s=0.12)
    liar = billing.attested_gflops(flops, reported_s=0.01, wall_s=0.12)
    assert liar <= 2 * honest * 1.25


def test_checkpoint_log__with_a_file_changed_after_logging__is_refused(tmp_path: Path) -> None:
    save_file({"w": torch.ones(2)}, str(tmp_path / "ckpt-00000000.safetensors"))
    import hashlib

    digest = hashlib.sha256((tmp_path / "ckpt-00000000.safetensors").read_bytes()).hexdigest()
    (tmp_path / "checkpoints.jsonl").write_text(
        json.dumps({"step": 0, "file": "ckpt-00000000.safetensors", "sha256": digest}) + "\n"
    )
    assert [e["step"] for e in read_checkpoint_log(tmp_path)] == [0]
    save_file({"w": torch.zeros(2)}, str(tmp_path / "ckpt-00000000.safetensors"))
    with pytest.raises(VerificationError, match="does not match its hash"):
        read_checkpoint_log(tmp_path)


def test_default_tolerances__hold_for_honest_reruns_and_catch_half_precision_training() -> None:
    honest = honest_run(11, 6, 5)
    torch.set_num_threads(1)
    try:
        rerun = honest_run(11, 6, 5)
    finally:
        torch.set_num_threads(2)
    half = cheat_run(11, 6, 5, Cheat("half"), random.Random(1))
    assert all(compare.compare_tensors(x, y).agree for x, y in zip(rerun, honest, strict=True))
    assert not compare.compare_tensors(half[-1], honest[-1]).agree


def _result(root: Path, files: dict[str, str]) -> Path:
    """Results whose files are in ``output/``, or in ``work/`` (the working directory) when so named."""
    for name, text in files.items():
        path = root / name if name.startswith("work/") else root / "output" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_judge_by_reruns__a_file_the_reruns_disagree_on__is_not_held_against_the_provider(tmp_path: Path) -> None:
    # A plot with a creation timestamp: every run writes another, the provider's too.
    rerun = _result(tmp_path / "a", {"loss.txt": "0.125", "plot.pdf": "created 10:00"})
    control = _result(tmp_path / "b", {"loss.txt": "0.125", "plot.pdf": "created 10:05"})
    honest = _result(tmp_path / "p", {"loss.txt": "0.125", "plot.pdf": "created 09:30"})
    judged = compare.judge_by_reruns(rerun, control, honest)
    assert (judged.verdict, judged.unstable, judged.checked) == ("match", ("plot.pdf",), ("loss.txt",))
    assert "1 reproducible file(s) match" in judged.describe() and "plot.pdf" in judged.describe()


def test_judge_by_reruns__a_reproducible_file_that_differs__is_decisive(tmp_path: Path) -> None:
    rerun = _result(tmp_path / "a", {"loss.txt": "0.125", "plot.pdf": "created 10:00"})
    control = _result(tmp_path / "b", {"loss.txt": "0.125", "plot.pdf": "created 10:05"})
    cheat = _result(tmp_path / "p", {"loss.txt": "0.5", "plot.pdf": "created 09:30"})
    judged = compare.judge_by_reruns(rerun, control, cheat)
    assert judged.verdict == "differs" and [m.path for m in judged.decisive] == ["loss.txt"]
    missing = _result(tmp_path / "q", {"plot.pdf": "created 09:30"})
    assert compare.judge_by_reruns(rerun, control, missing).verdict == "differs"


def test_judge_by_reruns__nothing_reproducible__is_undecidable(tmp_path: Path) -> None:
    rerun = _result(tmp_path / "a", {"stamp.txt": "1"})
    control = _result(tmp_path / "b", {"stamp.txt": "2"})
    provided = _result(tmp_path / "p", {"stamp.txt": "3"})
    judged = compare.judge_by_reruns(rerun, control, provided)
    assert judged.verdict == "undecidable" and judged.checked == ()


def test_compare_results__with_a_declared_answer__compares_only_those_files(tmp_path: Path) -> None:
    a = _result(tmp_path / "a", {"loss.txt": "0.125", "plot.pdf": "created 10:00", "work/model.pt": "w1"})
    b = _result(tmp_path / "b", {"loss.txt": "0.125", "plot.pdf": "created 10:05", "work/model.pt": "w1"})
    assert not compare.compare_results(a, b, subdir=("output", "work"))
    answer = ("*.txt", "work/*.pt")
    agreed = compare.compare_results(a, b, subdir=("output", "work"), answer=answer)
    assert agreed.agree and "plot.pdf" not in agreed.compared_files
    wrong = _result(tmp_path / "c", {"loss.txt": "0.5", "plot.pdf": "created 10:05", "work/model.pt": "w1"})
    assert [m.path for m in compare.compare_results(a, wrong, subdir=("output", "work"), answer=answer).mismatches] == [
        "loss.txt"
    ]
