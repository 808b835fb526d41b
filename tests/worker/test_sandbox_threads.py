"""A job's OpenMP threads wait asleep at barriers, so the worker's own processes on the same cores
cannot turn a preempted thread into the others spinning (the job ran 10-20 times as long).

No timing: the threads' voluntary context switches show whether they sleep (about one per parallel
region) or spin (almost none)."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from worker.sandbox.runner import OMP_WAIT, Limits, Sandbox, SandboxRequest

pytestmark = [pytest.mark.bwrap]

REGIONS = 2000
JOB = textwrap.dedent(
    f"""
    import json, os, torch
    torch.set_num_threads(2)
    x, y = torch.randn(1 << 20), torch.randn(1 << 20)

    def switches():
        found = {{}}
        for tid in os.listdir("/proc/self/task"):
            for line in open(f"/proc/self/task/{{tid}}/status"):
                if line.startswith("voluntary_ctxt_switches"):
                    found[int(tid)] = int(line.split()[1])
        return found

    torch.add(x, y)  # the OpenMP team starts
    before = switches()
    for _ in range({REGIONS}):
        torch.add(x, y)  # one parallel region each
    after = switches()
    report = {{
        "policy": os.environ.get("OMP_WAIT_POLICY"),
        "threads": torch.get_num_threads(),
        "worker_sleeps": sum(n - before.get(t, 0) for t, n in after.items() if t != os.getpid()),
    }}
    json.dump(report, open(os.path.join(os.environ["FLOPEX_OUTPUT_DIR"], "threads.json"), "w"))
    """
)


def _run(sandbox: Sandbox, tmp_path: Path, job_env: Mapping[str, str]) -> dict[str, Any]:
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    (bundle / "main.py").write_text(JOB)
    limits = Limits(timeout_s=120)
    space = sandbox.create_space(limits, bundle)
    try:
        req = SandboxRequest(
            "threads",
            space,
            "main.py",
            env={"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
            job_env=job_env,
            limits=limits,
        )
        job = sandbox.start(req)
        job.stdout.read()
        errors = job.stderr.read()
        outcome = job.wait()
        job.stdout.close()
        job.stderr.close()
        assert outcome.exit_code == 0, errors.decode(errors="replace")
        report: dict[str, Any] = json.loads((space.output / "threads.json").read_text())
        return report
    finally:
        space.release()


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    made = Sandbox()
    if not made.sandboxed:
        made.close()
        pytest.skip("bubblewrap does not work here")
    yield made
    made.close()


def test_job_env__has_the_passive_wait_policy_and_the_job_may_override_it() -> None:
    plain = SandboxRequest("j", None, "m.py", env={"OMP_NUM_THREADS": "2"})  # type: ignore[arg-type]
    assert (
        Sandbox._job_env(plain, "/w", "/i", "/o", "/c", None)["OMP_WAIT_POLICY"]
        == "PASSIVE"
        == OMP_WAIT["OMP_WAIT_POLICY"]
    )
    own = SandboxRequest("j", None, "m.py", job_env={"OMP_WAIT_POLICY": "ACTIVE"})  # type: ignore[arg-type]
    assert Sandbox._job_env(own, "/w", "/i", "/o", "/c", None)["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.slow
def test_a_sandboxed_jobs_openmp_threads__sleep_between_parallel_regions(sandbox: Sandbox, tmp_path: Path) -> None:
    report = _run(sandbox, tmp_path, {})
    assert report["policy"] == "PASSIVE" and report["threads"] == 2, report
    # Asleep at each barrier: about one voluntary switch per region (spinning threads make a handful).
    assert report["worker_sleeps"] >= REGIONS // 2, report


@pytest.mark.slow
def test_a_job_that_asks_for_spinning_threads__gets_them(sandbox: Sandbox, tmp_path: Path) -> None:
    report = _run(sandbox, tmp_path, {"OMP_WAIT_POLICY": "ACTIVE"})
    assert report["policy"] == "ACTIVE" and report["threads"] == 2, report
    assert report["worker_sleeps"] < REGIONS // 2, report
