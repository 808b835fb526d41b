"""`flopex job follow` picks a job up wherever it stands, on anvil making a block every second.

A requester killed mid-job, a job posted without --wait, an instant job nobody takes: each ends
settled (paid, or expired and refunded) by `job follow`, with nothing left leased or locked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from marketplace.chain.anvil import Anvil, find_anvil
from marketplace.chain.client import Chain, dev_account
from marketplace.contracts.deployment import Deployment, load_contracts
from marketplace.types import JobStatus, SlotStatus, parse_tokens, slot_value
from tests.conftest import require
from tests.e2e.procs import FLOPEX, Proc

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::ResourceWarning")]

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "examples" / "train_mlp"
REQUESTER, PROVIDER = 2, 4
ADDRESS = dev_account(REQUESTER).address


class Market:
    """anvil, the deployment and one provider, shared by the tests of this module."""

    def __init__(self, home: Path, url: str) -> None:
        self.home = home
        self.url = url

    def flopex(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """A flopex command run in ``home``."""
        return subprocess.run(
            [*FLOPEX, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.home,
            env={**os.environ, "FLOPEX_HOME": str(self.home / ".flopex")},
        )

    def submit(self, *args: str) -> int:
        """Post a job without following it; its id."""
        done = self.flopex("job", "submit", *args, "--dev", str(REQUESTER), "--json")
        assert done.returncode == 0, done.stderr
        return int(json.loads(done.stdout)["job_id"])

    def follow(self, job_id: int, *args: str) -> tuple[int, dict[str, Any], str]:
        """`job follow JOB --json`: its exit status, its document and its stderr."""
        done = self.flopex("job", "follow", str(job_id), "--dev", str(REQUESTER), "--json", *args)
        return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {}, done.stderr

    def contracts(self) -> Any:
        return load_contracts(Chain.connect(self.url), Deployment.load(self.home / ".flopex" / "deployment.json"))

    def assert_nothing_held(self) -> None:
        """No lease holds the provider's stake."""
        stakes = self.contracts().registry.stakes(dev_account(PROVIDER).address)
        assert (stakes.locked, stakes.active_jobs) == (0, 0)


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    require(find_anvil() is not None, "anvil (npm @foundry-rs/anvil-linux-amd64)")
    require(shutil.which("bwrap") is not None, "bubblewrap (apt-get install bubblewrap)")
    home = tmp_path_factory.mktemp("follow")
    node = Anvil(block_time=1).start()
    try:
        m = Market(home, node.url)
        deployed = m.flopex("deploy", "--rpc-url", node.url, "--dev", "0")
        assert deployed.returncode == 0, deployed.stderr
        provider = Proc(
            ["provider", "start", "--dev", str(PROVIDER), "--price", "0.2"], home / ".flopex", home / "p.log"
        )
        try:
            provider.wait_for_line("serving", timeout=120)
            yield m
        finally:
            assert provider.stop() == 0
    finally:
        node.stop()


def _slow_bundle(home: Path) -> Path:
    """train_mlp training long enough to be killed in the middle of."""
    bundle = home / "slow"
    if not bundle.exists():
        shutil.copytree(TRAIN, bundle)
        toml = (bundle / "job.toml").read_text()
        (bundle / "job.toml").write_text(toml.replace('"--epochs", "4"', '"--epochs", "150"'))
    return bundle


def test_requester_killed_mid_job__follow_resumes_it__paid_and_closed(market: Market) -> None:
    out = market.home / "out-killed"
    submit = ["job", "submit", str(_slow_bundle(market.home)), "--dev", str(REQUESTER), "--verify", "none"]
    requester = Proc(
        [*submit, "--auction", "instant", "--wait", "-o", str(out)],
        market.home / ".flopex",
        market.home / "killed.log",
    )
    job_id = int(re.search(r"job (\d+) posted", requester.wait_for_line("posted", timeout=120))[1])  # type: ignore[index]
    requester.wait_for_line(f"job {job_id}: started", timeout=180)
    assert requester.stop("kill") == -9
    contracts = market.contracts()
    assert contracts.market.job(job_id).status == JobStatus.LEASED
    record = market.home / ".flopex" / f"requester-{ADDRESS}" / "jobs"
    [kept] = list(record.glob(f"*/job-{job_id}.json"))
    assert json.loads(kept.read_text())["out_dir"] == str(out)
    status = market.flopex("job", "status", str(job_id))
    assert status.returncode == 0, status.stderr
    assert f"next: leased: `flopex job follow {job_id}` (as its requester) uploads the bundle" in status.stdout

    code, outcome, err = market.follow(job_id)
    assert code == 0, err
    assert (outcome["job_id"], outcome["status"], outcome["ok"]) == (job_id, "succeeded", True)
    [slot] = outcome["slots"]
    assert slot["status"] == "paid" and slot["paid"] == slot_value(parse_tokens("0.2"), slot["gpu_seconds"]) > 0
    assert outcome["matched_slots"] == [0]
    assert (out / "slot-0" / "output" / "model.safetensors").is_file()  # where the killed submit sent them
    assert contracts.market.job(job_id).status == JobStatus.CLOSED
    assert contracts.market.slot(job_id, 0).status == SlotStatus.PAID
    market.assert_nothing_held()

    # Followed again once settled: the same outcome and bill, read from the chain and the worker.
    code, again, err = market.follow(job_id, "--out", str(market.home / "again"))
    assert code == 0, err
    assert again["status"] == "succeeded" and again["slots"][0]["paid"] == slot["paid"]
    assert (market.home / "again" / "slot-0" / "output" / "model.safetensors").is_file()


def test_submit_wait_interrupted_while_open__follow_ends_the_auction_uploads_from_the_record_and_is_paid(
    market: Market,
) -> None:
    submit = Proc(
        ["job", "submit", str(TRAIN), "--dev", str(REQUESTER), "--verify", "none", "--bid-window", "8", "--wait"],
        market.home / ".flopex",
        market.home / "interrupted.log",
    )
    job_id = int(re.search(r"job (\d+) posted", submit.wait_for_line("posted", timeout=120))[1])  # type: ignore[index]
    submit.wait_for_line(f"job {job_id}: open", timeout=60)
    submit.process.send_signal(signal.SIGINT)  # Ctrl-C
    assert submit.process.wait(timeout=60) == 130
    submit.stop()
    assert f"error: interrupted; job {job_id} goes on: `flopex job follow {job_id}` picks it up" in (
        submit.log.read_text()
    )
    contracts = market.contracts()
    assert contracts.market.job(job_id).status == JobStatus.OPEN
    follower = Proc(
        ["job", "follow", str(job_id), "--dev", str(REQUESTER), "--out", str(market.home / "open")],
        market.home / ".flopex",
        market.home / "open.log",
    )
    try:
        follower.wait_for_line(f"job {job_id} slot 0: leased to", timeout=180)
        # One follower at a time: a second is refused while the first holds the job.
        code, _, err = market.follow(job_id)
        assert code == 1 and err.startswith(f"error: job {job_id} is being followed by pid") and err.count("\n") == 1
        assert follower.process.wait(timeout=400) == 0, follower.log.read_text()
    finally:
        follower.stop()
    log = follower.log.read_text()
    assert f"job {job_id} succeeded" in log and "the results match the root committed on chain" in log
    assert (market.home / "open" / "slot-0" / "output" / "model.safetensors").is_file()
    assert contracts.market.job(job_id).status == JobStatus.CLOSED
    assert contracts.market.slot(job_id, 0).status == SlotStatus.PAID
    market.assert_nothing_held()


def test_instant_job_nobody_takes__follow_expires_it_and_refunds_the_escrow(market: Market) -> None:
    contracts = market.contracts()
    # Priced below the only provider's floor (0.2): nobody takes it.
    job_id = market.submit(str(TRAIN), "--auction", "instant", "--max-price", "0.1", "--bid-window", "3")
    escrow = contracts.market.job(job_id).escrow
    credit = contracts.market.credits(ADDRESS)
    assert escrow > 0

    # Another account may not follow it, and the wrong bundle is refused before anything is sent.
    done = market.flopex("job", "follow", str(job_id), "--dev", "3")
    assert done.returncode == 1
    assert done.stderr == f"error: job {job_id} was posted by {ADDRESS}, not by {dev_account(3).address}\n"
    code, _, err = market.follow(job_id, "--bundle", str(_slow_bundle(market.home)))
    assert code == 1 and "is not the bundle job" in err and err.count("\n") == 1
    end = contracts.market.spec(job_id).bid_deadline
    contracts.chain.wait_until(lambda: contracts.chain.next_timestamp() > end, timeout=60)
    status = market.flopex("job", "status", str(job_id), "--json")
    assert status.returncode == 0, status.stderr
    summary = json.loads(status.stdout)
    assert summary["status"] == "open"
    assert (
        summary["next"].startswith("its auction is over but not ended")
        and f"flopex job follow {job_id}" in summary["next"]
    )

    code, outcome, err = market.follow(job_id)
    assert code == 1 and err.startswith(f"error: job {job_id} expired")
    assert (outcome["job_id"], outcome["status"], outcome["ok"]) == (job_id, "expired", False)
    assert contracts.market.job(job_id).status == JobStatus.EXPIRED
    assert contracts.market.job(job_id).escrow == 0
    assert contracts.market.credits(ADDRESS) == credit + escrow  # refunded, to withdraw
    after = json.loads(market.flopex("job", "status", str(job_id), "--json").stdout)
    assert after["status"] == "expired" and after["next"] is None


def test_follow__of_a_job_the_market_does_not_have__one_line_error(market: Market) -> None:
    code, outcome, err = market.follow(999)
    assert code == 1 and outcome == {}
    assert err.startswith("error: there is no job 999 on the market at ") and err.count("\n") == 1


def test_follow__without_a_record__asks_for_the_bundle_and_uploads_the_one_given(market: Market) -> None:
    elsewhere = ["--data-dir", str(market.home / "elsewhere")]  # records kept where this follow does not look
    job_id = market.submit(str(TRAIN), "--verify", "none", "--auction", "instant", "--bid-window", "6", *elsewhere)
    contracts = market.contracts()
    contracts.chain.wait_until(lambda: contracts.market.job(job_id).status != JobStatus.OPEN, timeout=120)
    assert contracts.market.job(job_id).status == JobStatus.LEASED

    code, _, err = market.follow(job_id, "--data-dir", str(market.home / "empty"))
    assert code == 1 and err.count("\n") == 1
    assert err == f"error: job {job_id}: its worker has no bundle yet and none is recorded here; " + (
        "give the bundle it was posted with (--bundle DIR)\n"
    )
    assert contracts.market.job(job_id).status == JobStatus.LEASED  # nothing lost: it waits for its bundle

    code, outcome, err = market.follow(job_id, "--data-dir", str(market.home / "empty"), "--bundle", str(TRAIN))
    assert code == 0, err
    assert outcome["status"] == "succeeded" and outcome["slots"][0]["status"] == "paid"
    assert (market.home / f"results-{job_id}" / "slot-0" / "output" / "model.safetensors").is_file()
    assert contracts.market.job(job_id).status == JobStatus.CLOSED
    market.assert_nothing_held()


def test_requester_killed_once_the_run_finished__follow_fetches_checks_accepts_and_is_paid(market: Market) -> None:
    out = market.home / "out-committed"
    submit = ["job", "submit", str(TRAIN), "--dev", str(REQUESTER), "--verify", "none", "--auction", "instant"]
    requester = Proc([*submit, "--wait", "-o", str(out)], market.home / ".flopex", market.home / "committed.log")
    job_id = int(re.search(r"job (\d+) posted", requester.wait_for_line("posted", timeout=120))[1])  # type: ignore[index]
    requester.wait_for_line(f"job {job_id}: finished", timeout=180)
    assert requester.stop("kill") == -9
    contracts = market.contracts()
    # The provider commits its result; nobody accepts it yet (the challenge window is 60 s).
    contracts.chain.wait_until(lambda: contracts.market.slot(job_id, 0).status == SlotStatus.COMMITTED, timeout=120)
    root = contracts.market.slot(job_id, 0).result_root

    done = market.flopex("job", "follow", str(job_id), "--dev", str(REQUESTER))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the worker holds it (succeeded); following it" in done.stdout
    assert f"the results match the root committed on chain {root.hex()[:16]}" in done.stdout
    assert f"job {job_id} succeeded" in done.stdout
    assert (out / "slot-0" / "output" / "model.safetensors").is_file()
    m = contracts.market
    [accepted] = m.get_events("ResultAccepted", m.start_block, job_id=job_id)
    assert accepted.slot == 0  # accepted by the requester, before its window ran out
    assert m.slot(job_id, 0).status == SlotStatus.PAID and m.job(job_id).status == JobStatus.CLOSED
    market.assert_nothing_held()
