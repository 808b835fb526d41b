"""A hostile job cannot reach through the sandbox: who it is, what it may call, what it may fill (needs bubblewrap).

These tests drive :class:`worker.sandbox.runner.Sandbox` directly. As root (CI) every job has a host
uid of its own and a filesystem of its own; the tests of that say so and skip without root.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.sandbox.runner import Limits, RunOutcome, Sandbox, SandboxRequest
from worker.sandbox.seccomp import DENY, SPECIAL
from worker.sandbox.space import NEUTRAL_SOURCE, mountpoints_under

pytestmark = pytest.mark.bwrap

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="per-job uids and filesystems need a root worker (CI runs as root)")
SMALL = Limits(timeout_s=60, max_file_bytes=8 << 20, max_disk_bytes=48 << 20, max_inodes=2000, memory_bytes=2 << 30)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    """One sandbox (host set-up done once) for the module."""
    box = Sandbox()
    assert box.sandboxed
    if ROOT:
        assert box.mode == "drop", "a root worker gives every job a uid of its own"
    yield box
    box.close()


@pytest.fixture(scope="module")
def ext4_sandbox() -> Iterator[Sandbox]:
    """A sandbox whose job spaces are loop-mounted ext4 images whatever their size."""
    box = Sandbox(space_backend="ext4")
    assert box.sandboxed
    yield box
    box.close()


def run_job(
    sandbox: Sandbox, tmp_path: Path, code: str, *, limits: Limits = SMALL, args: tuple[str, ...] = ()
) -> tuple[RunOutcome, str, str, Path]:
    """Run ``code`` as a job; return its outcome, stdout, stderr and the exported results."""
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    (bundle / "main.py").write_text(textwrap.dedent(code))
    space = sandbox.create_space(limits, bundle)
    try:
        job = sandbox.start(SandboxRequest("t", space, "main.py", args=args, limits=limits))
        err: list[bytes] = []
        reader = threading.Thread(target=lambda: err.append(job.stderr.read()))
        reader.start()
        out = job.stdout.read()
        outcome = job.wait()
        reader.join()
        job.stdout.close()
        job.stderr.close()
        results = tmp_path / "results"
        space.export_results(results)
    finally:
        space.release()
    assert not space.root.exists()
    return outcome, out.decode(), b"".join(err).decode(), results


def test_proc_sys__is_read_only_so_core_pattern_cannot_be_written(sandbox: Sandbox, tmp_path: Path) -> None:
    # Opening for writing writes nothing; a write is never attempted.
    code = """
        import errno, json, os
        writable = []
        for dirpath, _, files in os.walk("/proc/sys"):
            for name in files:
                try:
                    os.close(os.open(os.path.join(dirpath, name), os.O_WRONLY))
                    writable.append(os.path.join(dirpath, name))
                except OSError:
                    pass
        try:
            os.close(os.open("/proc/sys/kernel/core_pattern", os.O_WRONLY))
            core = "openable"
        except OSError as exc:
            core = errno.errorcode[exc.errno]
        print(json.dumps({"writable": writable[:5], "count": len(writable), "core_pattern": core}))
    """
    outcome, out, err, _ = run_job(sandbox, tmp_path, code)
    assert outcome.exit_code == 0, err
    report = json.loads(out)
    assert report["count"] == 0, report["writable"]
    assert report["core_pattern"] in ("EROFS", "EACCES")


@needs_root
def test_a_job__is_never_host_root(sandbox: Sandbox, tmp_path: Path) -> None:
    marker = f"uidprobe{os.getpid()}{time.monotonic_ns()}"
    code = """
        import os, sys, time
        open(os.path.join(os.environ["FLOPEX_OUTPUT_DIR"], "made.txt"), "w").write("x")
        print(os.getuid(), flush=True)
        time.sleep(1.5)
    """
    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:  # the host uids of the job's own processes (argv[0] is the job's Python)
        while not done.is_set():
            for entry in Path("/proc").iterdir():
                try:
                    argv = (entry / "cmdline").read_bytes().split(b"\0")
                    if argv[0] == sys.executable.encode() and marker.encode() in argv:
                        status = (entry / "status").read_text()
                        uids = next(line for line in status.splitlines() if line.startswith("Uid:"))
                        seen.update(int(x) for x in uids.split()[1:])
                except (OSError, StopIteration):
                    continue
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        outcome, out, err, results = run_job(sandbox, tmp_path, code, args=(marker,))
    finally:
        done.set()
        watcher.join()
    assert outcome.exit_code == 0, err
    assert out.split() == ["65534"]
    assert seen and 0 not in seen and min(seen) >= 2_000_000, seen
    # What the job wrote belonged to its own uid on the host (the export copies it as the worker's).
    assert (results / "output" / "made.txt").read_text() == "x"


def test_the_seccomp_filter__refuses_kernel_attack_surface_but_torch_threads_fork_and_multiprocessing_work(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    col = 0 if os.uname().machine == "x86_64" else 1
    numbers = {name: DENY[name][col] for name in ("unshare", "mount", "ptrace", "keyctl", "bpf", "perf_event_open")}
    numbers |= {"io_uring_setup": DENY["io_uring_setup"][col], "clone3": SPECIAL["clone3"][col]}
    numbers |= {"personality": SPECIAL["personality"][col]}
    code = """
        import ctypes, errno, json, os, sys, threading
        import multiprocessing as mp

        def square(x):
            return x * x

        if __name__ == "__main__":
            nr = json.loads(sys.argv[1])
            libc = ctypes.CDLL(None, use_errno=True)
            call = libc.syscall
            call.restype = ctypes.c_long

            def err(rc):
                return "ok" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")

            r = {}
            r["unshare_user"] = err(call(nr["unshare"], 0x10000000))
            r["mount"] = err(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
            r["ptrace"] = err(call(nr["ptrace"], 0, 0, 0, 0))
            r["keyctl"] = err(call(nr["keyctl"], 0, 0, 0, 0))
            r["bpf"] = err(call(nr["bpf"], 0, 0, 0))
            r["perf_event_open"] = err(call(nr["perf_event_open"], 0, 0, -1, -1, 0))
            r["io_uring_setup"] = err(call(nr["io_uring_setup"], 1, 0))
            r["clone3"] = err(call(nr["clone3"], 0, 0))
            r["no_aslr"] = err(call(nr["personality"], 0x0040000))
            import torch
            r["matmul"] = list((torch.randn(64, 64) @ torch.randn(64, 64)).shape)
            out = []
            threads = [threading.Thread(target=lambda: out.append(1)) for _ in range(8)]
            [t.start() for t in threads]
            [t.join() for t in threads]
            r["threads"] = len(out)
            pid = os.fork()
            if pid == 0:
                os._exit(7)
            r["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            with mp.get_context("fork").Pool(2) as pool:
                r["mp_fork"] = sum(pool.map(square, range(10)))
            with mp.get_context("spawn").Pool(2) as pool:
                r["mp_spawn"] = sum(pool.map(square, range(10)))
            print(json.dumps(r))
    """
    outcome, out, err, _ = run_job(sandbox, tmp_path, code, args=(json.dumps(numbers),))
    assert outcome.exit_code == 0, err
    r = json.loads(out)
    for name in ("unshare_user", "mount", "ptrace", "keyctl", "bpf", "perf_event_open", "io_uring_setup", "no_aslr"):
        assert r[name] == "EPERM", (name, r)
    assert r["clone3"] == "ENOSYS"
    assert r["matmul"] == [64, 64] and r["threads"] == 8 and r["fork"] == 7
    assert r["mp_fork"] == r["mp_spawn"] == 285


def test_a_40_gib_sparse_file__is_refused_and_sparse_files_count_at_their_size(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    code = """
        import errno, os
        out = os.environ["FLOPEX_OUTPUT_DIR"]
        try:
            with open(os.path.join(out, "huge"), "wb") as fh:
                fh.truncate(40 << 30)
            print("made")
        except OSError as exc:
            print(errno.errorcode[exc.errno])
        os.unlink(os.path.join(out, "huge"))
        for i in range(10):  # 70 MiB of holes: no blocks, but more than the 48 MiB the job may keep
            with open(os.path.join(out, f"sparse{i}"), "wb") as fh:
                fh.truncate(7 << 20)
    """
    outcome, out, err, results = run_job(sandbox, tmp_path, code)
    assert out.split() == ["EFBIG"], err
    assert outcome.reason is not None and outcome.reason.startswith("disk limit"), outcome
    exported = sum(p.stat().st_size for p in (results / "output").iterdir())
    assert exported <= SMALL.max_disk_bytes + (4 << 20)


DEEP_AND_GHOST = """
    import os, sys, time
    os.chdir(os.environ["FLOPEX_OUTPUT_DIR"] if sys.argv[1] == "deep" else "/tmp")
    if sys.argv[1] == "deep":
        for _ in range(150):  # a path of some 6,000 characters: deeper than PATH_MAX
            os.mkdir("d" * 40)
            os.chdir("d" * 40)
    kept = []
    try:
        for i in range(20):  # 20 files of 7 MiB, each under the 8 MiB file size limit
            fh = open(f"f{i}", "wb")
            kept.append(fh)
            if sys.argv[1] == "ghost":
                os.unlink(f"f{i}")  # no name left anywhere: only the filesystem still counts it
            for _ in range(7):
                fh.write(os.urandom(1 << 20))
                fh.flush()
                time.sleep(0.01)
    except OSError as exc:
        print("stopped by", exc, flush=True)
        time.sleep(10)
    print("wrote it all", flush=True)
"""


@needs_root
@pytest.mark.parametrize("how", ["deep", "ghost"])
@pytest.mark.parametrize("backend", ["tmpfs", "ext4"])
def test_deep_paths_and_unlinked_open_files__count_and_are_killed_at_the_disk_limit(
    sandbox: Sandbox, ext4_sandbox: Sandbox, tmp_path: Path, how: str, backend: str
) -> None:
    box = sandbox if backend == "tmpfs" else ext4_sandbox
    outcome, out, err, _ = run_job(box, tmp_path, DEEP_AND_GHOST, args=(how,))
    assert outcome.reason is not None and outcome.reason.startswith("disk limit"), (outcome, out, err)
    assert "wrote it all" not in out


@needs_root
@pytest.mark.parametrize("backend", ["tmpfs", "ext4"])
def test_200k_empty_files__are_stopped_at_the_inode_limit(
    sandbox: Sandbox, ext4_sandbox: Sandbox, tmp_path: Path, backend: str
) -> None:
    box = sandbox if backend == "tmpfs" else ext4_sandbox
    code = """
        import os, time
        os.chdir(os.environ["FLOPEX_OUTPUT_DIR"])
        made = 0
        try:
            for i in range(200_000):
                os.close(os.open(f"f{i}", os.O_CREAT | os.O_WRONLY, 0o600))
                made += 1
        except OSError as exc:
            print(made, exc, flush=True)
            time.sleep(10)
        print(made, "all", flush=True)
    """
    outcome, out, err, _ = run_job(box, tmp_path, code)
    assert outcome.reason is not None and outcome.reason.startswith("inode limit"), (outcome, out, err)
    made = int(out.split()[0]) if out else 0
    assert made < SMALL.max_inodes + 1000 and "all" not in out


def test_dev_shm__is_capped_and_dev_is_read_only(sandbox: Sandbox, tmp_path: Path) -> None:
    code = """
        import errno, os
        try:
            open("/dev/evil", "w")
            print("dev writable", flush=True)
        except OSError as exc:
            print("dev", errno.errorcode[exc.errno], flush=True)
        with open("/dev/shm/fill", "wb") as fh:
            for i in range(512):
                fh.write(b"\\0" * (1 << 20))
                fh.flush()
                print("shm", i + 1, flush=True)
    """
    limits = Limits(timeout_s=60, max_file_bytes=1 << 30, max_disk_bytes=48 << 20, shm_bytes=48 << 20)
    outcome, out, err, _ = run_job(sandbox, tmp_path, code, limits=limits)
    lines = out.splitlines()
    assert lines[0] in ("dev EROFS", "dev EACCES"), lines[0]
    written = int(lines[-1].split()[1]) if lines[-1].startswith("shm") else 0
    # /dev/shm is its own 48 MiB tmpfs without root, part of the job's 48 MiB space with root:
    # writes stop there (ENOSPC), or the watchdog stops the job at its disk limit.
    assert written <= 52 and outcome.exit_code != 0, (lines[-3:], err[-300:])
    assert "No space left" in err or (outcome.reason or "").startswith("disk limit"), (outcome, err[-300:])


@needs_root
def test_the_jobs_own_mounts__show_no_host_path_in_mountinfo(sandbox: Sandbox, tmp_path: Path) -> None:
    code = """
        for line in open("/proc/self/mountinfo"):
            f = line.split()
            print(f[3], f[4], f[f.index("-") + 2])
    """
    outcome, out, err, _ = run_job(sandbox, tmp_path, code)
    assert outcome.exit_code == 0, err
    mounts = {point: (root, source) for root, point, source in (line.split() for line in out.splitlines())}
    for point in ("/job/work", "/job/output", "/job/checkpoints", "/tmp", "/dev/shm"):
        root, source = mounts[point]
        assert source == NEUTRAL_SOURCE and not root.startswith(("/run", "/var", str(tmp_path))), (point, root)
    assert "/run/flopex" not in out and "/var/tmp/flopex" not in out


@needs_root
def test_a_space__is_gone_after_release_and_a_dead_workers_leftovers_are_swept(tmp_path: Path) -> None:
    from worker.sandbox.space import RUN_ROOT, Spaces

    dead = Spaces(mount=True, drop_uid=True, work_root=tmp_path / "work")
    dead.tag = "999999999-1-0"  # a pid no process has
    dead.run_dir, dead.data_dir = RUN_ROOT / dead.tag, dead.work_root / dead.tag
    dead.setup()
    left = dead.create(8 << 20, 100)
    assert left.root in mountpoints_under(RUN_ROOT)
    box = Sandbox(work_root=tmp_path / "work")
    try:
        assert box.sandboxed  # the set-up sweeps what workers that are gone left behind
        assert not mountpoints_under(dead.run_dir) and not dead.run_dir.exists() and not dead.data_dir.exists()
        space = box.create_space(SMALL, tmp_path)
        assert space.root in mountpoints_under(space.root)
        space.release()
        assert not space.root.exists() and not mountpoints_under(space.root)
    finally:
        box.close()
        left.release()
