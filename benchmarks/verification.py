"""Verification benchmark: how often each cheat is caught, how often honest work is wrongly refused,
and what checking costs next to the work checked.

``python -m benchmarks.verification [--trials 100] [--segments 40] [--busy N] [--parts replay,freivalds,capacity]``
prints one JSON document (a few minutes on two cores).

What one trial does (all real code, in-process, so that hundreds of trials fit on two cores):

- replay: ``runs`` real training runs of ``examples/replay_mlp`` per cheat (the same
  ``run_segment`` the sandboxed job runs; fresh seed, fresh skipped segments), honest or under a
  cheat, each produce ``segments`` committed checkpoints; the trials share them, and in each trial
  a fresh verification seed draws ``replay_samples(segments)`` segments
  (:func:`marketplace.verify.sampling.sample_segments`); each is re-run from its committed predecessor and
  compared with :func:`marketplace.verify.compare.compare_tensors` at the default tolerances. Detected =
  any sampled segment differs. Cost = the median over interleaved pairs (a segment's replay and
  comparison, the same segment of the honest run trained from its honest predecessor, back to back)
  × the share of the run's segments a trial replays (process start-up, which a sandboxed replay
  adds once per segment, is not counted; see docs/verification.md); ``unpaired_cost_fraction`` is
  the former figure, all replays' time over the runs' time, measured at different moments;
- freivalds: a fresh ``n×n`` float32 product (honest, computed in half precision, or random), checked
  with :func:`marketplace.verify.freivalds.freivalds_check` and ``--freivalds-rounds`` fresh random vectors;
  cost = the median over interleaved (check, product) pairs, at the same thread count, quiet and busy;
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
import time
from typing import Any

import torch

from benchmarks._pairs import busy_processes, pair_stats, wilson_interval
from marketplace.protocol.capacity import challenge_flops, challenge_matrices
from marketplace.verify import billing, compare, freivalds, sampling
from worker.testing.cheats import Cheat, cheat_run, honest_run, load_replay_mlp


def _segment_pair(
    mlp: Any,
    before: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]],
    committed: dict[str, torch.Tensor],
    index: int,
    seed: int,
    data: tuple[torch.Tensor, torch.Tensor],
    steps: int,
    *,
    replay_first: bool,
) -> tuple[bool, float, float]:
    """One pair: segment ``index`` trained from the honest predecessor (``before[0]``, the job's own
    compute) and replayed from the committed one (``before[1]``) and compared with ``committed``,
    back to back in the given order. Returns (differs, replay seconds, training seconds)."""

    def replay() -> bool:
        again = mlp.run_segment(before[1], index, seed, data, steps=steps)
        return not compare.compare_tensors(again, committed).agree

    def train() -> None:
        mlp.run_segment(before[0], index, seed, data, steps=steps)

    def timed(fn: Any) -> tuple[Any, float]:
        t0 = time.perf_counter()
        result = fn()
        return result, time.perf_counter() - t0

    if replay_first:
        (differs, replay_s), (_, train_s) = timed(replay), timed(train)
    else:
        (_, train_s), (differs, replay_s) = timed(train), timed(replay)
    return differs, replay_s, train_s


def replay_trials(
    cheat: Cheat, trials: int, runs: int, segments: int, steps: int, rng: random.Random
) -> dict[str, Any]:
    """``trials`` verifications spread over ``runs`` real training runs (fresh segment draws each).

    The cost is measured as interleaved pairs: each segment a trial replays (the first time it is
    drawn) is timed back to back with the same segment of the honest run (from the honest
    predecessor), the order alternating from pair to pair, so load that comes and goes slows both
    alike. The cost per job is the median per-pair ratio (replay and comparison / the segment's
    training) times the fraction of the run's segments a trial replays on average (all
    ``replay_samples`` for honest work, fewer when a differing segment ends the check early).
    """
    mlp = load_replay_mlp()
    samples = sampling.replay_samples(segments)
    detected = 0
    job_s = check_s = 0.0
    replayed_per_trial: list[int] = []
    replay_pair_s: list[float] = []  # the replay (and comparison) of a segment...
    segment_pair_s: list[float] = []  # ...and the honest run's training of the same segment
    per_run = [trials // runs + (1 if i < trials % runs else 0) for i in range(runs)]
    for count in per_run:
        seed = rng.randrange(1 << 30)
        t0 = time.perf_counter()
        honest = honest_run(seed, segments, steps)
        run_s = time.perf_counter() - t0  # the honest job's compute: what the check is weighed against
        ckpts = cheat_run(seed, segments, steps, cheat, rng) if cheat.kind != "none" else honest
        data = mlp.make_data(seed)
        start = mlp.init_state(seed)
        replayed: dict[int, tuple[bool, float]] = {}  # segment -> (differs, seconds to replay it)
        for _ in range(count):
            caught = False
            replays = 0
            for index in sampling.sample_segments(rng.randrange(1 << 62), segments, samples):
                if index not in replayed:
                    first = len(replay_pair_s) % 2 == 0  # alternate which half of the pair goes first
                    before = (honest[index - 1], ckpts[index - 1]) if index > 0 else (start, start)
                    differs, replay_s, segment_s = _segment_pair(
                        mlp, before, ckpts[index], index, seed, data, steps, replay_first=first
                    )
                    replay_pair_s.append(replay_s)
                    segment_pair_s.append(segment_s)
                    replayed[index] = (differs, replay_s)
                differs, seconds = replayed[index]
                check_s += seconds
                replays += 1
                if differs:
                    caught = True
                    break
            job_s += run_s
            detected += caught
            replayed_per_trial.append(replays)
    f = cheat.fraction if cheat.kind == "skip" else (1.0 if cheat.kind in ("random", "half") else 0.0)
    pairs = pair_stats(replay_pair_s, segment_pair_s)
    replayed_fraction = sum(replayed_per_trial) / (len(replayed_per_trial) * segments)
    ratio = pairs.as_json()["ratio"]
    assert isinstance(ratio, dict)
    out: dict[str, Any] = {
        "cheat": cheat.label if cheat.kind != "none" else "honest",
        "trials": trials,
        "training_runs": runs,
        "segments": segments,
        "samples": samples,
        "detected": detected,
        "detection_rate": detected / trials,
        # median per-pair ratio (replay / the same segment's training) x the share of segments replayed
        "verifier_cost_fraction": round(pairs.median_ratio * replayed_fraction, 4),
        "verifier_cost_fraction_spread": {k: round(v * replayed_fraction, 4) for k, v in ratio.items()},
        "replayed_fraction": round(replayed_fraction, 4),
        "cost_pairs": pairs.as_json(),
        # the former figure: all replays' time over the runs' time, measured at different moments
        "unpaired_cost_fraction": round(check_s / job_s, 4),
    }
    if cheat.kind == "skip":
        out["theoretical_1_minus_(1-f)^s"] = round(sampling.theoretical_detection(f, samples), 4)
        out["exact_without_replacement"] = round(
            sampling.detection_probability(segments, max(1, round(f * segments)), samples), 4
        )
    return out


def freivalds_trials(kind: str, trials: int, n: int, rng: random.Random, rounds: int = 1) -> dict[str, Any]:
    """Detection over ``trials`` fresh products; the cost as interleaved (check, product) pairs.

    Both halves of a pair run in this process with the same ``torch.get_num_threads()``, back to
    back, so load that comes and goes slows both alike; the cost is the median per-pair ratio.
    """
    detected = 0
    check_s: list[float] = []
    product_s: list[float] = []
    for i in range(trials):
        gen = torch.Generator().manual_seed(rng.randrange(1 << 62))
        a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        t0 = time.perf_counter()
        c = a @ b
        product = time.perf_counter() - t0
        if kind == "half":
            c = (a.half() @ b.half()).float() if torch.cuda.is_available() else c.half().float()
        elif kind == "random":
            c = torch.randn(n, n, generator=gen)
        t0 = time.perf_counter()
        ok, _worst = freivalds.freivalds_check(a, b, c, seed=rng.randrange(1 << 62), rounds=rounds, dtype=torch.float32)
        check = time.perf_counter() - t0
        if i % 2:  # the other order: the product again, after the check
            t0 = time.perf_counter()
            a @ b
            product = time.perf_counter() - t0
        check_s.append(check)
        product_s.append(product)
        detected += not ok
    cost = pair_stats(check_s, product_s)
    lo, hi = wilson_interval(detected, trials)
    return {
        "cheat": kind,
        "trials": trials,
        "n": n,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "detected": detected,
        "detection_rate": detected / trials,
        "detection_rate_ci95": [lo, hi],
        "verifier_cost_fraction": round(cost.median_ratio, 4),
        "cost_pairs": cost.as_json(),
    }


def _timed_product(n: int, seed: int) -> tuple[float, float]:
    """One challenge product as the worker times it; the wall time the verifier sees around it."""
    a, b = challenge_matrices(seed, n)
    t0 = time.perf_counter()
    a @ b
    elapsed = time.perf_counter() - t0
    return elapsed, elapsed * 1.05 + 0.002  # the call's wall time: device time plus hashing and transport


def _attempt(n: int, rng: random.Random, fake_timing: bool, jitter_s: float) -> int:
    """One challenge at an unpredictable moment: the GFLOP/s the verifier can attest from it."""
    time.sleep(rng.random() * jitter_s)
    elapsed, wall = _timed_product(n, rng.randrange(1 << 62))
    reported = elapsed / 10 if fake_timing else elapsed
    return billing.attested_gflops(challenge_flops(n), reported, wall)


def capacity_trials(
    factor: float,
    fake_timing: bool,
    trials: int,
    n: int,
    rng: random.Random,
    real: float,
    attempts: int,
    jitter_s: float = 0.02,
) -> dict[str, Any]:
    """``trials`` capacity decisions for a provider claiming ``factor`` x its ``real`` GFLOP/s.

    ``attempts > 1``: the verifier's test (:func:`marketplace.verify.billing.capacity_decision`,
    capped at ``attempts``): challenge until it decides. ``attempts=1``: one product decides.
    """
    claim = int(real * factor)
    flagged = products = 0
    for _ in range(trials):
        measured: list[int] = []
        while True:
            measured.append(_attempt(n, rng, fake_timing, jitter_s))
            if attempts == 1:
                decision = billing.capacity_decision(claim, measured, max_attempts=1)
            else:
                decision = billing.capacity_decision(claim, measured, max_attempts=attempts)
            if decision.decided:
                break
        products += len(measured)
        flagged += decision.flagged
    label = f"capacity {factor:g}x" + (" + fake timing" if fake_timing else "")
    lo, hi = wilson_interval(flagged, trials)
    return {
        "cheat": label if factor > 1 else "honest",
        "trials": trials,
        "attempts": attempts,
        "n": n,
        "claimed_gflops": claim,
        "real_gflops": round(real, 1),
        "flagged": flagged,
        "detection_rate": flagged / trials,
        "detection_rate_ci95": [lo, hi],
        "products_per_decision": round(products / trials, 2),
    }


def _quiet_fraction(n: int, rng: random.Random, real: float, samples: int, jitter_s: float) -> dict[str, Any]:
    """The measured fraction of an honest provider's challenges that meet its claim (the test's p0)."""
    claim = int(real)
    meeting = sum(not billing.capacity_flagged(claim, _attempt(n, rng, False, jitter_s)) for _ in range(samples))
    lo, hi = wilson_interval(meeting, samples)
    k = billing.CAPACITY_ATTEMPTS
    return {
        "samples": samples,
        "meeting_claim": meeting,
        "fraction": round(meeting / samples, 4),
        "fraction_ci95": [lo, hi],
        "assumed": billing.CAPACITY_QUIET_FRACTION,
        "holds": lo >= billing.CAPACITY_QUIET_FRACTION,
        # the honest-flag rate the test then has: (1 - p)^k at the measured p and its CI
        "implied_false_flag_rate": round((1 - meeting / samples) ** k, 6),
        "implied_false_flag_rate_ci95": [round((1 - hi) ** k, 6), round((1 - lo) ** k, 6)],
    }


def capacity_study(
    trials: int, liar_trials: int, n: int, rng: random.Random, busy: int, jitter_s: float = 0.02
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The capacity rule quiet and with ``busy`` processes spinning, single-product and the test.

    The provider's real throughput is its own benchmark on the quiet host (the best of forty
    products at unpredictable moments: what an honest offer claims, its peak); the busy runs then
    measure the same provider while other work takes the CPU.
    Returns the decision rows and the measured quiet fractions.
    """
    flops = challenge_flops(n)
    real = 0.0
    for _ in range(40):
        time.sleep(rng.random() * jitter_s)
        real = max(real, flops / _timed_product(n, rng.randrange(1 << 62))[0] / 1e9)
    cases = ((1.0, False, trials), (2.0, False, trials), (3.0, False, liar_trials), (10.0, True, liar_trials))
    rows: list[dict[str, Any]] = []
    fractions: dict[str, Any] = {}
    for load in ("quiet", "busy"):
        with busy_processes(busy if load == "busy" else 0) as spinning:
            fractions[load] = _quiet_fraction(n, rng, real, max(50, trials), jitter_s)
            for attempts in (1, billing.CAPACITY_ATTEMPTS):
                for factor, fake, count in cases if attempts > 1 else cases[:2]:
                    row = capacity_trials(factor, fake, count, n, rng, real, attempts, jitter_s)
                    rows.append({"host": load, "background_processes": spinning, **row})
    return rows, fractions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--liar-trials", type=int, default=20, help="capacity trials of the 3x and 10x liars")
    parser.add_argument("--segments", type=int, default=40)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--runs", type=int, default=2, help="real training runs per cheat (trials share them)")
    parser.add_argument("--freivalds-n", type=int, default=2048)
    parser.add_argument("--freivalds-trials", type=int, default=20, help="honest products timed in pairs per host")
    parser.add_argument("--freivalds-rounds", type=int, default=1, help="random vectors per Freivalds check")
    parser.add_argument("--capacity-n", type=int, default=512)
    parser.add_argument(
        "--busy", type=int, default=os.cpu_count() or 1, help="processes spinning during the busy runs (0: none)"
    )
    parser.add_argument("--parts", default="replay,freivalds,capacity", help="comma-separated parts to run")
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    from benchmarks._env import environment

    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"replay", "freivalds", "capacity"}
    if unknown:
        parser.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    for _ in range(5):  # warm the thread pool up before anything is timed
        torch.randn(1024, 1024) @ torch.randn(1024, 1024)
    rng = random.Random(args.seed)
    started = time.time()
    replay = []
    if "replay" in parts:
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
    freivalds_runs: list[dict[str, Any]] = []
    if "freivalds" in parts:
        for load, count in (("quiet", 0), ("busy", args.busy)):
            with busy_processes(count) as spinning:
                for k in ("honest", "half", "random") if load == "quiet" else ("honest",):
                    row = freivalds_trials(
                        k, args.trials if k == "honest" else 20, args.freivalds_n, rng, args.freivalds_rounds
                    )
                    freivalds_runs.append({"host": load, "background_processes": spinning, **row})
    capacity: list[dict[str, Any]] = []
    fractions: dict[str, Any] = {}
    if "capacity" in parts:
        capacity, fractions = capacity_study(args.trials, args.liar_trials, args.capacity_n, rng, args.busy)
    # The false-reject count is of the rules the verifier applies (the sequential capacity test).
    applied = [r for r in capacity if r["attempts"] > 1]
    honest = [r for r in (*replay, *freivalds_runs, *applied) if r["cheat"] == "honest"]
    report: dict[str, Any] = {
        "benchmark": "verification",
        "environment": environment(),
        "parameters": vars(args),
        "what_a_trial_does": {
            "replay": "one of `runs` real training runs of examples/replay_mlp in-process (honest or cheating, "
            "fresh seed and fresh skipped segments per run); per trial replay_samples(segments) segments "
            "drawn from a fresh seed, each re-run from its committed "
            f"checkpoint and compared at rtol={compare.RTOL:g} atol={compare.ATOL:g}; cost = median over "
            "interleaved (replay, the same segment of the honest run) pairs x the share of segments replayed",
            "freivalds": "fresh n x n float32 product (honest, rounded through float16, or random), checked with "
            f"{args.freivalds_rounds} fresh random vector(s); cost = median over interleaved (check, product) "
            "pairs, same thread count, quiet and busy",
            "capacity": "real timed products of the seeded challenge matrices at unpredictable moments; attested = "
            "0.8 x flops / max(reported, wall/2); a product meets the claim when claim <= 2 x attested (the "
            "registry's rule); attempts 1: one product decides; attempts "
            f"{billing.CAPACITY_ATTEMPTS}: billing.capacity_decision, a one-sided sign test with false-flag rate "
            f"{billing.CAPACITY_FALSE_FLAG_RATE:g} assuming honest products meet the claim at least "
            f"{billing.CAPACITY_QUIET_FRACTION:g} of the time; quiet and with --busy processes spinning",
            "on_chain": "tests/verification/test_policies_on_chain.py: detected cheats rejected and slashed, "
            "requester refunded, inflated claims capped in ResultAttested",
        },
        "replay": replay,
        "freivalds": freivalds_runs,
        "capacity": capacity,
        "capacity_quiet_fraction": fractions,
        "false_rejects": {
            "honest_runs": sum(r["trials"] for r in honest),
            "rejected": sum(r.get("detected", r.get("flagged", 0)) for r in honest),
        },
        "seconds": round(time.time() - started, 1),
    }
    goals: dict[str, Any] = {}
    meets: dict[str, bool] = {}
    if capacity:
        sequential = {(r["host"], r["cheat"]): r for r in applied}
        goals.update(
            capacity_honest_flag_rate_max=billing.CAPACITY_FALSE_FLAG_RATE,
            capacity_2x_caught_min=0.99,
        )
        for host in ("quiet", "busy"):
            honest_row, liar_row = sequential[(host, "honest")], sequential[(host, "capacity 2x")]
            # honest: no flag seen, or the flag rate's CI reaches down to the stated rate
            meets[f"capacity_honest_{host}"] = (
                honest_row["flagged"] == 0 or honest_row["detection_rate_ci95"][0] <= billing.CAPACITY_FALSE_FLAG_RATE
            )
            meets[f"capacity_2x_caught_{host}"] = liar_row["detection_rate"] >= 0.99
    if freivalds_runs:
        goals["freivalds_cost_max"] = 0.10
        for row in freivalds_runs:
            if row["cheat"] == "honest":
                meets[f"freivalds_cost_{row['host']}"] = row["verifier_cost_fraction"] <= 0.10
    report["goals"] = goals
    report["meets_goals"] = meets
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
