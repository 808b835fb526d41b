"""Jobs run as commands: a two-step job and a torchrun job on two CPU devices, through the contracts on
the embedded chain under replay verification. Honest runs are paid although their side files (a
timestamped log, a PDF with its creation date) differ on every run; a wrong declared answer is
slashed; a job whose answer no re-run reproduces is voided, never slashed."""

from __future__ import annotations

from pathlib import Path

import pytest

from marketplace.contracts.events import ResultAttested
from marketplace.types import Auction, Outcome
from tests.verification.chainkit import PROVIDERS, VERIFIERS, Market, bundle_copy
from worker.testing.cheats import Cheat

pytestmark = [pytest.mark.slow, pytest.mark.bwrap, pytest.mark.filterwarnings("ignore::ResourceWarning")]


def attested(market: Market, job_id: int) -> dict[int, ResultAttested]:
    m = market.contracts.market
    return {e.slot: e for e in m.get_events("ResultAttested", m.start_block, job_id=job_id)}


def _unseeded(bundle: Path, script: str, seeded: str) -> Path:
    """The bundle with its training seeded by the clock: no two runs give the same answer."""
    path = bundle / script
    text = path.read_text()
    assert seeded in text
    path.write_text(text.replace(seeded, "torch.manual_seed(time.time_ns() % 2**31)"))
    return bundle


def test_multi_step__honest_run_with_timestamped_side_files__is_verified_by_a_full_rerun_and_paid(
    market: Market, tmp_path: Path
) -> None:
    provider = market.add_provider(PROVIDERS[0])
    verifier = market.add_verifier(VERIFIERS[0], full_rerun_rate=1.0)
    stake = market.contracts.registry.total_stake(provider.address)
    outcome = market.run_job(bundle_copy(tmp_path, "multi_step"), auction=Auction.INSTANT)
    [bill] = outcome.slots
    verdict = attested(market, outcome.job_id)[0]
    assert verdict.outcome == Outcome.ACCEPT and bill["status"] == "paid" and bill["slashed"] == 0
    assert market.contracts.registry.total_stake(provider.address) == stake
    # Both steps ran on the provider and again on the verifier; the PDF and log differ, unjudged.
    results = tmp_path / f"out-{outcome.job_id}" / "slot-0"
    rerun = verifier.work / f"job-{outcome.job_id}" / "slot-0" / "replay" / "full"
    for folder in (results, rerun):
        assert (folder / "output" / "model.safetensors").is_file() and (folder / "work" / "data.safetensors").is_file()
    assert (results / "output" / "loss.pdf").read_bytes() != (rerun / "output" / "loss.pdf").read_bytes()


def test_multi_step__a_wrong_declared_answer__is_rejected_and_slashed(market: Market, tmp_path: Path) -> None:
    cheater = market.add_provider(PROVIDERS[0], Cheat("random"))
    market.add_verifier(VERIFIERS[0], full_rerun_rate=1.0)
    stake = market.contracts.registry.total_stake(cheater.address)
    outcome = market.run_job(bundle_copy(tmp_path, "multi_step"), auction=Auction.INSTANT)
    [bill] = outcome.slots
    verdict = attested(market, outcome.job_id)[0]
    assert verdict.outcome == Outcome.REJECT and bill["rulings"][0]["outcome"] == "reject"
    assert bill["status"] == "slashed" and bill["paid"] == 0 and bill["slashed"] > 0
    assert market.contracts.registry.total_stake(cheater.address) == stake - bill["slashed"]


def test_multi_step__an_answer_no_rerun_reproduces__is_voided_never_slashed(market: Market, tmp_path: Path) -> None:
    provider = market.add_provider(PROVIDERS[0])
    market.add_verifier(VERIFIERS[0], full_rerun_rate=1.0)
    stake = market.contracts.registry.total_stake(provider.address)
    # The answer is the model alone (the data step reproduces: a declared file that does would be judged).
    only_model = {'outputs = ["model.safetensors", "work/data.safetensors"]': 'outputs = ["model.safetensors"]'}
    bundle = _unseeded(bundle_copy(tmp_path, "multi_step", only_model), "train.py", "torch.manual_seed(seed)")
    outcome = market.run_job(bundle, auction=Auction.INSTANT)
    [bill] = outcome.slots
    assert attested(market, outcome.job_id)[0].outcome == Outcome.VOID
    assert bill["status"] == "refunded" and bill["slashed"] == 0
    assert market.contracts.registry.total_stake(provider.address) == stake


def test_torchrun_ddp__two_cpu_devices__leased_run_with_gloo_verified_and_paid(market: Market, tmp_path: Path) -> None:
    # A provider offering two CPU devices takes a gpus = 2 job (one offering one, cheaper, cannot);
    # torchrun runs it on both, and the verifier's re-run starts the same two processes.
    market.add_provider(PROVIDERS[1], price="0.1")
    provider = market.add_provider(PROVIDERS[0], cpu_slots=2)
    verifier = market.add_verifier(VERIFIERS[0], full_rerun_rate=1.0)
    stake = market.contracts.registry.total_stake(provider.address)
    outcome = market.run_job(bundle_copy(tmp_path, "torchrun_ddp"), auction=Auction.INSTANT)
    [bill] = outcome.slots
    verdict = attested(market, outcome.job_id)[0]
    assert verdict.outcome == Outcome.ACCEPT and bill["status"] == "paid"
    assert bill["provider"] == provider.address
    assert market.contracts.registry.total_stake(provider.address) == stake
    results = tmp_path / f"out-{outcome.job_id}" / "slot-0"
    assert "2 processes" in (results / "output" / "train.log").read_text()
    rerun = verifier.work / f"job-{outcome.job_id}" / "slot-0" / "replay" / "full"
    assert "2 processes" in (rerun / "output" / "train.log").read_text()
    assert "on 2 processes (torchrun)" in (results / "logs" / "stderr.log").read_text()


def test_torchrun_ddp__an_answer_no_rerun_reproduces__is_voided_never_slashed(market: Market, tmp_path: Path) -> None:
    provider = market.add_provider(PROVIDERS[0], cpu_slots=2)
    market.add_verifier(VERIFIERS[0], full_rerun_rate=1.0)
    stake = market.contracts.registry.total_stake(provider.address)
    bundle = _unseeded(
        bundle_copy(tmp_path, "torchrun_ddp"),
        "ddp_train.py",
        "torch.manual_seed(seed)  # the same initial weights on every rank",
    )
    outcome = market.run_job(bundle, auction=Auction.INSTANT)
    [bill] = outcome.slots
    assert attested(market, outcome.job_id)[0].outcome == Outcome.VOID
    assert bill["status"] == "refunded" and bill["slashed"] == 0
    assert market.contracts.registry.total_stake(provider.address) == stake
