"""A job's run inside the worker's sandbox against the same job run directly, on a busy host.

``python -m benchmarks.sandbox_run [--samples 32768] [--rounds 5] [--busy 1]`` runs the training
script of :mod:`benchmarks.e2e` (``examples/train_mlp``, 10 epochs of ``--samples``) as interleaved
rounds (:mod:`benchmarks._pairs`: the order flips every round) of three runs:

- ``direct``: ``python train.py`` in a fresh process, no sandbox;
- ``sandboxed``: through :class:`worker.sandbox.runner.Sandbox` with everything a worker gives a CPU
  job (its space, uid, namespaces, seccomp, cgroup or rlimits, watchdog), two OpenMP threads on
  this 2-core host, and the sandbox's OpenMP wait policy (:data:`worker.sandbox.runner.OMP_WAIT`);
- ``spinning``: the same, without that policy (the OpenMP runtime's default: threads spin at each
  barrier before they sleep) — how jobs ran before.

``--busy N`` keeps N CPU-bound processes running, as the worker, its provider daemon and the chain
are beside a job in the market. It prints one JSON document: each side's wall seconds, each
sandboxed side minus the direct run of its round and their ratio (median and spread); the goal is
a sandboxed run within 10 % of the direct one (``meets_goals``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

GOAL_RATIO = 1.10


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sandbox_run")
    parser.add_argument("--samples", type=int, default=32_768)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--busy", type=int, default=1, help="processes spinning on the CPU while it runs")
    args = parser.parse_args(argv)
    if args.samples < 128 or args.rounds < 1 or args.busy < 0:
        parser.error("--samples must be at least 128, --rounds at least 1, --busy not negative")

    import worker.sandbox.runner as runner
    from benchmarks._env import environment
    from benchmarks._pairs import busy_processes, spread
    from benchmarks.e2e import _args, _bundle, run_direct
    from worker.sandbox.runner import Limits, Sandbox, SandboxRequest

    sandbox = Sandbox()
    if not sandbox.sandboxed:
        print(json.dumps({"benchmark": "sandbox_run", "error": "bubblewrap does not work here"}))
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="flopex-sandbox-run-"))
    bundle = _bundle(workdir, args.samples, "bundle")
    policy = dict(runner.OMP_WAIT)

    def boxed(wait: dict[str, str]) -> float:
        limits = Limits(timeout_s=3600)
        space = sandbox.create_space(limits, bundle)
        runner.OMP_WAIT.clear()
        runner.OMP_WAIT.update(wait)
        try:
            env = {"FLOPEX_SEED": "1", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
            started = time.perf_counter()
            job = sandbox.start(
                SandboxRequest("bench", space, "train.py", tuple(_args(args.samples)), env, limits=limits)
            )
            job.stdout.read()
            errors = job.stderr.read()
            outcome = job.wait()
            wall = time.perf_counter() - started
            job.stdout.close()
            job.stderr.close()
            if outcome.exit_code != 0:
                raise RuntimeError(f"the sandboxed job failed: {errors.decode(errors='replace')[-500:]}")
            return wall
        finally:
            runner.OMP_WAIT.clear()
            runner.OMP_WAIT.update(policy)
            space.release()

    runs: dict[str, list[float]] = {"direct": [], "sandboxed": [], "spinning": []}
    try:
        with busy_processes(args.busy):
            for i in range(args.rounds):
                order = ["direct", "sandboxed", "spinning"]
                for name in order if i % 2 == 0 else order[::-1]:
                    if name == "direct":
                        runs[name].append(run_direct(bundle, workdir, args.samples)[0])
                    else:
                        runs[name].append(boxed(policy if name == "sandboxed" else {}))
    finally:
        sandbox.close()
        shutil.rmtree(workdir, ignore_errors=True)
    report: dict[str, object] = {
        "benchmark": "sandbox_run",
        "samples": args.samples,
        "rounds": args.rounds,
        "background_processes": args.busy,
        "omp_wait": policy,
        "wall_s": {name: spread(values) for name, values in runs.items()},
    }
    ratios = {}
    for name in ("sandboxed", "spinning"):
        pairs = list(zip(runs[name], runs["direct"], strict=True))
        report[f"{name}_minus_direct_s"] = spread([a - b for a, b in pairs])
        ratios[name] = spread([a / b for a, b in pairs])
        report[f"{name}_ratio"] = ratios[name]
    report["goal_ratio"] = GOAL_RATIO
    report["meets_goals"] = {"sandboxed_ratio": ratios["sandboxed"]["median"] <= GOAL_RATIO}
    report["environment"] = environment()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
