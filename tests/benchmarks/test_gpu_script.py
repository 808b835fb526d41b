"""`python -m benchmarks.gpu` on a host without an NVIDIA GPU: JSON that says what it skipped, exit 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = {"nvml", "capacity", "freivalds", "metering", "replay", "market_job"}


def _run(*args: str) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}, proc.stderr


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@pytest.mark.skipif(_has_cuda(), reason="this host has a CUDA device: the script runs for real there")
def test_without_a_gpu_every_section_is_skipped_with_its_reason_and_the_exit_is_zero() -> None:
    rc, doc, err = _run()
    assert rc == 0, err
    assert doc["benchmark"] == "gpu"
    assert doc["cuda"]["available"] is False and doc["cuda"]["detail"]
    assert set(doc["skipped"]) == SECTIONS and doc["ran"] == [] and doc["failed"] == []
    for name in SECTIONS:
        section = doc["sections"][name]
        assert section["status"] == "skipped"
        assert section["reason"].startswith("no CUDA device: ")
    assert doc["meets_goals"] is None  # nothing measured, nothing claimed


def test_the_cpu_dry_run_exercises_the_capacity_and_freivalds_paths() -> None:
    rc, doc, err = _run("--device", "cpu", "--only", "capacity,freivalds,nvml", "--n", "128")
    assert rc == 0, err
    assert doc["ran"] == ["capacity", "freivalds"]
    assert doc["sections"]["nvml"]["status"] == "skipped"  # needs NVML, even with --device cpu
    capacity = doc["sections"]["capacity"]
    assert capacity["n"] == 128 and len(capacity["challenges"]) == 3
    assert all(c["rows_checked"] == 8 for c in capacity["challenges"])  # verify_rows passed on each
    freivalds = doc["sections"]["freivalds"]
    assert freivalds["honest_accepted"] is True and freivalds["one_wrong_entry_rejected"] is True
    assert freivalds["cost_pairs"]["pairs"] == 11
    assert set(doc["skipped"]) == {"metering", "replay", "market_job", "nvml"}


def test_unknown_sections_are_refused_in_one_line() -> None:
    rc, doc, err = _run("--only", "capacity,warp")
    assert rc == 2 and doc == {}
    assert "unknown section(s): warp" in err
