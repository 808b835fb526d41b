"""The load benchmark, run small: idle and attack windows as interleaved pairs, the flood stopped between them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_a_small_run__reports_one_pair_per_round_and_the_paired_median_decides_the_goal(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.load",
            "--calls",
            "5",
            "--hostile",
            "20",
            "--watchers",
            "5",
            "--rounds",
            "2",
            "--mib",
            "1",
            "--upload-rounds",
            "1",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=280,
    )
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "load" and doc["load"] == "quiet" and doc["rounds"] == 2
    pairs = doc["pairs"]
    assert pairs["rounds"] == pairs["pairs"] == 2
    for name in ("p99_attack_over_idle", "p50_attack_over_idle", "job_wall_attack_over_idle"):
        stats = pairs[name]
        assert stats["pairs"] == 2
        ratio = stats["ratio"]
        assert 0 < ratio["min"] <= ratio["p25"] <= ratio["median"] <= ratio["p75"] <= ratio["max"]
        assert stats["numerator_ms"]["min"] > 0 and stats["denominator_ms"]["min"] > 0
    median = pairs["p99_attack_over_idle"]["ratio"]["median"]
    assert doc["p99_under_attack_over_idle"] == round(median, 2)
    assert doc["meets_goals"]["p99"] is (median <= doc["goals"]["p99_under_attack_over_idle_max"])

    # The pooled figures of each state: every window's calls, none refused to the requester.
    for state in ("idle", "under_attack"):
        pooled = doc[state]
        assert pooled["windows"] == 2 and pooled["calls"] == 10 and pooled["refused"] == 0
        assert pooled["job_finished"] is True and pooled["job_wall_s"] > 0
        assert 0 < pooled["p50_ms"] <= pooled["p99_ms"]
    assert doc["meets_goals"]["nothing_refused"] is True
    assert doc["under_attack"]["flood_calls_ended"] > 0

    # Each round alternates its order; the flood settled, then stopped (no thread left, its process
    # ended cleanly) and the worker drained: no upload or stream admitted when an idle window starts.
    rounds = doc["per_round"]
    assert [r["order"] for r in rounds] == [["idle", "attack"], ["attack", "idle"]]
    for r in rounds:
        assert r["settled"] is True and r["drained"] is True
        assert r["flood_threads_left"] == 0 and r["flood_exitcode"] == 0
        assert r["slots_at_idle_start"] == [0, 0]
        assert r["flood_calls_ended"] > 0 and r["flood_ended_calls_per_s"] > 0
        assert r["idle"]["refused"] == r["attack"]["refused"] == 0
    assert sum(r["flood_calls_ended"] for r in rounds) == doc["under_attack"]["flood_calls_ended"]
    assert doc["upload"]["rounds"] == 1 and doc["upload"]["tls_mib_s"] > 0
