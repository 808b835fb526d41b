"""A bundle that needs a package the provider's Python lacks, through the market on the embedded chain.

``examples/extra_package`` imports ``tabulate``; here the provider and the verifier build it from a
local wheelhouse holding a ``tabulate`` wheel written by this test (no network): the provider builds
the environment once in the sandbox, runs the job with it and is paid; the verifier rebuilds the
same environment (the same key) to re-run the job.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from marketplace.chain.client import dev_account
from marketplace.contracts.events import ResultAttested
from marketplace.market.summary import job_summary
from marketplace.requester.client import WorkerClient
from marketplace.requester.requester import JobOptions, Requester
from marketplace.types import Auction, Outcome, SlotStatus
from tests.verification.chainkit import PROVIDERS, REQUESTER, VERIFIERS, Market, bundle_copy
from worker.node.environments import EnvironmentSettings
from worker.testing.wheels import make_wheel

pytestmark = [pytest.mark.slow, pytest.mark.bwrap, pytest.mark.filterwarnings("ignore::ResourceWarning")]

#: A stand-in for tabulate 0.9.0 with the one call the example makes, marked so the test can see it ran.
FAKE_TABULATE = """\
def tabulate(rows, headers=(), floatfmt="g"):
    lines = ["  ".join(str(h) for h in headers)]
    for row in rows:
        lines.append("  ".join(format(v, floatfmt) if isinstance(v, float) else str(v) for v in row))
    return "\\n".join(lines + ["(table by the wheelhouse's tabulate)"])
"""


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    folder = tmp_path / "wheelhouse"
    make_wheel(folder, "tabulate", "0.9.0", FAKE_TABULATE)
    return folder


def test_extra_package__built_over_the_providers_torch__replayed_by_the_verifier_and_paid(
    market: Market, tmp_path: Path, wheelhouse: Path
) -> None:
    server = market.add_provider(
        PROVIDERS[0],
        environments=EnvironmentSettings(tmp_path / "provider-envs", package_index=None, find_links=(wheelhouse,)),
    ).worker
    verifier = market.add_verifier(
        VERIFIERS[0],
        environments=EnvironmentSettings(tmp_path / "verifier-envs", package_index=None, find_links=(wheelhouse,)),
    )
    outcome = market.run_job(bundle_copy(tmp_path, "extra_package"), auction=Auction.INSTANT)
    [bill] = outcome.slots
    m = market.contracts.market
    [verdict] = m.get_events("ResultAttested", m.start_block, job_id=outcome.job_id)
    assert isinstance(verdict, ResultAttested)
    assert verdict.outcome == Outcome.ACCEPT, bill
    assert bill["status"] == "paid" and bill["paid"] > 0
    assert outcome.status == "succeeded"
    # The job ran with the wheelhouse's package, and the worker timed the build apart from the run.
    table = next(Path(market.home / f"out-{outcome.job_id}").rglob("training.txt")).read_text()
    assert "(table by the wheelhouse's tabulate)" in table
    record = server.manager.store.get(outcome.job_id)
    assert record is not None and record.metering is not None
    assert record.metering["env_build_millis"] > 0
    # The verifier rebuilt the very same environment (same key) for its re-run.
    provider_keys = {p.name for p in (tmp_path / "provider-envs" / "envs").iterdir()}
    verifier_keys = {p.name for p in (tmp_path / "verifier-envs" / "envs").iterdir()}
    assert len(provider_keys) == 1 and provider_keys == verifier_keys
    assert verifier.settings.environments is not None


def test_extra_package__a_package_no_index_has__never_runs__reported_a_no_show__provider_not_slashed(
    market: Market, tmp_path: Path
) -> None:
    empty = tmp_path / "empty-wheelhouse"
    empty.mkdir(mode=0o755)
    provider = market.add_provider(
        PROVIDERS[0],
        environments=EnvironmentSettings(tmp_path / "provider-envs", package_index=None, find_links=(empty,)),
    )
    server = provider.worker
    contracts = market.contracts
    stake = contracts.registry.total_stake(provider.address)
    requester = Requester(contracts, dev_account(REQUESTER))
    options = JobOptions(auction=Auction.INSTANT, bid_window_s=30, challenge_window_s=600, run_slack_s=60)
    job_id = requester.submit(bundle_copy(tmp_path, "extra_package"), options)
    requester.wait_for_lease(job_id, timeout_s=60)
    offer = contracts.registry.offer(provider.address)
    with WorkerClient(offer.endpoint, requester_key=dev_account(REQUESTER).key, domain=requester.domain) as client:
        client.upload_bundle(job_id, requester._archives[job_id])
        client.start_job(job_id, seed=1)
    contracts.chain.wait_until(lambda: server.manager.get(job_id).state == "failed", timeout=120)
    record = server.manager.get(job_id)
    assert record.started is None  # it never ran: nothing to bill, nothing to verify
    assert record.reason.startswith("environment: uv could not install the packages:")
    assert "tabulate" in record.reason and "\n" not in record.reason
    assert list((tmp_path / "provider-envs" / "envs").iterdir()) == []
    # The provider reports the bundle as one nobody could run here: the slot settles with the
    # no-show fee, the requester gets the rest back and the provider keeps its stake.
    contracts.chain.time_travel(contracts.market.spec(job_id).run_duration // 2 + 1)
    contracts.chain.wait_until(lambda: contracts.market.slot(job_id, 0).status == SlotStatus.REFUNDED, timeout=90)
    reason = job_summary(contracts, job_id)["slots"][0]["reason"]
    assert "no-show" in reason and "nobody slashed" in reason, reason
    assert contracts.registry.total_stake(provider.address) == stake


def test_preflight__warns_when_no_provider_that_answers_can_serve_the_torch_range(
    market: Market, tmp_path: Path
) -> None:
    from marketplace.protocol.bundle import load_bundle
    from marketplace.requester.preflight import preflight

    market.add_provider(PROVIDERS[0])
    fits = load_bundle(bundle_copy(tmp_path / "fits", "extra_package"))
    assert not [w for w in preflight(market.contracts, fits).warnings if "can run this bundle" in w]
    too_old = load_bundle(bundle_copy(tmp_path / "too-old", "extra_package", {'torch = ">=2.4"': 'torch = "<1"'}))
    [line] = [w for w in preflight(market.contracts, too_old).warnings if "can run this bundle" in w]
    assert line.startswith(f"no provider that answered can run this bundle (provider {market.providers[0].address} ")
    assert "needs torch <1; the provider has" in line and "refuses it at upload" in line


def test_extra_package__a_verifier_that_cannot_build_the_environment__voids_the_slot_never_slashes(
    market: Market, tmp_path: Path, wheelhouse: Path
) -> None:
    provider = market.add_provider(
        PROVIDERS[0],
        environments=EnvironmentSettings(tmp_path / "provider-envs", package_index=None, find_links=(wheelhouse,)),
    )
    empty = tmp_path / "empty-wheelhouse"
    empty.mkdir(mode=0o755)
    verifier = market.add_verifier(
        VERIFIERS[0],
        environments=EnvironmentSettings(tmp_path / "verifier-envs", package_index=None, find_links=(empty,)),
    )
    stake = market.contracts.registry.total_stake(provider.address)
    outcome = market.run_job(bundle_copy(tmp_path, "extra_package"), auction=Auction.INSTANT)
    [bill] = outcome.slots
    m = market.contracts.market
    [verdict] = m.get_events("ResultAttested", m.start_block, job_id=outcome.job_id)
    assert verdict.outcome == Outcome.VOID and bill["status"] == "refunded", bill
    assert bill["slashed"] == 0 and market.contracts.registry.total_stake(provider.address) == stake
    [check] = [v for v in verifier.verdicts if v.job_id == outcome.job_id]
    assert check.reason.startswith("cannot judge: the job's environment does not build here (environment: uv ")
