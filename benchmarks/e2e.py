"""Through the market versus run directly: the market's fixed cost per job, phase by phase.

``python -m benchmarks.e2e [--job-s 30] [--pairs 3] [--busy N] [--quick]`` runs the same training
script (``examples/train_mlp``, sized by a calibration run to last about ``--job-s`` seconds run
directly) as interleaved pairs in one run — directly, then through the market, then the market
first, and so on — so both sides of a pair see the same load:

- directly, as ``python train.py`` in a fresh process (no sandbox, no market);
- through the market on the embedded chain: post (with a permit), instant auction, lease, upload
  over gRPC, sandboxed run, results downloaded and checked against the on-chain root, acceptance,
  settlement — with one provider daemon and its worker in this process, set up once for all pairs
  (a chain that has been running a while), the auction and challenge windows at their minimum.

It prints one JSON document: each pair's wall times and ratio, the ratio's median and spread
(goal ≤ 1.10 for a 30-second job), the time from submit to the job's start (goal ≤ 2 s), the
market's fixed cost (market wall time minus the run itself), the median of each phase as the
requester saw it (:data:`marketplace.requester.requester.PHASES`), and the CPU time this process
(provider daemon, worker, requester, chain) spent per market job — what the market takes from the
job on the same cores. ``--busy N`` keeps N CPU-bound processes running throughout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._env import environment
from worker.sandbox.runner import OMP_WAIT

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "train_mlp"
GOAL_OVERHEAD = 1.10
GOAL_START_S = 2.0
#: Epochs of every job; its length is set by the samples per epoch.
EPOCHS = 10
#: Samples per epoch of the calibration run.
CALIBRATION_SAMPLES = 32_768

#: The phases reported, each from one requester mark to the next (see ``PHASES`` in the requester).
PHASE_SPANS = (
    ("post", "submitted", "posted"),
    ("auction", "posted", "leased"),
    ("lease", "leased", "worker"),
    ("upload", "worker", "uploaded"),
    ("sandbox_start", "uploaded", "started"),
    ("run", "started", "finished"),
    ("download", "finished", "downloaded"),
    ("commit", "downloaded", "committed"),
    ("verify", "committed", "verified"),
    ("accept", "verified", "accepted"),
    ("settle", "accepted", "settled"),
)


def _args(samples: int) -> list[str]:
    return ["--epochs", str(EPOCHS), "--hidden", "64", "--samples", str(samples)]


def _bundle(workdir: Path, samples: int, name: str) -> Path:
    bundle = workdir / name
    shutil.copytree(EXAMPLE, bundle)
    toml = (bundle / "job.toml").read_text()
    toml = toml.replace('args = ["--epochs", "4", "--hidden", "64"]', f"args = {json.dumps(_args(samples))}")
    (bundle / "job.toml").write_text(toml.replace("timeout_s = 300", "timeout_s = 3600"))
    return bundle


def run_direct(bundle: Path, workdir: Path, samples: int) -> tuple[float, float]:
    """Wall seconds of ``python train.py`` in a fresh process, and the seconds its training loop took."""
    out = Path(tempfile.mkdtemp(dir=workdir, prefix="direct-"))
    for name in ("output", "checkpoints"):
        (out / name).mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "FLOPEX_OUTPUT_DIR": str(out / "output"),
        "FLOPEX_CHECKPOINT_DIR": str(out / "checkpoints"),
        "FLOPEX_INPUT_DIR": str(bundle),
        "FLOPEX_SEED": "1",
        "FLOPEX_DEVICE": "cpu",
        **OMP_WAIT,  # as the sandbox runs a job, so the pair compares the market alone
    }
    started = time.perf_counter()
    subprocess.run([sys.executable, "train.py", *_args(samples)], cwd=bundle, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - started
    trained = float(json.loads((out / "output" / "metrics.json").read_text())["seconds"])
    shutil.rmtree(out, ignore_errors=True)
    return wall, trained


def calibrate(workdir: Path, job_s: float) -> int:
    """Samples per epoch that make the job last about ``job_s`` seconds run directly (one timed run)."""
    bundle = _bundle(workdir, CALIBRATION_SAMPLES, "calibration")
    wall, trained = run_direct(bundle, workdir, CALIBRATION_SAMPLES)
    startup = max(0.0, wall - trained)
    return max(1024, int(CALIBRATION_SAMPLES * max(0.5, job_s - startup) / max(trained, 1e-3)))


class Market:
    """One embedded chain with the market, one worker and its provider daemon, for a run of jobs."""

    def __init__(self, workdir: Path) -> None:
        from marketplace.chain.client import Chain, dev_account
        from marketplace.contracts.devmarket import setup_dev_market
        from marketplace.market.pricing import strategy_from_spec
        from marketplace.types import ONE_TOKEN, DeviceKind, parse_tokens
        from worker.node.chain_leases import ChainLeases
        from worker.node.config import WorkerConfig
        from worker.node.service import create_server
        from worker.provider.daemon import ProviderDaemon, ProviderSettings

        self.workdir = workdir
        self.chain = Chain.embedded()
        self.contracts = setup_dev_market(self.chain, accounts=5)
        config = WorkerConfig(
            data_dir=workdir / "worker",
            leases=ChainLeases(self.contracts, refresh_s=0.05),
            chain_id=self.chain.chain_id,
            market_address=self.contracts.market.address,
        )
        self.server, port = create_server(config)
        self.server.start()
        settings = ProviderSettings(
            endpoint=f"127.0.0.1:{port}",
            price_floor=parse_tokens("0.2"),
            strategy=strategy_from_spec("fixed"),
            stake=200 * ONE_TOKEN,
            device_model="cpu",
            device_kind=DeviceKind.CPU,
            gpu_count=1,
            memory_mb=4096,
            # It steps on each new block and when its worker ends a job; this is only the longest
            # it waits when nothing happens.
            poll_interval_s=5.0,
        )
        self.daemon = ProviderDaemon(self.contracts, dev_account(4), self.server, settings, workdir / "provider.json")
        self.daemon.ensure_registered()
        self.daemon.start()
        self.requester_account = dev_account(2)

    def settle_clock(self) -> None:
        """Let the wall clock catch up with the chain's (each transaction's block is a second on)."""
        while self.chain.now() > time.time():
            time.sleep(0.2)

    def run(self, bundle: Path) -> dict[str, Any]:
        """Wall seconds of one job through the market, its phases and this process's CPU time."""
        from marketplace.requester.requester import JobOptions, Requester
        from marketplace.types import Auction, Policy

        self.settle_clock()
        requester = Requester(self.contracts, self.requester_account)
        # Instant auction (leased on the first take) and the shortest challenge window the market
        # takes (the requester's acceptance ends it at once anyway).
        options = JobOptions(auction=Auction.INSTANT, policy=Policy.NONE, bid_window_s=10, challenge_window_s=1)
        cpu = time.process_time()
        started = time.perf_counter()
        job_id = requester.submit(bundle, options)
        outcome = requester.follow(job_id, self.workdir / f"results-{job_id}", timeout_s=3600)
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu
        if not outcome.ok:
            raise RuntimeError(f"job {job_id} did not succeed: {outcome.status}: {outcome.reason}")
        marks = outcome.phases
        if "accepted" not in marks:  # the provider settled first (the window ended): no acceptance
            marks = {**marks, "accepted": marks["verified"]}
        phases = {name: marks[b] - marks[a] for name, a, b in PHASE_SPANS if a in marks and b in marks}
        run_s = phases.get("run", 0.0)
        return {
            "job_id": job_id,
            "wall_s": wall,
            "run_s": run_s,
            "fixed_s": wall - run_s,
            "submit_to_start_s": marks["started"] - marks["submitted"],
            "process_cpu_s": cpu,
            "phases_s": phases,
            "gpu_seconds": outcome.slots[0]["gpu_seconds"],
        }

    def close(self) -> None:
        self.daemon.stop()
        self.server.stop()


def _busy(n: int) -> list[subprocess.Popen[bytes]]:
    code = "while True:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def run(job_s: float, pairs: int, busy: int = 0, samples: int | None = None) -> dict[str, Any]:
    """Measure ``pairs`` interleaved pairs and compare."""
    burners = _busy(busy)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            if samples is None:
                samples = calibrate(workdir, job_s)
            bundle = _bundle(workdir, samples, "bundle")
            market = Market(workdir)
            rows: list[dict[str, Any]] = []
            try:
                for i in range(pairs):
                    if i % 2 == 0:
                        direct, _ = run_direct(bundle, workdir, samples)
                        through = market.run(bundle)
                    else:
                        through = market.run(bundle)
                        direct, _ = run_direct(bundle, workdir, samples)
                    rows.append({"direct_wall_s": direct, **through, "ratio": through["wall_s"] / direct})
            finally:
                market.close()
    finally:
        for proc in burners:
            proc.kill()
            proc.wait()
    ratios = [r["ratio"] for r in rows]
    starts = [r["submit_to_start_s"] for r in rows]
    phase_names = [name for name, _, _ in PHASE_SPANS]
    phases = {
        name: round(statistics.median([r["phases_s"][name] for r in rows if name in r["phases_s"]]), 3)
        for name in phase_names
        if any(name in r["phases_s"] for r in rows)
    }
    ratio = statistics.median(ratios)
    start = statistics.median(starts)
    return {
        "benchmark": "e2e",
        "job_s_target": job_s,
        "samples_per_epoch": samples,
        "epochs": EPOCHS,
        "pairs": pairs,
        "busy_processes": busy,
        "direct_wall_s": _summary([r["direct_wall_s"] for r in rows]),
        "market_wall_s": _summary([r["wall_s"] for r in rows]),
        "overhead_ratio": _summary(ratios),
        "market_fixed_s": _summary([r["fixed_s"] for r in rows]),
        "run_in_sandbox_minus_direct_s": _summary([r["run_s"] - r["direct_wall_s"] for r in rows]),
        "submit_to_start_s": _summary(starts),
        "market_process_cpu_s_per_job": _summary([r["process_cpu_s"] for r in rows]),
        "phases_median_s": phases,
        "runs": [
            {
                k: (round(v, 3) if isinstance(v, float) else v)
                for k, v in {**r, "phases_s": {p: round(s, 3) for p, s in r["phases_s"].items()}}.items()
            }
            for r in rows
        ],
        "goals": {"overhead_ratio_max": GOAL_OVERHEAD, "submit_to_start_s_max": GOAL_START_S},
        "meets_goals": {
            "overhead_ratio": ratio <= GOAL_OVERHEAD,
            "submit_to_start": start <= GOAL_START_S,
        },
        "environment": environment(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__.splitlines()[0])
    parser.add_argument("--job-s", type=float, default=30.0, help="how long the job runs directly (default 30)")
    parser.add_argument("--pairs", type=int, default=3, help="interleaved direct/market pairs (default 3)")
    parser.add_argument("--busy", type=int, default=0, help="CPU-bound processes kept running meanwhile")
    parser.add_argument("--samples", type=int, default=None, help="samples per epoch (skips the calibration)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: a 5-second job, one pair")
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.job_s <= 0 or args.busy < 0:
        parser.error("--pairs must be ≥ 1, --job-s > 0 and --busy ≥ 0")
    job_s, pairs = (5.0, 1) if args.quick else (args.job_s, args.pairs)
    json.dump(run(job_s, pairs, args.busy, args.samples), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
