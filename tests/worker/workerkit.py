"""Helpers of the worker suite: a worker process on loopback, leases, bundles, process probes."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from benchmarks._env import start_worker_process
from marketplace.protocol.auth import Domain
from marketplace.requester.client import WorkerClient
from worker.node.leases import DeviceRequirements, Lease, LeaseFile

REPO = Path(__file__).resolve().parents[2]
MARKET = "0x" + "5a" * 20
CHAIN_ID = 31337
DOMAIN = Domain(CHAIN_ID, MARKET)
_job_ids = itertools.count(1000)


def bwrap_works() -> bool:
    """Whether bubblewrap is installed and can create its namespaces here."""
    path = shutil.which("bwrap")
    if path is None:
        return False
    done = subprocess.run(
        [
            path,
            "--unshare-all",
            "--ro-bind",
            "/usr",
            "/usr",
            "--symlink",
            "usr/bin",
            "/bin",
            "--symlink",
            "usr/lib",
            "/lib",
            "--symlink",
            "usr/lib64",
            "/lib64",
            "--",
            "/usr/bin/true",
        ],
        capture_output=True,
    )
    return done.returncode == 0


HAVE_BWRAP = bwrap_works()


def next_job_id() -> int:
    """A job id no other test uses."""
    return next(_job_ids)


@dataclass
class WorkerProcess:
    """A worker started with ``python -m worker.serve`` in its own process."""

    data_dir: Path
    leases_path: Path
    key_file: Path
    provider: str
    port: int
    proc: subprocess.Popen[str]
    args: list[str]
    leases: list[Lease] = field(default_factory=list)
    log_path: Path | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add_lease(self, lease: Lease) -> None:
        self.leases = [x for x in self.leases if x.job_id != lease.job_id] + [lease]
        LeaseFile.write(self.leases_path, self.leases)
        # LeaseFile compares mtime and size; make sure a rewrite within the same tick is seen.
        time.sleep(0.01)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_worker(data_dir: Path, key_file: Path, leases_path: Path, extra: list[str] | None = None) -> WorkerProcess:
    """Start a worker process on a free loopback port and wait until it serves."""
    log_path = data_dir.parent / f"{data_dir.name}.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    flags = ["--chain-id", str(CHAIN_ID), *(extra or [])]
    with open(log_path, "a") as log:
        try:
            proc, hello = start_worker_process(data_dir, leases_path, key_file, MARKET, *flags, stderr=log, env=env)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {log_path.read_text()[-3000:]}") from None
    leases = [Lease.from_json(x) for x in json.loads(leases_path.read_text())] if leases_path.exists() else []
    args = cast(list[str], proc.args)  # the command start_worker_process built
    return WorkerProcess(
        data_dir, leases_path, key_file, hello["provider"], hello["port"], proc, args, leases, log_path
    )


WORKER_FLAGS = [
    "--cpu-slots",
    "2",
    "--memory-limit-mb",
    "1536",
    "--max-processes",
    "64",
    "--max-file-mb",
    "8",
    "--max-disk-mb",
    "48",
    "--max-bundle-mb",
    "4",
]


BundleFactory = Callable[..., tuple[Path, bytes]]
"""Signature of the ``make_bundle`` fixture."""


def lease_for(
    job_id: int,
    requester: str,
    provider: str,
    bundle_hash: bytes | None,
    *,
    kind: str = "cpu",
    count: int = 1,
    deadline: int | None = None,
) -> Lease:
    """A lease of ``job_id`` to ``provider``."""
    return Lease(
        job_id,
        requester,
        (provider,),
        bundle_hash,
        deadline or int(time.time()) + 3600,
        DeviceRequirements(kind, count),
    )


def submit(
    worker: WorkerProcess,
    client: WorkerClient,
    requester: str,
    archive: Path,
    bundle_hash: bytes,
    *,
    seed: int = 7,
    kind: str = "cpu",
) -> int:
    """Lease, upload and start a job; return its id."""
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester, worker.provider, bundle_hash, kind=kind))
    client.upload_bundle(job_id, archive)
    client.start_job(job_id, seed)
    return job_id


def processes_with(marker: str) -> list[int]:
    """Pids of processes whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and str(os.getpid()) != entry.name:
            found.append(int(entry.name))
    return found


class Listener:
    """A TCP listener on 127.0.0.1 that records whether anyone connected."""

    def __init__(self) -> None:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
