"""Start-up cost of the sandbox, and time from upload to a job's first line.

``python -m benchmarks.sandbox [--runs 20]`` measures, in the same run:

- ``plain``: ``subprocess.run([python, -u, main.py])`` on a script that does nothing;
- ``sandboxed``: the same command through :class:`worker.sandbox.runner.Sandbox` with every limit
  (bubblewrap namespaces and mounts, cgroup or rlimits, the start gate, the watchdog, wait4);
- ``upload_to_first_line``: a worker process on loopback; from the start of ``upload_bundle``
  of a small bundle (signed upload, unpack, StartJob) to the job's first log event on WatchJob.

It prints one JSON document with medians and the environment it ran on.
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


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sandbox")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)

    from eth_account import Account

    from benchmarks._env import environment
    from marketplace.protocol.auth import Domain
    from marketplace.protocol.bundle import load_bundle, pack_bundle
    from marketplace.requester.client import WorkerClient
    from worker.node.leases import DeviceRequirements, Lease, LeaseFile
    from worker.sandbox.runner import Limits, Sandbox, SandboxRequest

    repo = Path(__file__).resolve().parent.parent
    plain: list[float] = []
    boxed: list[float] = []
    sandbox = Sandbox()
    with tempfile.TemporaryDirectory(prefix="flopex-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for name in ("bundle", "work", "output", "ckpt"):
            (tmp / name).mkdir()
        (tmp / "work" / "main.py").write_text("pass\n")
        request = SandboxRequest(
            "bench", tmp / "bundle", tmp / "work", tmp / "output", tmp / "ckpt", "main.py", limits=Limits(timeout_s=60)
        )
        sandboxed = sandbox.sandboxed
        for i in range(args.runs + 2):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-u", str(tmp / "work" / "main.py")], check=True, capture_output=True)
            t_plain = time.perf_counter() - t0
            t0 = time.perf_counter()
            if sandboxed:
                job = sandbox.start(request)
                job.stdout.read()
                job.stderr.read()
                outcome = job.wait()
                assert outcome.exit_code == 0, outcome
                for pipe in (job.stdout, job.stderr):
                    pipe.close()
            t_box = time.perf_counter() - t0
            if i >= 2:  # two warm-up rounds
                plain.append(t_plain)
                boxed.append(t_box)

        # Upload to first line, through a worker process.
        market = "0x" + "5a" * 20
        requester = Account.create()
        key = tmp / "provider.key"
        key.write_text(Account.create().key.hex())
        leases = tmp / "leases.json"
        LeaseFile.write(leases, [])
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "worker.serve",
                "--data-dir",
                str(tmp / "data"),
                "--leases",
                str(leases),
                "--key-file",
                str(key),
                "--market",
                market,
                "--print-port",
                "--log-level",
                "WARNING",
            ]
            + ([] if sandboxed else ["--unsafe-no-sandbox"]),
            cwd=repo,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert worker.stdout is not None
        hello = json.loads(worker.stdout.readline())
        first_line: list[float] = []
        try:
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
        finally:
            worker.terminate()
            worker.wait(30)
            worker.stdout.close()

    report = {
        "benchmark": "sandbox",
        "runs": args.runs,
        "sandboxed": sandboxed,
        "bwrap": sandbox.bwrap_path,
        "plain_start_ms": _median_ms(plain),
        "sandboxed_start_ms": _median_ms(boxed) if sandboxed else None,
        "sandbox_overhead_ms": round(_median_ms(boxed) - _median_ms(plain), 2) if sandboxed else None,
        "goal_overhead_ms": 50,
        "upload_to_first_line_ms": _median_ms(first_line),
        "upload_to_first_line_includes": "signed upload, unpack, bundle hash, StartJob, sandbox start, "
        "interpreter start, first print, event streamed back",
        "environment": environment(),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
