"""What a sandboxed job can count on: localhost resolves (torchrun's rendezvous), fonts without errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount

from marketplace.requester.client import WorkerClient
from tests.worker.workerkit import BundleFactory, WorkerProcess, submit
from worker.sandbox.runner import ETC_GENERATED, HOSTNAME, JobSpace, Sandbox, SandboxRequest

JOB = r"""
import json, os, shutil, socket, subprocess
report = {"hosts": open("/etc/hosts").read()}
report["localhost"] = sorted({a[4][0] for a in socket.getaddrinfo("localhost", 29500)})
report["self"] = socket.gethostbyname(socket.gethostname())
server = socket.socket()
server.bind(("localhost", 0))
server.listen(1)
with socket.create_connection(("localhost", server.getsockname()[1]), timeout=5):
    report["rendezvous"] = "connected"
if shutil.which("fc-list"):
    listed = subprocess.run(["fc-list"], capture_output=True, text=True, timeout=60)
    report["fc_list"] = {"code": listed.returncode, "stderr": listed.stderr}
json.dump(report, open(os.path.join(os.environ["FLOPEX_OUTPUT_DIR"], "report.json"), "w"))
"""


def test_the_generated_etc_files__are_bound_read_only_at_their_paths(tmp_path: Path) -> None:
    sandbox = Sandbox(bwrap="/usr/bin/bwrap", use_cgroups=False)
    try:
        argv = sandbox.argv(SandboxRequest("job", JobSpace(tmp_path, "dir", capacity_bytes=1 << 20, uid=None), "m.py"))
        for name, (target, text) in ETC_GENERATED.items():
            i = argv.index(target)
            assert argv[i - 2] == "--ro-bind" and Path(argv[i - 1]).name == name
            assert Path(argv[i - 1]).read_text() == text
        assert f"localhost {HOSTNAME}" in ETC_GENERATED["hosts"][1]
        assert argv[argv.index("--hostname") + 1] == HOSTNAME
        folder = Path(argv[argv.index("/etc/hosts") - 1]).parent
    finally:
        sandbox.close()
    assert not folder.exists()  # removed with the sandbox


@pytest.mark.bwrap
@pytest.mark.slow
def test_a_sandboxed_job__resolves_localhost_and_its_host_name_and_lists_fonts_without_errors(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    archive, bhash = make_bundle(JOB, timeout_s=60)
    job_id = submit(worker, client, requester.address, archive, bhash)
    final = client.wait(job_id, timeout_s=120)
    results = client.download_results(job_id, tmp_path / "r", provider=worker.provider).directory
    assert final.WhichOneof("kind") == "finished", (results / "logs" / "stderr.log").read_text()
    report = json.loads((results / "output" / "report.json").read_text())
    assert "127.0.0.1" in report["localhost"] and report["self"] == "127.0.0.1"
    assert report["rendezvous"] == "connected"
    if shutil.which("fc-list"):
        assert report["fc_list"]["code"] == 0 and "Fontconfig error" not in report["fc_list"]["stderr"]


@pytest.mark.bwrap
@pytest.mark.slow
def test_job_env__reaches_the_job_and_the_worker_keeps_its_own_variables(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    code = (
        "import json, os\n"
        "names = ('WANDB_MODE', 'MY_FLAG', 'HOME', 'FLOPEX_JOB_ID')\n"
        "json.dump({k: os.environ.get(k) for k in names},"
        " open(os.path.join(os.environ['FLOPEX_OUTPUT_DIR'], 'env.json'), 'w'))\n"
    )
    archive, bhash = make_bundle(code, extra_toml='env = { WANDB_MODE = "offline", MY_FLAG = "a b=c" }')
    job_id = submit(worker, client, requester.address, archive, bhash)
    assert client.wait(job_id, timeout_s=120).WhichOneof("kind") == "finished"
    results = client.download_results(job_id, tmp_path / "r", provider=worker.provider).directory
    env = json.loads((results / "output" / "env.json").read_text())
    assert env == {"WANDB_MODE": "offline", "MY_FLAG": "a b=c", "HOME": "/job/work", "FLOPEX_JOB_ID": str(job_id)}
