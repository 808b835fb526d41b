"""Tests of the allocation agreement run: the simulator's leases replayed on the real contracts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import benchmarks.allocation as allocation
from benchmarks.allocation import DONE, RunResult, make_workload, policy_rng_seed, simulate
from benchmarks.allocation_chain import (
    FIELDS,
    ChainRunParams,
    compare,
    expected_outcomes,
    main,
    replay,
    run,
)
from marketplace.chain.anvil import Anvil, find_anvil
from marketplace.chain.client import Chain
from marketplace.market.auction import Ask, Clearing, sealed_vickrey, slot_value

# The simulator's leases replayed on the real contracts: a chain per test.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::ResourceWarning")]

# Six providers with all four pricing strategies, twelve jobs: seven sealed auctions with two or
# more bids, a dropped job under each policy, four instant takes above the taker's floor.
TINY = ChainRunParams(providers=6, jobs=12, requesters=2, seed=1, load=1.2)


def simulated(params: ChainRunParams, policy: str) -> RunResult:
    sim = params.simulation()
    w = make_workload(params.providers, params.jobs, params.seed, params.load, sim)
    return simulate(w, policy, sim, load=params.load, rng_seed=policy_rng_seed(params.seed, policy, params.load))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return run(TINY, Chain.embedded())


def by_policy(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["policy"]: r for r in doc["results"]}


def test_tiny_run__chain_agrees_with_the_simulator(doc: dict[str, Any]) -> None:
    assert doc["agree"] is True
    for entry in doc["results"]:
        assert entry["agree"] is True
        assert entry["mismatches"] == dict.fromkeys(FIELDS, 0)
        assert entry["mismatched_jobs"] == []
        assert entry["totals"]["simulator"] == entry["totals"]["chain"]
        accounts = entry["accounts"]
        assert accounts["agree"] and accounts["credit_mismatches"] == []
        assert accounts["completed_per_provider"]["simulator"] == accounts["completed_per_provider"]["chain"]
        assert accounts["market_holds_what_it_owes"] and accounts["jobs_not_closed"] == []
        assert all(row["differ"] == [] for row in entry["rows"])


def test_tiny_run__covers_every_path(doc: dict[str, Any]) -> None:
    results = by_policy(doc)
    assert set(results) == {"auction", "instant"}
    for entry in results.values():
        assert entry["jobs"] == TINY.jobs == len(entry["rows"])
        assert entry["totals"]["chain"]["expired"] >= 1  # a job nobody took: full refund
        assert entry["totals"]["chain"]["leased"] >= 1
        assert int(entry["totals"]["chain"]["fee"]) > 0
    sealed, instant = results["auction"]["chain"], results["instant"]["chain"]
    assert sealed["auctions_with_2_or_more_bids"] >= 2  # the contract picks winner and second price
    assert sealed["sealed_bids"] > TINY.jobs // 2
    assert instant["price_reposts"] >= 1 and instant["sealed_bids"] == 0
    for entry in results.values():
        for row in entry["rows"]:
            if row["chain"]["leased"]:
                assert int(row["chain"]["price"]) > 0 and row["chain"]["provider"] is not None
            else:
                assert row["chain"]["paid"] == "0" and row["chain"]["provider"] is None


def test_json__is_one_document_with_the_environment(doc: dict[str, Any]) -> None:
    assert json.loads(json.dumps(doc)) == doc
    assert doc["benchmark"] == "allocation_chain" and doc["chain"] == "embedded"
    assert doc["params"]["providers"] == TINY.providers and doc["params"]["policies"] == ["auction", "instant"]
    assert len(doc["market"]["providers"]) == TINY.providers
    for key in ("python", "cpu", "platform", "git_commit"):
        assert key in doc["environment"]


def test_compare__one_perturbed_price__is_a_disagreement() -> None:
    result = simulated(TINY, "auction")
    expected = expected_outcomes(result, fee_bps=100)
    assert compare(expected, expected)["agree"] is True
    j = next(j for j, s in enumerate(result.state) if s == DONE)
    observed, price = list(expected), expected[j].price
    assert price is not None
    observed[j] = replace(observed[j], price=price + 1)
    verdict = compare(expected, observed)
    assert verdict["agree"] is False
    assert verdict["mismatched_jobs"] == [j]
    assert verdict["mismatches"] == {f: int(f == "price") for f in FIELDS}
    assert verdict["rows"][j]["differ"] == ["price"]


def test_compare__different_jobs__are_refused() -> None:
    expected = expected_outcomes(simulated(TINY, "instant"), fee_bps=0)
    with pytest.raises(ValueError, match="same jobs"):
        compare(expected, expected[1:])


def test_first_price_simulator__disagrees_with_the_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    """A simulator that paid the lowest ask instead of the second-lowest is caught by the chain."""

    def first_price(asks: Sequence[Ask[int]], *, max_price: int, k: int = 1) -> Clearing[int] | None:
        valid = sorted((a for a in asks if 0 < a.price <= max_price), key=lambda a: a.price)
        return Clearing(winners=(valid[0].provider,), prices=(valid[0].price,)) if valid else None

    monkeypatch.setattr(allocation, "sealed_vickrey", first_price)
    result = simulated(TINY, "auction")
    entry = replay(Chain.embedded(), result, TINY.simulation())
    assert entry["agree"] is False
    assert entry["mismatches"]["provider"] == 0  # the same winner, the wrong price
    assert entry["mismatches"]["price"] >= 1
    assert entry["mismatches"]["price"] == entry["mismatches"]["paid"]
    assert entry["accounts"]["agree"] is False


def test_tied_asks__break_the_same_way_on_chain() -> None:
    """Every bidder of an auction asks the same: the earliest reveal wins, on both sides."""
    result = simulated(TINY, "auction")
    w = result.workload
    tied = 0
    for j, bids in result.bids.items():
        if len(bids) < 2:
            continue
        low = min(ask for _, ask in bids)
        result.bids[j] = tuple((p, low) for p, _ in bids)
        clearing = sealed_vickrey([Ask(p, low) for p, _ in bids], max_price=w.max_price[j])
        assert clearing is not None and clearing.winners[0] == bids[0][0]
        result.provider[j], result.price[j] = clearing.winners[0], clearing.price
        result.payout[j] = slot_value(clearing.price, w.gpus[j] * w.duration[j])
        tied += 1
    assert tied >= 2
    entry = replay(Chain.embedded(), result, TINY.simulation())
    assert entry["agree"] is True, entry["mismatched_jobs"]


def test_instant_at_floor__disagrees_where_the_strategy_asked_more() -> None:
    result = simulated(TINY, "instant")
    w = result.workload
    above = [j for j, s in enumerate(result.state) if s == DONE and result.price[j] != w.p_floor[result.provider[j]]]
    assert above
    entry = replay(Chain.embedded(), result, TINY.simulation(), repost=False)
    assert entry["agree"] is False
    assert entry["mismatched_jobs"] == above
    assert entry["chain"]["price_reposts"] == 0
    assert int(entry["totals"]["chain"]["paid"]) < int(entry["totals"]["simulator"]["paid"])


def test_cli__prints_the_json_and_refuses_bad_policies(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "agreement.json"
    argv = ["--chain", "embedded", "--providers", "3", "--jobs", "4", "--requesters", "1", "--policies", "instant"]
    returned = main([*argv, "--out", str(out)])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(returned)) == json.loads(out.read_text())
    assert printed["agree"] is True and [r["policy"] for r in printed["results"]] == ["instant"]
    with pytest.raises(SystemExit, match="auction and/or instant"):
        main(["--chain", "embedded", "--policies", "fcfs"])


@pytest.mark.anvil
def test_default_run_on_anvil__chain_agrees_with_the_simulator() -> None:
    from tests.conftest import require

    require(find_anvil() is not None, "anvil (npm @foundry-rs/anvil-linux-amd64)")
    # A node of its own: the replay moves the clock hours ahead, which other tests' node must not see.
    with Anvil() as node:
        doc = run(ChainRunParams(), Chain.connect(node.url))
    assert doc["agree"] is True
    for entry in doc["results"]:
        assert entry["mismatches"] == dict.fromkeys(FIELDS, 0)
        assert entry["accounts"]["agree"] is True
        assert entry["totals"]["chain"]["leased"] > entry["totals"]["chain"]["expired"] >= 1
