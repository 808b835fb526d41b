"""The transfer benchmark, run small: its JSON carries interleaved pairs, medians and meets_goals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.transfer import GOAL_RATIO, _summary

ROOT = Path(__file__).resolve().parents[2]


def test_a_summary__gives_the_median_and_spread_of_the_pairs_in_order() -> None:
    assert _summary([0.5, 0.9, 0.7]) == {"median": 0.7, "min": 0.5, "max": 0.9, "pairs": [0.5, 0.9, 0.7]}


@pytest.mark.timeout(300)
def test_a_small_run__reports_pairs_medians_and_whether_the_goals_are_met(tmp_path: Path) -> None:
    out = tmp_path / "transfer.json"
    subprocess.run(
        [sys.executable, "-m", "benchmarks.transfer", "--mib", "2", "--rounds", "2", "--out", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=280,
    )
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "transfer" and doc["load"] == "quiet" and doc["rounds"] == 2
    for kind in ("upload", "download"):
        pairs = doc[f"{kind}_vs_bare_pairs"]
        assert len(pairs["pairs"]) == 2 and all(p > 0 for p in pairs["pairs"])
        assert pairs["min"] <= doc[f"{kind}_vs_bare"] == pairs["median"] <= pairs["max"]
    assert doc["download_mib"] == 2.0 and doc["pack_seconds"] > 0
    expected = doc["upload_vs_bare"] >= GOAL_RATIO and doc["download_vs_bare"] >= GOAL_RATIO
    assert doc["meets_goals"] is expected
    passes = doc["upload_passes_ms"]
    assert set(passes) >= {"archive_sha256", "inflate_untar_write_blake3", "whole_worker_path_no_grpc"}
    assert all(ms > 0 for ms in passes.values())
    assert doc["worker_cpu_s_per_upload"] >= 0 and doc["client_cpu_s_per_download"] > 0
    if doc["worker_cpu_s_per_upload"]:  # /proc counts in clock ticks: a 2 MiB upload may take none
        assert doc["upload_ceiling_vs_bare"] > 0
    assert doc["download_ceiling_vs_bare"] > 0
    signature = doc["request_signature_ms"]
    assert signature["sign"] > 0 and signature["recover"] > 0 and signature["backend"].endswith("ECCBackend")
