"""Does `flopex chain up` stay fast as jobs pile up? Call latencies at job 10, 100 and 300.

Starts ``flopex chain up`` as its own process (the chain a user runs), binds to its deployment over
JSON-RPC with the project's bindings (:mod:`marketplace.contracts`), registers two providers and a
verifier, and then runs ``--jobs`` whole jobs one after another: approve + post (instant auction,
replay policy), take, commit a result, the verifier's ruling through the court, settle: seven
transactions a job (and a clock step), each sent and waited for as the daemons do. Every call is timed from the
client. At each checkpoint (``--at``, by default jobs 10, 100, 300) it also times ``--probes``
rounds of the calls the daemons and the CLI make most: ``eth_call`` (a job's state),
``eth_getLogs`` over the whole chain (the market's events), ``eth_getTransactionReceipt`` of the
chain's first job, ``eth_blockNumber``, and one more transaction sent and waited for.

    python -m benchmarks.chain_growth [--jobs 300] [--at 10 100 300] [--probes 20] [--busy N] [--out FILE]

Goal: p99 of every call under 1 s at every checkpoint (``meets_goals``); the ruling (four calls)
and the whole job are reported beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks._env import emit, environment, stop_process
from benchmarks._pairs import busy_processes, spread

ROOT = Path(__file__).resolve().parent.parent
GOAL_P99_S = 1.0
#: Timed steps made of several calls (the court's ruling: open the case, rule, move the clock past
#: the appeal window, pass it on; a whole job): reported, but the goal is per call.
COMPOSITE = frozenset({"ruling", "whole job"})


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _summary(samples: list[float]) -> dict[str, Any]:
    return {
        "count": len(samples),
        "p50_s": round(_percentile(samples, 0.5), 4),
        "p99_s": round(_percentile(samples, 0.99), 4),
        "max_s": round(max(samples), 4),
    }


def start_chain(tmp: Path) -> tuple[subprocess.Popen[str], str, Path]:
    """``flopex chain up`` on a free port; returns the process, its URL and its deployment file."""
    deployment = tmp / "deployment.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flopex", "chain", "up", "--port", "0", "--deployment", str(deployment)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"flopex chain up exited with {proc.wait()}")
        if "listening on " in line:
            url = line.split("listening on ", 1)[1].strip()
            while "deployment written" not in line:
                line = proc.stdout.readline()
            return proc, url, deployment
    proc.kill()
    raise RuntimeError("flopex chain up did not start within 180 s")


class Market:
    """The bindings over the served chain, with two providers and a verifier ready to work."""

    def __init__(self, url: str, deployment_file: Path) -> None:
        from marketplace.chain.client import Chain, dev_account
        from marketplace.contracts.deployment import Deployment, load_contracts
        from marketplace.types import ONE_TOKEN, DeviceKind, Offer

        self.chain = Chain.connect(url, timeout=60.0)
        self.contracts = load_contracts(self.chain, Deployment.load(deployment_file))
        self.requester, self.provider, self.verifier = dev_account(2), dev_account(3), dev_account(4)
        token, registry = self.contracts.token, self.contracts.registry
        token.approve(self.provider, registry.address, 200 * ONE_TOKEN)
        registry.stake(self.provider, 200 * ONE_TOKEN)
        registry.register_provider(
            self.provider,
            Offer("bench cpu", DeviceKind.CPU, 2, 4096, 50, 2 * ONE_TOKEN, "127.0.0.1:7000", self.provider.address),
        )
        token.approve(self.verifier, registry.address, 100 * ONE_TOKEN)
        registry.stake(self.verifier, 100 * ONE_TOKEN)
        registry.register_verifier(self.verifier)
        self.contracts.require_court().join(self.verifier)
        self.first_tx: bytes | None = None

    def spec(self) -> Any:
        from marketplace.types import ONE_TOKEN, Auction, DeviceKind, JobSpec, Policy

        now = self.chain.now()
        return JobSpec(
            requester=self.requester.address,
            bundle_hash=os.urandom(32),
            device_kind=DeviceKind.CPU,
            gpus=1,
            min_memory_mb=1024,
            policy=Policy.REPLAY,
            auction=Auction.INSTANT,
            redundancy=1,
            max_price=5 * ONE_TOKEN,
            max_gpu_seconds=3_600,
            bid_deadline=now + 100,
            reveal_deadline=now + 200,
            run_duration=1_800,
            challenge_window=600,
        )

    def job(self, timings: dict[str, list[float]]) -> int:
        """One whole job, each transaction timed under its name."""
        from marketplace.types import Outcome

        market = self.contracts.market

        def timed(name: str, fn: Any, *args: Any) -> Any:
            t0 = time.perf_counter()
            out = fn(*args)
            timings[name].append(time.perf_counter() - t0)
            return out

        spec = self.spec()
        receipt = timed("approve", self.contracts.token.approve, self.requester, market.address, spec.escrow)
        if self.first_tx is None:
            self.first_tx = bytes(receipt["transactionHash"])
        job_id = timed("post_job", market.post_job, self.requester, spec)
        timed("take_job", market.take_job, self.provider, job_id)
        timed("evm_increaseTime+mine", self.chain.time_travel, 120)  # the 90 s the provider will claim
        timed("commit_result", market.commit_result, self.provider, job_id, 0, os.urandom(32), 90)
        court = self.contracts.require_court()
        timed("ruling", court.decide_slot_alone, self.verifier, job_id, spec, 0, Outcome.ACCEPT, 90)
        timed("settle", market.settle, self.requester, job_id, 0)
        timed("eth_call job", market.job, job_id)
        return int(job_id)

    def probe(self, job_id: int, rounds: int) -> dict[str, dict[str, Any]]:
        """The calls daemons and the CLI make most, ``rounds`` times each, interleaved."""
        w3 = self.chain.w3
        market = self.contracts.market
        from hexbytes import HexBytes

        everything: Any = {"fromBlock": 0, "toBlock": "latest", "address": market.address}
        calls: dict[str, Any] = {
            "eth_call": lambda: market.job(job_id),
            "eth_getLogs_all": lambda: w3.eth.get_logs(everything),
            "eth_getTransactionReceipt_first": lambda: w3.eth.get_transaction_receipt(HexBytes(self.first_tx or b"")),
            "eth_blockNumber": lambda: w3.eth.block_number,
            "send_tx_and_receipt": lambda: self.contracts.token.approve(self.requester, market.address, 1),
        }
        samples: dict[str, list[float]] = defaultdict(list)
        for _ in range(rounds):
            for name, call in calls.items():
                t0 = time.perf_counter()
                call()
                samples[name].append(time.perf_counter() - t0)
        logs = len(w3.eth.get_logs(everything))
        out = {name: _summary(values) for name, values in samples.items()}
        out["eth_getLogs_all"]["logs_returned"] = logs
        return out


def run(jobs: int, at: list[int], probes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="flopex-chain-growth-") as tmp_name:
        proc, url, deployment_file = start_chain(Path(tmp_name))
        try:
            market = Market(url, deployment_file)
            checkpoints: list[dict[str, Any]] = []
            window: dict[str, list[float]] = defaultdict(list)
            started = time.perf_counter()
            job_id = 0
            for done in range(1, jobs + 1):
                t0 = time.perf_counter()
                job_id = market.job(window)
                window["whole job"].append(time.perf_counter() - t0)
                if done in at:
                    block = market.chain.w3.eth.block_number
                    checkpoints.append(
                        {
                            "jobs": done,
                            "blocks": block,
                            "job_calls_since_last_checkpoint": {n: _summary(v) for n, v in window.items()},
                            "whole_job_s": spread(window["whole job"]),
                            "probes": market.probe(job_id, probes),
                        }
                    )
                    window = defaultdict(list)
                    # each checkpoint as it is reached, so that a run cut short still says something
                    print(json.dumps(checkpoints[-1]), file=sys.stderr, flush=True)
            return {"url": url, "checkpoints": checkpoints, "seconds": round(time.perf_counter() - started, 1)}
        finally:
            stop_process(proc, timeout_s=20)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--at", type=int, nargs="+", default=[10, 100, 300], help="checkpoints (job counts)")
    parser.add_argument("--probes", type=int, default=20, help="rounds of probe calls at each checkpoint")
    parser.add_argument("--busy", type=int, default=0, help="processes spinning on the CPU while it runs")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.probes < 1 or any(a < 1 for a in args.at):
        parser.error("--jobs, --probes and --at must be positive")
    at = sorted({a for a in args.at if a <= args.jobs})
    with busy_processes(args.busy) as spinning:
        result = run(args.jobs, at, args.probes)
    worst: dict[str, float] = {}
    for cp in result["checkpoints"]:
        for name, s in [*cp["job_calls_since_last_checkpoint"].items(), *cp["probes"].items()]:
            if name not in COMPOSITE:
                worst[name] = max(worst.get(name, 0.0), s["p99_s"])
    document = {
        "benchmark": "chain_growth",
        "environment": environment(),
        "parameters": {**vars(args), "at": at, "background_processes": spinning},
        **result,
        "worst_p99_s": worst,
        "goals": {"p99_s_max": GOAL_P99_S},
        "meets_goals": {
            "p99_under_1s": bool(worst) and max(worst.values()) < GOAL_P99_S,
        },
    }
    emit(document, args.out)


if __name__ == "__main__":
    main()
