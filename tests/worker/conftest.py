"""Fixtures for the worker suite: a real worker process on loopback, clients, bundles."""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from marketplace.protocol.bundle import load_bundle, pack_bundle
from marketplace.requester.client import WorkerClient
from tests.worker.workerkit import DOMAIN, HAVE_BWRAP, WORKER_FLAGS, BundleFactory, WorkerProcess, start_worker


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip bwrap-marked tests, with the reason printed, where bubblewrap cannot run."""
    if HAVE_BWRAP:
        return
    skip = pytest.mark.skip(
        reason="bubblewrap (Debian package `bubblewrap`) is not installed or cannot "
        "create namespaces here; CI runs these tests"
    )
    for item in items:
        if "bwrap" in item.keywords:
            item.add_marker(skip)


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


@pytest.fixture
def make_bundle(tmp_path: Path) -> BundleFactory:
    """Write a bundle directory with ``main.py`` = ``code``; return (archive path, bundle hash)."""
    counter = itertools.count()

    def make(
        code: str,
        *,
        device: str = "cpu",
        gpus: int = 1,
        timeout_s: int = 60,
        extra_toml: str = "",
        files: dict[str, bytes] | None = None,
    ) -> tuple[Path, bytes]:
        root = tmp_path / f"bundle{next(counter)}"
        root.mkdir()
        (root / "main.py").write_text(textwrap.dedent(code))
        (root / "job.toml").write_text(
            f'[job]\nentrypoint = "main.py"\n{extra_toml}\n[resources]\ndevice = "{device}"\ngpus = {gpus}\n'
            f'timeout_s = {timeout_s}\n\n[market]\nmax_price = "1"\n'
        )
        for name, data in (files or {}).items():
            (root / name).write_bytes(data)
        archive = root.with_suffix(".tar.gz")
        pack_bundle(root, archive)
        return archive, load_bundle(root).hash

    return make
