"""Every verification policy and the capacity challenge, end to end through the contracts on the
embedded chain: real workers run the jobs in the sandbox, provider daemons (honest or cheating)
commit them, verifier daemons check and attest, the requester settles."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import PROVIDERS, VERIFIERS, Market, bundle_copy

from marketplace.chain import dev_account
from marketplace.events import ResultAttested, ResultDisputed, SlotSettled
from marketplace.types import Auction, Outcome, Policy, SlotStatus
from worker.cheats import Cheat

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::ResourceWarning")]

SMALL_REPLAY = {'"--segments", "20"': '"--segments", "4"'}


def settled(market: Market, job_id: int) -> dict[int, SlotSettled]:
    m = market.contracts.market
    return {e.slot: e for e in m.get_events("SlotSettled", m.start_block, job_id=job_id)}


def attested(market: Market, job_id: int) -> dict[int, ResultAttested]:
    m = market.contracts.market
    return {e.slot: e for e in m.get_events("ResultAttested", m.start_block, job_id=job_id)}


def test_replay__honest_provider__is_accepted_and_paid_for_verified_seconds(market: Market, tmp_path: Path) -> None:
    market.add_provider(PROVIDERS[0])
    market.add_verifier(VERIFIERS[0])
    outcome = market.run_job(bundle_copy(tmp_path, "replay_mlp", SMALL_REPLAY), auction=Auction.INSTANT)
    [bill] = outcome.slots
    assert bill["status"] == "paid"
    verdict = attested(market, outcome.job_id)[0]
    assert verdict.outcome == Outcome.ACCEPT
    assert 0 < verdict.verified_gpu_seconds <= verdict.claimed_gpu_seconds
    assert bill["gpu_seconds"] == verdict.verified_gpu_seconds


def test_replay__provider_skipping_half_the_segments__is_slashed_and_the_requester_refunded(
    market: Market, tmp_path: Path
) -> None:
    cheater = market.add_provider(PROVIDERS[0], Cheat("skip", fraction=0.5))
    market.add_verifier(VERIFIERS[0])
    stake = market.contracts.registry.total_stake(cheater.address)
    outcome = market.run_job(bundle_copy(tmp_path, "replay_mlp", SMALL_REPLAY), auction=Auction.INSTANT)
    [bill] = outcome.slots
    assert attested(market, outcome.job_id)[0].outcome == Outcome.REJECT
    assert bill["status"] == "slashed" and bill["paid"] == 0 and bill["slashed"] > 0
    assert market.contracts.registry.total_stake(cheater.address) == stake - bill["slashed"]
    assert bill["refunded"] > 0
