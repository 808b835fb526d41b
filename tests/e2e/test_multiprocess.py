"""The market across processes: a local chain, provider daemons and requesters, each its own process."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from marketplace.chain.client import Chain, dev_account
from marketplace.contracts.deployment import Deployment, load_contracts
from marketplace.requester.requester import JobOptions, Requester
from marketplace.types import ONE_TOKEN, Auction, Policy, SlotStatus, parse_tokens, slot_value
from tests.e2e.procs import FLOPEX, Proc, start_chain, start_provider

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::ResourceWarning")]

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "examples" / "train_mlp"
REQUESTER, CHEAP, DEAR = 2, 4, 5


@pytest.fixture
def home(tmp_path: Path, has_bwrap: bool) -> Path:
    return tmp_path


@pytest.fixture
def local_market(home: Path) -> Iterator[str]:
    """A `flopex chain up` process with two provider processes (0.2 and 0.3 FLOP/GPU-h)."""
    chain, url = start_chain(home)
    procs = [chain]
    try:
        procs.append(start_provider(home, CHEAP, "0.2")[0])
        procs.append(start_provider(home, DEAR, "0.3")[0])
        yield url
    finally:
        for proc in reversed(procs):
            proc.stop()


def _submit(home: Path, *args: str, timeout: float = 300) -> dict:
    out = subprocess.run(
        [*FLOPEX, "job", "submit", str(TRAIN), "--dev", str(REQUESTER), "--json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"FLOPEX_HOME": str(home), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_sealed_job__submitted_from_its_own_process__runs_on_the_cheapest_provider_and_is_paid(
    home: Path, local_market: str
) -> None:
    bill = _submit(
        home, "--verify", "none", "--bid-window", "6", "--challenge-window", "3", "--wait", "-o", str(home / "out")
    )
    [slot] = bill["slots"]
    assert slot["provider"] == dev_account(CHEAP).address
    assert slot["price"] == parse_tokens("0.3")  # the second-lowest ask
    assert slot["status"] == "paid" and slot["gpu_seconds"] > 0
    assert slot["paid"] == slot_value(slot["price"], slot["gpu_seconds"])
    assert (home / "out" / "slot-0" / "output" / "model.safetensors").is_file()
    contracts = load_contracts(Chain.connect(local_market), Deployment.load(home / "deployment.json"))
    assert contracts.market.slot(bill["job_id"], 0).status == SlotStatus.PAID


def test_provider_killed_mid_job__requester_is_refunded_and_the_provider_slashed(home: Path) -> None:
    chain, url = start_chain(home)
    provider, address = start_provider(home, CHEAP, "0.2")
    try:
        contracts = load_contracts(Chain.connect(url), Deployment.load(home / "deployment.json"))
        stake = contracts.registry.total_stake(address)
        requester = Requester(contracts, dev_account(REQUESTER))
        bundle = home / "slow"
        shutil.copytree(ROOT / "examples" / "train_mlp", bundle)
        toml = (bundle / "job.toml").read_text().replace('"--epochs", "4"', '"--epochs", "400"')
        (bundle / "job.toml").write_text(toml.replace("timeout_s = 300", "timeout_s = 20"))
        options = JobOptions(
            auction=Auction.INSTANT, policy=Policy.NONE, bid_window_s=30, run_slack_s=5, challenge_window_s=5
        )
        job_id = requester.submit(bundle, options)
        requester.wait_for_lease(job_id, timeout_s=60)
        slot = contracts.market.slot(job_id, 0)
        from marketplace.requester.client import WorkerClient

        offer = contracts.registry.offer(slot.provider)
        with WorkerClient(offer.endpoint, requester_key=dev_account(REQUESTER).key, domain=requester.domain) as c:
            c.upload_bundle(job_id, requester._archives[job_id])
            c.start_job(job_id, seed=1)
            for event in c.watch(job_id, timeout_s=60):
                if event.WhichOneof("kind") == "started":
                    break
        provider.stop("kill")
        [bill] = requester.settle(job_id, timeout_s=120)
        assert bill["status"] == "slashed"
        assert bill["reason"].startswith("no result committed by the run deadline")
        assert bill["refunded"] == slot_value(parse_tokens("0.2"), contracts.market.spec(job_id).max_gpu_seconds)
        assert contracts.registry.total_stake(address) == stake - bill["slashed"]
        assert bill["slashed"] == bill["refunded"] + 50 * ONE_TOKEN
    finally:
        provider.stop()
        chain.stop()


def test_chain_up__stops_cleanly_on_sigterm(home: Path) -> None:
    chain, _ = start_chain(home)
    assert chain.stop() == 0
    assert "chain stopped" in chain.log.read_text()


def test_provider__on_sigterm__stops_cleanly_and_keeps_its_state(home: Path) -> None:
    chain, _ = start_chain(home)
    try:
        provider, _ = start_provider(home, CHEAP, "0.2")
        assert provider.stop() == 0
        assert "provider stopped" in provider.log.read_text()
        assert (home / f"provider-{CHEAP}" / "provider-state.json").is_file()
    finally:
        chain.stop()


def test_provider_start__with_no_chain__fails_with_one_line(home: Path) -> None:
    out = subprocess.run(
        [*FLOPEX, "provider", "start", "--dev", "4", "--deployment", str(home / "none.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert out.stderr.startswith("error: no deployment file") and out.stderr.count("\n") == 1
    assert out.stdout == ""


def test_anvil__instant_job_through_the_command_line__is_taken_at_the_floor_and_paid(home: Path) -> None:
    from marketplace.chain.anvil import Anvil, find_anvil
    from tests.conftest import require

    require(find_anvil() is not None, "anvil")
    node = Anvil(block_time=1).start()  # blocks every second, as on a real chain
    try:
        deployed = subprocess.run(
            [*FLOPEX, "deploy", "--rpc-url", node.url, "--dev", "0"],
            capture_output=True,
            text=True,
            timeout=120,
            env={"FLOPEX_HOME": str(home), "PATH": "/usr/bin:/bin"},
        )
        assert deployed.returncode == 0, deployed.stderr
        provider, address = start_provider(home, CHEAP, "0.2")
        try:
            bill = _submit(
                home,
                "--auction",
                "instant",
                "--verify",
                "none",
                "--challenge-window",
                "3",
                "--wait",
                "-o",
                str(home / "out"),
            )
            [slot] = bill["slots"]
            assert (slot["provider"], slot["price"], slot["status"]) == (address, parse_tokens("0.2"), "paid")
            assert slot["paid"] == slot_value(slot["price"], slot["gpu_seconds"])

            # anvil restarted: its state is gone, and the daemon says so and exits.
            port = node.port
            node.stop()
            node = Anvil(port=port, block_time=1).start()
            # A transaction in flight when the node went away is waited for (up to 120 s) first.
            code = provider.process.wait(timeout=300)
            assert code == 1
            assert "the chain no longer has the market" in provider.log.read_text()
        finally:
            provider.stop()
    finally:
        node.stop()


def test_replay_job__checked_by_a_verifier_in_its_own_process__is_accepted_and_paid(home: Path) -> None:
    chain, url = start_chain(home)
    provider, address = start_provider(home, CHEAP, "0.2")
    verifier = Proc(
        ["verifier", "start", "--dev", "3", "--data-dir", str(home / "verifier")], home, home / "verifier.log"
    )
    try:
        verifier.wait_for_line("watching market", timeout=120)
        out = subprocess.run(
            [
                *FLOPEX,
                "job",
                "submit",
                str(ROOT / "examples" / "replay_mlp"),
                "--dev",
                str(REQUESTER),
                "--json",
                "--auction",
                "instant",
                "--verify",
                "replay",
                "--challenge-window",
                "300",
                "--wait",
                "-o",
                str(home / "out"),
            ],
            capture_output=True,
            text=True,
            timeout=400,
            env={"FLOPEX_HOME": str(home), "PATH": "/usr/bin:/bin"},
        )
        assert out.returncode == 0, out.stderr
        [slot] = json.loads(out.stdout)["slots"]
        assert (slot["provider"], slot["status"]) == (address, "paid")
        contracts = load_contracts(Chain.connect(url), Deployment.load(home / "deployment.json"))
        m = contracts.market
        job_id = json.loads(out.stdout)["job_id"]
        [attested] = m.get_events("ResultAttested", m.start_block, job_id=job_id)
        # The market takes rulings from the court only; the court drew the one verifier there is.
        court = contracts.court
        assert court is not None and attested.verifier == court.address and attested.outcome == 0
        assert court.panel(court.slot_case(job_id, 0), 0) == [dev_account(3).address]
        assert slot["gpu_seconds"] == attested.verified_gpu_seconds > 0
        assert slot["paid"] == slot_value(slot["price"], slot["gpu_seconds"])
    finally:
        assert verifier.stop() == 0
        provider.stop()
        chain.stop()
