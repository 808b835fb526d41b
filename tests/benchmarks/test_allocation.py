"""Tests of the allocation benchmark: its JSON, its books and its determinism (run small, in-process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.allocation import (
    DONE,
    DROPPED,
    POLICIES,
    SimulationParams,
    main,
    make_workload,
    run_benchmark,
    simulate,
)
from marketplace.market.auction import slot_value

QUICK = SimulationParams(providers=60, jobs=400, requesters=30, loads=(0.6, 1.2))


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return run_benchmark(QUICK, workers=1)


def test_quick_cli__prints_one_json_document(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    chart = tmp_path / "allocation.png"
    returned = main(["--quick", "--workers", "1", "--loads", "0.9", "--chart", str(chart)])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(returned))
    assert printed["params"]["providers"] == 100 and printed["params"]["jobs"] == 1_000
    assert chart.stat().st_size > 10_000
    assert printed["chart"] == str(chart)


def test_json__has_every_policy_at_every_load(doc: dict[str, Any]) -> None:
    assert doc["benchmark"] == "allocation"
    assert {(r["policy"], r["load"]) for r in doc["results"]} == {(p, x) for p in POLICIES for x in QUICK.loads}
    for key in ("python", "numpy", "cpu", "cores", "platform", "git_commit"):
        assert key in doc["environment"]
    assert doc["market"]["devices"] > 0


def test_json__figures_are_sane(doc: dict[str, Any]) -> None:
    for r in doc["results"]:
        assert 0 <= r["utilization"] <= 1
        assert all(0 <= u <= 1 for u in r["utilization_by_class"].values())
        assert 0 <= r["deadlines_met"] <= 1
        assert 0 < r["jain_fairness"] <= 1
        assert r["completed"] + r["dropped"] == QUICK.jobs
        assert 0 <= r["wait_mean_s"] <= r["wait_p99_s"] or r["wait_p99_s"] == pytest.approx(r["wait_mean_s"])
        assert r["mean_price_per_gpu_hour"] > 0
        assert r["price_over_floor"] >= 1  # nobody is paid below its floor
        assert int(r["provider_revenue_units"]) > 0


def test_json__central_queues_pay_the_floor(doc: dict[str, Any]) -> None:
    for r in doc["results"]:
        if r["policy"] in ("fcfs", "priority", "quota"):
            assert r["price_over_floor"] == 1


@pytest.mark.parametrize("policy", POLICIES)
def test_simulate__books_balance(policy: str) -> None:
    w = make_workload(QUICK.providers, QUICK.jobs, 3, 1.2, QUICK)
    result = simulate(w, policy, QUICK, load=1.2, rng_seed=7)  # type: ignore[arg-type]
    capacity_in_time = {p: int(w.p_devices[p]) * result.makespan for p in range(len(w.p_floor))}
    for p, busy in enumerate(result.busy_device_seconds):
        assert busy <= capacity_in_time[p]
    # no provider ever runs more devices at once than it has: sweep its leases
    for p in range(len(w.p_floor)):
        edges = sorted(
            (t, delta * w.gpus[j])
            for j in range(len(w.gpus))
            if result.provider[j] == p
            for t, delta in ((result.start[j], 1), (result.end[j], -1))
        )
        held = 0
        for _, delta in sorted(edges, key=lambda e: (e[0], e[1])):
            held += delta
            assert held <= w.p_devices[p]
    for j in range(len(w.gpus)):
        if result.state[j] == DONE:
            p = result.provider[j]
            assert w.p_memory[p] >= w.memory_gb[j]
            assert w.p_floor[p] <= result.price[j] <= w.max_price[j]
            assert result.end[j] - result.start[j] == w.duration[j]
            assert result.start[j] >= w.arrival[j]
            assert result.payout[j] == slot_value(result.price[j], w.gpus[j] * w.duration[j])
        else:
            assert result.state[j] == DROPPED
            assert result.payout[j] == 0


def test_same_seed__same_figures() -> None:
    params = SimulationParams(providers=40, jobs=200, requesters=20, loads=(1.0,))
    first, second = run_benchmark(params), run_benchmark(params)
    strip = ("runtime_s",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in first["results"]] == [
        {k: v for k, v in r.items() if k not in strip} for r in second["results"]
    ]


def test_other_seed__other_market() -> None:
    a = make_workload(40, 200, 1, 1.0, QUICK)
    b = make_workload(40, 200, 2, 1.0, QUICK)
    assert a.arrival != b.arrival


def test_offered_load__matches_the_request() -> None:
    for load in (0.5, 1.2):
        w = make_workload(100, 1_000, 1, load, QUICK)
        assert w.offered_load == pytest.approx(load, rel=0.01)


def test_unknown_policy__is_refused() -> None:
    w = make_workload(20, 50, 1, 1.0, QUICK)
    with pytest.raises(ValueError, match="unknown policy"):
        simulate(w, "lottery", QUICK, load=1.0, rng_seed=1)  # type: ignore[arg-type]
