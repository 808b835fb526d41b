"""Faults on the embedded chain: a requester that vanishes, a provider restarted mid-lease."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from marketplace.chain.client import Chain, dev_account
from marketplace.contracts.deployment import Contracts
from marketplace.contracts.devmarket import setup_dev_market
from marketplace.errors import WorkerError
from marketplace.market.summary import job_summary
from marketplace.protocol.bundle import pack_bundle
from marketplace.requester.client import WorkerClient
from marketplace.requester.requester import JobOptions, Requester
from marketplace.types import Auction, JobStatus, Policy, SlotStatus, slot_value
from tests.e2e.providerkit import PRICE, PROVIDER, start_provider

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::ResourceWarning")]

ROOT = Path(__file__).resolve().parents[2]
REQUESTER = 2


@pytest.fixture
def contracts(has_bwrap: bool) -> Iterator[Contracts]:
    yield setup_dev_market(Chain.embedded(), accounts=5)


def _post_and_run(
    contracts: Contracts, requester: Requester, bundle: Path = ROOT / "examples" / "train_mlp"
) -> tuple[int, WorkerClient]:
    options = JobOptions(auction=Auction.INSTANT, policy=Policy.NONE, challenge_window_s=30, bid_window_s=60)
    job_id = requester.submit(bundle, options)
    requester.wait_for_lease(job_id, timeout_s=60)
    offer = contracts.registry.offer(contracts.market.slot(job_id, 0).provider)
    client = WorkerClient(offer.endpoint, requester_key=dev_account(REQUESTER).key, domain=requester.domain)
    client.upload_bundle(job_id, requester._archives[job_id])
    client.start_job(job_id, seed=1)
    return job_id, client


def test_requester_that_vanishes__provider_settles_alone_after_the_challenge_window(
    contracts: Contracts, tmp_path: Path
) -> None:
    provider = start_provider(contracts, tmp_path / "worker")
    try:
        before = contracts.token.balance_of(dev_account(PROVIDER).address)
        requester = Requester(contracts, dev_account(REQUESTER))
        job_id, client = _post_and_run(contracts, requester)
        with client:
            assert client.wait(job_id, timeout_s=120).WhichOneof("kind") == "finished"
        # The requester is gone: it never accepts, disputes or settles.
        slot = contracts.chain.wait_until(
            lambda: (s := contracts.market.slot(job_id, 0)).status == SlotStatus.COMMITTED and s, timeout=60
        )
        contracts.chain.time_travel(contracts.market.spec(job_id).challenge_window + 1)
        contracts.chain.wait_until(
            lambda: (
                contracts.market.slot(job_id, 0).status == SlotStatus.PAID
                and contracts.market.credits(dev_account(PROVIDER).address) == 0
            ),
            timeout=60,
        )
        paid = slot_value(PRICE, slot.gpu_seconds)
        assert slot.gpu_seconds > 0
        assert contracts.token.balance_of(dev_account(PROVIDER).address) == before + paid - paid // 100
    finally:
        provider.stop()


def test_provider_restarted_after_the_job__serves_the_finished_result_and_is_paid(
    contracts: Contracts, tmp_path: Path
) -> None:
    provider = start_provider(contracts, tmp_path / "worker")
    requester = Requester(contracts, dev_account(REQUESTER))
    job_id, client = _post_and_run(contracts, requester)
    with client:
        assert client.wait(job_id, timeout_s=120).WhichOneof("kind") == "finished"
    provider.stop()

    provider = start_provider(contracts, tmp_path / "worker")  # same data dir, new port
    try:
        offer = contracts.registry.offer(dev_account(PROVIDER).address)
        assert offer.endpoint == provider.daemon.settings.endpoint
        with WorkerClient(offer.endpoint, requester_key=dev_account(REQUESTER).key, domain=requester.domain) as c:
            results = c.download_results(job_id, tmp_path / "results", provider=offer.signer)
        committed = contracts.chain.wait_until(
            lambda: (s := contracts.market.slot(job_id, 0)).status == SlotStatus.COMMITTED and s, timeout=60
        )
        assert committed.result_root == results.manifest.root
        contracts.market.accept_result(dev_account(REQUESTER), job_id, 0)
        [bill] = requester.settle(job_id, timeout_s=60)
        assert bill["status"] == "paid" and bill["gpu_seconds"] > 0
    finally:
        provider.stop()


def test_provider_restarted_mid_job__fails_it_cleanly_and_nobody_is_slashed(
    contracts: Contracts, tmp_path: Path
) -> None:
    bundle = tmp_path / "long"
    bundle.mkdir()
    (bundle / "job.toml").write_text(
        '[job]\nentrypoint = "sleep.py"\n[resources]\ndevice = "cpu"\ntimeout_s = 600\nmax_gpu_hours = 0.1\n'
        '[market]\nmax_price = "0.5"\n'
    )
    (bundle / "sleep.py").write_text("import time\nprint('working', flush=True)\ntime.sleep(600)\n")
    provider = start_provider(contracts, tmp_path / "worker")
    requester = Requester(contracts, dev_account(REQUESTER))
    job_id, client = _post_and_run(contracts, requester, bundle)
    with client:
        for event in client.watch(job_id, timeout_s=60):
            if event.WhichOneof("kind") == "started":
                break
    provider.daemon.stop()
    provider.server.stop()  # kills the running job: marked failed, with the reason
    provider = start_provider(contracts, tmp_path / "worker")
    try:
        record = provider.server.manager.get(job_id)
        assert record.state == "failed" and ("shutting down" in record.reason or "restarted" in record.reason), record
        committed = contracts.chain.wait_until(
            lambda: (s := contracts.market.slot(job_id, 0)).status == SlotStatus.COMMITTED and s, timeout=60
        )
        contracts.market.accept_result(dev_account(REQUESTER), job_id, 0)
        [bill] = requester.settle(job_id, timeout_s=60)
        assert bill["status"] == "paid" and bill["slashed"] == 0
        assert bill["paid"] == slot_value(PRICE, committed.gpu_seconds)
    finally:
        provider.stop()


def test_a_slot_of_a_job_still_open__is_not_committed_empty_before_its_lease_starts(
    contracts: Contracts, tmp_path: Path
) -> None:
    # An instant job with two slots stays open until both are taken; until then it has no lease
    # start. A provider must not read that as a lease that began long ago with no upload.
    provider = start_provider(contracts, tmp_path / "worker", run=False)
    commits: list[int] = []
    provider.daemon._commit = lambda job_id, *_args: commits.append(job_id)  # type: ignore[method-assign]
    try:
        requester = Requester(contracts, dev_account(REQUESTER))
        options = JobOptions(auction=Auction.INSTANT, policy=Policy.REDUNDANT, redundancy=2, bid_window_s=600)
        job_id = requester.submit(ROOT / "examples" / "train_mlp", options)
        for _ in range(3):
            provider.daemon.step()
        [slot] = contracts.market.slots_of(job_id)
        assert slot.provider == dev_account(PROVIDER).address and slot.status == SlotStatus.ASSIGNED
        assert contracts.market.job(job_id).lease_start == 0  # open: one of two slots taken
        assert commits == []
    finally:
        provider.stop()


def test_an_instant_job__is_taken_at_the_strategys_ask__posted_first(contracts: Contracts, tmp_path: Path) -> None:
    # A just-started provider with a decaying strategy asks 1.5 x its floor: it posts that price,
    # then takes the job, which pays the posted price. A job capped below the ask is left alone.
    provider = start_provider(
        contracts, tmp_path / "worker", run=False, strategy="decay:start=1.5,min=1,half_life=3600"
    )
    try:
        registry, market = contracts.registry, contracts.market
        requester = Requester(contracts, dev_account(REQUESTER))
        ask = PRICE * 3 // 2
        cheap = requester.submit(
            ROOT / "examples" / "train_mlp",
            JobOptions(auction=Auction.INSTANT, policy=Policy.NONE, bid_window_s=600, max_price=ask - ask // 10),
        )
        provider.daemon.step()
        assert market.job(cheap).status == JobStatus.OPEN and registry.price_floor(provider.daemon.address) == PRICE
        job_id = requester.submit(
            ROOT / "examples" / "train_mlp",
            JobOptions(auction=Auction.INSTANT, policy=Policy.NONE, bid_window_s=600, max_price=2 * PRICE),
        )
        provider.daemon.step()
        posted = registry.price_floor(provider.daemon.address)
        assert PRICE < posted <= ask  # the ask, a little decayed by the seconds since start
        [slot] = market.slots_of(job_id)
        assert slot.provider == provider.daemon.address and slot.price == posted
        assert [e.price_floor for e in registry.get_events("PriceFloorChanged", 0)] == [posted]
    finally:
        provider.stop()


def test_a_download_that_fails__is_disputed_and_never_accepted_or_called_verified(
    contracts: Contracts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = start_provider(contracts, tmp_path / "worker")
    try:
        said: list[str] = []
        requester = Requester(contracts, dev_account(REQUESTER), say=said.append)
        options = JobOptions(auction=Auction.INSTANT, policy=Policy.NONE, challenge_window_s=300, bid_window_s=60)
        job_id = requester.submit(ROOT / "examples" / "train_mlp", options)
        attempts: list[int] = []

        def broken(self: WorkerClient, job_id: int, dest: object, *, provider: str | None = None) -> None:
            attempts.append(job_id)
            raise WorkerError("the stream broke after the manifest", code="UNAVAILABLE")

        monkeypatch.setattr(WorkerClient, "download_results", broken)
        monkeypatch.setattr(requester, "settle", lambda job_id, **kwargs: [])  # no verifier rules here
        outcome = requester.follow(job_id, tmp_path / "results", timeout_s=120)
        assert len(attempts) == 3  # retried before giving up
        assert outcome.unverified == [0] and not outcome.verified
        assert contracts.market.slot(job_id, 0).status == SlotStatus.DISPUTED  # disputed, not accepted
        assert not any("verified" in line for line in said), said
        assert any("could not be downloaded" in line and "disputing" in line for line in said), said
    finally:
        provider.stop()


def _leased(contracts: Contracts, requester: Requester, bundle: Path = ROOT / "examples" / "train_mlp") -> int:
    options = JobOptions(auction=Auction.INSTANT, policy=Policy.NONE, challenge_window_s=30, bid_window_s=60)
    job_id = requester.submit(bundle, options)
    requester.wait_for_lease(job_id, timeout_s=60)
    return job_id


def _no_show_settled(contracts: Contracts, job_id: int) -> None:
    """Move the chain half-way through the run window and wait for the provider's no-show to settle."""
    spec = contracts.market.spec(job_id)
    contracts.chain.time_travel(spec.run_duration // 2 + 1)
    contracts.chain.wait_until(lambda: contracts.market.slot(job_id, 0).status == SlotStatus.REFUNDED, timeout=90)


@pytest.mark.parametrize("delivery", ["nothing", "a refused archive", "an upload never started"])
def test_requester_that_delivers_no_runnable_bundle__provider_reports_a_no_show__paid_a_fee_never_slashed(
    contracts: Contracts, tmp_path: Path, delivery: str
) -> None:
    # Before, the provider committed an empty result that any verifier rejected: it lost the slot's
    # value and the base slash, and the requester gained half of that. Now the slot settles unslashed.
    provider = start_provider(contracts, tmp_path / "worker")
    address = dev_account(PROVIDER).address
    try:
        stake = contracts.registry.stakes(address).active
        wallet = contracts.token.balance_of(address) + contracts.market.credits(address)
        requester = Requester(contracts, dev_account(REQUESTER))
        job_id = _leased(contracts, requester)
        offer = contracts.registry.offer(address)
        client = WorkerClient(offer.endpoint, requester_key=dev_account(REQUESTER).key, domain=requester.domain)
        with client:
            if delivery == "a refused archive":
                other = tmp_path / "other"
                shutil.copytree(ROOT / "examples" / "train_mlp", other)
                (other / "extra.txt").write_text("not the bundle that was posted\n")
                with pytest.raises(WorkerError, match="bundle"):
                    client.upload_bundle(job_id, pack_bundle(other))
            elif delivery == "an upload never started":
                client.upload_bundle(job_id, requester._archives[job_id])
            _no_show_settled(contracts, job_id)
            # The job is closed on the worker: a late upload is refused and a late start runs nothing.
            record = provider.server.manager.get(job_id)
            assert record.state == "cancelled" and "no-show" in record.reason and record.started is None
            if delivery == "an upload never started":
                client.start_job(job_id, seed=1)
                assert provider.server.manager.get(job_id).started is None
            else:
                with pytest.raises(WorkerError, match=r"is closed"):
                    client.upload_bundle(job_id, requester._archives[job_id])
        summary = job_summary(contracts, job_id)
        reason = summary["slots"][0]["reason"]
        assert "no-show" in reason and "nobody slashed" in reason, summary
        value = slot_value(PRICE, contracts.market.spec(job_id).max_gpu_seconds)
        fee = value // 10
        assert contracts.registry.stakes(address).active == stake
        contracts.chain.wait_until(lambda: contracts.market.credits(address) == 0, timeout=60)  # withdrawn
        assert contracts.token.balance_of(address) - wallet == fee - fee // 100
    finally:
        provider.stop()


def test_provider_bounds__jobs_that_would_hold_its_stake_too_long__are_not_bid_on(
    contracts: Contracts, tmp_path: Path
) -> None:
    # The market caps every window (days); a provider caps them tighter for itself: by default a run
    # of at most two days, a challenge window of at most one, and at most an hour of waiting for the
    # other slots of an instant job to fill while its own collateral is locked.
    provider = start_provider(contracts, tmp_path / "worker", run=False, cpu_slots=2)
    try:
        requester = Requester(contracts, dev_account(REQUESTER))
        market, bundle = contracts.market, ROOT / "examples" / "train_mlp"
        instant = {"auction": Auction.INSTANT, "policy": Policy.NONE}
        long_run = requester.submit(bundle, JobOptions(**instant, bid_window_s=600, run_slack_s=3 * 86_400))
        long_window = requester.submit(bundle, JobOptions(**instant, bid_window_s=600, challenge_window_s=2 * 86_400))
        far_fill = requester.submit(
            bundle,
            JobOptions(auction=Auction.INSTANT, policy=Policy.REDUNDANT, redundancy=2, bid_window_s=2 * 3_600),
        )
        within = requester.submit(bundle, JobOptions(**instant, bid_window_s=600))
        for _ in range(3):
            provider.daemon.step()
        assert [len(market.slots_of(j)) for j in (long_run, long_window, far_fill)] == [0, 0, 0]
        assert market.job(within).status == JobStatus.LEASED
        # Within an hour of its deadline the two-slot job is worth the wait: the provider takes a slot.
        contracts.chain.time_travel(3_600 + 60)
        for _ in range(2):
            provider.daemon.step()
        [slot] = market.slots_of(far_fill)
        assert slot.provider == dev_account(PROVIDER).address
    finally:
        provider.stop()
