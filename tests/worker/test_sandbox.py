"""Hostile jobs are contained, and the worker keeps serving (needs bubblewrap)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount

from marketplace.requester.client import WorkerClient
from marketplace.rpc import worker_pb2 as pb
from tests.worker.workerkit import BundleFactory, Listener, WorkerProcess, submit
from worker.sandbox.cgroups import JobCgroup

pytestmark = [pytest.mark.bwrap, pytest.mark.slow]  # a sandboxed worker and jobs that hit its limits


@pytest.fixture(autouse=True)
def _worker_still_serves(worker: WorkerProcess, client: WorkerClient) -> Iterator[None]:
    yield
    info = client.info()
    assert info.provider_address == worker.provider and info.sandboxed


def _run(
    worker: WorkerProcess,
    client: WorkerClient,
    requester: LocalAccount,
    make_bundle: BundleFactory,
    code: str,
    tmp_path: Path,
    *,
    timeout_s: int = 60,
    args: list[str] | None = None,
) -> tuple[pb.JobEvent, Path]:
    extra = f"args = {json.dumps(args)}" if args else ""
    archive, bhash = make_bundle(code, timeout_s=timeout_s, extra_toml=extra)
    job_id = submit(worker, client, requester.address, archive, bhash)
    final = client.wait(job_id, timeout_s=120)
    results = client.download_results(job_id, tmp_path / f"r{job_id}", provider=worker.provider)
    return final, results.directory


PROBES = r"""
import json, os, socket, sys
key_file, data_dir, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
report = {}

def attempt(name, fn):
    try:
        fn()
        report[name] = "allowed"
    except Exception as exc:
        report[name] = f"blocked: {type(exc).__name__}"

attempt("read_key_file", lambda: open(key_file).read())
attempt("read_etc_shadow", lambda: open("/etc/shadow").read())
attempt("read_etc_passwd", lambda: open("/etc/passwd").read())
attempt("list_data_dir", lambda: os.listdir(data_dir))
attempt("read_worker_db", lambda: open(os.path.join(data_dir, "worker.sqlite3"), "rb").read())
attempt("list_home", lambda: os.listdir("/home"))
attempt("write_usr", lambda: open("/usr/flopex-was-here", "w").write("x"))
attempt("write_root", lambda: open("/flopex-was-here", "w").write("x"))
attempt("write_input", lambda: open(os.path.join(os.environ["FLOPEX_INPUT_DIR"], "x"), "w").write("x"))
attempt("write_python", lambda: open(os.path.join(sys.prefix, "flopex-was-here"), "w").write("x"))
attempt("connect_loopback", lambda: socket.create_connection(("127.0.0.1", port), timeout=2))
attempt("connect_outside", lambda: socket.create_connection(("1.1.1.1", 53), timeout=2))
attempt("write_output", lambda: open(os.path.join(os.environ["FLOPEX_OUTPUT_DIR"], "ok.txt"), "w").write("x"))
attempt("write_tmp", lambda: open("/tmp/ok.txt", "w").write("x"))
report["uid"] = os.getuid()
report["env"] = sorted(os.environ)
report["root_entries"] = sorted(os.listdir("/"))
report["capabilities"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
report["pids_visible"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
json.dump(report, open(os.path.join(os.environ["FLOPEX_OUTPUT_DIR"], "report.json"), "w"))
"""


def test_a_job__cannot_read_keys_or_host_files_reach_the_network_or_write_outside_its_directory(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    listener = Listener()
    try:
        final, results = _run(
            worker,
            client,
            requester,
            make_bundle,
            PROBES,
            tmp_path,
            args=[str(worker.key_file), str(worker.data_dir), str(listener.port)],
        )
    finally:
        listener.close()
    assert final.HasField("finished"), final
    report = json.loads((results / "output" / "report.json").read_text())
    for probe in (
        "read_key_file",
        "read_etc_shadow",
        "read_etc_passwd",
        "list_data_dir",
        "read_worker_db",
        "list_home",
        "write_usr",
        "write_root",
        "write_input",
        "write_python",
        "connect_loopback",
        "connect_outside",
    ):
        assert report[probe].startswith("blocked"), (probe, report[probe])
    assert report["write_output"] == "allowed" and report["write_tmp"] == "allowed"
    assert listener.connections == 0
    assert report["uid"] != 0 and int(report["capabilities"], 16) == 0
    assert all(
        name.startswith("FLOPEX_")
        or name
        in {
            "PATH",
            "HOME",
            "TMPDIR",
            "LANG",
            "PYTHONUNBUFFERED",
            "PYTHONDONTWRITEBYTECODE",
            "PYTHONPATH",
            "PWD",
            "OMP_NUM_THREADS",
            "MKL_NUM_THREADS",
            "OMP_WAIT_POLICY",
            "LC_CTYPE",
        }
        for name in report["env"]
    ), report["env"]
    assert "home" not in report["root_entries"] and "etc" in report["root_entries"]
    assert len(report["pids_visible"]) <= 3, "the job sees only its own pid namespace"
    assert not Path("/usr/flopex-was-here").exists() and not Path("/flopex-was-here").exists()


def _cgroups_here() -> bool:
    group = JobCgroup.create(f"flopex-probe-{os.getpid()}", memory_bytes=None, max_pids=10)
    if group is None:
        return False
    group.remove()
    return True


def test_a_fork_bomb__is_bounded_by_the_process_limit(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    if os.geteuid() == 0 and not _cgroups_here() and shutil.which("setpriv") is None:
        pytest.skip("root without writable cgroups or setpriv: RLIMIT_NPROC does not bind uid 0, only the timeout does")
    code = """
        import os, sys, time
        made = failed = 0
        for _ in range(5000):
            try:
                pid = os.fork()
            except OSError:
                failed += 1
                if failed > 50:
                    break
                continue
            if pid == 0:
                time.sleep(20)
                os._exit(0)
            made += 1
        print(made, failed, flush=True)
    """
    started = time.monotonic()
    final, results = _run(worker, client, requester, make_bundle, code, tmp_path, timeout_s=60)
    made, failed = map(int, (results / "logs" / "stdout.log").read_text().split())
    assert made < 64 and failed > 50
    assert final.HasField("finished") and time.monotonic() - started < 30


def test_allocating_past_the_memory_limit__ends_the_job_not_the_worker(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    code = """
        blocks = []
        for i in range(64):
            blocks.append(bytearray(64 << 20))  # 4 GiB in all, touched: bytearray zero-fills
            print(i, flush=True)
    """
    final, results = _run(worker, client, requester, make_bundle, code, tmp_path)
    assert final.HasField("failed")
    stderr = (results / "logs" / "stderr.log").read_text()
    assert "memory limit" in final.failed.reason or "MemoryError" in stderr
    printed = (results / "logs" / "stdout.log").read_text().split()
    assert len(printed) < 1536 // 64 + 1


def test_a_file_beyond_the_file_size_limit__cannot_be_written(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    code = """
        import os
        with open(os.path.join(os.environ["FLOPEX_OUTPUT_DIR"], "big.bin"), "wb") as fh:
            for _ in range(20):
                fh.write(b"\\0" * (1 << 20))
    """
    final, results = _run(worker, client, requester, make_bundle, code, tmp_path)
    assert final.HasField("failed")
    assert "File too large" in (results / "logs" / "stderr.log").read_text() or "file size" in final.failed.reason
    assert (results / "output" / "big.bin").stat().st_size <= 8 << 20


def test_filling_the_disk__is_stopped_at_the_disk_limit(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    code = """
        import os, time
        for i in range(100):
            with open(os.path.join(os.environ["FLOPEX_OUTPUT_DIR"], f"fill{i}.bin"), "wb") as fh:
                fh.write(os.urandom(4 << 20))
            time.sleep(0.02)
    """
    final, _ = _run(worker, client, requester, make_bundle, code, tmp_path)
    assert final.HasField("failed") and final.failed.reason.startswith("disk limit"), final.failed.reason


def test_a_job_outliving_its_timeout__is_killed_with_its_children(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    from tests.worker.workerkit import processes_with

    marker = f"outlive{os.getpid()}{time.monotonic_ns()}"
    code = f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "{marker}"], start_new_session=True)
        time.sleep(300)
    """
    started = time.monotonic()
    final, _ = _run(worker, client, requester, make_bundle, code, tmp_path, timeout_s=2)
    assert final.HasField("failed") and final.failed.reason.startswith("timeout"), final.failed.reason
    assert time.monotonic() - started < 15
    deadline = time.monotonic() + 5
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with(marker) == []


def test_a_python_installation_under_tmp__stays_visible_above_the_private_tmp(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A scratch checkout's virtual environment may live under /tmp, which each job gets privately.
    from worker.sandbox.runner import JobSpace, Sandbox, SandboxRequest

    venv = Path("/tmp/flopex-checkout/.venv")
    monkeypatch.setattr(Sandbox, "_python_binds", staticmethod(lambda: [Path("/opt/python"), venv]))
    sandbox = Sandbox(bwrap="/usr/bin/bwrap", use_cgroups=False)
    space = JobSpace(tmp_path, "dir", capacity_bytes=1 << 20, uid=None)
    argv = sandbox.argv(SandboxRequest("job", space, "main.py"))
    tmpfs = argv.index("/tmp", argv.index("--tmpfs"))
    rebinds = [i for i in range(len(argv) - 2) if argv[i : i + 3] == ["--ro-bind", str(venv), str(venv)]]
    assert rebinds and rebinds[-1] > tmpfs
    assert not any(argv[i : i + 3] == ["--ro-bind", "/opt/python", "/opt/python"] for i in range(tmpfs, len(argv) - 2))
    assert (
        argv.index("--remount-ro") > argv.index("/dev/shm")
        and ["--ro-bind", "/proc/sys", "/proc/sys"] == argv[argv.index("/proc/sys") - 1 : argv.index("/proc/sys") + 2]
    )


def _job_mounts(worker: WorkerProcess) -> list[Path]:
    """The job spaces the worker process has mounted now."""
    from worker.sandbox.space import RUN_ROOT, mountpoints_under

    return [
        p
        for p in mountpoints_under(RUN_ROOT)
        if p.parent.name == "jobs" and p.parts[3].startswith(f"{worker.proc.pid}-")
    ]


def test_a_job__runs_as_its_own_host_uid_in_a_filesystem_of_its_own_removed_when_it_ends(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("per-job uids and filesystems need a root worker (CI runs as root)")
    code = """
        import os
        print(os.stat(os.environ["FLOPEX_OUTPUT_DIR"]).st_uid, os.getuid(), flush=True)
        for line in open("/proc/self/mountinfo"):
            if " /job/output " in line:
                print(line.split(" - ")[1].split()[1], flush=True)
        import time
        time.sleep(1)
    """
    archive, bhash = make_bundle(code, timeout_s=60)
    job_id = submit(worker, client, requester.address, archive, bhash)
    seen_uid: set[int] = set()
    mounted: list[Path] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            mounted.extend(_job_mounts(worker))
            for pid in worker_children(worker):
                with contextlib.suppress(OSError, StopIteration):
                    status = Path(f"/proc/{pid}/status").read_text()
                    seen_uid.add(int(next(x for x in status.splitlines() if x.startswith("Uid:")).split()[1]))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        final = client.wait(job_id, timeout_s=60)
    finally:
        done.set()
        sampler.join()
    assert final.HasField("finished"), final
    results = client.download_results(job_id, tmp_path / "r", provider=worker.provider)
    owner, inside, source = (results.directory / "logs" / "stdout.log").read_text().split()
    assert owner == inside == "65534" and source == "flopex-job"
    assert seen_uid and all(uid >= 2_000_000 for uid in seen_uid), seen_uid
    assert _job_mounts(worker) == [], "the job's filesystem is unmounted once its results are taken"
    assert all(not p.exists() for p in mounted)


def worker_children(worker: WorkerProcess) -> list[int]:
    """Pids of the worker's descendants that run the job's Python (not the gate or bubblewrap)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if len(argv) > 2 and argv[2] == b"/job/work/main.py":
                found.append(int(entry.name))
    return found
