"""Provider metrics scraped over HTTP, idle providers pricing lower, and devices freed as jobs finish."""

from __future__ import annotations

import itertools
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount

from marketplace.chain.client import Chain, dev_account
from marketplace.contracts.deployment import Contracts
from marketplace.contracts.devmarket import setup_dev_market
from marketplace.errors import WorkerError
from marketplace.market.pricing import strategy_from_spec
from marketplace.requester.client import WorkerClient
from marketplace.requester.requester import JobOptions, Requester
from marketplace.rpc import worker_pb2 as pb
from marketplace.types import ONE_TOKEN, Auction, DeviceKind, JobSpec, Policy, SlotStatus, parse_tokens, slot_value
from tests.e2e.providerkit import start_provider
from tests.worker.workerkit import WorkerProcess, submit
from worker.provider import bidding as bidding_module
from worker.provider.daemon import ProviderDaemon, ProviderSettings
from worker.provider.metrics import CONTENT_TYPE, parse_metrics, serve_metrics

ROOT = Path(__file__).resolve().parents[2]
REQUESTER, PROVIDER = 2, 4
PRICE = parse_tokens("0.2")


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == CONTENT_TYPE
        return parse_metrics(response.read().decode())


def _watch_for_release(manager: Any, job_id: int, seen: dict[str, Any], stop: threading.Event) -> None:
    """Record the worker's busy devices the moment job ``job_id``'s finished event is stored."""
    seq = 0
    while not stop.is_set():
        try:
            events, _ended = manager.wait_events(job_id, seq, 0.2)
        except WorkerError:  # not uploaded yet
            stop.wait(0.05)
            continue
        for number, raw in events:
            seq = number + 1
            if pb.JobEvent.FromString(raw).WhichOneof("kind") == "finished":
                seen["busy"] = manager.busy_devices()
                return


@pytest.fixture
def contracts(has_bwrap: bool) -> Iterator[Contracts]:
    yield setup_dev_market(Chain.embedded(), accounts=5)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_metrics__scraped_over_http__show_the_job_the_bid_the_busy_time_and_the_earnings(
    contracts: Contracts, tmp_path: Path
) -> None:
    provider = start_provider(contracts, tmp_path / "worker", account=PROVIDER, run=False)
    server, daemon = provider.server, provider.daemon
    assert daemon.settings.price_floor == PRICE
    metrics = serve_metrics(daemon, port=0)
    daemon.start()
    stop, seen = threading.Event(), {}
    try:
        assert metrics.url.startswith("http://127.0.0.1:")
        before = _scrape(metrics.url)
        assert before['flopex_worker_jobs{state="succeeded"}'] == 0
        assert before['flopex_provider_bids_total{auction="instant",outcome="won"}'] == 0
        assert before["flopex_provider_devices"] == 1 and before["flopex_provider_devices_busy"] == 0
        assert before["flopex_provider_earned_units_total"] == 0
        assert before['flopex_provider_ask_units{strategy="fixed"}'] == PRICE
        assert before["flopex_provider_price_floor_units"] == PRICE

        requester = Requester(contracts, dev_account(REQUESTER))
        options = JobOptions(auction=Auction.INSTANT, policy=Policy.NONE, challenge_window_s=30, bid_window_s=60)
        job_id = requester.submit(ROOT / "examples" / "train_mlp", options)
        watcher = threading.Thread(target=_watch_for_release, args=(server.manager, job_id, seen, stop), daemon=True)
        watcher.start()
        outcome = requester.follow(job_id, tmp_path / "results", timeout_s=180)
        [bill] = outcome.slots
        assert bill["status"] == "paid" and bill["gpu_seconds"] > 0
        watcher.join(timeout=10)
        # A job that finishes releases its devices at once: none is busy when its finished event is stored.
        assert seen.get("busy") == set()

        paid = slot_value(PRICE, bill["gpu_seconds"])
        earned = paid - paid // 100
        contracts.chain.wait_until(lambda: contracts.market.credits(dev_account(PROVIDER).address) == 0, timeout=30)
        after = _scrape(metrics.url)
        assert after['flopex_worker_jobs{state="succeeded"}'] == 1
        assert after['flopex_worker_jobs{state="failed"}'] == 0
        assert after['flopex_provider_bids_total{auction="instant",outcome="won"}'] == 1
        assert after['flopex_provider_bids_total{auction="instant",outcome="lost"}'] == 0
        assert after["flopex_provider_last_bid_units"] == PRICE
        assert after["flopex_provider_devices_busy"] == 0 and after["flopex_provider_utilization"] == 0
        assert after["flopex_provider_device_busy_seconds_total"] > 0
        assert after["flopex_provider_device_idle_seconds_total"] > before["flopex_provider_device_idle_seconds_total"]
        assert after['flopex_provider_settled_slots_total{status="paid"}'] == 1
        assert after["flopex_provider_settled_gpu_seconds_total"] == bill["gpu_seconds"]
        assert after["flopex_provider_earned_units_total"] == earned > 0
        assert after["flopex_provider_withdrawn_units_total"] == earned
        assert after["flopex_provider_credit_units"] == 0

        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(metrics.url.replace("/metrics", "/nothing"), timeout=10)
        assert missing.value.code == 404
        missing.value.close()
    finally:
        stop.set()
        metrics.stop()
        daemon.stop()
        server.stop()
    assert contracts.market.slot(job_id, 0).status == SlotStatus.PAID


class _Clock:
    """Stands in for the ``time`` module in worker.provider.bidding."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def test_an_idle_provider_with_a_decay_strategy__asks_less_the_longer_it_idles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _Clock(1_000_000.0)
    monkeypatch.setattr(bidding_module, "time", clock)
    busy: set[int] = {0}
    worker = SimpleNamespace(manager=SimpleNamespace(devices=[object(), object()], busy_devices=lambda: set(busy)))
    floor = 2 * ONE_TOKEN
    settings = ProviderSettings(
        endpoint="127.0.0.1:1",
        price_floor=floor,
        strategy=strategy_from_spec("decay:start=1.5,min=1,half_life=1800"),
        stake=0,
        device_model="cpu",
        device_kind=DeviceKind.CPU,
        gpu_count=2,
        memory_mb=4096,
    )
    no_chain = SimpleNamespace(reservations=None)  # pricing alone: nothing here reads the chain
    daemon = ProviderDaemon(no_chain, dev_account(PROVIDER), worker, settings, tmp_path / "state.json")  # type: ignore[arg-type]
    job = JobSpec(
        requester=dev_account(REQUESTER).address,
        bundle_hash=b"\x00" * 32,
        device_kind=DeviceKind.CPU,
        gpus=1,
        min_memory_mb=0,
        policy=Policy.NONE,
        auction=Auction.SEALED,
        redundancy=1,
        max_price=10 * ONE_TOKEN,
        max_gpu_seconds=3_600,
        bid_deadline=0,
        reveal_deadline=0,
        run_duration=0,
        challenge_window=0,
    )

    busy_ask = daemon.bidder.ask(job)  # a device is busy: not idle, full premium
    assert busy_ask == floor * 3 // 2
    busy.clear()  # the job ends; the clock runs on with nothing to do
    asks = []
    for idle in (0, 900, 1_800, 3_600, 36_000):
        clock.now = 1_000_000.0 + idle
        asks.append(daemon.bidder.ask(job))
    premium = Fraction(floor, 2)
    assert asks == [
        busy_ask,
        floor + int(premium * Fraction(3, 4)),  # half way to the first half-life: 3/4 of the premium left
        floor + int(premium / 2),
        floor + int(premium / 4),
        floor + -(-int(premium) // 2**20),  # ~nothing left: the ask nears the floor, rounded up
    ]
    assert all(a > b for a, b in itertools.pairwise(asks))
    busy.add(1)  # busy again: the premium is back
    assert daemon.bidder.ask(job) == busy_ask


@pytest.mark.slow
@pytest.mark.bwrap
def test_a_finished_job__has_released_its_devices_when_its_finished_event_arrives(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, make_bundle: Any
) -> None:
    archive, bundle_hash = make_bundle("print('done')\n")
    job_id = submit(worker, client, requester.address, archive, bundle_hash)
    for event in client.watch(job_id, timeout_s=60):
        if event.WhichOneof("kind") in ("finished", "failed"):
            kind = event.WhichOneof("kind")
            info = client.info()
            break
    assert kind == "finished"
    assert [d.busy for d in info.devices] == [False] * len(info.devices)
    assert info.running_jobs == 0 and info.queued_jobs == 0
