"""README's anvil flow, as written: anvil making a block every second, `flopex deploy`, a provider
process and `flopex job submit --wait`, job after job, sealed and instant, each succeeded and paid.

anvil judges a call by its pending block, which carries the latest block's time until the next
block is mined; a requester that judged its deadlines by the wall clock failed every sealed job
here with "reveal still open" and left it leased with nothing uploaded.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from marketplace.chain.anvil import Anvil, find_anvil
from marketplace.chain.client import Chain, dev_account
from marketplace.contracts.deployment import Deployment, load_contracts
from marketplace.types import JobStatus, SlotStatus, parse_tokens, slot_value
from tests.conftest import require
from tests.e2e.procs import FLOPEX, Proc

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::ResourceWarning")]

ROOT = Path(__file__).resolve().parents[2]
REQUESTER, PROVIDER = 2, 4


def _flopex(home: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """A flopex command in ``home`` (its working folder and FLOPEX_HOME), as a user types it there."""
    return subprocess.run(
        [*FLOPEX, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=home,
        env={**os.environ, "FLOPEX_HOME": str(home / ".flopex")},
    )


@pytest.fixture
def anvil_market(tmp_path: Path, has_bwrap: bool) -> Iterator[tuple[Path, str]]:
    """`anvil --block-time 1` on 127.0.0.1, `flopex deploy --dev 0` and `flopex provider start --dev 4 --price 0.2`."""
    require(find_anvil() is not None, "anvil (npm @foundry-rs/anvil-linux-amd64)")
    node = Anvil(block_time=1).start()  # on a free port: other test runs may hold 8545
    try:
        deployed = _flopex(tmp_path, "deploy", "--rpc-url", node.url, "--dev", "0")
        assert deployed.returncode == 0, deployed.stderr
        assert (tmp_path / ".flopex" / "deployment.json").is_file()
        provider = Proc(
            ["provider", "start", "--dev", str(PROVIDER), "--price", "0.2"], tmp_path / ".flopex", tmp_path / "p.log"
        )
        try:
            provider.wait_for_line("serving", timeout=120)
            yield tmp_path, node.url
        finally:
            assert provider.stop() == 0
    finally:
        node.stop()


def test_readme_anvil_flow__three_jobs_in_a_row_sealed_and_instant__each_succeeded_and_paid(
    anvil_market: tuple[Path, str],
) -> None:
    home, url = anvil_market
    bundle = str(ROOT / "examples" / "train_mlp")
    # The README's command exactly: a sealed job (job.toml), its default 20 s bid and reveal windows.
    readme = ["job", "submit", bundle, "--dev", str(REQUESTER), "--verify", "none", "--wait", "-o", "results"]
    first = _flopex(home, *readme)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "job 1 succeeded" in first.stdout
    assert (home / "results" / "slot-0" / "output" / "model.safetensors").is_file()
    bills = []
    for auction, out in (("instant", "results-2"), ("sealed", "results-3")):
        done = _flopex(
            home,
            "job",
            "submit",
            bundle,
            "--dev",
            str(REQUESTER),
            "--verify",
            "none",
            "--auction",
            auction,
            "--bid-window",
            "4",
            "--wait",
            "-o",
            out,
            "--json",
        )
        assert done.returncode == 0, done.stderr
        bills.append(json.loads(done.stdout))
        assert (home / out / "slot-0" / "output" / "model.safetensors").is_file()
    assert [b["job_id"] for b in bills] == [2, 3]
    assert all(b["status"] == "succeeded" and b["ok"] for b in bills)
    contracts = load_contracts(Chain.connect(url), Deployment.load(home / ".flopex" / "deployment.json"))
    market = contracts.market
    provider = dev_account(PROVIDER).address
    for job_id in (1, 2, 3):
        assert market.job(job_id).status == JobStatus.CLOSED
        [slot] = market.slots_of(job_id)
        assert slot.provider == provider and slot.status == SlotStatus.PAID
        assert slot.gpu_seconds > 0
    # Instant: taken at the provider's floor; sealed with one ask: at the requester's max.
    [instant], [sealed] = bills[0]["slots"], bills[1]["slots"]
    assert instant["price"] == parse_tokens("0.2") and sealed["price"] == parse_tokens("0.5")
    for slot in (instant, sealed):
        assert slot["status"] == "paid" and slot["paid"] == slot_value(slot["price"], slot["gpu_seconds"]) > 0
    stakes = contracts.registry.stakes(provider)
    assert (stakes.locked, stakes.active_jobs) == (0, 0)  # no lease holds the provider any more
