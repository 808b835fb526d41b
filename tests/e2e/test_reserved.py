"""Reserved capacity end to end on the embedded chain: a window bought, resold, served and paid.

The provider's worker serves the holder's jobs in the window without an auction, refuses everyone
else and every job outside the window, keeps its reserved device out of the job market, records
each job's usage on chain, and is paid in full once the challenge period is over.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from marketplace.bindings import Contracts
from marketplace.chain import Chain, dev_account
from marketplace.client import WorkerClient
from marketplace.devchain import setup_dev_market
from marketplace.errors import ConfigError, WorkerError
from marketplace.requester import JobOptions, Requester
from marketplace.reservations import (
    RESERVED_JOB_FLAG,
    ReservationStatus,
    reservation_price,
    reserved_job,
    reserved_job_id,
    reserved_job_ids,
)
from marketplace.types import ONE_TOKEN, Auction, JobStatus, Policy
from tests.e2e.providerkit import PROVIDER, start_provider

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::ResourceWarning")]

ROOT = Path(__file__).resolve().parents[2]
FIRST_HOLDER, SECOND_HOLDER, MARKET_REQUESTER = 2, 3, 1
WINDOW_S = 600


@pytest.fixture
def contracts(has_bwrap: bool) -> Iterator[Contracts]:
    yield setup_dev_market(Chain.embedded(), accounts=5)


def test_reserved_job_ids__round_trip_and_never_collide_with_market_jobs() -> None:
    job_id = reserved_job_id(7, 123)
    assert reserved_job(job_id) == (7, 123)
    assert job_id & RESERVED_JOB_FLAG and job_id < 1 << 63  # the worker's ids are signed 64-bit
    first, last = reserved_job_ids(7)
    assert first == reserved_job_id(7, 0) and last == reserved_job_id(7, (1 << 24) - 1)
    assert reserved_job(last) == (7, (1 << 24) - 1) and reserved_job(last + 1) == (8, 0)
    for market_job in (0, 1, 2**40, RESERVED_JOB_FLAG - 1):
        assert reserved_job(market_job) is None
    for bad in ((0, 1), (1 << 38, 0), (1, 1 << 24), (1, -1)):
        with pytest.raises(ConfigError, match="out of range"):
            reserved_job_id(*bad)


def _wait(predicate, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_reserved_window__serves_its_holder_only_records_usage_and_pays_the_provider(
    contracts: Contracts, tmp_path: Path
) -> None:
    reservations = contracts.require_reservations()
    chain = contracts.chain
    provider = start_provider(contracts, tmp_path / "worker")
    try:
        seller, holder = dev_account(FIRST_HOLDER), dev_account(SECOND_HOLDER)
        start = chain.next_timestamp() + 60
        rid = reservations.offer(dev_account(PROVIDER), start, WINDOW_S, 1, ONE_TOKEN)
        reservations.buy_with_permit(seller, rid, contracts.token, deadline=start)
        # Resold before the window: the buyer now holds it, the seller is paid its asking price.
        reservations.list_for_resale(seller, rid, ONE_TOKEN // 10)
        contracts.token.approve(holder, reservations.address, ONE_TOKEN // 10)
        reservations.buy_resale(holder, rid)
        assert reservations.reservation(rid).holder == holder.address

        bundle = ROOT / "examples" / "plain_torch"
        with pytest.raises(ConfigError, match="window"):  # not open yet
            Requester(contracts, holder).run_reserved(rid, bundle, tmp_path / "early")
        offer = contracts.registry.offer(dev_account(PROVIDER).address)
        domain = Requester(contracts, holder).domain
        with WorkerClient(offer.endpoint, requester_key=holder.key, domain=domain) as client:
            with pytest.raises(WorkerError, match="no lease"):  # the worker checks the window itself
                client.get_job(reserved_job_id(rid, 1))

        chain.time_travel(start + 120 - chain.now())  # two minutes into the window
        assert provider.daemon.reserved is not None
        # The seller no longer holds it: refused by the client and by the worker.
        with pytest.raises(ConfigError, match="held by"):
            Requester(contracts, seller).run_reserved(rid, bundle, tmp_path / "seller")
        with WorkerClient(offer.endpoint, requester_key=seller.key, domain=domain) as client:
            with pytest.raises(WorkerError, match="the job's requester"):
                client.get_job(reserved_job_id(rid, 2))

        # A market job that would run inside the window finds no provider: the one device is reserved.
        market_requester = Requester(contracts, dev_account(MARKET_REQUESTER))
        market_job = market_requester.submit(ROOT / "examples" / "train_mlp", JobOptions(
            auction=Auction.INSTANT, policy=Policy.NONE, bid_window_s=3, max_price=ONE_TOKEN))

        outcome = Requester(contracts, holder).run_reserved(rid, bundle, tmp_path / "out", seq=5,
                                                            record_timeout_s=60)
        assert outcome.state == "succeeded"
        assert outcome.job_id == reserved_job_id(rid, 5)
        assert "weight" in (outcome.results / "logs" / "stdout.log").read_text()  # the script's own output
        assert outcome.recorded_gpu_seconds is not None and outcome.recorded_gpu_seconds >= 1
        r = reservations.reservation(rid)
        assert r.usage_records == 1 and r.used_gpu_seconds == outcome.recorded_gpu_seconds
        # Recorded from the worker's metering: the receipt's device-seconds, give or take the rounding.
        assert abs(outcome.recorded_gpu_seconds - max(1, outcome.device_seconds)) <= 1
        chain.time_travel(5)  # past the take window: the chain's clock is ahead of the wall clock here
        assert market_requester.wait_for_lease(market_job, timeout_s=30) == JobStatus.EXPIRED
        with pytest.raises(ConfigError, match="out of range"):
            Requester(contracts, holder).run_reserved(rid, bundle, tmp_path / "bad", seq=1 << 24)

        # After the window and its challenge period the provider settles and withdraws by itself.
        provider_before = contracts.token.balance_of(dev_account(PROVIDER).address)
        chain.time_travel(WINDOW_S + reservations.challenge_period())
        _wait(lambda: reservations.reservation(rid).status == ReservationStatus.PAID)
        value = reservation_price(1, WINDOW_S, ONE_TOKEN)
        fee = value * reservations.fee_bps() // 10_000
        _wait(lambda: contracts.token.balance_of(dev_account(PROVIDER).address) == provider_before + value - fee)
        assert reservations.escrow_of(rid) == 0
        assert rid not in provider.daemon.memory.reservations  # forgotten once settled
        with pytest.raises(ConfigError, match="paid"):  # the window is over and settled
            Requester(contracts, holder).run_reserved(rid, bundle, tmp_path / "late")
    finally:
        provider.stop()
