"""What a job writes to its working directory comes back in its results, under the result root."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from eth_account.signers.local import LocalAccount
from safetensors.torch import save_file

from marketplace.protocol.merkle import manifest_of
from marketplace.requester.client import WorkerClient
from marketplace.verify.compare import compare_results
from tests.worker.workerkit import BundleFactory, WorkerProcess, submit

JOB = """
import json, os, sys
open("model.pt", "wb").write(b"weights")           # a script's usual torch.save("model.pt")
os.makedirs("runs/1", exist_ok=True)
open("runs/1/events.txt", "w").write("loss 0.5")
open("data.txt", "a").write(" and more")            # a bundle file the job changed
os.makedirs(os.path.expanduser("~/.cache/lib"), exist_ok=True)
open(os.path.expanduser("~/.cache/lib/index"), "w").write("cache")
out, ckpt, work = sys.argv[2], sys.argv[4], sys.argv[6]
assert out == os.environ["FLOPEX_OUTPUT_DIR"] and ckpt == os.environ["FLOPEX_CHECKPOINT_DIR"], sys.argv
assert work == os.getcwd(), (work, os.getcwd())
json.dump(sys.argv[1:], open(os.path.join(out, "argv.json"), "w"))
"""
ARGS = 'args = ["--out", "{output_dir}", "--ckpt", "{checkpoint_dir}", "--work", "{work_dir}", "{{output_dir}}"]'


def test_files_written_to_the_working_directory__come_back_under_work_and_the_result_root(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    archive, bhash = make_bundle(JOB, extra_toml=ARGS, files={"data.txt": b"bundle data", "keep.txt": b"unchanged"})
    job_id = submit(worker, client, requester.address, archive, bhash)
    final = client.wait(job_id, timeout_s=120)
    results = client.download_results(job_id, tmp_path / "r", provider=worker.provider)
    folder = results.directory
    assert final.WhichOneof("kind") == "finished", (folder / "logs" / "stderr.log").read_text()

    work = folder / "work"
    assert (work / "model.pt").read_bytes() == b"weights"
    assert (work / "runs" / "1" / "events.txt").read_text() == "loss 0.5"
    assert (work / "data.txt").read_text() == "bundle data and more"
    # The bundle's own files as they came, and $HOME's caches, are not results.
    assert sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file()) == [
        "data.txt",
        "model.pt",
        "runs/1/events.txt",
    ]
    argv = json.loads((folder / "output" / "argv.json").read_text())
    assert argv[1] != "{output_dir}" and argv[-1] == "{output_dir}"

    # Covered by the root the worker committed to and the client checked while downloading.
    names = {f.path for f in results.manifest.files}
    assert {"work/model.pt", "work/data.txt", "work/runs/1/events.txt"} <= names
    assert manifest_of(folder)[0].root == results.manifest.root == final.finished.result_root


def test_a_job_that_leaves_its_working_directory_alone__has_no_work_folder(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    archive, bhash = make_bundle("print('hello')\n", files={"data.txt": b"x"})
    job_id = submit(worker, client, requester.address, archive, bhash)
    assert client.wait(job_id, timeout_s=120).WhichOneof("kind") == "finished"
    results = client.download_results(job_id, tmp_path / "r", provider=worker.provider)
    assert not (results.directory / "work").exists()
    assert not any(f.path.startswith("work/") for f in results.manifest.files)


def test_comparison__covers_the_working_directory_and_keeps_it_apart_from_output(tmp_path: Path) -> None:
    import torch

    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "output").mkdir(parents=True)
        (root / "work").mkdir(parents=True)
        save_file({"w": torch.ones(3)}, str(root / "output" / "t.safetensors"))
    (a / "work" / "model.pt").write_bytes(b"one")
    (b / "work" / "model.pt").write_bytes(b"one")
    assert compare_results(a, b).agree
    (b / "work" / "model.pt").write_bytes(b"two")
    cmp = compare_results(a, b)
    assert not cmp.agree and [(m.path, m.reason) for m in cmp.mismatches] == [("work/model.pt", "files differ")]
    assert compare_results(a, b, subdir="output").agree  # output alone, as before

    # An output file named work/model.pt is not the working directory's model.pt.
    shutil.rmtree(b / "work")
    (b / "output" / "work").mkdir()
    (b / "output" / "work" / "model.pt").write_bytes(b"one")
    found = [(m.path, m.reason) for m in compare_results(a, b).mismatches]
    assert found == [("work/model.pt", "present in only one result")] * 2
