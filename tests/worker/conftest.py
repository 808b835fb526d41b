"""Fixtures for the worker suite: a real worker process on loopback, leases, bundles, clients."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from marketplace.auth import Domain
from marketplace.bundle import load_bundle, pack_bundle
from marketplace.client import WorkerClient
from worker.leases import DeviceRequirements, Lease, LeaseFile

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
    done = subprocess.run([path, "--unshare-all", "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
                           "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--", "/usr/bin/true"],
                          capture_output=True)
    return done.returncode == 0


HAVE_BWRAP = bwrap_works()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip bwrap-marked tests, with the reason printed, where bubblewrap cannot run."""
    if HAVE_BWRAP:
        return
    skip = pytest.mark.skip(reason="bubblewrap (Debian package `bubblewrap`) is not installed or cannot "
                                   "create namespaces here; CI runs these tests")
    for item in items:
        if "bwrap" in item.keywords:
            item.add_marker(skip)


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


def start_worker(data_dir: Path, key_file: Path, leases_path: Path, extra: list[str] | None = None) -> WorkerProcess:
    """Start a worker process on a free loopback port and wait until it serves."""
    args = [sys.executable, "-m", "worker.serve", "--data-dir", str(data_dir), "--leases", str(leases_path),
            "--key-file", str(key_file), "--chain-id", str(CHAIN_ID), "--market", MARKET, "--print-port",
            "--log-level", "WARNING", *(extra or [])]
    log_path = data_dir.parent / f"{data_dir.name}.log"
    log = open(log_path, "a")  # noqa: SIM115 - the process owns it
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=10)
        raise RuntimeError(f"worker did not start: {log_path.read_text()[-3000:]}")
    hello = json.loads(line)
    leases = [Lease.from_json(x) for x in json.loads(leases_path.read_text())] if leases_path.exists() else []
    return WorkerProcess(data_dir, leases_path, key_file, hello["provider"], hello["port"], proc, args, leases,
                         log_path)


WORKER_FLAGS = ["--cpu-slots", "2", "--memory-limit-mb", "1536", "--max-processes", "64", "--max-file-mb", "8",
                "--max-disk-mb", "48", "--max-bundle-mb", "4"]


@pytest.fixture(scope="session")
def provider_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The worker's receipt key, kept outside the data dir like an operator would."""
    path = tmp_path_factory.mktemp("keys") / "provider.key"
    path.write_text(Account.create().key.hex())
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory, provider_key: Path) -> Iterator[WorkerProcess]:
    """A worker process shared by the tests of a module."""
    base = tmp_path_factory.mktemp("worker")
    proc = start_worker(base / "data", provider_key, base / "leases.json", WORKER_FLAGS)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def requester() -> LocalAccount:
    """The requester named by the leases."""
    return Account.create()


@pytest.fixture(scope="session")
def stranger() -> LocalAccount:
    """Someone with no lease."""
    return Account.create()


@pytest.fixture
def client(worker: WorkerProcess, requester: LocalAccount) -> Iterator[WorkerClient]:
    """A requester's client of the worker."""
    with WorkerClient(worker.target, requester_key=requester.key, domain=DOMAIN, timeout_s=20) as c:
        yield c


BundleFactory = Callable[..., tuple[Path, bytes]]


@pytest.fixture
def make_bundle(tmp_path: Path) -> BundleFactory:
    """Write a bundle directory with ``main.py`` = ``code``; return (archive path, bundle hash)."""
    counter = itertools.count()

    def make(code: str, *, device: str = "cpu", gpus: int = 1, timeout_s: int = 60, extra_toml: str = "",
             files: dict[str, bytes] | None = None) -> tuple[Path, bytes]:
        root = tmp_path / f"bundle{next(counter)}"
        root.mkdir()
        (root / "main.py").write_text(textwrap.dedent(code))
        (root / "job.toml").write_text(
            f'[job]\nentrypoint = "main.py"\n{extra_toml}\n[resources]\ndevice = "{device}"\ngpus = {gpus}\n'
            f'timeout_s = {timeout_s}\n\n[market]\nmax_price = "1"\n')
        for name, data in (files or {}).items():
            (root / name).write_bytes(data)
        archive = root.with_suffix(".tar.gz")
        pack_bundle(root, archive)
        return archive, load_bundle(root).hash

    return make


def lease_for(job_id: int, requester: str, provider: str, bundle_hash: bytes, *, kind: str = "cpu",
              count: int = 1, deadline: int | None = None) -> Lease:
    """A lease of ``job_id`` to ``provider``."""
    return Lease(job_id, requester, (provider,), bundle_hash, deadline or int(time.time()) + 3600,
                 DeviceRequirements(kind, count))


def submit(worker: WorkerProcess, client: WorkerClient, requester: str, archive: Path, bundle_hash: bytes,
           *, seed: int = 7, kind: str = "cpu") -> int:
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
