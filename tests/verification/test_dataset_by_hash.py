"""A job reading a dataset by hash, through the market on the embedded chain: the requester puts the
dataset on the provider once with the first job, the provider runs it in the sandbox with the data
mounted read-only, a verifier fetches the same data by hash and replays it, the provider is paid;
the second job on the same data uploads no dataset byte."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from marketplace.chain.client import dev_account
from marketplace.protocol.datasets import dataset_hash, format_dataset
from marketplace.requester.client import WorkerClient
from marketplace.requester.datasets import DatasetIndex, put_dataset
from marketplace.requester.requester import JobOptions, JobOutcome
from marketplace.types import Auction, Outcome
from tests.verification.chainkit import PROVIDERS, REQUESTER, ROOT, VERIFIERS, Market, _Requester

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::ResourceWarning")]

EXAMPLE = ROOT / "examples" / "dataset_by_hash"


def test_the_example_names_the_hash_of_its_data() -> None:
    named = re.search(r'train = "(data:[0-9a-f]{64})"', (EXAMPLE / "bundle" / "job.toml").read_text())
    assert named is not None and named.group(1) == format_dataset(dataset_hash(EXAMPLE / "data"))


def _run(market: Market, requester: _Requester, bundle: Path) -> JobOutcome:
    options = JobOptions(bid_window_s=30, challenge_window_s=600, run_slack_s=60, auction=Auction.INSTANT)
    job_id = requester.submit(bundle, options)
    return requester.follow(job_id, market.home / f"out-{job_id}", timeout_s=240)


def test_a_job_reading_a_dataset_by_hash__is_replayed_by_a_verifier_and_paid_and_the_next_uploads_no_data(
    market: Market, tmp_path: Path
) -> None:
    market.add_provider(PROVIDERS[0])
    market.add_verifier(VERIFIERS[0])
    data = tmp_path / "data"
    shutil.copytree(EXAMPLE / "data", data)
    digest = dataset_hash(data)
    requester = _Requester(market.contracts, dev_account(REQUESTER))
    requester.datasets = DatasetIndex(tmp_path / "requester")
    requester.datasets.remember(digest, data)  # what `flopex data put` (or an earlier submit) left

    first = _run(market, requester, EXAMPLE / "bundle")
    assert first.status == "succeeded", first.reason
    assert first.dataset_bytes_uploaded > 0
    [bill] = first.slots
    assert bill["status"] == "paid" and bill["paid"] > 0
    verdict = [e for e in market.contracts.market.get_events("ResultAttested", 0, job_id=first.job_id)]
    assert [v.outcome for v in verdict] == [Outcome.ACCEPT]
    assert bill["reason"].startswith("verified by verifier")
    metrics = (first.results[0] / "output" / "metrics.json").read_text()
    assert '"rows": 2048' in metrics
    # the verifier re-ran it on the data it fetched from the provider, checked by hash
    fetched = market.home / f"verifier-{VERIFIERS[0]}"
    copies = [p for p in fetched.rglob("train") if p.parent.name == "datasets"]
    assert copies and all(dataset_hash(p) == digest for p in copies)
    [server] = market.servers
    assert server.manager.datasets.info(digest) is not None

    second = _run(market, requester, EXAMPLE / "bundle")
    assert second.status == "succeeded", second.reason
    assert second.dataset_bytes_uploaded == 0  # the provider held the data: only the bundle went up
    assert second.slots[0]["status"] == "paid"


def test_a_provider_running_a_job_on_other_data_than_named__is_rejected_by_the_verifier_and_slashed(
    market: Market, tmp_path: Path
) -> None:
    cheater = market.add_provider(PROVIDERS[0])
    market.add_verifier(VERIFIERS[0])
    requester = _Requester(market.contracts, dev_account(REQUESTER))
    [server] = market.servers
    endpoint = f"127.0.0.1:{server.port}"
    with WorkerClient(endpoint, requester_key=requester.account.key, domain=requester.domain) as client:
        digest = put_dataset(client, EXAMPLE / "data").hash
    # the provider swaps the data under the name: the job runs (and succeeds) on other rows
    points = server.manager.datasets.tree(digest) / "points.csv"
    points.chmod(0o644)
    points.write_text("\n".join(points.read_text().splitlines()[:1025]) + "\n")
    stake = market.contracts.registry.total_stake(cheater.address)

    outcome = _run(market, requester, EXAMPLE / "bundle")
    assert outcome.dataset_bytes_uploaded == 0  # the provider said it held the data
    [bill] = outcome.slots
    verdicts = market.contracts.market.get_events("ResultAttested", 0, job_id=outcome.job_id)
    assert [v.outcome for v in verdicts] == [Outcome.REJECT]
    assert bill["status"] == "slashed" and bill["paid"] == 0 and bill["refunded"] > 0
    assert bill["reason"].startswith("rejected by verifier") and bill["rulings"][0]["outcome"] == "reject"
    # the verifier refused the data it fetched before running anything on it
    assert not [p for p in (market.home / f"verifier-{VERIFIERS[0]}").rglob("replay") if any(p.iterdir())]
    assert market.contracts.registry.total_stake(cheater.address) == stake - bill["slashed"]
    assert outcome.status == "slashed"
