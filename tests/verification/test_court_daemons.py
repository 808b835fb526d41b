"""The verifier court with real daemons on one chain: a lying verifier, drawn first, is appealed by an
honest verifier that re-checked the slot (a whistleblower), overturned by a panel of three, slashed, and
the honest provider paid."""

from __future__ import annotations

from pathlib import Path

import pytest

from marketplace.chain.client import Chain
from marketplace.contracts.court import CourtParameters
from marketplace.contracts.deployment import MarketParameters
from marketplace.contracts.devmarket import setup_dev_market
from marketplace.types import ONE_TOKEN, Auction, Outcome
from tests.verification.chainkit import PROVIDERS, Market, bundle_copy

pytestmark = [
    pytest.mark.slow,
    # Five daemons replay the same slot at once here; pipes of sandboxed replays cut short when the test
    # stops its daemons are reported as unclosed files (a leak in the replay runner, not in the court).
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

SMALL_REPLAY = {'"--segments", "20"': '"--segments", "4"'}
LIAR = 8
HONEST = (6, 7, 9, 10)
LIAR_STAKE = 50_000 * ONE_TOKEN


def test_court__a_lying_verifier_drawn_first__is_appealed_overturned_and_slashed__the_provider_paid(
    tmp_path: Path, has_bwrap: bool
) -> None:
    chain = Chain.embedded()
    # An appeal window long enough for a re-check on a loaded machine.
    court_parameters = CourtParameters(ruling_period=240, appeal_period=240)
    contracts = setup_dev_market(
        chain, accounts=11, parameters=MarketParameters(dispute_bond=ONE_TOKEN), court_parameters=court_parameters
    )
    world = Market(contracts, tmp_path)
    try:
        world.add_provider(PROVIDERS[0])
        # The liar holds nearly all the stake, so the first draw (one seat) all but surely names it;
        # no verifier sits twice in a case, so the appeal's three seats go to honest verifiers.
        liar = world.add_verifier(LIAR, stake=LIAR_STAKE, forced_outcome=Outcome.REJECT, appeal_when_outvoted=False)
        # One honest verifier re-checks every ruling (a whistleblower); the others rule when drawn.
        for dev in HONEST:
            world.add_verifier(dev, whistleblow=dev == HONEST[0])
        outcome = world.run_job(
            bundle_copy(tmp_path, "replay_mlp", SMALL_REPLAY),
            auction=Auction.INSTANT,
            challenge_window_s=1_500,
            follow_timeout_s=1_500,
        )
        court = contracts.require_court()
        case_id = court.slot_case(outcome.job_id, 0)
        case = court.case(case_id)
        assert court.panel(case_id, 0) == [liar.address]
        assert case.round >= 1 and case.outcome == Outcome.ACCEPT
        assert liar.address not in court.panel(case_id, 1) and len(court.panel(case_id, 1)) == 3
        [bill] = outcome.slots
        assert bill["status"] == "paid"
        # The liar lost its vote's stake; the whistleblower got its bond back and half the slash.
        params = court.parameters()
        assert contracts.registry.total_stake(liar.address) == LIAR_STAKE - params.vote_stake
        appellants = [v for v in world.verifiers if v.appeals]
        assert [v.address for v in appellants] == [world.verifiers[1].address]
        bond = appellants[0].appeals[0]["bond"]
        assert court.credits(appellants[0].address) >= bond + params.vote_stake // 2
        assert court.total_held() == 0
        assert contracts.token.balance_of(court.address) == court.total_credits()
    finally:
        world.stop()
