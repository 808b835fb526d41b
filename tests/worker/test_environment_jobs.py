"""Declared environments through a worker process over gRPC: built once, run, timed apart, refused when unservable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount

from marketplace.errors import WorkerError
from marketplace.requester.client import WorkerClient
from tests.worker.workerkit import WORKER_FLAGS, BundleFactory, WorkerProcess, lease_for, next_job_id, start_worker
from worker.testing.wheels import make_wheel

pytestmark = [pytest.mark.bwrap, pytest.mark.slow]

CODE = """\
import flopexdemo, torch
print("value", flopexdemo.VALUE, "torch", torch.__version__)
"""
DECLARED = '[environment]\nrequirements = "requirements.txt"\n'


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory, provider_key: Path) -> Iterator[WorkerProcess]:
    """A worker whose environments come from a local wheelhouse only (no package index, no network)."""
    base = tmp_path_factory.mktemp("envworker")
    base.chmod(0o755)
    make_wheel(base / "wheelhouse", "flopexdemo", "1.0", "VALUE = 42\n")
    flags = [*WORKER_FLAGS, "--package-index", "none", "--find-links", str(base / "wheelhouse")]
    proc = start_worker(base / "data", provider_key, base / "leases.json", flags)
    yield proc
    proc.stop()


def _run(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, archive: Path, bundle_hash: bytes, out: Path
) -> tuple[object, str]:
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, bundle_hash))
    client.upload_bundle(job_id, archive)
    client.start_job(job_id, 7)
    event = client.wait(job_id, timeout_s=180)
    client.download_results(job_id, out)
    return event, (out / "logs" / "stdout.log").read_text()


def test_a_job_with_a_declared_package__runs_with_it__its_build_timed_apart__then_cached(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    import torch

    archive, bundle_hash = make_bundle(CODE, extra_toml=DECLARED, files={"requirements.txt": b"flopexdemo==1.0\n"})
    event, stdout = _run(worker, client, requester, archive, bundle_hash, tmp_path / "first")
    assert event.WhichOneof("kind") == "finished", event  # type: ignore[attr-defined]
    assert stdout.split() == ["value", "42", "torch", torch.__version__]
    metering = event.finished.metering  # type: ignore[attr-defined]
    assert metering.env_build_millis > 0
    # Another bundle (another hash) with the same requirements: the environment is found, not built.
    archive, bundle_hash = make_bundle(
        CODE + "print('again')\n", extra_toml=DECLARED, files={"requirements.txt": b"flopexdemo==1.0\n"}
    )
    event, stdout = _run(worker, client, requester, archive, bundle_hash, tmp_path / "second")
    assert event.WhichOneof("kind") == "finished", event  # type: ignore[attr-defined]
    assert stdout.split()[-1] == "again"
    assert event.finished.metering.env_build_millis == 0  # type: ignore[attr-defined]


def test_a_package_the_index_lacks__fails_the_job_before_it_runs_with_one_line(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    archive, bundle_hash = make_bundle(CODE, extra_toml=DECLARED, files={"requirements.txt": b"flopexdemo==9.9\n"})
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, bundle_hash))
    client.upload_bundle(job_id, archive)
    client.start_job(job_id, 7)
    event = client.wait(job_id, timeout_s=180)
    assert event.WhichOneof("kind") == "failed"
    assert event.failed.reason.startswith("environment: uv could not install the packages:")
    assert "flopexdemo" in event.failed.reason and "\n" not in event.failed.reason


@pytest.mark.parametrize(
    ("resources", "requirements", "needs"),
    [
        ('torch = "<1"\n', b"flopexdemo\n", "needs torch <1; the provider has"),
        ('python = "<3"\n', b"flopexdemo\n", "needs Python <3; the provider has"),
        ("", b"torch<1\nflopexdemo\n", "needs torch <1; the provider has"),
    ],
)
def test_a_bundle_whose_python_or_torch_range_the_worker_cannot_serve__is_refused_at_upload(
    worker: WorkerProcess,
    client: WorkerClient,
    requester: LocalAccount,
    tmp_path: Path,
    resources: str,
    requirements: bytes,
    needs: str,
) -> None:
    from marketplace.protocol.bundle import load_bundle, pack_bundle

    root = tmp_path / "b"
    root.mkdir()
    (root / "main.py").write_text(CODE)
    (root / "requirements.txt").write_bytes(requirements)
    (root / "job.toml").write_text(
        f'[job]\nentrypoint = "main.py"\n{DECLARED}[resources]\ndevice = "cpu"\n{resources}[market]\nmax_price = "1"\n'
    )
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, load_bundle(root).hash))
    with pytest.raises(WorkerError) as info:
        client.upload_bundle(job_id, pack_bundle(root))
    assert info.value.code == "FAILED_PRECONDITION"
    assert f"this worker cannot run the bundle: it {needs}" in info.value.message
    # The worker says what it has, so a requester can tell before it posts.
    got = client.info()
    have = got.torch_version if "torch" in needs else got.python_version
    assert have and info.value.message.endswith(f"the provider has {have}")
