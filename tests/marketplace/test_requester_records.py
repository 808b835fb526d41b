"""The requester's job records and `follow` from the states that need no worker, on the embedded chain."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from marketplace.chain.client import Chain, dev_account
from marketplace.contracts.deployment import Contracts
from marketplace.contracts.devmarket import setup_dev_market
from marketplace.errors import ConfigError
from marketplace.protocol.bundle import load_bundle, pack_bundle
from marketplace.requester.records import JobRecord, RecordStore
from marketplace.requester.requester import JobOptions, Requester, next_step
from marketplace.types import Auction, JobStatus, Policy

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "examples" / "train_mlp"
REQUESTER = 2
INSTANT = JobOptions(auction=Auction.INSTANT, policy=Policy.NONE, bid_window_s=30)


@pytest.fixture(scope="module")
def contracts() -> Contracts:
    return setup_dev_market(Chain.embedded(), accounts=4)


def _record(job_id: int = 1, **changes: object) -> JobRecord:
    fields: dict[str, object] = {
        "job_id": job_id,
        "chain_id": 1,
        "market": "0xAbC",
        "requester": dev_account(REQUESTER).address,
        "bundle_hash": "ab" * 32,
        "archive": None,
        "bundle_dir": None,
        "out_dir": "/tmp/out",
        "options": {"auction": "instant"},
        "posted_at": 7,
    }
    fields.update(changes)
    return JobRecord(**fields)  # type: ignore[arg-type]


def test_a_record__saved_and_loaded__is_the_same_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    path = store.save(_record())
    assert path == tmp_path / "jobs" / "1-0xabc" / "job-1.json"
    assert store.load(1, "0xABC", 1) == _record()
    assert store.load(1, "0xabc", 2) is None and store.load(2, "0xabc", 1) is None
    store.save(_record(out_dir="/elsewhere"))  # replaced whole
    assert store.load(1, "0xabc", 1) == _record(out_dir="/elsewhere")
    assert sorted(p.name for p in path.parent.iterdir()) == ["job-1.json"]


def test_a_garbled_record__is_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    path = store.save(_record())
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"job-1\.json is not a readable job record"):
        store.load(1, "0xabc", 1)
    path.write_text(json.dumps({"version": 99, "job_id": 1}))
    with pytest.raises(ConfigError, match="not a job record of this flopex version"):
        store.load(1, "0xabc", 1)


def test_a_job__is_held_by_one_follower_at_a_time(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    with store.hold(1, "0xabc", 5):
        with pytest.raises(ConfigError, match=f"job 5 is being followed by pid {os.getpid()}"):
            with store.hold(1, "0xabc", 5):
                pass
        with store.hold(1, "0xabc", 6):  # another job is free
            pass
    with store.hold(1, "0xabc", 5):  # and this one again once let go
        pass


def test_submit__keeps_the_archive_before_posting_and_the_record_after(contracts: Contracts, tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "records")
    requester = Requester(contracts, dev_account(REQUESTER), records=store)
    job_id = requester.submit(TRAIN, INSTANT, out_dir=tmp_path / "out")
    record = store.load(contracts.chain.chain_id, contracts.market.address, job_id)
    assert record is not None
    assert record.job_id == job_id and record.requester == dev_account(REQUESTER).address
    assert record.bundle_hash == contracts.market.spec(job_id).bundle_hash.hex() == load_bundle(TRAIN).hash.hex()
    assert store.archive(record) == pack_bundle(TRAIN)
    assert record.out_dir == str((tmp_path / "out").resolve()) and record.bundle_dir == str(TRAIN)
    assert record.options["auction"] == "instant" and record.options["bid_window_s"] == 30


def test_follow__an_instant_job_nobody_takes__expires_it_and_refunds_the_escrow(contracts: Contracts) -> None:
    requester = Requester(contracts, dev_account(REQUESTER))
    market = contracts.market
    job_id = requester.submit(TRAIN, INSTANT)
    escrow, credit = market.job(job_id).escrow, market.credits(requester.account.address)
    assert next_step(contracts, job_id) == (
        f"open until chain time {market.spec(job_id).bid_deadline}: `flopex job follow {job_id}` (as its requester) "
        "waits and ends the auction then"
    )
    contracts.chain.time_travel(31)
    assert (next_step(contracts, job_id) or "").startswith("its auction is over but not ended")
    outcome = requester.follow(job_id, timeout_s=30)
    assert (outcome.status, outcome.ok) == ("expired", False)
    assert market.job(job_id).status == JobStatus.EXPIRED
    assert market.credits(requester.account.address) == credit + escrow
    assert next_step(contracts, job_id) is None
    # Followed again: the same outcome, nothing sent.
    assert requester.follow(job_id, timeout_s=5).status == "expired"


def test_follow__refuses_unknown_jobs_other_accounts_and_the_wrong_bundle(contracts: Contracts, tmp_path: Path) -> None:
    requester = Requester(contracts, dev_account(REQUESTER))
    job_id = requester.submit(TRAIN, INSTANT)
    count = contracts.market.job_count()
    with pytest.raises(ConfigError, match=rf"there is no job {count + 1} on the market at .* \({count} job"):
        requester.follow(count + 1)
    with pytest.raises(ConfigError, match=f"job {job_id} was posted by .*, not by {dev_account(3).address}"):
        Requester(contracts, dev_account(3)).follow(job_id)
    other = tmp_path / "other"
    other.mkdir()
    for name in ("job.toml", "train.py"):
        (other / name).write_bytes((TRAIN / name).read_bytes())
    (other / "job.toml").write_text((other / "job.toml").read_text().replace('"4"', '"5"'))
    with pytest.raises(ConfigError, match=f"is not the bundle job {job_id} was posted with"):
        requester.follow(job_id, bundle_dir=other)
    assert contracts.market.job(job_id).status == JobStatus.OPEN  # nothing was sent


def test_follow__ignores_a_record_of_another_job_at_the_same_id(contracts: Contracts, tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    said: list[str] = []
    requester = Requester(contracts, dev_account(REQUESTER), records=store, say=said.append)
    job_id = requester.submit(TRAIN, INSTANT)
    # A restarted dev chain deploys the market at the same address: an old record names another bundle.
    stale = _record(job_id, chain_id=contracts.chain.chain_id, market=contracts.market.address, out_dir="/old")
    store.save(stale)
    contracts.chain.time_travel(31)
    assert requester.follow(job_id, timeout_s=30).status == "expired"
    assert any("is of another job; not using it" in line for line in said)
