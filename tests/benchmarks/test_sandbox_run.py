"""benchmarks.sandbox_run: bad arguments refused in one line; a tiny run reports every side."""

from __future__ import annotations

import json

import pytest

from benchmarks import sandbox_run
from worker.sandbox.runner import OMP_WAIT, Sandbox


@pytest.mark.parametrize("argv", [["--samples", "0"], ["--rounds", "0"], ["--busy", "-1"]])
def test_bad_arguments__are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        sandbox_run.main(argv)
    assert exc.value.code == 2
    assert "must be" in capsys.readouterr().err


@pytest.mark.bwrap
@pytest.mark.slow
def test_a_tiny_run__reports_both_sandboxed_sides_against_the_direct_run(capsys: pytest.CaptureFixture[str]) -> None:
    probe = Sandbox()
    usable = probe.sandboxed
    probe.close()
    if not usable:
        pytest.skip("bubblewrap does not work here")
    assert sandbox_run.main(["--samples", "256", "--rounds", "1", "--busy", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["omp_wait"] == OMP_WAIT and OMP_WAIT == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert set(report["wall_s"]) == {"direct", "sandboxed", "spinning"}
    for side in ("sandboxed", "spinning"):
        assert report[f"{side}_ratio"]["median"] > 0
    assert isinstance(report["meets_goals"]["sandboxed_ratio"], bool)
