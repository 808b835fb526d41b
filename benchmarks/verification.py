"""Verification benchmark: how often each cheat is caught, how often honest work is wrongly refused,
and what checking costs next to the work checked.

``python -m benchmarks.verification [--trials 100] [--segments 100]`` prints one JSON document.

What one trial does (all real code, in-process, so that hundreds of trials fit on two cores):

- replay: ``runs`` real training runs of ``examples/replay_mlp`` per cheat (the same
  ``run_segment`` the sandboxed job runs; fresh seed, fresh skipped segments), honest or under a
  cheat, each produce ``segments`` committed checkpoints; the trials share them, and in each trial
  a fresh verification seed draws ``replay_samples(segments)`` segments
  (:func:`marketplace.verify.sampling.sample_segments`); each is re-run from its committed predecessor and
  compared with :func:`marketplace.verify.compare.compare_tensors` at the default tolerances. Detected =
  any sampled segment differs. Cost = replayed segments' time / the run's time (process start-up,
  which a sandboxed replay adds once per segment, is not counted; see docs/verification.md);
- freivalds: a fresh ``n×n`` float32 product (honest, computed in half precision, or random), checked
  with :func:`marketplace.verify.freivalds.freivalds_check` and ``--freivalds-rounds`` fresh random vectors;
  cost = check time / product time;
- capacity: a real timed product of the challenge matrices (:mod:`marketplace.protocol.capacity`) as the
  worker computes it; the verifier's throughput figure (:func:`marketplace.verify.billing.attested_gflops`)
  against the provider's claim of ``factor`` × its real throughput, flagged by the registry's rule
  (claim > 2 × attested); the ``fake timing`` variant also reports a tenth of the time it took.

The on-chain consequences (a detected cheat rejected, slashed and the requester refunded; the
billing cap visible in ``ResultAttested``) are shown end to end, through the contracts and the
sandbox, by ``tests/verification/test_policies_on_chain.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from typing import Any

import torch

from marketplace.protocol.capacity import challenge_flops, challenge_matrices
from marketplace.verify import billing, compare, freivalds, sampling
from worker.testing.cheats import Cheat, cheat_run, honest_run, load_replay_mlp


def replay_trials(
    cheat: Cheat, trials: int, runs: int, segments: int, steps: int, rng: random.Random
) -> dict[str, Any]:
    """``trials`` verifications spread over ``runs`` real training runs (fresh segment draws each)."""
    mlp = load_replay_mlp()
    samples = sampling.replay_samples(segments)
    detected = 0
    job_s = check_s = 0.0
    per_run = [trials // runs + (1 if i < trials % runs else 0) for i in range(runs)]
    for count in per_run:
        seed = rng.randrange(1 << 30)
        t0 = time.perf_counter()
        honest_run(seed, segments, steps)
        run_s = time.perf_counter() - t0  # the honest job's compute: what the check is weighed against
        ckpts = cheat_run(seed, segments, steps, cheat, rng) if cheat.kind != "none" else None
        if ckpts is None:
            ckpts = honest_run(seed, segments, steps)
        data = mlp.make_data(seed)
        replayed: dict[int, tuple[bool, float]] = {}  # segment -> (differs, seconds to replay it)
        for _ in range(count):
            caught = False
            for index in sampling.sample_segments(rng.randrange(1 << 62), segments, samples):
                if index not in replayed:
                    t0 = time.perf_counter()
                    before = ckpts[index - 1] if index > 0 else mlp.init_state(seed)
                    again = mlp.run_segment(before, index, seed, data, steps=steps)
                    differs = not compare.compare_tensors(again, ckpts[index]).agree
                    replayed[index] = (differs, time.perf_counter() - t0)
                differs, seconds = replayed[index]
                check_s += seconds
                if differs:
                    caught = True
                    break
            job_s += run_s
            detected += caught
    f = cheat.fraction if cheat.kind == "skip" else (1.0 if cheat.kind in ("random", "half") else 0.0)
    out: dict[str, Any] = {
        "cheat": cheat.label if cheat.kind != "none" else "honest",
        "trials": trials,
        "training_runs": runs,
        "segments": segments,
        "samples": samples,
        "detected": detected,
        "detection_rate": detected / trials,
        "verifier_cost_fraction": round(check_s / job_s, 4),
    }
    if cheat.kind == "skip":
        out["theoretical_1_minus_(1-f)^s"] = round(sampling.theoretical_detection(f, samples), 4)
        out["exact_without_replacement"] = round(
            sampling.detection_probability(segments, max(1, round(f * segments)), samples), 4
        )
    return out


def freivalds_trials(kind: str, trials: int, n: int, rng: random.Random, rounds: int = 1) -> dict[str, Any]:
    detected = 0
    product_s = check_s = 0.0
    for _ in range(trials):
        gen = torch.Generator().manual_seed(rng.randrange(1 << 62))
        a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        t0 = time.perf_counter()
        c = a @ b
        product_s += time.perf_counter() - t0
        if kind == "half":
            c = (a.half() @ b.half()).float() if torch.cuda.is_available() else c.half().float()
        elif kind == "random":
            c = torch.randn(n, n, generator=gen)
        t0 = time.perf_counter()
        ok, _worst = freivalds.freivalds_check(a, b, c, seed=rng.randrange(1 << 62), rounds=rounds, dtype=torch.float32)
        check_s += time.perf_counter() - t0
        detected += not ok
    return {
        "cheat": kind,
        "trials": trials,
        "n": n,
        "rounds": rounds,
        "detected": detected,
        "detection_rate": detected / trials,
        "verifier_cost_fraction": round(check_s / product_s, 4),
    }


def _timed_product(n: int, seed: int) -> tuple[float, float]:
    a, b = challenge_matrices(seed, n)
    t0 = time.perf_counter()
    a @ b
    elapsed = time.perf_counter() - t0
    return elapsed, elapsed * 1.05 + 0.002  # the call's wall time: device time plus hashing and transport


def capacity_trials(
    factor: float, fake_timing: bool, trials: int, n: int, rng: random.Random, real: float, attempts: int
) -> dict[str, Any]:
    """``trials`` capacity decisions for a provider claiming ``factor`` x its ``real`` GFLOP/s.

    Each decision is the verifier's sequential test: challenge, and while the best measurement so
    far would flag the claim, challenge again, up to ``attempts`` times; the best is attested and
    the registry's rule flags the claim or not. ``attempts=1`` is the single-product rule.
    """
    flops = challenge_flops(n)
    claim = int(real * factor)
    flagged = products = 0
    for _ in range(trials):
        best = 0
        for _attempt in range(attempts):
            elapsed, wall = _timed_product(n, rng.randrange(1 << 62))
            products += 1
            reported = elapsed / 10 if fake_timing else elapsed
            best = max(best, billing.attested_gflops(flops, reported, wall))
            if not billing.capacity_flagged(claim, best):
                break
        flagged += billing.capacity_flagged(claim, best)
    label = f"capacity {factor:g}x" + (" + fake timing" if fake_timing else "")
    return {
        "cheat": label if factor > 1 else "honest",
        "trials": trials,
        "attempts": attempts,
        "n": n,
        "claimed_gflops": claim,
        "real_gflops": round(real, 1),
        "flagged": flagged,
        "detection_rate": flagged / trials,
        "products_per_decision": round(products / trials, 2),
    }


def _spin() -> None:
    while True:
        pass


def capacity_study(trials: int, n: int, rng: random.Random, busy: int) -> list[dict[str, Any]]:
    """The capacity rule quiet and with ``busy`` processes spinning, single-product and sequential.

    The provider's real throughput is its own benchmark on a quiet host (median of seven), what an
    honest offer claims; the busy runs then measure the same provider while other work takes the CPU.
    """
    import multiprocessing

    flops = challenge_flops(n)
    real = statistics.median(flops / _timed_product(n, rng.randrange(1 << 62))[0] / 1e9 for _ in range(7))
    cases = ((1.0, False), (2.0, False), (3.0, False), (10.0, False), (10.0, True))
    rows: list[dict[str, Any]] = []
    for load in ("quiet", "busy"):
        spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(busy if load == "busy" else 0)]
        for proc in spinners:
            proc.start()
        try:
            for attempts in (1, billing.CAPACITY_ATTEMPTS):
                for factor, fake in cases:
                    row = capacity_trials(factor, fake, trials, n, rng, real, attempts)
                    rows.append({"host": load, "background_processes": len(spinners), **row})
        finally:
            for proc in spinners:
                proc.terminate()
                proc.join()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--segments", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5, help="real training runs per cheat (trials share them)")
    parser.add_argument("--freivalds-n", type=int, default=2048)
    parser.add_argument("--freivalds-rounds", type=int, default=1, help="random vectors per Freivalds check")
    parser.add_argument("--capacity-n", type=int, default=1024)
    parser.add_argument(
        "--busy", type=int, default=os.cpu_count() or 1, help="processes spinning during the busy capacity runs"
    )
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    from benchmarks._env import environment

    for _ in range(5):  # warm the thread pool up before anything is timed
        torch.randn(1024, 1024) @ torch.randn(1024, 1024)
    rng = random.Random(args.seed)
    started = time.time()
    replay = [
        replay_trials(c, args.trials, args.runs, args.segments, args.steps, rng)
        for c in (
            Cheat("none"),
            Cheat("skip", fraction=0.1),
            Cheat("skip", fraction=0.5),
            Cheat("skip", fraction=1.0),
            Cheat("half"),
            Cheat("random"),
        )
    ]
    freivalds_runs = [
        freivalds_trials(k, args.trials, args.freivalds_n, rng, args.freivalds_rounds)
        for k in ("honest", "half", "random")
    ]
    capacity = capacity_study(args.trials, args.capacity_n, rng, args.busy)
    # The false-reject count is of the rules the verifier applies (the sequential capacity test).
    applied = [r for r in capacity if r["attempts"] > 1]
    honest = [r for r in (*replay, *freivalds_runs, *applied) if r["cheat"] == "honest"]
    report = {
        "benchmark": "verification",
        "environment": environment(),
        "parameters": vars(args),
        "what_a_trial_does": {
            "replay": "one of `runs` real training runs of examples/replay_mlp in-process (honest or cheating, "
            "fresh seed and fresh skipped segments per run); per trial replay_samples(segments) segments "
            "drawn from a fresh seed, each re-run from its committed "
            f"checkpoint and compared at rtol={compare.RTOL:g} atol={compare.ATOL:g}",
            "freivalds": "fresh n x n float32 product (honest, rounded through float16, or random), checked with "
            f"{args.freivalds_rounds} fresh random vector(s); cost = check time / product time",
            "capacity": "real timed product of the seeded challenge matrices; attested = 0.8 x flops / "
            "max(reported, wall/2); flagged when claim > 2 x attested (the registry's rule); attempts 1: one "
            f"product decides; attempts {billing.CAPACITY_ATTEMPTS}: the verifier's sequential test (challenge "
            "again while the best so far would flag, attest the best); quiet and with --busy processes spinning",
            "on_chain": "tests/verification/test_policies_on_chain.py: detected cheats rejected and slashed, "
            "requester refunded, inflated claims capped in ResultAttested",
        },
        "replay": replay,
        "freivalds": freivalds_runs,
        "capacity": capacity,
        "false_rejects": {
            "honest_runs": sum(r["trials"] for r in honest),
            "rejected": sum(r.get("detected", r.get("flagged", 0)) for r in honest),
        },
        "seconds": round(time.time() - started, 1),
    }
    sequential = {(r["host"], r["cheat"]): r for r in applied}
    report["goals"] = {"capacity_honest_flagged": 0, "capacity_2x_caught_min": 0.99}
    report["meets_goals"] = {
        f"capacity_{host}": sequential[(host, "honest")]["flagged"] == 0
        and sequential[(host, "capacity 2x")]["detection_rate"] >= 0.99
        for host in ("quiet", "busy")
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
