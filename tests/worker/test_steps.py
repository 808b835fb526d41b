"""Jobs given as commands and steps: run in order in one sandbox by a real worker process, the first
failing step named in the result with its status, one timeout and one meter over the whole sequence,
and torchrun on two CPU devices meeting on the sandbox's own loopback."""

from __future__ import annotations

import shutil
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from eth_account.signers.local import LocalAccount

from marketplace.protocol.bundle import launcher_steps, load_bundle, pack_bundle
from marketplace.requester.client import WorkerClient
from marketplace.rpc import worker_pb2 as pb
from tests.worker.workerkit import REPO, WorkerProcess, lease_for, next_job_id
from worker.sandbox.runner import Limits, RunOutcome, Sandbox, SandboxRequest

pytestmark = [pytest.mark.bwrap]

TOML_TAIL = '[resources]\ndevice = "cpu"\ngpus = {gpus}\ntimeout_s = {timeout}\n[market]\nmax_price = "1"\n'


def _bundle(tmp_path: Path, job: str, files: dict[str, str], *, gpus: int = 1, timeout: int = 60) -> Path:
    root = tmp_path / f"bundle-{len(list(tmp_path.iterdir()))}"
    root.mkdir()
    (root / "job.toml").write_text(textwrap.dedent(job) + TOML_TAIL.format(gpus=gpus, timeout=timeout))
    for name, code in files.items():
        (root / name).write_text(textwrap.dedent(code))
    return root


def _run(worker: WorkerProcess, client: WorkerClient, requester: str, root: Path, tmp_path: Path) -> pb.JobEvent:
    bundle = load_bundle(root)
    job_id = next_job_id()
    archive = tmp_path / f"bundle-{job_id}.tar.gz"
    pack_bundle(root, archive)
    count = bundle.spec.resources.gpus
    worker.add_lease(lease_for(job_id, requester, worker.provider, bundle.hash, count=count))
    client.upload_bundle(job_id, archive)
    client.start_job(job_id, 7)
    final = client.wait(job_id, timeout_s=180)
    client.download_results(job_id, tmp_path / f"r{job_id}", provider=worker.provider)
    return final


STEP = """
import os, sys, pathlib
out = pathlib.Path(os.environ["FLOPEX_OUTPUT_DIR"])
with open(out / "order.txt", "a") as fh:
    fh.write(sys.argv[1] + "\\n")
sys.exit(int(sys.argv[2]))
"""


def test_steps__run_in_order_in_one_sandbox_and_share_their_folders(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, tmp_path: Path
) -> None:
    root = _bundle(
        tmp_path,
        """
        [job]
        [[job.steps]]
        name = "make"
        command = ["python", "step.py", "make", "0"]
        [[job.steps]]
        name = "use"
        command = ["step.py", "use {work_dir}", "0"]
        """,
        {"step.py": STEP},
    )
    final = _run(worker, client, requester.address, root, tmp_path)
    assert final.HasField("finished"), final
    [result] = [p for p in tmp_path.glob("r*") if p.is_dir()]
    assert (result / "output" / "order.txt").read_text() == "make\nuse /job/work\n"
    log = (result / "logs" / "stderr.log").read_text()
    assert "flopex: step 1/2 make" in log and "flopex: step 2/2 use" in log


def test_steps__stop_at_the_first_that_fails__named_with_its_status_in_the_result(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, tmp_path: Path
) -> None:
    root = _bundle(
        tmp_path,
        """
        [job]
        [[job.steps]]
        name = "prep"
        command = ["python", "step.py", "prep", "0"]
        [[job.steps]]
        name = "train"
        command = ["python", "step.py", "train", "3"]
        [[job.steps]]
        name = "report"
        command = ["python", "step.py", "report", "0"]
        """,
        {"step.py": STEP},
    )
    final = _run(worker, client, requester.address, root, tmp_path)
    assert final.HasField("failed")
    assert final.failed.exit_code == 3 and final.failed.receipt.exit_code == 3
    assert final.failed.reason.startswith("step 2/3 (train) failed with status 3; later steps did not run")
    [result] = [p for p in tmp_path.glob("r*") if p.is_dir()]
    assert (result / "output" / "order.txt").read_text() == "prep\ntrain\n"  # report never ran


def test_steps__one_timeout_covers_the_whole_sequence(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, tmp_path: Path
) -> None:
    # Each step alone is inside the timeout; together they are not.
    sleep = "import time, sys\ntime.sleep(float(sys.argv[1]))\n"
    root = _bundle(
        tmp_path,
        """
        [job]
        [[job.steps]]
        name = "first"
        command = ["python", "sleep.py", "2.5"]
        [[job.steps]]
        name = "second"
        command = ["python", "sleep.py", "2.5"]
        """,
        {"sleep.py": sleep},
        timeout=4,
    )
    final = _run(worker, client, requester.address, root, tmp_path)
    assert final.HasField("failed") and "timeout" in final.failed.reason
    assert 4000 <= final.failed.metering.wall_millis < 15000


@pytest.mark.slow  # three Python processes importing torch
def test_torchrun__two_cpu_devices__gloo_rendezvous_inside_the_sandbox_metered_on_both(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, tmp_path: Path
) -> None:
    root = _bundle(
        tmp_path,
        """
        [job]
        command = ["python", "ddp.py", "{output_dir}"]
        """,
        {
            "ddp.py": """
            import os, sys, socket, torch, torch.distributed as dist
            dist.init_process_group("gloo")
            t = torch.tensor([float(dist.get_rank() + 1)])
            dist.all_reduce(t)
            rank, world = dist.get_rank(), dist.get_world_size()
            with open(os.path.join(sys.argv[1], f"rank{rank}.txt"), "w") as fh:
                fh.write(f"{world} {t.item()} {os.environ['MASTER_ADDR']} {socket.gethostname()}")
            dist.destroy_process_group()
            """
        },
        gpus=2,
    )
    final = _run(worker, client, requester.address, root, tmp_path)
    assert final.HasField("finished"), final
    [result] = [p for p in tmp_path.glob("r*") if p.is_dir()]
    for rank in (0, 1):
        world, total, _addr, host = (result / "output" / f"rank{rank}.txt").read_text().split()
        assert (world, total, host) == ("2", "3.0", "flopex-job")
    metering = final.finished.metering
    assert metering.device_count == 2 and metering.device_millis == 2 * metering.wall_millis


@pytest.mark.slow
def test_the_torchrun_example__runs_on_two_cpu_devices(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, tmp_path: Path
) -> None:
    final = _run(worker, client, requester.address, REPO / "examples" / "torchrun_ddp", tmp_path)
    assert final.HasField("finished"), final


def _run_in(sandbox: Sandbox, root: Path, *, device: str = "cpu", gpus: tuple[int, ...] = ()) -> tuple[RunOutcome, str]:
    """Run the bundle at ``root`` in ``sandbox`` directly; its outcome and its standard error."""
    bundle = load_bundle(root)
    limits = Limits(timeout_s=120, memory_bytes=8 << 30)
    space = sandbox.create_space(limits, bundle.root)
    try:
        req = SandboxRequest(
            name=f"steps-{next_job_id()}",
            space=space,
            entrypoint=bundle.spec.job.entrypoint,
            env={"FLOPEX_SEED": "3", "OMP_NUM_THREADS": "1"},
            device_kind=device,
            gpu_indices=gpus,
            limits=limits,
            steps=launcher_steps(bundle.spec, sandbox.job_folders(space)),
        )
        proc = sandbox.start(req)
        errors: list[bytes] = []
        reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()))
        reader.start()
        proc.stdout.read()
        outcome = proc.wait()
        reader.join(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
        return outcome, errors[0].decode(errors="replace") if errors else ""
    finally:
        space.release()


def test_unsandboxed_workers__run_steps_through_the_same_launcher(tmp_path: Path) -> None:
    # A worker started with --unsafe-no-sandbox runs the launcher from the SDK's host folder.
    sandbox = Sandbox(bwrap=str(tmp_path / "no-bwrap-here"), allow_unsandboxed=True, work_root=tmp_path / "spaces")
    root = _bundle(
        tmp_path,
        """
        [job]
        [[job.steps]]
        name = "ok"
        command = ["python", "step.py", "ok", "0"]
        [[job.steps]]
        name = "broken"
        command = ["python", "step.py", "broken", "5"]
        """,
        {"step.py": STEP},
    )
    try:
        assert not sandbox.sandboxed
        outcome, errors = _run_in(sandbox, root)
    finally:
        sandbox.close()
    assert outcome.exit_code == 5 and outcome.failed_step == "step 2/2 (broken)"
    assert "flopex: step 2/2 broken exited with status 5; later steps did not run" in errors


@pytest.mark.slow
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="NCCL across processes needs two GPUs"
)
def test_torchrun_ddp__two_gpus__nccl_inside_the_sandbox(tmp_path: Path) -> None:
    sandbox = Sandbox()
    source = REPO / "examples" / "torchrun_ddp"
    root = tmp_path / "ddp"
    shutil.copytree(source, root)
    toml = root / "job.toml"
    toml.write_text(toml.read_text().replace('device = "cpu"', 'device = "cuda"'))
    try:
        outcome, errors = _run_in(sandbox, root, device="cuda", gpus=(0, 1))
    finally:
        sandbox.close()
    assert outcome.exit_code == 0, errors[-3000:]
    assert "on 2 processes (torchrun)" in errors
