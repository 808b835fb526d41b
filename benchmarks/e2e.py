"""Through the market versus run directly: the overhead of flopex on one training job.

``python -m benchmarks.e2e [--epochs 40] [--quick]`` runs the same training script
(``examples/train_mlp``) twice, side by side in one run:

- directly, as ``python train.py`` in a fresh process (no sandbox, no market);
- through the market on the embedded chain: post (with a permit), instant auction, lease, upload
  over gRPC, sandboxed run, results downloaded and checked against the on-chain root, acceptance,
  settlement — with one provider daemon and its worker in this process.

It prints one JSON document: both wall times, the overhead ratio (goal ≤ 1.10 for a 30-second
job), the time from submit to the job's start (goal ≤ 2 s with an instant auction on the
embedded chain), and the phases of the market run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._env import environment

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "train_mlp"
GOAL_OVERHEAD = 1.10
GOAL_START_S = 2.0


def _bundle(workdir: Path, epochs: int) -> Path:
    bundle = workdir / "bundle"
    shutil.copytree(EXAMPLE, bundle)
    toml = (bundle / "job.toml").read_text().replace('"--epochs", "4"', f'"--epochs", "{epochs}"')
    (bundle / "job.toml").write_text(toml.replace("timeout_s = 300", "timeout_s = 3600"))
    return bundle


def run_direct(bundle: Path, workdir: Path, epochs: int) -> float:
    """Wall seconds of ``python train.py`` in a fresh process, outputs to a scratch directory."""
    out = workdir / "direct"
    for name in ("output", "checkpoints"):
        (out / name).mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "FLOPEX_OUTPUT_DIR": str(out / "output"),
        "FLOPEX_CHECKPOINT_DIR": str(out / "checkpoints"),
        "FLOPEX_INPUT_DIR": str(bundle),
        "FLOPEX_SEED": "1",
        "FLOPEX_DEVICE": "cpu",
    }
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "train.py", "--epochs", str(epochs), "--hidden", "64"],
        cwd=bundle,
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def run_market(bundle: Path, workdir: Path) -> dict[str, Any]:
    """Wall seconds of the same job through the market, with its phases."""
    from marketplace.chain.client import Chain, dev_account
    from marketplace.contracts.devmarket import setup_dev_market
    from marketplace.market.pricing import strategy_from_spec
    from marketplace.requester.requester import JobOptions, Requester
    from marketplace.types import ONE_TOKEN, Auction, DeviceKind, Policy, parse_tokens
    from worker.node.chain_leases import ChainLeases
    from worker.node.config import WorkerConfig
    from worker.node.service import create_server
    from worker.provider.daemon import ProviderDaemon, ProviderSettings

    chain = Chain.embedded()
    contracts = setup_dev_market(chain, accounts=5)
    config = WorkerConfig(
        data_dir=workdir / "worker",
        leases=ChainLeases(contracts, refresh_s=0.05),
        chain_id=chain.chain_id,
        market_address=contracts.market.address,
    )
    server, port = create_server(config)
    server.start()
    settings = ProviderSettings(
        endpoint=f"127.0.0.1:{port}",
        price_floor=parse_tokens("0.2"),
        strategy=strategy_from_spec("fixed"),
        stake=200 * ONE_TOKEN,
        device_model="cpu",
        device_kind=DeviceKind.CPU,
        gpu_count=1,
        memory_mb=4096,
        poll_interval_s=0.05,
    )
    daemon = ProviderDaemon(contracts, dev_account(4), server, settings, workdir / "provider.json")
    daemon.ensure_registered()
    daemon.start()
    # Setting up mined a burst of blocks, each a second after the last: let the wall clock catch up
    # with the chain's before measuring, as on a chain that has been running a while.
    while chain.now() > time.time():
        time.sleep(0.2)
    marks: dict[str, float] = {}

    def say(line: str) -> None:
        for key in ("posted", "leased", "started", "finished", "verified"):
            if key in line and key not in marks:
                marks[key] = time.perf_counter()

    try:
        requester = Requester(contracts, dev_account(2), say=say)
        options = JobOptions(auction=Auction.INSTANT, policy=Policy.NONE, challenge_window_s=5)
        started = time.perf_counter()
        job_id = requester.submit(bundle, options)
        outcome = requester.follow(job_id, workdir / "results", timeout_s=3600)
        total = time.perf_counter() - started
    finally:
        daemon.stop()
        server.stop()
    phases = {k: round(v - started, 3) for k, v in sorted(marks.items(), key=lambda kv: kv[1])}
    return {"wall_s": total, "submit_to_start_s": marks["started"] - started, "phases_s": phases, "bill": outcome.slots}


def run(epochs: int) -> dict[str, Any]:
    """Measure both ways and compare."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        bundle = _bundle(workdir, epochs)
        direct = run_direct(bundle, workdir, epochs)
        market = run_market(bundle, workdir)
    overhead = market["wall_s"] / direct
    return {
        "benchmark": "e2e",
        "epochs": epochs,
        "direct_wall_s": round(direct, 3),
        "market_wall_s": round(market["wall_s"], 3),
        "overhead_ratio": round(overhead, 3),
        "submit_to_start_s": round(market["submit_to_start_s"], 3),
        "market_phases_s": market["phases_s"],
        "bill": market["bill"],
        "goals": {"overhead_ratio_max": GOAL_OVERHEAD, "submit_to_start_s_max": GOAL_START_S},
        "meets_goals": {
            "overhead_ratio": overhead <= GOAL_OVERHEAD,
            "submit_to_start": market["submit_to_start_s"] <= GOAL_START_S,
        },
        "environment": environment(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40, help="training epochs (40 ≈ a 30-second job here)")
    parser.add_argument("--quick", action="store_true", help="4 epochs: a smoke run")
    args = parser.parse_args(argv)
    json.dump(run(4 if args.quick else args.epochs), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
