"""The worker's peak memory under output and upload bombs.

``python -m benchmarks.worker_bounds [--log-mb 16] [--output-mb 300] [--header-mb 1024] [--out FILE]``
starts one worker process per bomb (``python -m worker.serve`` on loopback, logs capped at
``--log-mb``) and reads its peak resident memory (``VmHWM`` of ``/proc/PID/status``) before and
after:

- ``output``: a job writing ``--output-mb`` MiB to stdout without a newline (needs bubblewrap, or
  runs with ``--unsafe-no-sandbox`` where it is missing); also the log file's size and the job's end;
- ``gnu_long_name`` and ``pax``: an upload whose GNU long-name or pax header announces (and holds,
  as compressed zeros) ``--header-mb`` MiB, about 1 MiB on the wire per GiB;
- ``directories``: an upload of 100,000 empty directories.

Each refused upload's status code and message are printed with the figures, in one JSON document.
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

MIB = 1 << 20


def _peak(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


class _Worker:
    def __init__(self, tmp: Path, key: Path, market: str, extra: list[str]) -> None:
        from worker.node.leases import LeaseFile

        self.leases = tmp / "leases.json"
        LeaseFile.write(self.leases, [])
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "worker.serve",
                *("--data-dir", str(tmp / "data"), "--leases", str(self.leases), "--key-file", str(key)),
                *("--market", market, "--print-port", "--log-level", "WARNING", "--cpu-slots", "1"),
                *extra,
            ],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        hello = json.loads(self.proc.stdout.readline())
        self.target, self.provider = f"127.0.0.1:{hello['port']}", hello["provider"]

    def lease(self, job_id: int, requester: str, bundle_hash: bytes) -> None:
        from worker.node.leases import DeviceRequirements, Lease, LeaseFile

        lease = Lease(
            job_id, requester, (self.provider,), bundle_hash, int(time.time()) + 3600, DeviceRequirements("cpu", 1)
        )
        LeaseFile.write(self.leases, [lease])
        time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def main(argv: list[str] | None = None) -> int:
    """Run the bombs and print the JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker_bounds")
    parser.add_argument("--log-mb", type=int, default=16)
    parser.add_argument("--output-mb", type=int, default=300)
    parser.add_argument("--header-mb", type=int, default=1024)
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)

    from eth_account import Account

    from benchmarks._env import emit, environment
    from marketplace.errors import WorkerError
    from marketplace.protocol.auth import Domain
    from marketplace.protocol.bundle import load_bundle, pack_bundle
    from marketplace.requester.client import WorkerClient
    from worker.testing.bombs import directories_bomb, long_name_bomb, output_bomb_code, pax_bomb

    market = "0x" + "5a" * 20
    requester = Account.create()
    sandboxed = shutil.which("bwrap") is not None
    extra = ["--max-log-mb", str(args.log_mb), *([] if sandboxed else ["--unsafe-no-sandbox"])]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        key = tmp / "provider.key"
        key.write_text(Account.create().key.hex())

        def run(label: str, body: Any) -> None:
            where = tmp / label
            where.mkdir()
            worker = _Worker(where, key, market, extra)
            try:
                with WorkerClient(
                    worker.target, requester_key=requester.key, domain=Domain(31337, market), timeout_s=120
                ) as client:
                    before = _peak(worker.proc.pid)
                    t0 = time.perf_counter()
                    figures = body(worker, client, where)
                    results[label] = {
                        "worker_peak_rss_before_mib": round(before / MIB, 1),
                        "worker_peak_rss_after_mib": round(_peak(worker.proc.pid) / MIB, 1),
                        "growth_mib": round((_peak(worker.proc.pid) - before) / MIB, 1),
                        "seconds": round(time.perf_counter() - t0, 2),
                        **figures,
                    }
            finally:
                worker.stop()

        def output(worker: _Worker, client: WorkerClient, where: Path) -> dict[str, Any]:
            bundle = where / "bundle"
            bundle.mkdir()
            (bundle / "job.toml").write_text(
                '[job]\nentrypoint = "main.py"\n[resources]\ndevice = "cpu"\ntimeout_s = 300\n'
                '[market]\nmax_price = "1"\n'
            )
            (bundle / "main.py").write_text(output_bomb_code(args.output_mb * MIB))
            archive = where / "bundle.tar.gz"
            pack_bundle(bundle, archive)
            worker.lease(1, requester.address, load_bundle(bundle).hash)
            client.upload_bundle(1, archive)
            client.start_job(1)
            final = client.wait(1, timeout_s=300)
            got = client.download_results(1, where / "results")
            return {
                "printed_mib": args.output_mb,
                "log_cap_mib": args.log_mb,
                "stdout_log_bytes": os.path.getsize(got.directory / "logs" / "stdout.log"),
                "job_end": final.WhichOneof("kind"),
                "sandboxed": sandboxed,
            }

        def upload(data: bytes) -> Any:
            def body(worker: _Worker, client: WorkerClient, where: Path) -> dict[str, Any]:
                worker.lease(1, requester.address, b"\0" * 32)
                try:
                    client.upload_bundle(1, data)
                    answer = "accepted"
                except WorkerError as exc:
                    answer = f"{exc.code}: {exc.message}"
                return {"upload_bytes": len(data), "answer": answer}

            return body

        run("output", output)
        run("gnu_long_name", upload(long_name_bomb(args.header_mb * MIB)))
        run("pax", upload(pax_bomb(args.header_mb * MIB)))
        run("directories", upload(directories_bomb(100_000)))
    emit({"benchmark": "worker_bounds", "bombs": results, "environment": environment()}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
