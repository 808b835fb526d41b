"""What a requester sees is what happened: failed, expired and slashed jobs say so, and why."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from marketplace.chain.client import Chain, dev_account
from marketplace.contracts.devmarket import setup_dev_market
from marketplace.market.summary import job_summary
from marketplace.requester.requester import JobOptions, Requester
from marketplace.types import Auction, Policy, parse_tokens, slot_value
from tests.e2e.procs import FLOPEX, start_chain, start_provider
from tests.e2e.providerkit import start_provider as start_local_provider

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::ResourceWarning")]

REQUESTER = 2


def _failing_bundle(root: Path, status: int = 1) -> Path:
    bundle = root / "fails"
    bundle.mkdir()
    (bundle / "job.toml").write_text(
        '[job]\nentrypoint = "fail.py"\n\n[resources]\ndevice = "cpu"\ntimeout_s = 60\nmax_gpu_hours = 0.01\n\n'
        '[verification]\npolicy = "none"\n\n[market]\nmax_price = "0.5"\nauction = "instant"\n'
    )
    (bundle / "fail.py").write_text(f"import sys\nprint('about to fail')\nsys.exit({status})\n")
    return bundle


def _cli(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FLOPEX, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"FLOPEX_HOME": str(home), "PATH": "/usr/bin:/bin"},
        cwd=home,  # results land in ./results-JOB
    )


def test_a_job_exiting_with_status_3__is_failed_with_its_status_and_billed_its_run_time(
    tmp_path: Path, has_bwrap: bool
) -> None:
    contracts = setup_dev_market(Chain.embedded(), accounts=5)
    provider = start_local_provider(contracts, tmp_path / "worker")
    try:
        lines: list[str] = []
        requester = Requester(contracts, dev_account(REQUESTER), say=lines.append)
        job_id = requester.submit(_failing_bundle(tmp_path, 3), JobOptions(challenge_window_s=2, bid_window_s=30))
        outcome = requester.follow(job_id, tmp_path / "out", timeout_s=120)
    finally:
        provider.stop()
    assert outcome.status == "failed" and not outcome.ok
    assert outcome.runs[0]["exit_code"] == 3 and "status 3" in (outcome.reason or "")
    [bill] = outcome.slots
    # The documented rule: a job that ran is billed its metered run time, failed or not.
    assert bill["status"] == "paid" and bill["exit_code"] == 3 and bill["run"] == "failed"
    assert bill["paid"] == slot_value(bill["price"], bill["gpu_seconds"])
    assert "no verifier ruled" in bill["reason"]
    assert outcome.to_json()["verified_slots"] == [] and outcome.to_json()["matched_slots"] == [0]
    text = "\n".join(lines)
    assert "verified" not in text and "failed" in text
    assert outcome.refunded_at_lease == outcome.to_json()["refunded_at_lease"] > 0


def test_a_job_nobody_asks_for__expires_with_the_number_of_asks(tmp_path: Path) -> None:
    contracts = setup_dev_market(Chain.embedded(), accounts=5)
    lines: list[str] = []
    requester = Requester(contracts, dev_account(REQUESTER), say=lines.append)
    options = JobOptions(auction=Auction.INSTANT, policy=Policy.NONE, bid_window_s=1, max_price=parse_tokens("0.01"))
    job_id = requester.submit(_failing_bundle(tmp_path), options)
    contracts.chain.time_travel(5)
    outcome = requester.follow(job_id, tmp_path / "out", timeout_s=60)
    assert outcome.status == "expired" and not outcome.ok
    assert outcome.reason is not None and outcome.reason.startswith("0 valid ask(s) at or below 0.01 FLOP/GPU-h")
    assert "1 slot(s) by the bid deadline" in outcome.reason
    assert job_summary(contracts, job_id)["reason"] == outcome.reason
    assert any(line.startswith(f"job {job_id} expired: 0 valid ask(s)") for line in lines)


def test_submit_wait__across_processes__a_failed_job_exits_non_zero_and_its_json_says_failed(tmp_path: Path) -> None:
    home = tmp_path
    chain, _ = start_chain(home)
    provider, address = start_provider(home, 4, "0.2", "--unsafe-no-sandbox")
    try:
        bundle = _failing_bundle(home)
        out = _cli(home, "job", "submit", str(bundle), "--dev", "2", "--challenge-window", "2", "--wait", "--json")
        assert out.returncode == 1, out.stderr
        document = json.loads(out.stdout)
        assert document["status"] == "failed" and document["ok"] is False
        [slot] = document["slots"]
        assert (slot["provider"], slot["exit_code"], slot["run"]) == (address, 1, "failed")
        assert out.stderr.startswith(f"error: job {document['job_id']} failed: slot 0:")
        assert "exit status 1" in out.stderr

        text = _cli(home, "job", "submit", str(bundle), "--dev", "2", "--challenge-window", "2", "--wait")
        assert text.returncode == 1
        assert "verified" not in text.stdout and "for a run that failed" in text.stdout

        expired = _cli(
            home, "job", "submit", str(bundle), "--dev", "2", "--max-price", "0.01", "--bid-window", "2", "--wait"
        )
        assert expired.returncode == 1
        assert "expired: 0 valid ask(s) at or below 0.01 FLOP/GPU-h" in expired.stdout
        assert "error: job" in expired.stderr and "expired" in expired.stderr

        status = _cli(home, "job", "status", str(document["job_id"]), "--json")
        assert status.returncode == 0
        [row] = json.loads(status.stdout)["slots"]
        assert row["status"] == "paid" and "accepted by the requester" in row["reason"]
    finally:
        provider.stop()
        chain.stop()
