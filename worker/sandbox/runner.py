"""Running untrusted job code in a bubblewrap sandbox, with limits, metering and a clean kill.

What a sandboxed job sees (every other host path is absent, not merely unreadable):

- ``/usr`` and the ``/lib*``, ``/bin`` links, read-only; the Python installation that runs jobs
  (``sys.prefix``, ``sys.base_prefix``) read-only; the ``marketplace`` package (for the SDK)
  read-only at ``/opt/flopex``; a few ``/etc`` files the dynamic loader reads;
- ``/job/input`` (the unpacked bundle, read-only), ``/job/work`` (its working copy: the current
  directory and ``HOME``), ``/job/output`` and ``/job/checkpoints`` — the only writable places
  besides a private, size-capped ``/tmp``;
- a private ``/proc`` (new pid namespace) and a minimal ``/dev``, plus the GPUs it was given.

Namespaces: all of them (network, pid, ipc, uts, cgroup, user); inside, the job runs as uid
65534 with no capabilities and cannot create further user namespaces. The environment is
cleared (``--clearenv``); only ``FLOPEX_*``, ``PATH``, ``HOME`` and a few runtime variables are
set. ``--die-with-parent`` and ``--new-session`` tie the sandbox's life to the worker's.

Limits: memory and process count through a cgroup when the host allows one (see
:mod:`worker.sandbox.cgroups`), else ``RLIMIT_AS`` (CPU jobs only: CUDA reserves huge address space)
and ``RLIMIT_NPROC`` (effective only when the worker is not root: the kernel exempts uid 0);
``RLIMIT_FSIZE`` per file, a disk quota over the writable directories checked by a watchdog,
``RLIMIT_CORE=0``, ``RLIMIT_NOFILE``, and the wall-clock timeout. Limits are applied while the
child waits on a pipe, before it execs bubblewrap, so no job code runs unconstrained, and
without a ``preexec_fn`` (unsafe in a threaded server).

Cancellation and timeouts SIGKILL the process group of the outer bubblewrap; its child, the
pid namespace's init, dies with it (``--die-with-parent``) and the kernel then kills every
process in the namespace; with a cgroup, every process left in it is killed as well.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import marketplace
from marketplace.errors import SandboxError
from worker.sandbox.cgroups import JobCgroup

__all__ = ["Limits", "RunOutcome", "RunningJob", "Sandbox", "SandboxRequest"]

log = logging.getLogger(__name__)

JOB_UID = 65534
INPUT, WORK, OUTPUT, CHECKPOINTS = "/job/input", "/job/work", "/job/output", "/job/checkpoints"
SDK_ROOT = "/opt/flopex"
_ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/localtime")
_GATE = 'read _ || exit 125; exec </dev/null; exec "$@"'


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of one job."""

    timeout_s: float = 3600.0
    memory_bytes: int = 4 << 30
    max_processes: int = 256
    max_file_bytes: int = 1 << 30
    max_disk_bytes: int = 4 << 30
    tmp_bytes: int = 256 << 20
    open_files: int = 4096


@dataclass(frozen=True, slots=True)
class SandboxRequest:
    """What to run: the host directories mapped into the sandbox, the entrypoint and its environment."""

    name: str
    bundle_dir: Path
    work_dir: Path
    output_dir: Path
    checkpoint_dir: Path
    entrypoint: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    device_kind: str = "cpu"
    gpu_indices: tuple[int, ...] = ()
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How a job's process tree ended and what it used."""

    exit_code: int
    reason: str | None
    wall_s: float
    cpu_millis: int
    peak_memory_bytes: int


def _real(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(path))


class Sandbox:
    """Starts jobs in bubblewrap (or, only when explicitly allowed, without a sandbox)."""

    def __init__(
        self,
        *,
        allow_unsandboxed: bool = False,
        protected_paths: Sequence[str | os.PathLike[str]] = (),
        bwrap: str | None = None,
        use_cgroups: bool = True,
    ) -> None:
        self.allow_unsandboxed = allow_unsandboxed
        self.use_cgroups = use_cgroups
        self._bwrap = bwrap if bwrap is not None else shutil.which("bwrap")
        self._ro_binds = self._python_binds()
        self._sdk_dir = _real(Path(marketplace.__file__).parent)
        for protected in protected_paths:
            real = _real(protected)
            for src in [*self._ro_binds, self._sdk_dir, Path("/usr")]:
                if real == src or real.is_relative_to(src):
                    raise SandboxError(
                        f"sandbox: {real} would be visible to jobs (it lies under {src}); "
                        "move it out of the Python installation and /usr"
                    )
        self._usable: bool | None = None
        self._lock = threading.Lock()

    @staticmethod
    def _python_binds() -> list[Path]:
        roots = {_real(sys.prefix), _real(sys.base_prefix), _real(sys.exec_prefix), _real(sys.base_exec_prefix)}
        roots.add(_real(sys.executable).parent.parent)
        usr = Path("/usr")
        return sorted(r for r in roots if not r.is_relative_to(usr) and r != Path("/"))

    @property
    def bwrap_path(self) -> str | None:
        """Path of the bubblewrap binary, if any."""
        return self._bwrap

    @property
    def sandboxed(self) -> bool:
        """Whether jobs run in bubblewrap (bubblewrap present and working here)."""
        with self._lock:
            if self._usable is None:
                self._usable = self._probe()
            return self._usable

    def _probe(self) -> bool:
        if self._bwrap is None:
            return False
        argv = [self._bwrap, *self._base_args(), "--remount-ro", "/", "--", "/bin/true"]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("bubblewrap does not work here: %s", exc)
            return False
        if done.returncode != 0:
            log.warning("bubblewrap does not work here: %s", done.stderr.decode(errors="replace").strip())
        return done.returncode == 0

    def _base_args(self) -> list[str]:
        args = [
            "--unshare-all",
            "--unshare-user",
            "--uid",
            str(JOB_UID),
            "--gid",
            str(JOB_UID),
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--hostname",
            "flopex-job",
            "--clearenv",
            "--ro-bind",
            "/usr",
            "/usr",
        ]
        for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            host = Path("/") / name
            if host.is_symlink():
                args += ["--symlink", os.readlink(host), f"/{name}"]
            elif host.is_dir():
                args += ["--ro-bind", str(host), f"/{name}"]
        for etc in _ETC_FILES:
            if os.path.exists(etc):
                args += ["--ro-bind", etc, etc]
        for root in self._python_binds():
            args += ["--ro-bind", str(root), str(root)]
        args += ["--proc", "/proc", "--dev", "/dev"]
        return args

    def argv(self, req: SandboxRequest) -> list[str]:
        """The bubblewrap command line that runs ``req``."""
        if self._bwrap is None:
            raise SandboxError("sandbox: bubblewrap is not installed")
        args = [self._bwrap, *self._base_args()]
        args += ["--size", str(req.limits.tmp_bytes), "--tmpfs", "/tmp"]
        for root in self._python_binds():
            if root.is_relative_to("/tmp"):
                # The private /tmp just hid a Python installation that lives under the host's /tmp
                # (a virtual environment in a scratch checkout, say): bind it again on top.
                args += ["--ro-bind", str(root), str(root)]
        args += ["--ro-bind", str(self._sdk_dir), f"{SDK_ROOT}/marketplace"]
        args += ["--ro-bind", str(req.bundle_dir), INPUT]
        args += ["--bind", str(req.work_dir), WORK]
        args += ["--bind", str(req.output_dir), OUTPUT]
        args += ["--bind", str(req.checkpoint_dir), CHECKPOINTS]
        if req.gpu_indices:
            for dev in ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"):
                if os.path.exists(dev):
                    args += ["--dev-bind", dev, dev]
            for index in req.gpu_indices:
                if os.path.exists(f"/dev/nvidia{index}"):
                    args += ["--dev-bind", f"/dev/nvidia{index}", f"/dev/nvidia{index}"]
        env = self._job_env(req, WORK, INPUT, OUTPUT, CHECKPOINTS, SDK_ROOT)
        for key, value in env.items():
            args += ["--setenv", key, value]
        args += ["--remount-ro", "/", "--chdir", WORK]
        args += ["--", sys.executable, "-u", f"{WORK}/{req.entrypoint}", *req.args]
        return args

    @staticmethod
    def _job_env(req: SandboxRequest, work: str, inp: str, out: str, ckpt: str, sdk: str | None) -> dict[str, str]:
        env = {k: v for k, v in req.env.items() if k.startswith("FLOPEX_")}
        env.update(
            {
                "PATH": f"{_real(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
                "HOME": work,
                "TMPDIR": "/tmp",
                "LANG": "C.UTF-8",
                "PYTHONUNBUFFERED": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
                "FLOPEX_INPUT_DIR": inp,
                "FLOPEX_OUTPUT_DIR": out,
                "FLOPEX_CHECKPOINT_DIR": ckpt,
                "FLOPEX_DEVICE": req.device_kind,
            }
        )
        if sdk is not None:
            env["PYTHONPATH"] = sdk
        if req.device_kind == "cuda":
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in req.gpu_indices)
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG"):
            if key in req.env:
                env[key] = req.env[key]
        return env

    def start(self, req: SandboxRequest) -> RunningJob:
        """Start ``req``; raise :class:`SandboxError` when it cannot run safely."""
        if self.sandboxed:
            argv = self.argv(req)
        elif self.allow_unsandboxed:
            log.warning("running job %s WITHOUT a sandbox (allow_unsandboxed is set)", req.name)
            argv = [sys.executable, "-u", str(req.work_dir / req.entrypoint), *req.args]
        else:
            raise SandboxError(
                "sandbox: bubblewrap is not available; this worker refuses untrusted jobs "
                "(start it with --unsafe-no-sandbox to run them unconfined)"
            )
        return RunningJob(self, req, argv)


class RunningJob:
    """A started job: its output pipes, its watchdog and, once it ends, its :class:`RunOutcome`."""

    def __init__(self, sandbox: Sandbox, req: SandboxRequest, argv: list[str]) -> None:
        self.req = req
        self._reason: str | None = None
        self._done = threading.Event()
        self._sampled_cpu_ms = 0
        self._sampled_rss = 0
        limits = req.limits
        is_root = os.geteuid() == 0
        cgroup = None
        if sandbox.use_cgroups:
            cgroup = JobCgroup.create(
                f"flopex-{os.getpid()}-{req.name}", memory_bytes=limits.memory_bytes, max_pids=limits.max_processes
            )
        self.cgroup = cgroup
        unsandboxed = not sandbox.sandboxed
        self._via_bwrap = not unsandboxed
        env = {"PATH": "/usr/bin:/bin"}
        cwd = None
        if unsandboxed:
            env = Sandbox._job_env(
                req,
                str(req.work_dir),
                str(req.bundle_dir),
                str(req.output_dir),
                str(req.checkpoint_dir),
                str(Path(marketplace.__file__).parent.parent),
            )
            cwd = str(req.work_dir)
        gate_r, gate_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                ["/bin/sh", "-c", _GATE, "sh", *argv],
                stdin=gate_r,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                env=env,
                cwd=cwd,
            )
        except OSError as exc:
            os.close(gate_r)
            os.close(gate_w)
            if cgroup is not None:
                cgroup.remove()
            raise SandboxError(f"sandbox: cannot start the job: {exc}") from None
        os.close(gate_r)
        self.started = time.monotonic()
        pid = self.proc.pid
        try:
            if cgroup is not None:
                cgroup.add(pid)
            rl = [
                (resource.RLIMIT_FSIZE, limits.max_file_bytes),
                (resource.RLIMIT_CORE, 0),
                (resource.RLIMIT_NOFILE, limits.open_files),
            ]
            if cgroup is None and req.device_kind == "cpu":
                rl.append((resource.RLIMIT_AS, limits.memory_bytes))
            if cgroup is None and not is_root:
                rl.append((resource.RLIMIT_NPROC, limits.max_processes))
            for which, value in rl:
                _, hard = resource.getrlimit(which)
                cap = value if hard == resource.RLIM_INFINITY else min(value, hard)
                resource.prlimit(pid, which, (cap, cap))
            os.write(gate_w, b"go\n")
        except OSError as exc:
            self.kill("sandbox setup failed")
            raise SandboxError(f"sandbox: cannot apply limits: {exc}") from None
        finally:
            os.close(gate_w)
        self._watchdog = threading.Thread(target=self._watch, name=f"watchdog-{req.name}", daemon=True)
        self._watchdog.start()

    @property
    def stdout(self) -> IO[bytes]:
        """The job's standard output."""
        assert self.proc.stdout is not None
        return self.proc.stdout

    @property
    def stderr(self) -> IO[bytes]:
        """The job's standard error."""
        assert self.proc.stderr is not None
        return self.proc.stderr

    def kill(self, reason: str) -> None:
        """Kill the whole process tree, recording ``reason`` (the first reason given wins)."""
        if self._reason is None:
            self._reason = reason
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.cgroup is not None:
            self.cgroup.kill_all()

    def _disk_use(self) -> int:
        total = 0
        for root in (self.req.work_dir, self.req.output_dir, self.req.checkpoint_dir):
            for dirpath, _dirs, files in os.walk(root):
                for name in files:
                    with contextlib.suppress(OSError):
                        total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
        return total

    def _sample_tree(self) -> None:
        """Sample CPU time and resident memory of the process tree (used when there is no cgroup).

        Reaped descendants count through their ancestors' ``cutime``/``cstime``; the tree's
        totals only grow, so the largest sample is kept. The last interval before exit is lost.
        """
        tick = os.sysconf("SC_CLK_TCK")
        page = os.sysconf("SC_PAGE_SIZE")
        parents: dict[int, int] = {}
        stats: dict[int, list[str]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry)] = int(fields[1])
            stats[int(entry)] = fields
        tree = {self.proc.pid}
        grew = True
        while grew:
            grew = False
            for pid, ppid in parents.items():
                if ppid in tree and pid not in tree:
                    tree.add(pid)
                    grew = True
        cpu = rss = 0
        for pid in tree:
            if pid not in stats:
                continue
            fields = stats[pid]
            cpu += sum(int(fields[i]) for i in (11, 12, 13, 14))
            rss += int(fields[21]) * page
        self._sampled_cpu_ms = max(self._sampled_cpu_ms, cpu * 1000 // tick)
        self._sampled_rss = max(self._sampled_rss, rss)

    def _watch(self) -> None:
        limits = self.req.limits
        deadline = self.started + limits.timeout_s
        while not self._done.wait(0.25):
            if self.cgroup is None:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    self._sample_tree()
            if time.monotonic() > deadline:
                self.kill(f"timeout: the job ran longer than {limits.timeout_s:g} s")
                return
            if self._disk_use() > limits.max_disk_bytes:
                self.kill(f"disk limit: the job wrote more than {limits.max_disk_bytes} bytes")
                return

    def wait(self) -> RunOutcome:
        """Wait for the job's process tree to end; return how it ended and what it used."""
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - self.started
        self._done.set()
        self._watchdog.join(timeout=2)
        code = self.proc.returncode
        peak = int(usage.ru_maxrss) * 1024
        cpu_ms = int((usage.ru_utime + usage.ru_stime) * 1000)
        reason = self._reason
        if self.cgroup is not None:
            oom = self.cgroup.oom_killed()
            cpu_ms = self.cgroup.cpu_millis() or cpu_ms
            peak = self.cgroup.peak_memory() or peak
            # Dying tasks can keep the cgroup busy for a few ms: remove it off the critical path.
            threading.Thread(target=self.cgroup.remove, name=f"cgroup-rm-{self.req.name}", daemon=True).start()
            if oom and reason is None:
                reason = f"memory limit: the job used more than {self.req.limits.memory_bytes} bytes"
        else:
            cpu_ms = max(cpu_ms, self._sampled_cpu_ms)
            peak = max(peak, self._sampled_rss)
            # The tree may have left orphans outside a pid namespace (unsandboxed mode).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        # bubblewrap reports a child killed by signal N as exit status 128 + N.
        if reason is None and code in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ):
            reason = f"file size limit: the job wrote a file larger than {self.req.limits.max_file_bytes} bytes"
        if code > 128 and self._via_bwrap:
            code = -(code - 128)
        return RunOutcome(exit_code=code, reason=reason, wall_s=wall, cpu_millis=cpu_ms, peak_memory_bytes=peak)
