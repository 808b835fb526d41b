"""Running untrusted job code in a bubblewrap sandbox, with limits, metering and a clean kill.

What a sandboxed job sees (every other host path is absent, not merely unreadable):

- ``/usr`` and the ``/lib*``, ``/bin`` links, read-only; the Python installation that runs jobs
  (``sys.prefix``, ``sys.base_prefix``) read-only; the ``marketplace`` package (for the SDK)
  read-only at ``/opt/flopex``; a few ``/etc`` files the dynamic loader reads;
- generated, read-only: ``/etc/hosts`` (``localhost`` and the sandbox's host name on loopback, so
  ``torchrun`` and anything resolving ``localhost`` work with no network), ``/etc/nsswitch.conf``
  (hosts from files) and ``/etc/fonts/fonts.conf`` (the system's font folders, a cache in
  ``/tmp``: matplotlib's ``fc-list`` finds fonts and prints no "Fontconfig error");
- ``/job/input`` (the unpacked bundle, read-only), ``/job/work`` (its working copy: the current
  directory and ``HOME``), ``/job/output``, ``/job/checkpoints``, ``/tmp`` and ``/dev/shm`` — the
  only writable places, all in the job's :class:`~worker.sandbox.space.JobSpace`;
- a private ``/proc`` whose ``/proc/sys`` is read-only, and a minimal, read-only ``/dev``, plus the
  GPUs it was given.

Who the job is. When the worker runs as root (and can mount), every job gets a host uid of its own
(:func:`~worker.sandbox.space.lease_uid`: 2000000 and up, no passwd entry) and bubblewrap is
started as that uid through ``setpriv`` (util-linux), with no groups, no capabilities and an empty
bounding set: bubblewrap then builds an unprivileged user namespace in which the job is uid 65534.
A job is never host root, so ``RLIMIT_NPROC`` binds it and nothing it does runs with the worker's
authority. Without root, bubblewrap runs as the worker's uid, as it must. Either way the job has no
capabilities, cannot create further user namespaces (``--disable-userns``), and runs under the
seccomp filter of :mod:`worker.sandbox.seccomp` (``--seccomp``).

Namespaces: all of them (network, pid, ipc, uts, cgroup, user). The environment is cleared
(``--clearenv``); only ``FLOPEX_*``, ``PATH``, ``HOME`` and a few runtime variables are set.
``--die-with-parent`` and ``--new-session`` tie the sandbox's life to the worker's.

Limits: memory and process count through a cgroup when the host allows one (see
:mod:`worker.sandbox.cgroups`), else ``RLIMIT_AS`` (CPU jobs only: CUDA reserves huge address space)
and ``RLIMIT_NPROC`` (whenever the job's host uid is not 0); the job's space is one filesystem
limited in bytes and inodes, checked by a watchdog through ``statvfs`` (a walk of its directories
when no filesystem can be mounted); ``RLIMIT_FSIZE`` per file, ``RLIMIT_CORE=0``,
``RLIMIT_NOFILE``, and the wall-clock timeout. Limits are applied while the child waits on a pipe,
before it execs bubblewrap, so no job code runs unconstrained, and without a ``preexec_fn`` (unsafe
in a threaded server).

Cancellation and timeouts SIGKILL the process group of the outer bubblewrap; its child, the
pid namespace's init, dies with it (``--die-with-parent``) and the kernel then kills every
process in the namespace; with a cgroup, every process left in it is killed as well.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import marketplace
from marketplace.errors import SandboxError
from marketplace.launch import plan_args
from marketplace.protocol.bundle import LaunchStep
from worker.sandbox.cgroups import JobCgroup
from worker.sandbox.seccomp import program_fd
from worker.sandbox.space import JOB_UID_BASE, JobSpace, Spaces, lease_uid, probe_mount

__all__ = ["JobSpace", "Limits", "RunOutcome", "RunningJob", "Sandbox", "SandboxRequest"]

log = logging.getLogger(__name__)

JOB_UID = 65534
"""The job's uid and gid inside its user namespace."""
INPUT, WORK, OUTPUT, CHECKPOINTS = "/job/input", "/job/work", "/job/output", "/job/checkpoints"
DATA = "/job/data"
"""Where each dataset a job reads is a read-only folder (``job.datasets``)."""
SDK_ROOT = "/opt/flopex"
_ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/localtime")
HOSTNAME = "flopex-job"
#: Files generated for every sandbox, bound read-only at these paths.
ETC_GENERATED = {
    "hosts": ("/etc/hosts", f"127.0.0.1\tlocalhost {HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
    "nsswitch.conf": ("/etc/nsswitch.conf", "hosts: files\n"),
    "fonts.conf": (
        "/etc/fonts/fonts.conf",
        '<?xml version="1.0"?>\n<!DOCTYPE fontconfig SYSTEM "urn:fontconfig:fonts.dtd">\n<fontconfig>\n'
        "  <dir>/usr/share/fonts</dir>\n  <dir>/usr/local/share/fonts</dir>\n"
        "  <cachedir>/tmp/.fontconfig-cache</cachedir>\n</fontconfig>\n",
    ),
}
_ETC_TOOLS = {"nsswitch-dns.conf": "hosts: files dns\n"}
"""Generated files only a tool with network sees (see :meth:`Sandbox.tool_argv`)."""
OMP_WAIT = {"OMP_WAIT_POLICY": "PASSIVE"}
"""How a job's OpenMP threads wait, unless its ``job.env`` sets it: asleep, not spinning.

A job gets as many OpenMP threads as its device's share of cores, and the worker, its provider
daemon and the chain run on the same cores. With libgomp's or Intel OpenMP's default (spin at
every barrier, then yield), one thread preempted for a time slice keeps the others spinning until
it comes back: a small-batch CPU job took 10-20 times as long, burning the cores it waited for,
whenever any other process was runnable. Passive waiting costs a few microseconds per parallel
region and nothing of the job's results (see docs/performance.md).
"""
_GATE = 'read _ || exit 125; exec </dev/null; exec "$@"'
_GPU_CONTROL = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")
_DROP = (
    "import ctypes, os, sys\n"
    "uid = int(sys.argv[1])\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "for cap in range(64):\n"
    "    libc.prctl(24, cap, 0, 0, 0)\n"
    "os.setgroups([])\n"
    "os.setresgid(uid, uid, uid)\n"
    "os.setresuid(uid, uid, uid)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)
"""What ``setpriv`` does, for hosts without it: drop the bounding set, the groups, then the uid; exec."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of one job.

    ``max_disk_bytes`` and ``max_inodes`` bound the job's whole space (work, output, checkpoints,
    logs and, when the worker is root, /tmp and /dev/shm); ``tmp_bytes`` and ``shm_bytes`` size
    the RAM-backed /tmp and /dev/shm a job gets when the worker is not root.
    """

    timeout_s: float = 3600.0
    memory_bytes: int = 4 << 30
    max_processes: int = 256
    max_file_bytes: int = 1 << 30
    max_disk_bytes: int = 4 << 30
    max_inodes: int = 100_000
    tmp_bytes: int = 256 << 20
    shm_bytes: int = 256 << 20
    open_files: int = 4096


@dataclass(frozen=True, slots=True)
class SandboxRequest:
    """What to run: the job's space (from :meth:`Sandbox.create_space`), the entrypoint and its environment.

    ``steps`` (from :func:`marketplace.protocol.bundle.launch_steps`), when given, run instead of the
    entrypoint: in order, in this one sandbox, through :mod:`marketplace.launch` (torchrun for a step
    on more than one process); the first that fails ends the job with its status.
    """

    name: str
    space: JobSpace
    entrypoint: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    job_env: Mapping[str, str] = field(default_factory=dict)
    """The bundle's ``job.env`` (checked when the bundle was read): set first, the worker's own over it."""
    device_kind: str = "cpu"
    gpu_indices: tuple[int, ...] = ()
    limits: Limits = field(default_factory=Limits)
    steps: tuple[LaunchStep, ...] = ()
    python: Path | None = None
    """The interpreter that runs the entrypoint (a built environment's, see
    :mod:`worker.node.environments`); None: the worker's own. Its environment folder is ``python``'s
    grandparent, bound read-only at the same path."""


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How a job's process tree ended and what it used."""

    exit_code: int
    reason: str | None
    wall_s: float
    cpu_millis: int
    peak_memory_bytes: int
    failed_step: str | None = None
    """The step that failed (``step 2/3 (train)``), for a job run as steps; None otherwise."""


def _real(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(path))


class Sandbox:
    """Starts jobs in bubblewrap (or, only when explicitly allowed, without a sandbox).

    ``drop_uid`` (default: when the worker is root) gives each job a host uid of its own;
    ``seccomp`` installs the syscall filter; ``work_root`` holds ext4 images and directory spaces
    (default ``/var/tmp/flopex``); ``space_backend`` forces ``tmpfs``, ``ext4`` or ``dir`` instead
    of choosing by the disk limit (a tmpfs up to ``tmpfs_max_bytes``); ``uid_base`` is the first
    host uid of jobs. Call :meth:`close` when done (it also runs when the object is collected).
    """

    def __init__(
        self,
        *,
        allow_unsandboxed: bool = False,
        protected_paths: Sequence[str | os.PathLike[str]] = (),
        bwrap: str | None = None,
        use_cgroups: bool = True,
        drop_uid: bool | None = None,
        seccomp: bool = True,
        work_root: Path | None = None,
        space_backend: str = "auto",
        tmpfs_max_bytes: int = 256 << 20,
        uid_base: int = JOB_UID_BASE,
        setpriv: str | None = None,
    ) -> None:
        self.allow_unsandboxed = allow_unsandboxed
        self.use_cgroups = use_cgroups
        self.seccomp = seccomp
        self._bwrap = bwrap if bwrap is not None else shutil.which("bwrap")
        self._setpriv = setpriv if setpriv is not None else shutil.which("setpriv")
        self._want_drop = (os.geteuid() == 0) if drop_uid is None else drop_uid
        self._work_root = work_root
        self._space_backend = space_backend
        self._tmpfs_max_bytes = tmpfs_max_bytes
        self._uid_base = uid_base
        self._ro_binds = self._python_binds()
        self._sdk_dir = _real(Path(marketplace.__file__).parent)
        self._etc_dir = _write_etc()
        self._etc_closer = weakref.finalize(self, shutil.rmtree, self._etc_dir, True)
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
        self._spaces: Spaces | None = None
        self._mode = "user"
        self._closer = weakref.finalize(self, _close_spaces, [])

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
            self._setup()
            assert self._usable is not None
            return self._usable

    @property
    def mode(self) -> str:
        """``drop`` (root worker; each job has a host uid of its own), ``root`` (root worker that cannot
        drop: jobs are host uid 0 in their namespace) or ``user`` (the worker is not root)."""
        with self._lock:
            self._setup()
            return self._mode

    def _setup(self) -> None:
        """Once: the host set-up (directories, read-only binds, stale mounts swept) and the probe."""
        if self._usable is not None:
            return
        root = os.geteuid() == 0

        def spaces(mount: bool, drop: bool) -> Spaces:
            made = Spaces(
                mount=mount,
                drop_uid=drop,
                work_root=self._work_root,
                tmpfs_max_bytes=self._tmpfs_max_bytes,
                backend=self._space_backend,
                uid_base=self._uid_base,
            )
            made.setup()
            if drop:  # bind what the job's uid cannot reach once, here, not from concurrent job starts
                for source in [*self._ro_binds, self._sdk_dir, self._etc_dir]:
                    made.readable_source(source)
            return made

        if root:
            first = spaces(mount=False, drop=False)
            can_mount = probe_mount(first.run_dir)
            first.close()
            drop = self._want_drop and can_mount and self._bwrap is not None
            self._spaces = spaces(can_mount, drop)
            self._mode = "drop" if drop else "root"
        else:
            self._spaces = spaces(False, False)
            self._mode = "user"
        self._closer.detach()
        self._closer = weakref.finalize(self, _close_spaces, [self._spaces])
        self._usable = self._probe()
        if not self._usable and self._mode == "drop":
            log.warning("bubblewrap does not work as an unprivileged job uid here; jobs will run as host root")
            self._spaces.close()
            self._spaces = spaces(can_mount, False)
            self._closer.detach()
            self._closer = weakref.finalize(self, _close_spaces, [self._spaces])
            self._mode = "root"
            self._usable = self._probe()
        if self._usable and self._mode == "root":
            log.warning(
                "the worker is root but cannot give jobs a uid of their own (no mounts, or drop_uid=False): "
                "jobs run as host uid 0 inside their user namespace"
            )

    def close(self) -> None:
        """Unmount the read-only binds and remove the sandbox's directories (spaces are released by their owners)."""
        self._closer()
        self._etc_closer()

    def _source(self, path: Path) -> Path:
        """Where bubblewrap (as the job's uid) can bind ``path`` from."""
        if self._spaces is None or self._mode != "drop":
            return path
        return self._spaces.readable_source(path)

    def _drop_prefix(self, uid: int | None) -> list[str]:
        if uid is None or os.geteuid() != 0:
            return []
        if self._setpriv is not None:
            return [
                self._setpriv,
                f"--reuid={uid}",
                f"--regid={uid}",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--",
            ]
        return [sys.executable, "-I", "-S", "-c", _DROP, str(uid)]

    def _probe(self) -> bool:
        if self._bwrap is None:
            return False
        spaces = self._spaces
        lease = None
        if spaces is not None and self._mode == "drop":
            lease = lease_uid(self._uid_base, run_root=spaces.run_root)
        try:
            prefix = self._drop_prefix(None if lease is None else lease.uid)
            fd = program_fd() if self.seccomp else None
            argv = [*prefix, self._bwrap, *self._base_args(), "--remount-ro", "/dev"]
            argv += [] if fd is None else ["--seccomp", str(fd)]
            argv += ["--remount-ro", "/", "--", "/bin/true"]
            try:
                done = subprocess.run(
                    argv,
                    capture_output=True,
                    timeout=30,
                    env={"PATH": "/usr/bin:/bin"},
                    pass_fds=() if fd is None else (fd,),
                )
            finally:
                if fd is not None:
                    os.close(fd)
        except (OSError, subprocess.TimeoutExpired, SandboxError) as exc:
            log.warning("bubblewrap does not work here: %s", exc)
            return False
        finally:
            if lease is not None:
                lease.release()
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
            HOSTNAME,
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
        generated = self._source(self._etc_dir)
        for name, (target, _text) in ETC_GENERATED.items():
            args += ["--ro-bind", str(generated / name), target]
        for root in self._ro_binds:
            args += ["--ro-bind", str(self._source(root)), str(root)]
        args += ["--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys", "--dev", "/dev"]
        return args

    def create_space(
        self,
        limits: Limits,
        bundle_root: Path,
        inputs: Iterable[str] = (),
        datasets: Mapping[str, Path] | None = None,
    ) -> JobSpace:
        """A new space for a job of ``bundle_root``: its filesystem, a copy of the bundle in ``work``
        (``inputs`` become links into /job/input) and the bundle bound read-only for /job/input.

        The caller owns the space: it runs the job with it, takes the results
        (:meth:`JobSpace.export_results`) and calls :meth:`JobSpace.release`.
        """
        sandboxed = self.sandboxed
        assert self._spaces is not None
        space = self._spaces.create(limits.max_disk_bytes, limits.max_inodes)
        try:
            space.fill_work(bundle_root, inputs, INPUT if sandboxed else str(bundle_root))
            if sandboxed and self._mode == "drop":
                space.attach_input(bundle_root)
            if datasets:
                space.attach_datasets(datasets, bind=sandboxed and self._mode == "drop")
        except BaseException:
            space.release()
            raise
        return space

    def job_folders(self, space: JobSpace) -> dict[str, str]:
        """The job's folders as the job sees them, by the names ``job.args`` placeholders use
        (``marketplace.protocol.bundle.ARG_PLACEHOLDERS``): in the sandbox ``/job/...``, without one
        the host paths of ``space``.
        """
        if self.sandboxed:
            return {
                "input_dir": INPUT,
                "output_dir": OUTPUT,
                "checkpoint_dir": CHECKPOINTS,
                "work_dir": WORK,
                "data_dir": DATA,
            }
        return {
            "data_dir": str(space.data_dir()),
            "input_dir": str(space.bundle),
            "output_dir": str(space.output),
            "checkpoint_dir": str(space.checkpoints),
            "work_dir": str(space.work),
        }

    def argv(self, req: SandboxRequest, seccomp_fd: int | None = None, status_fd: int | None = None) -> list[str]:
        """The command line that runs ``req`` (``setpriv`` first when the job drops to its own uid)."""
        if self._bwrap is None:
            raise SandboxError("sandbox: bubblewrap is not installed")
        space = req.space
        args = [*self._drop_prefix(space.uid), self._bwrap, *self._base_args()]
        if space.mounted:
            args += ["--bind", str(space.tmp), "/tmp", "--bind", str(space.shm), "/dev/shm"]
        else:
            args += ["--size", str(req.limits.tmp_bytes), "--perms", "1777", "--tmpfs", "/tmp"]
            args += ["--size", str(req.limits.shm_bytes), "--perms", "1777", "--tmpfs", "/dev/shm"]
        for root in self._ro_binds:
            if root.is_relative_to("/tmp"):
                # The private /tmp just hid a Python installation that lives under the host's /tmp
                # (a virtual environment in a scratch checkout, say): bind it again on top.
                args += ["--ro-bind", str(self._source(root)), str(root)]
        args += ["--ro-bind", str(self._source(self._sdk_dir)), f"{SDK_ROOT}/marketplace"]
        if space.input_source is not None:
            args += ["--ro-bind", str(space.input_source), INPUT]
        for name, tree in space.data_sources.items():
            args += ["--ro-bind", str(tree), f"{DATA}/{name}"]
        args += ["--bind", str(space.work), WORK]
        args += ["--bind", str(space.output), OUTPUT]
        args += ["--bind", str(space.checkpoints), CHECKPOINTS]
        if req.gpu_indices:
            # The device nodes must be readable and writable by the job's host uid (nvidia's are 0666).
            for dev in (*_GPU_CONTROL, *(f"/dev/nvidia{i}" for i in req.gpu_indices)):
                if os.path.exists(dev):
                    args += ["--dev-bind", dev, dev]
        args += ["--remount-ro", "/dev"]
        if seccomp_fd is not None:
            args += ["--seccomp", str(seccomp_fd)]
        env = self._job_env(req, WORK, INPUT, OUTPUT, CHECKPOINTS, SDK_ROOT)
        env["FLOPEX_DATA_DIR"] = DATA
        for key, value in env.items():
            args += ["--setenv", key, value]
        if req.python is not None:
            env_dir = req.python.parent.parent
            args += ["--ro-bind", str(self._source(env_dir)), str(env_dir)]
        args += ["--remount-ro", "/", "--chdir", WORK]
        args += ["--", *_program(req, f"{WORK}/{req.entrypoint}", f"{SDK_ROOT}/marketplace/launch.py", status_fd)]
        return args

    def tool_argv(
        self,
        command: Sequence[str],
        *,
        writable: Path,
        readable: Sequence[Path] = (),
        network: bool = False,
        env: Mapping[str, str] | None = None,
        tmp_bytes: int = 256 << 20,
        uid: int | None = None,
        seccomp_fd: int | None = None,
    ) -> list[str]:
        """The command line that runs a worker's tool (an environment build) in the sandbox.

        The host is read-only as for a job (``/usr``, the Python installation); ``writable`` is the
        only writable folder (bound at its own path), ``readable`` folders are bound read-only at
        theirs, ``/tmp`` is a private tmpfs of ``tmp_bytes``. Without ``network`` the tool has no
        network at all; with it, the host's network and DNS (resolv.conf, CA certificates). ``uid``
        (a leased host uid, root workers only) is the uid it runs as on the host.
        """
        if self._bwrap is None:
            raise SandboxError("sandbox: bubblewrap is not installed")
        args = [*self._drop_prefix(uid), self._bwrap, *self._base_args()]
        if network:
            args.append("--share-net")
            resolver = self._source(self._etc_dir) / "nsswitch-dns.conf"
            args += ["--ro-bind", str(resolver), "/etc/nsswitch.conf"]
            for name in ("/etc/resolv.conf", "/etc/ssl", "/etc/ca-certificates", "/etc/pki"):
                if os.path.exists(name):
                    args += ["--ro-bind", os.path.realpath(name), name]
        args += ["--size", str(tmp_bytes), "--perms", "1777", "--tmpfs", "/tmp"]
        for root in self._ro_binds:
            if root.is_relative_to("/tmp"):
                args += ["--ro-bind", str(self._source(root)), str(root)]
        for folder in readable:
            args += ["--ro-bind", str(self._source(_real(folder))), str(folder)]
        args += ["--bind", str(writable), str(writable)]
        args += ["--remount-ro", "/dev"]
        if seccomp_fd is not None:
            args += ["--seccomp", str(seccomp_fd)]
        base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(writable), "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
        for key, value in {**base, **(env or {})}.items():
            args += ["--setenv", key, value]
        args += ["--remount-ro", "/", "--chdir", str(writable), "--", *command]
        return args

    @staticmethod
    def _job_env(req: SandboxRequest, work: str, inp: str, out: str, ckpt: str, sdk: str | None) -> dict[str, str]:
        env = {k: v for k, v in req.job_env.items() if not k.startswith("FLOPEX_")}
        env.update({k: v for k, v in req.env.items() if k.startswith("FLOPEX_")})
        env.update(
            {
                "PATH": f"{req.python.parent if req.python is not None else _real(sys.executable).parent}"
                ":/usr/local/bin:/usr/bin:/bin",
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
        # OpenMP threads that wait at a barrier sleep rather than spin (unless the job's env says otherwise).
        for key, value in OMP_WAIT.items():
            env.setdefault(key, value)
        return env

    def start(self, req: SandboxRequest) -> RunningJob:
        """Start ``req``; raise :class:`SandboxError` when it cannot run safely."""
        fds: tuple[int, ...] = ()
        status_r = status_w = None
        if req.steps:
            # The launcher reports which step failed on this pipe (its exit status is the step's).
            status_r, status_w = os.pipe()
        try:
            if self.sandboxed:
                if self.seccomp:
                    fds = (program_fd(),)
                argv = self.argv(req, fds[0] if fds else None, status_w)
            elif self.allow_unsandboxed:
                log.warning("running job %s WITHOUT a sandbox (allow_unsandboxed is set)", req.name)
                launcher = str(self._sdk_dir / "launch.py")
                argv = _program(req, str(req.space.work / req.entrypoint), launcher, status_w)
            else:
                raise SandboxError(
                    "sandbox: bubblewrap is not available; this worker refuses untrusted jobs "
                    "(start it with --unsafe-no-sandbox to run them unconfined)"
                )
            if status_w is not None:
                fds += (status_w,)
            job = RunningJob(self, req, argv, fds, status_r)
            status_r = None
            return job
        finally:
            for fd in fds:
                os.close(fd)
            if status_w is not None and status_w not in fds:
                os.close(status_w)
            if status_r is not None:
                os.close(status_r)


def _program(req: SandboxRequest, entrypoint: str, launcher: str, status_fd: int | None) -> list[str]:
    """The job's command line: ``python -u ENTRYPOINT ARGS``, or the launcher with the job's steps."""
    if not req.steps:
        return [str(req.python or sys.executable), "-u", entrypoint, *req.args]
    status = [] if status_fd is None else ["--status-fd", str(status_fd)]
    plan = plan_args([(step.name, step.nproc, list(step.argv)) for step in req.steps])
    return [str(req.python or sys.executable), "-u", launcher, *status, *plan]


def _write_etc() -> Path:
    """A folder of the files in :data:`ETC_GENERATED`, readable by any uid."""
    folder = Path(tempfile.mkdtemp(prefix="flopex-etc-"))
    folder.chmod(0o755)
    generated = {**{name: text for name, (_target, text) in ETC_GENERATED.items()}, **_ETC_TOOLS}
    for name, text in generated.items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o644)
    return folder


def _close_spaces(spaces: list[Spaces]) -> None:
    for item in spaces:
        with contextlib.suppress(OSError):
            item.close()


class RunningJob:
    """A started job: its output pipes, its watchdog and, once it ends, its :class:`RunOutcome`."""

    def __init__(
        self,
        sandbox: Sandbox,
        req: SandboxRequest,
        argv: list[str],
        pass_fds: tuple[int, ...] = (),
        status_fd: int | None = None,
    ) -> None:
        self.req = req
        self._status_fd = status_fd
        self.space = req.space
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
            space = req.space
            env = Sandbox._job_env(
                req,
                str(space.work),
                str(space.bundle),
                str(space.output),
                str(space.checkpoints),
                str(Path(marketplace.__file__).parent.parent),
            )
            env["FLOPEX_DATA_DIR"] = str(space.data_dir())
            cwd = str(space.work)
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
                pass_fds=pass_fds,
            )
        except OSError as exc:
            os.close(gate_r)
            os.close(gate_w)
            if status_fd is not None:
                os.close(status_fd)
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
            if cgroup is None and (not is_root or req.space.uid is not None):
                # Binds only a job whose host uid is not 0 (it counts every process of that uid).
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

    def _disk_reason(self, final: bool = False) -> str | None:
        """Why the job's space is over its limits, or None."""
        limits = self.req.limits
        try:
            usage = self.space.usage()
        except OSError:
            return None
        if usage.bytes > limits.max_disk_bytes:
            return f"disk limit: the job wrote more than {limits.max_disk_bytes} bytes"
        if usage.inodes > limits.max_inodes:
            return f"inode limit: the job created more than {limits.max_inodes} files"
        if not final:
            return None
        bytes_full, inodes_full = self.space.full()
        if bytes_full:
            return f"disk limit: the job filled its {limits.max_disk_bytes}-byte space"
        if inodes_full:
            return f"inode limit: the job used up its {limits.max_inodes} files"
        apparent = self.space.apparent_result_bytes()
        if apparent > limits.max_disk_bytes:
            return (
                f"disk limit: the job's output and checkpoint files add up to {apparent} bytes "
                f"(sparse files at their full size), more than {limits.max_disk_bytes}"
            )
        return None

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
        next_disk = 0.0
        while not self._done.wait(0.25):
            if self.cgroup is None:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    self._sample_tree()
            now = time.monotonic()
            if now > deadline:
                self.kill(f"timeout: the job ran longer than {limits.timeout_s:g} s")
                return
            if now >= next_disk:
                reason = self._disk_reason()
                if reason is not None:
                    self.kill(reason)
                    return
                # statvfs costs nothing; a walk of a directory space is paced by what it costs.
                next_disk = now + 4 * (time.monotonic() - now)

    def wait(self) -> RunOutcome:
        """Wait for the job's process tree to end; return how it ended and what it used."""
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - self.started
        self._done.set()
        self._watchdog.join(timeout=2)
        code = self.proc.returncode
        peak = int(usage.ru_maxrss) * 1024
        if self._reason is None:
            self._reason = self._disk_reason(final=True)
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
        return RunOutcome(
            exit_code=code,
            reason=reason,
            wall_s=wall,
            cpu_millis=cpu_ms,
            peak_memory_bytes=peak,
            failed_step=self._failed_step(),
        )

    def _failed_step(self) -> str | None:
        """What the launcher reported of the step that failed (``step 2/3 (train)``), or None."""
        fd, self._status_fd = self._status_fd, None
        if fd is None:
            return None
        try:
            os.set_blocking(fd, False)
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                return None
        except OSError:
            return None
        finally:
            os.close(fd)
        try:
            report = json.loads(data.decode("utf-8", "replace").splitlines()[-1])
            index, name = int(report["step"]), str(report["name"])[:64]
        except (ValueError, KeyError, IndexError, TypeError):
            return None
        steps = self.req.steps
        if not 1 <= index <= len(steps) or steps[index - 1].name != name:
            return None
        return f"step {index}/{len(steps)} ({name})"
