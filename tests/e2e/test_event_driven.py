"""A provider daemon driven by events: with its timer at an hour it still takes, runs, commits and
is paid, woken by new blocks and by its worker ending the job; the requester notes each phase."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from marketplace.chain.client import Chain, dev_account
from marketplace.contracts.deployment import Contracts
from marketplace.contracts.devmarket import setup_dev_market
from marketplace.requester.requester import PHASES, JobOptions, Requester
from marketplace.types import Auction, Policy, SlotStatus
from tests.e2e.providerkit import start_provider

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::ResourceWarning")]

ROOT = Path(__file__).resolve().parents[2]
REQUESTER = 2


@pytest.fixture
def contracts(has_bwrap: bool) -> Iterator[Contracts]:
    yield setup_dev_market(Chain.embedded(), accounts=5)


def test_a_provider_whose_timer_is_an_hour__serves_an_instant_job_woken_by_blocks_and_its_worker(
    contracts: Contracts, tmp_path: Path
) -> None:
    provider = start_provider(contracts, tmp_path / "worker", run=False)
    provider.daemon.poll_interval_s = 3600  # only a new block or the worker's end of a job wakes it
    provider.daemon.start()
    try:
        requester = Requester(contracts, dev_account(REQUESTER))
        # A window long enough that the requester's acceptance, not the window's end, settles it.
        options = JobOptions(auction=Auction.INSTANT, policy=Policy.NONE, bid_window_s=120, challenge_window_s=600)
        job_id = requester.submit(ROOT / "examples" / "train_mlp", options)
        # Well under the hour: a daemon that waited for its timer would leave the job untaken, and
        # its result uncommitted, until the requester gave up.
        outcome = requester.follow(job_id, tmp_path / "results", timeout_s=240)
    finally:
        provider.stop()
    assert outcome.ok, outcome.reason
    assert outcome.slots[0]["status"] == "paid" and outcome.slots[0]["gpu_seconds"] > 0
    assert contracts.market.slot(job_id, 0).status == SlotStatus.PAID
    assert outcome.refunded_at_lease > 0  # read from the job's JobLeased event
    phases = outcome.to_json()["phases"]
    assert list(phases) == [p for p in PHASES if p in phases]  # in the order a job goes through them
    assert set(phases) == set(PHASES), sorted(set(PHASES) - set(phases))
    assert all(isinstance(t, float) and t > 0 for t in phases.values())


def test_a_job_nobody_takes__expires_refunded_and_says_only_its_post(contracts: Contracts) -> None:
    requester = Requester(contracts, dev_account(REQUESTER))
    before = contracts.token.balance_of(dev_account(REQUESTER).address)
    options = JobOptions(auction=Auction.INSTANT, policy=Policy.NONE, bid_window_s=2, challenge_window_s=1)
    job_id = requester.submit(ROOT / "examples" / "train_mlp", options)
    outcome = requester.follow(job_id, timeout_s=120)
    assert outcome.status == "expired"
    assert set(outcome.to_json()["phases"]) == {"submitted", "posted"}
    credit = contracts.market.credits(dev_account(REQUESTER).address)
    assert contracts.token.balance_of(dev_account(REQUESTER).address) + credit == before
