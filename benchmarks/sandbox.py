"""Start-up cost of the sandbox, and time from upload to a job's first line.

``python -m benchmarks.sandbox [--runs 20] [--busy N]`` measures, in the same run:

- ``plain``: ``subprocess.run([python, -u, main.py])`` on a script that does nothing;
- ``controls``: the same command through :class:`worker.sandbox.runner.Sandbox` with every control
  of a job: its space created (a tmpfs for a small disk limit, an ext4 image for a large one, a
  directory without root), the bundle copied in, the uid dropped (``setpriv``, as root), bubblewrap's
  namespaces and mounts, read-only ``/proc/sys`` and ``/dev``, the seccomp filter, cgroup or rlimits,
  the start gate, the watchdog and wait4; releasing the space (done once the results are taken)
  is timed apart as ``release_ms``;
- ``upload_to_first_line``: a worker process on loopback; from the start of ``upload_bundle``
  of a small bundle (signed upload, unpack, StartJob) to the job's first log event on WatchJob.

Rounds are interleaved (plain, then each sandboxed kind) so load on a shared machine hits them
alike; the overhead and the ratio are the medians of each round's pair (sandboxed against the
plain start of the same round, :mod:`benchmarks._pairs`), with their spread. It prints one JSON
document with medians, the overhead over plain and the ratio, the
sandbox's mode (``drop``: the job has a host uid of its own) and the environment it ran on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sandbox")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--busy", type=int, default=0, help="processes spinning on the CPU while it runs")
    args = parser.parse_args(argv)
    from benchmarks._pairs import busy_processes

    with busy_processes(args.busy):
        return _main(args)


def _main(args: argparse.Namespace) -> int:

    from eth_account import Account

    from benchmarks._env import environment, worker_process
    from benchmarks._pairs import pair_stats, spread
    from marketplace.protocol.auth import Domain
    from marketplace.protocol.bundle import load_bundle, pack_bundle
    from marketplace.requester.client import WorkerClient
    from worker.node.leases import DeviceRequirements, Lease, LeaseFile
    from worker.sandbox.runner import Limits, Sandbox, SandboxRequest

    plain: list[float] = []
    kinds = {
        "small_disk_limit": Limits(timeout_s=60, max_disk_bytes=64 << 20),
        "large_disk_limit": Limits(timeout_s=60),
    }
    boxed: dict[str, list[float]] = {name: [] for name in kinds}
    backends: dict[str, str] = {}
    releases: dict[str, list[float]] = {}
    sandbox = Sandbox()
    with tempfile.TemporaryDirectory(prefix="flopex-bench-") as tmp_name:
        tmp = Path(tmp_name)
        bundle = tmp / "bundle"
        bundle.mkdir()
        (bundle / "main.py").write_text("pass\n")
        sandboxed = sandbox.sandboxed
        for i in range(args.runs + 2):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-u", str(bundle / "main.py")], check=True, capture_output=True)
            t_plain = time.perf_counter() - t0
            times: dict[str, float] = {}
            for name, limits in kinds.items():
                if not sandboxed:
                    break
                t0 = time.perf_counter()
                space = sandbox.create_space(limits, bundle)
                backends[name] = space.backend
                try:
                    job = sandbox.start(SandboxRequest("bench", space, "main.py", limits=limits))
                    job.stdout.read()
                    job.stderr.read()
                    outcome = job.wait()
                    assert outcome.exit_code == 0, outcome
                    for pipe in (job.stdout, job.stderr):
                        pipe.close()
                finally:
                    times[name] = time.perf_counter() - t0
                    t1 = time.perf_counter()
                    space.release()  # after the job's results are taken: not on its start-up path
                    releases.setdefault(name, []).append(time.perf_counter() - t1)
            if i >= 2:  # two warm-up rounds
                plain.append(t_plain)
                for name, value in times.items():
                    boxed[name].append(value)

        # Upload to first line, through a worker process.
        market = "0x" + "5a" * 20
        requester = Account.create()
        key = tmp / "provider.key"
        key.write_text(Account.create().key.hex())
        leases = tmp / "leases.json"
        LeaseFile.write(leases, [])
        first_line: list[float] = []
        flags = [] if sandboxed else ["--unsafe-no-sandbox"]
        with worker_process(tmp / "data", leases, key, market, *flags) as (_worker, hello):
            with WorkerClient(
                f"127.0.0.1:{hello['port']}", requester_key=requester.key, domain=Domain(31337, market)
            ) as client:
                for job_id in range(1, 6):
                    bundle = tmp / f"b{job_id}"
                    bundle.mkdir()
                    (bundle / "job.toml").write_text(
                        '[job]\nentrypoint = "main.py"\n[resources]\ndevice = "cpu"\n[market]\nmax_price = "1"\n'
                    )
                    (bundle / "main.py").write_text(f"print('hello from job {job_id}')\n")
                    archive = tmp / f"b{job_id}.tar.gz"
                    pack_bundle(bundle, archive)
                    LeaseFile.write(
                        leases,
                        [
                            Lease(
                                job_id,
                                requester.address,
                                (hello["provider"],),
                                load_bundle(bundle).hash,
                                int(time.time()) + 3600,
                                DeviceRequirements("cpu", 1),
                            )
                        ],
                    )
                    time.sleep(0.02)
                    t0 = time.perf_counter()
                    client.upload_bundle(job_id, archive)
                    client.start_job(job_id)
                    for event in client.watch(job_id, timeout_s=60):
                        if event.HasField("log"):
                            first_line.append(time.perf_counter() - t0)
                            break
                    client.wait(job_id)

    plain_ms = _median_ms(plain)
    per_kind: dict[str, dict[str, Any]] = {}
    for name, samples in boxed.items():
        if samples:
            median = _median_ms(samples)
            # each round's sandboxed start against the plain start of the same round
            pairs = pair_stats(samples, plain)
            overheads = spread([(b - a) * 1000 for b, a in zip(samples, plain, strict=True)])
            per_kind[name] = {
                "space": backends[name],
                "start_ms": median,
                "overhead_ms": overheads["median"],
                "overhead_ms_spread": overheads,
                "ratio_to_plain": round(pairs.median_ratio, 2),
                "ratio_pairs": pairs.as_json(),
                "release_ms": _median_ms(releases[name][2:]),
            }
    report = {
        "benchmark": "sandbox",
        "runs": args.runs,
        "sandboxed": sandboxed,
        "mode": sandbox.mode if sandboxed else None,
        "seccomp": sandbox.seccomp,
        "bwrap": sandbox.bwrap_path,
        "plain_start_ms": plain_ms,
        "controls": per_kind or None,
        "goal_overhead_ms": 50,
        "meets_goals": {name: row["overhead_ms"] <= 50 for name, row in per_kind.items()} or None,
        "background_processes": args.busy,
        "upload_to_first_line_ms": _median_ms(first_line),
        "upload_to_first_line_includes": "signed upload, unpack, bundle hash, StartJob, job space, sandbox start, "
        "interpreter start, first print, event streamed back",
        "environment": environment(),
    }
    sandbox.close()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
