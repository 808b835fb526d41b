"""Devices, device gating, leases from a file, and the SDK outside a worker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_account import Account

from marketplace.errors import WorkerError
from worker.node.devices import DeviceInfo, check_request, detect_devices
from worker.node.leases import DeviceRequirements, Lease, LeaseFile, LeaseLookup, StaticLeases

CPU = [DeviceInfo("cpu", 0, "cpu model", 8 << 30), DeviceInfo("cpu", 1, "cpu model", 8 << 30)]


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def test_without_a_gpu__the_cpu_is_offered_in_slots() -> None:
    devices = detect_devices(cpu_slots=3, use_gpus=False)
    assert [d.kind for d in devices] == ["cpu"] * 3
    assert all(d.model and d.memory_bytes > 0 for d in devices)


@pytest.mark.parametrize(
    ("kind", "count", "memory", "message"),
    [
        ("cuda", 1, 0, "no cuda devices"),
        ("cpu", 3, 0, "asks for 3 cpu devices"),
        ("cpu", 1, 9 << 30, "largest has 8.0 GiB"),
    ],
)
def test_requests_the_worker_can_never_meet__are_failed_precondition(
    kind: str, count: int, memory: int, message: str
) -> None:
    with pytest.raises(WorkerError, match=message) as exc:
        check_request(CPU, kind, count, memory)
    assert exc.value.code == "FAILED_PRECONDITION"


def test_a_request_that_fits__passes() -> None:
    check_request(CPU, "cpu", 2, 4 << 30)


def test_a_lease_file__is_reread_when_it_changes(tmp_path: Path) -> None:
    requester, provider = Account.create().address, Account.create().address
    path = tmp_path / "leases.json"
    leases = LeaseFile(path)
    assert isinstance(leases, LeaseLookup) and isinstance(StaticLeases(), LeaseLookup)
    assert leases.lease(1) is None
    first = Lease(1, requester, (provider,), b"\x01" * 32, 10**10, DeviceRequirements("cpu", 1))
    LeaseFile.write(path, [first])
    assert leases.lease(1) == first and leases.lease(1).names(provider.lower())  # type: ignore[union-attr]
    second = Lease(2, requester, (provider,), b"\x02" * 32, 10**10)
    LeaseFile.write(path, [first, second])
    assert leases.lease(2) == second


def test_the_sdk__writes_checkpoints_with_their_hashes_outside_a_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from marketplace import sdk

    monkeypatch.setenv("FLOPEX_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("FLOPEX_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    monkeypatch.setenv("FLOPEX_SEED", "5")
    assert sdk.deterministic() == 5
    torch.use_deterministic_algorithms(False)
    state = {"w": torch.arange(4.0)}
    sdk.checkpoint(state, step=0)
    sdk.checkpoint({"w": torch.arange(4.0) * 2}, step=1)
    log = [json.loads(x) for x in (tmp_path / "ckpt" / "checkpoints.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [0, 1]
    import hashlib

    assert log[1]["sha256"] == hashlib.sha256((tmp_path / "ckpt" / log[1]["file"]).read_bytes()).hexdigest()
    step, latest = sdk.latest_checkpoint()  # type: ignore[misc]
    assert step == 1 and torch.equal(latest["w"], torch.arange(4.0) * 2)
    path = sdk.save_tensors("final", state)
    assert sdk.load_tensors(path)["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert "flopex:progress" in capsys.readouterr().out


def test_importing_the_sdk__stays_light() -> None:
    import subprocess
    import sys

    code = "import sys, marketplace.sdk; print(sorted(m for m in ('torch', 'web3', 'grpc') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.cuda
@pytest.mark.skipif(not _has_cuda(), reason="no NVIDIA GPU here")
def test_with_a_gpu__devices_report_model_memory_and_uuid() -> None:
    devices = detect_devices()
    assert devices and all(d.kind == "cuda" for d in devices)
    assert all(d.memory_bytes > 0 and d.compute_capability for d in devices)


@pytest.mark.cuda
@pytest.mark.skipif(not _has_cuda(), reason="no NVIDIA GPU here")
def test_with_a_gpu__a_capacity_challenge_runs_on_it_and_verifies() -> None:
    import threading

    from marketplace.protocol.capacity import verify_rows
    from worker.node.challenges import ChallengeRunner

    runner = ChallengeRunner(detect_devices(), max_n=4096)
    result = runner.run(7, 1024, "cuda", threading.Event())
    assert result.device.kind == "cuda"
    rows = {i: (data, proof) for i, data, proof in runner.rows(result.challenge_id, [0, 511, 1023])}
    verify_rows(7, 1024, result.root, rows)
