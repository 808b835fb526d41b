"""A job to payment over TLS pinned by the provider's on-chain offer."""

from __future__ import annotations

from pathlib import Path

import pytest

from marketplace.chain.client import Chain, dev_account
from marketplace.contracts.devmarket import setup_dev_market
from marketplace.protocol.tls import parse_endpoint
from marketplace.requester.requester import JobOptions, Requester
from marketplace.types import Auction, Policy
from tests.e2e.providerkit import PROVIDER, start_provider

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::ResourceWarning")]

REQUESTER = 2


def hello_bundle(root: Path) -> Path:
    """A tiny CPU job that writes one output file."""
    bundle = root / "hello"
    bundle.mkdir()
    (bundle / "job.toml").write_text(
        '[job]\nentrypoint = "main.py"\n\n[resources]\ndevice = "cpu"\ntimeout_s = 60\nmax_gpu_hours = 0.01\n\n'
        '[verification]\npolicy = "none"\n\n[market]\nmax_price = "0.5"\nauction = "instant"\n'
    )
    (bundle / "main.py").write_text(
        "import os, pathlib\n"
        "pathlib.Path(os.environ['FLOPEX_OUTPUT_DIR'], 'hello.txt').write_text('hello over tls')\n"
        "print('done')\n"
    )
    return bundle


def test_a_job_over_pinned_tls__runs_and_is_paid(tmp_path: Path, has_bwrap: bool) -> None:
    contracts = setup_dev_market(Chain.embedded(), accounts=5)
    provider = start_provider(contracts, tmp_path / "worker", tls=True)
    try:
        offer = contracts.registry.offer(dev_account(PROVIDER).address)
        endpoint = parse_endpoint(offer.endpoint)
        assert endpoint.spki_sha256 == provider.server.tls_pin is not None
        requester = Requester(contracts, dev_account(REQUESTER))
        options = JobOptions(auction=Auction.INSTANT, policy=Policy.NONE, challenge_window_s=2, bid_window_s=30)
        job_id = requester.submit(hello_bundle(tmp_path), options)
        outcome = requester.follow(job_id, tmp_path / "out", timeout_s=180)
    finally:
        provider.stop()
    assert outcome.status == "succeeded", outcome.to_json()
    assert outcome.paid > 0 and outcome.slots[0]["status"] == "paid"
    assert any(p.read_text() == "hello over tls" for p in (tmp_path / "out").rglob("hello.txt"))
