"""Reserved capacity end to end on the embedded chain: a window bought, resold, served and paid.

The provider's worker serves the holder's jobs in the window without an auction, refuses everyone
else and every job outside the window, keeps its reserved device out of the job market, records
each job's usage on chain, and is paid in full once the challenge period is over.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from marketplace.chain.client import Chain, dev_account
from marketplace.contracts.deployment import Contracts, Deployment, load_contracts
from marketplace.contracts.devmarket import setup_dev_market
from marketplace.contracts.reservations import (
    RESERVED_JOB_FLAG,
    ReservationStatus,
    reservation_price,
    reserved_job,
    reserved_job_id,
    reserved_job_ids,
)
from marketplace.errors import ConfigError, ContractRevert, WorkerError
from marketplace.requester.client import WorkerClient
from marketplace.requester.requester import JobOptions, Requester
from marketplace.types import ONE_TOKEN, Auction, JobStatus, Policy
from tests.e2e.procs import FLOPEX, start_chain
from tests.e2e.procs import start_provider as start_cli_provider
from tests.e2e.providerkit import PROVIDER, start_provider
from worker.provider.metrics import parse_metrics, serve_metrics
from worker.verifier.daemon import VerifierDaemon, VerifierSettings

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::ResourceWarning")]

ROOT = Path(__file__).resolve().parents[2]
FIRST_HOLDER, SECOND_HOLDER, MARKET_REQUESTER, VERIFIER = 2, 3, 1, 5
WINDOW_S = 600


@pytest.fixture
def contracts(has_bwrap: bool) -> Iterator[Contracts]:
    yield setup_dev_market(Chain.embedded(), accounts=6)


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
    metrics = serve_metrics(provider.daemon, port=0)

    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(metrics.url, timeout=10) as reply:
            return parse_metrics(reply.read().decode())

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

        _wait(lambda: scrape().get('flopex_provider_reservations{status="reserved"}') == 1)
        assert scrape()["flopex_provider_reserved_devices"] == 0  # bought, but its window is not open yet

        chain.time_travel(start + 120 - chain.now())  # two minutes into the window
        _wait(lambda: scrape()["flopex_provider_reserved_devices"] == 1)
        # The seller no longer holds it: refused by the client and by the worker.
        with pytest.raises(ConfigError, match="held by"):
            Requester(contracts, seller).run_reserved(rid, bundle, tmp_path / "seller")
        with WorkerClient(offer.endpoint, requester_key=seller.key, domain=domain) as client:
            with pytest.raises(WorkerError, match="the job's requester"):
                client.get_job(reserved_job_id(rid, 2))

        # A market job that would run inside the window finds no provider: the one device is reserved.
        market_requester = Requester(contracts, dev_account(MARKET_REQUESTER))
        market_job = market_requester.submit(
            ROOT / "examples" / "train_mlp",
            JobOptions(auction=Auction.INSTANT, policy=Policy.NONE, bid_window_s=3, max_price=ONE_TOKEN),
        )

        outcome = Requester(contracts, holder).run_reserved(rid, bundle, tmp_path / "out", seq=5, record_timeout_s=60)
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
        after = scrape()
        assert after['flopex_provider_reservations_settled_total{status="paid"}'] == 1
        assert after["flopex_provider_reservation_earned_units_total"] == value - fee
        assert after["flopex_provider_reserved_gpu_seconds_total"] == outcome.recorded_gpu_seconds
        assert after["flopex_provider_reserved_devices"] == 0
        with pytest.raises(ConfigError, match="paid"):  # the window is over and settled
            Requester(contracts, holder).run_reserved(rid, bundle, tmp_path / "late")
    finally:
        metrics.stop()
        provider.stop()


def test_a_usage_record_sent_before_a_crash__is_not_sent_again(contracts: Contracts, tmp_path: Path) -> None:
    reservations, chain = contracts.require_reservations(), contracts.chain
    provider = start_provider(contracts, tmp_path / "worker", run=False)
    daemon = provider.daemon
    try:
        start = chain.next_timestamp() + 30
        rid = reservations.offer(dev_account(PROVIDER), start, WINDOW_S, 1, ONE_TOKEN)
        reservations.buy_with_permit(dev_account(FIRST_HOLDER), rid, contracts.token, deadline=start)
        chain.time_travel(start + 120 - chain.now())
        outcome = Requester(contracts, dev_account(FIRST_HOLDER)).run_reserved(
            rid, ROOT / "examples" / "plain_torch", tmp_path / "out", seq=1, record_timeout_s=0
        )
        daemon.step()
        assert reservations.reservation(rid).usage_records == 1
        assert outcome.job_id in daemon.memory.recorded and not daemon.memory.recording

        # As if the daemon died after sending the record and before noting it was mined.
        daemon.memory.recorded.discard(outcome.job_id)
        daemon.memory.recording.add(outcome.job_id)
        daemon.step()
        assert reservations.reservation(rid).usage_records == 1  # found on chain, not sent again
        saved = json.loads((tmp_path / "worker" / "provider.json").read_text())
        assert outcome.job_id in saved["recorded"] and saved["recording"] == []

        # In flight but never mined: it is sent.
        daemon.memory.recorded.discard(outcome.job_id)
        daemon.memory.recording.add(outcome.job_id)
        daemon.reserved._on_chain = lambda *_: False  # type: ignore[union-attr, method-assign]
        daemon.step()
        assert reservations.reservation(rid).usage_records == 2
    finally:
        provider.stop()


def test_reports_of_not_served__are_ruled_by_probing_the_worker_in_the_window_and_by_usage_after_it(
    contracts: Contracts, tmp_path: Path
) -> None:
    reservations, chain, token = contracts.require_reservations(), contracts.chain, contracts.token
    provider = start_provider(contracts, tmp_path / "worker")
    verifier = VerifierDaemon(
        contracts,
        dev_account(VERIFIER),
        VerifierSettings(
            data_dir=tmp_path / "verifier",
            poll_interval_s=0.1,
            capacity_n=128,
            capacity_at_registration=False,
            reservation_probe_attempts=2,
            reservation_probe_interval_s=0.5,
        ),
    )
    verifier.ensure_registered()
    verifier.start()
    seller, holder = dev_account(PROVIDER), dev_account(FIRST_HOLDER)
    bond = reservations.dispute_bond()
    try:
        t0 = chain.next_timestamp()
        served, failed, late = (
            reservations.offer(seller, t0 + offset, 600, 1, ONE_TOKEN) for offset in (100, 1_000, 2_000)
        )
        for rid in (served, failed, late):
            reservations.buy_with_permit(holder, rid, token, deadline=t0 + 90)
        value = reservation_price(1, 600, ONE_TOKEN)

        def report(rid: int) -> None:
            token.approve(holder, reservations.address, bond)
            reservations.report_not_served(holder, rid)

        # In its window, with the worker up: the probe passes and the report is ruled down.
        chain.time_travel(t0 + 160 - chain.now())
        report(served)
        _wait(lambda: reservations.reservation(served).status == ReservationStatus.SERVED)
        assert verifier.referee is not None and verifier.referee.rulings[-1].outcome == "served"

        # The provider goes away; in the next window its worker fails two probes: it did not serve.
        provider.stop()
        stake = contracts.registry.total_stake(seller.address)
        chain.time_travel(t0 + 1_060 - chain.now())
        report(failed)
        _wait(lambda: reservations.reservation(failed).status == ReservationStatus.FAILED)
        assert verifier.referee.rulings[-1].outcome == "failed"
        holder_before = token.balance_of(holder.address) + reservations.credits(holder.address)
        settled = reservations.events_of(reservations.settle(holder, failed))[-1].args
        slashed = int(settled["slashed"])
        assert slashed == value + reservations.call("base_slash")
        assert contracts.registry.total_stake(seller.address) == stake - slashed
        # The holder gets the price, its bond and, as the challenger who reported it, all of the slash.
        assert (
            token.balance_of(holder.address) + reservations.credits(holder.address)
            == holder_before + value + bond + slashed
        )

        # After its window an idle reservation cannot be reported (it could not be checked): it is paid.
        chain.time_travel(t0 + 2_700 - chain.now())
        with pytest.raises(ContractRevert, match="reservations: window over"):
            report(late)
        assert reservations.reservation(late).status == ReservationStatus.RESERVED

        # The report ruled down settles as served: the provider is paid the window and the bond.
        chain.time_travel(reservations.challenge_period())
        provider_before = reservations.credits(seller.address)
        paid = reservations.events_of(reservations.settle(holder, served))[-1].args
        assert reservations.reservation(served).status == ReservationStatus.PAID
        assert reservations.credits(seller.address) - provider_before == value - int(paid["fee"]) + bond
    finally:
        verifier.stop()
        provider.stop()


def _flopex(home: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FLOPEX, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"FLOPEX_HOME": str(home), "PATH": "/usr/bin:/bin"},
    )


def _json(home: Path, *args: str) -> Any:
    out = _flopex(home, *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_reserve_commands__offer_buy_run_and_settle_across_processes(tmp_path: Path, has_bwrap: bool) -> None:
    home = tmp_path
    chain_proc, url = start_chain(home)
    procs = [chain_proc]
    try:
        provider_proc = start_cli_provider(home, PROVIDER, "0.2")[0]
        procs.append(provider_proc)
        offered = _json(
            home,
            "reserve",
            "offer",
            "--dev",
            str(PROVIDER),
            "--start",
            "+20",
            "--duration",
            "900",
            "--gpus",
            "1",
            "--price",
            "1",
        )
        rid = offered["reservation_id"]
        assert offered["status"] == "offered" and offered["holder"] is None
        assert offered["value"] == reservation_price(1, 900, ONE_TOKEN)
        assert [r["reservation_id"] for r in _json(home, "reserve", "list", "--for-sale")] == [rid]

        bought = _flopex(home, "reserve", "buy", str(rid), "--dev", str(SECOND_HOLDER))
        assert bought.returncode == 0, bought.stderr
        shown = _json(home, "reserve", "show", str(rid))
        assert shown["status"] == "reserved" and shown["holder"] == dev_account(SECOND_HOLDER).address
        assert shown["escrow"] == offered["value"]
        assert _json(home, "reserve", "list", "--for-sale") == []
        assert [
            r["reservation_id"] for r in _json(home, "reserve", "list", "--holder", dev_account(SECOND_HOLDER).address)
        ] == [rid]

        bundle = str(ROOT / "examples" / "plain_torch")
        early = _flopex(home, "reserve", "run", str(rid), bundle, "--dev", str(SECOND_HOLDER))
        assert early.returncode != 0 and "window" in early.stderr and "Traceback" not in early.stderr
        time.sleep(max(0.0, shown["start"] - time.time() + 1))  # `chain up` keeps its clock with the wall clock
        stranger = _flopex(home, "reserve", "run", str(rid), bundle, "--dev", str(FIRST_HOLDER))
        assert stranger.returncode != 0 and "held by" in stranger.stderr
        ran = _json(
            home, "reserve", "run", str(rid), bundle, "--dev", str(SECOND_HOLDER), "--seq", "3", "-o", str(home / "out")
        )
        assert ran["state"] == "succeeded" and ran["job_id"] == reserved_job_id(rid, 3)
        assert ran["recorded_gpu_seconds"] is not None and ran["recorded_gpu_seconds"] >= 1
        assert (home / "out" / "logs" / "stdout.log").is_file()
        too_soon = _flopex(home, "reserve", "settle", str(rid), "--dev", str(FIRST_HOLDER))
        assert too_soon.returncode != 0 and "reservations:" in too_soon.stderr
        # Bad input: one clear line, no traceback, nothing changed on chain.
        for args, says in (
            (
                (
                    "reserve",
                    "offer",
                    "--dev",
                    str(PROVIDER),
                    "--start",
                    "tomorrow",
                    "--duration",
                    "60",
                    "--gpus",
                    "1",
                    "--price",
                    "1",
                ),
                "--start takes +SECONDS or a unix time",
            ),
            (("reserve", "show", "99"), "no reservation 99"),
            (("reserve", "buy-resale", str(rid), "--dev", str(FIRST_HOLDER)), "not listed for resale"),
            (("reserve", "resell", str(rid), "--dev", str(SECOND_HOLDER)), "give --price"),
        ):
            bad = _flopex(home, *args)
            assert bad.returncode != 0 and says in bad.stderr and "Traceback" not in bad.stderr, (args, bad.stderr)
        assert _json(home, "reserve", "list")[-1]["reservation_id"] == rid  # no offer was made

        contracts = load_contracts(Chain.connect(url), Deployment.load(home / "deployment.json"))
        reservations = contracts.require_reservations()
        contracts.chain.time_travel(900 + reservations.challenge_period())
        _wait(lambda: reservations.reservation(rid).status == ReservationStatus.PAID, timeout_s=60)
        assert _json(home, "reserve", "show", str(rid))["used_gpu_seconds"] == ran["recorded_gpu_seconds"]
    finally:
        for proc in reversed(procs):
            proc.stop()
