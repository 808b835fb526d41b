"""benchmarks._env.worker_process: a worker that serves while the block runs and is gone after it;
benchmarks.datasets, which runs against one, end to end on a tiny dataset."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from eth_account import Account

from benchmarks import datasets
from benchmarks._env import start_worker_process, worker_process
from marketplace.requester.client import WorkerClient
from worker.node.leases import LeaseFile

MARKET = "0x" + "5a" * 20


def _key_and_leases(tmp_path: Path) -> tuple[Path, Path]:
    key = tmp_path / "provider.key"
    account = Account.create()
    key.write_text(account.key.hex())
    leases = tmp_path / "leases.json"
    LeaseFile.write(leases, [])
    return key, leases


def test_the_worker__serves_inside_the_block_with_the_flags_given_and_is_stopped_after_it(tmp_path: Path) -> None:
    key, leases = _key_and_leases(tmp_path)
    with worker_process(tmp_path / "data", leases, key, MARKET, "--cpu-slots", "3") as (proc, hello):
        assert proc.poll() is None
        assert hello["provider"] == Account.from_key(key.read_text()).address
        with WorkerClient(f"127.0.0.1:{hello['port']}", timeout_s=20) as client:
            info = client.info()
        assert info.market_address.lower() == MARKET and len(info.devices) == 3
    assert proc.returncode is not None and proc.stdout is not None and proc.stdout.closed


def test_a_worker_that_cannot_start__is_a_runtime_error_with_its_exit_status(tmp_path: Path) -> None:
    key, leases = _key_and_leases(tmp_path)
    with pytest.raises(RuntimeError, match=r"exited with status 2 before it served"):
        start_worker_process(tmp_path / "data", leases, key, MARKET, "--no-such-flag", stderr=subprocess.DEVNULL)


@pytest.mark.slow
@pytest.mark.bwrap
def test_a_tiny_datasets_run__sends_no_dataset_byte_on_the_repeat(capsys: pytest.CaptureFixture[str]) -> None:
    assert datasets.main(["--mib", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["goals"]["repeat_uploads_no_dataset_byte"] and report["goals"]["every_run_read_the_same_data"]
    assert report["first"]["dataset_bytes_sent"] > 4 << 20 and report["repeat"]["bytes_sent"] < 4096
