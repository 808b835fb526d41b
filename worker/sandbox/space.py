"""A job's writable space: one size- and inode-limited filesystem per job, and the host set-up around it.

Everything a sandboxed job may write lives in its :class:`JobSpace`::

    <root>/work                 /job/work (a copy of the bundle; the current directory)
    <root>/result/output        /job/output
    <root>/result/checkpoints   /job/checkpoints
    <root>/result/logs          the job's stdout/stderr, written by the worker (not visible to the job)
                                (the results are these three plus ``work``: the files of the working
                                directory the job created or changed, see :meth:`JobSpace.export_results`)
    <root>/tmp, <root>/shm      /tmp and /dev/shm (when the worker is root)
    <root>/input                the bundle, bound read-only (when the worker is root)

Backends, chosen by :class:`Spaces` from the job's disk limit:

``tmpfs``
    (root) ``mount -t tmpfs -o size=,nr_inodes=``: set up and torn down in a few ms, but its pages
    are RAM (charged to the memory cgroup of whoever first touches them), so only for small limits.
``ext4``
    (root) a sparse image file formatted with ``mkfs.ext4 -m 0 -N inodes`` and loop-mounted: disk,
    not RAM; about 40 ms to create, so for limits above ``tmpfs_max_bytes``.
``dir``
    (not root, or no mounts possible) a plain host directory: no filesystem limit, so the watchdog
    walks it (:func:`walk_usage`) and ``RLIMIT_FSIZE`` bounds each file.

A mounted space's source name is the neutral ``flopex-job`` (tmpfs) or a loop device (ext4), and its
root directory is owned by the job's host uid but carries no ``uid=`` option, so a job's
``/proc/self/mountinfo`` shows neither host paths nor the uid for its own directories.

Mount points live under ``/run/flopex/<tag>`` (``tag`` names the worker process: pid and start
time), images and directory spaces under ``<work_root>/<tag>``. :func:`sweep_stale` removes what a
crashed worker left behind: every mount and directory of a tag whose process is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import itertools
import logging
import os
import re
import secrets
import shutil
import stat
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from marketplace.errors import SandboxError

__all__ = [
    "NEUTRAL_SOURCE",
    "RUN_ROOT",
    "JobSpace",
    "SpaceUsage",
    "Spaces",
    "UidLease",
    "lease_uid",
    "mountpoints_under",
    "probe_mount",
    "reachable_by_others",
    "sweep_stale",
    "walk_usage",
]

log = logging.getLogger(__name__)

RUN_ROOT = Path("/run/flopex")
NEUTRAL_SOURCE = "flopex-job"
JOB_UID_BASE = 2_000_000
"""First host uid of jobs (never 65534: a filesystem may grant ``resuid=65534`` its reserved blocks)."""
_UID_SLOTS = 4096
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND, _MS_REC = 1, 2, 4, 32, 4096, 16384
_MNT_DETACH = 2
_TAG = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_MAX_DEPTH = 128
_MAX_REL_PATH = 1024
_tags = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)


# -- mounts --------------------------------------------------------------------------------------


def _mount(source: str | None, target: Path, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(value: str | None) -> bytes | None:
        return None if value is None else os.fsencode(value)

    if _libc.mount(enc(source), os.fsencode(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"mount {target}: {os.strerror(code)}")


def _umount(target: Path) -> bool:
    """Unmount ``target``, detaching it lazily when it is busy; True when it is gone."""
    if _libc.umount2(os.fsencode(target), 0) == 0:
        return True
    if _libc.umount2(os.fsencode(target), _MNT_DETACH) == 0:
        return True
    code = ctypes.get_errno()
    log.warning("cannot unmount %s: %s", target, os.strerror(code))
    return code == errno.EINVAL  # not a mount point (any more)


def _bind_read_only(source: Path, target: Path) -> None:
    _mount(str(source), target, None, _MS_BIND | _MS_REC)
    try:
        _mount(None, target, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    except OSError:
        _umount(target)
        raise


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mountpoints_under(prefix: Path) -> list[Path]:
    """Mount points at or below ``prefix`` in this process's mount namespace, deepest first."""
    base = os.path.realpath(prefix)
    found: list[Path] = []
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                point = _unescape(line.split()[4])
                if point == base or point.startswith(base.rstrip("/") + "/"):
                    found.append(Path(point))
    except OSError:
        return []
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def _is_mountpoint(path: Path) -> bool:
    real = Path(os.path.realpath(path))
    return real in mountpoints_under(real)


def reachable_by_others(path: Path) -> bool:
    """Whether a uid that neither owns ``path`` nor is in its group can reach and read it."""
    real = Path(os.path.realpath(path))
    try:
        for ancestor in [*reversed(real.parents), real]:
            if not os.stat(ancestor).st_mode & stat.S_IXOTH:
                return False
        return bool(os.stat(real).st_mode & stat.S_IROTH)
    except OSError:
        return False


# -- uids --------------------------------------------------------------------------------------------


@dataclass
class UidLease:
    """A host uid held for one job (an ``flock`` on ``/run/flopex/uids/<uid>``; freed on close or death)."""

    uid: int
    _fd: int

    def release(self) -> None:
        """Give the uid back."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def lease_uid(base: int = JOB_UID_BASE, slots: int = _UID_SLOTS, run_root: Path = RUN_ROOT) -> UidLease:
    """The first uid from ``base`` no other job on this host holds (across worker processes)."""
    folder = run_root / "uids"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for uid in range(base, base + slots):
        fd = os.open(folder / str(uid), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return UidLease(uid, fd)
    raise SandboxError(f"sandbox: all {slots} job uids from {base} are in use")


# -- usage -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpaceUsage:
    """Bytes (allocated blocks) and inodes a job's space holds."""

    bytes: int
    inodes: int


def walk_usage(roots: Iterable[Path]) -> SpaceUsage:
    """Blocks and inodes under ``roots``, walked through directory fds (no path length limit).

    Hard links count once. Files that were unlinked while still open are invisible to a walk: only
    a filesystem of the job's own (``statvfs``) counts them.
    """
    seen: set[tuple[int, int]] = set()
    total = 0
    for root in roots:
        try:
            top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        stack = [top]
        while stack:
            dir_fd = stack.pop()
            try:
                with os.scandir(dir_fd) as entries:
                    for entry in entries:
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        key = (st.st_dev, st.st_ino)
                        if key not in seen:
                            seen.add(key)
                            total += st.st_blocks * 512
                        if stat.S_ISDIR(st.st_mode):
                            with contextlib.suppress(OSError):
                                stack.append(
                                    os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
                                )
            except OSError:
                pass
            finally:
                os.close(dir_fd)
    return SpaceUsage(total, len(seen))


def _apparent_size(root: Path) -> int:
    """Sum of the sizes (``st_size``, holes included) of the regular files under ``root``."""
    total = 0
    try:
        top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return 0
    stack = [top]
    while stack:
        dir_fd = stack.pop()
        try:
            with os.scandir(dir_fd) as entries:
                for entry in entries:
                    with contextlib.suppress(OSError):
                        st = entry.stat(follow_symlinks=False)
                        if stat.S_ISREG(st.st_mode):
                            total += st.st_size
                        elif stat.S_ISDIR(st.st_mode):
                            stack.append(
                                os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
                            )
        except OSError:
            pass
        finally:
            os.close(dir_fd)
    return total


# -- copying out -----------------------------------------------------------------------------------


def _copy_data(src: int, dst: int, size: int) -> None:
    """Copy a file's data extents only (holes stay holes), then set its size."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(src, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            raise
        end = min(os.lseek(src, start, os.SEEK_HOLE), size)
        os.lseek(dst, start, os.SEEK_SET)
        while start < end:
            sent = os.sendfile(dst, src, start, end - start)
            if sent == 0:
                break
            start += sent
        offset = end
    os.ftruncate(dst, size)


def _copy_tree(source: Path, dest: Path, budget: int, keep: Callable[[str, os.stat_result], bool] | None = None) -> int:
    """Copy the directories and regular files under ``source`` to ``dest``; return what was left out.

    The source is the job's: symbolic links, devices, FIFOs and sockets are never copied or
    followed (every open is ``O_NOFOLLOW`` relative to a directory fd), paths deeper than
    ``_MAX_DEPTH`` or longer than ``_MAX_REL_PATH`` are left out, and the copy stops once the
    files' sizes add up to ``budget``. ``keep(path, stat)`` (``path`` relative, with a leading
    ``/``) may pass over entries on purpose: they are neither copied nor counted as left out.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    dest.mkdir(parents=True, exist_ok=True)
    try:
        first = (os.open(source, flags), os.open(dest, flags), "")
    except OSError:
        return 0
    skipped = 0
    stack = [first]
    while stack:
        src_fd, dst_fd, rel = stack.pop()
        try:
            with os.scandir(src_fd) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    path = f"{rel}/{entry.name}"
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        skipped += 1
                        continue
                    if keep is not None and not keep(path, st):
                        continue
                    if len(path) > _MAX_REL_PATH or path.count("/") > _MAX_DEPTH:
                        skipped += 1
                    elif stat.S_ISDIR(st.st_mode):
                        os.mkdir(entry.name, 0o755, dir_fd=dst_fd)
                        stack.append(
                            (os.open(entry.name, flags, dir_fd=src_fd), os.open(entry.name, flags, dir_fd=dst_fd), path)
                        )
                    elif stat.S_ISREG(st.st_mode) and st.st_size <= budget:
                        s = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=src_fd)
                        try:
                            d = os.open(entry.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dst_fd)
                            try:
                                _copy_data(s, d, st.st_size)
                            finally:
                                os.close(d)
                        finally:
                            os.close(s)
                        budget -= st.st_size
                    else:
                        skipped += 1
        finally:
            os.close(src_fd)
            os.close(dst_fd)
    return skipped


def _prune_empty(root: Path) -> None:
    """Remove the empty directories under ``root`` (a tree the worker wrote), ``root`` included."""
    for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda t: t[0].count("/"), reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


# -- the space -------------------------------------------------------------------------------------


class JobSpace:
    """One job's writable space (see the module's docstring); :meth:`release` removes it."""

    def __init__(
        self,
        root: Path,
        backend: str,
        *,
        capacity_bytes: int,
        uid: UidLease | None,
        image: Path | None = None,
    ) -> None:
        self.root = root
        self.backend = backend
        self.capacity_bytes = capacity_bytes
        self._uid = uid
        self._image = image
        self._input: Path | None = None
        self._data: dict[str, Path] = {}
        self._data_mounts: list[Path] = []
        self.bundle: Path | None = None
        self._work_baseline: dict[str, tuple[int, int]] = {}
        self._baseline = SpaceUsage(0, 0)
        self._released = False
        self._lock = threading.Lock()

    @property
    def mounted(self) -> bool:
        """Whether the space is a filesystem of its own (``tmpfs`` or ``ext4``)."""
        return self.backend in ("tmpfs", "ext4")

    @property
    def uid(self) -> int | None:
        """The host uid the job runs as, or None when it runs as the worker's uid."""
        return None if self._uid is None else self._uid.uid

    @property
    def work(self) -> Path:
        """The job's working directory (``/job/work``)."""
        return self.root / "work"

    @property
    def result(self) -> Path:
        """The directory holding ``output``, ``checkpoints`` and ``logs``."""
        return self.root / "result"

    @property
    def output(self) -> Path:
        """``/job/output``."""
        return self.result / "output"

    @property
    def checkpoints(self) -> Path:
        """``/job/checkpoints``."""
        return self.result / "checkpoints"

    @property
    def logs(self) -> Path:
        """Where the worker writes the job's stdout and stderr (not visible to the job)."""
        return self.result / "logs"

    @property
    def tmp(self) -> Path:
        """``/tmp`` of a mounted space."""
        return self.root / "tmp"

    @property
    def shm(self) -> Path:
        """``/dev/shm`` of a mounted space."""
        return self.root / "shm"

    @property
    def input(self) -> Path | None:
        """Where the bundle is bound read-only inside the space, once :meth:`attach_input` did."""
        return self._input

    def _layout(self) -> None:
        dirs = [self.work, self.result, self.output, self.checkpoints, self.logs]
        if self.mounted:
            dirs += [self.tmp, self.shm]
        for path in dirs:
            path.mkdir(mode=0o700 if path != self.logs else 0o755)
            self._give(path)
        if self.mounted:
            self._baseline = self._statvfs()

    def _give(self, path: Path) -> None:
        if self._uid is not None and path != self.logs:
            os.lchown(path, self._uid.uid, self._uid.uid)

    def fill_work(self, bundle_root: Path, inputs: Iterable[str], link_base: str) -> None:
        """Copy the bundle into ``work``, except ``inputs``, which become links into ``link_base``."""
        linked = set(inputs)
        self.bundle = bundle_root
        for dirpath, _dirs, files in os.walk(bundle_root):
            for name in files:
                src = Path(dirpath) / name
                rel = src.relative_to(bundle_root)
                dst = self.work / rel
                for parent in reversed(rel.parents[:-1]):
                    folder = self.work / parent
                    if not folder.exists():
                        folder.mkdir()
                        self._give(folder)
                if rel.as_posix() in linked:
                    dst.symlink_to(f"{link_base}/{rel.as_posix()}")
                else:
                    shutil.copyfile(src, dst)
                self._give(dst)
                st = os.lstat(dst)
                self._work_baseline[f"/{rel.as_posix()}"] = (st.st_size, st.st_mtime_ns)

    def copy_in(self, source: Path, dest: Path) -> None:
        """Copy a host file to ``dest`` (a path inside the space), owned by the job."""
        shutil.copyfile(source, dest)
        self._give(dest)

    def attach_input(self, bundle_root: Path) -> Path:
        """Bind the bundle read-only at ``<root>/input`` (root only); return the directory to bind to /job/input."""
        if self._uid is None:
            return bundle_root
        target = self.root / "input"
        target.mkdir(mode=0o755, exist_ok=True)
        _bind_read_only(bundle_root, target)
        self._input = target
        return target

    def attach_datasets(self, trees: Mapping[str, Path], bind: bool) -> None:
        """Give the job the dataset folders ``trees`` (``name -> folder``), read-only.

        ``bind`` (the job has a uid of its own): each is bound read-only at ``<root>/data/<name>``,
        whence bubblewrap binds it to ``/job/data/<name>``; otherwise the folder is bound as it is.
        Without a sandbox ``<root>/data`` holds links to them (see :attr:`data_dir`).
        """
        for name, tree in sorted(trees.items()):
            if bind and self._uid is not None:
                target = self.root / "data" / name
                target.mkdir(mode=0o755, parents=True, exist_ok=True)
                _bind_read_only(tree, target)
                self._data_mounts.append(target)
                self._data[name] = target
            else:
                self._data[name] = tree

    @property
    def data_sources(self) -> dict[str, Path]:
        """``name -> folder`` to bind read-only at ``/job/data/<name>``."""
        return dict(self._data)

    def data_dir(self) -> Path:
        """A host folder of links to the datasets, for a job run without a sandbox."""
        folder = self.root / "data-links"
        if not folder.exists():
            folder.mkdir(mode=0o755)
            for name, tree in self._data.items():
                (folder / name).symlink_to(tree)
        return folder

    @property
    def input_source(self) -> Path | None:
        """The directory to bind at ``/job/input``: the bound copy when there is one, else the bundle."""
        return self._input if self._input is not None else self.bundle

    def full(self) -> tuple[bool, bool]:
        """Whether a mounted space has (no room for more data, no free inode); never for a directory space."""
        if not self.mounted:
            return False, False
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize < (64 << 10), st.f_favail == 0

    def _statvfs(self) -> SpaceUsage:
        st = os.statvfs(self.root)
        return SpaceUsage((st.f_blocks - st.f_bfree) * st.f_frsize, st.f_files - st.f_ffree)

    def usage(self) -> SpaceUsage:
        """What the job's files hold now: ``statvfs`` of its own filesystem, else a walk of its directories.

        The filesystem's numbers include files at any depth and files unlinked but still open.
        """
        if self.mounted:
            now = self._statvfs()
            return SpaceUsage(max(0, now.bytes - self._baseline.bytes), max(0, now.inodes - self._baseline.inodes))
        return walk_usage([self.work, self.output, self.checkpoints])

    def apparent_result_bytes(self) -> int:
        """The sizes of the job's output and checkpoint files added up, holes included."""
        return _apparent_size(self.output) + _apparent_size(self.checkpoints)

    def _work_changed(self, path: str, st: os.stat_result) -> bool:
        """Whether an entry of the working directory is the job's doing (see :meth:`export_results`)."""
        if stat.S_ISDIR(st.st_mode):
            # Dot-folders the bundle did not bring are caches under $HOME (= the working directory).
            return not (path.count("/") == 1 and path.startswith("/.") and not self._bundle_has_dir(path))
        return self._work_baseline.get(path) != (st.st_size, st.st_mtime_ns)

    def _bundle_has_dir(self, path: str) -> bool:
        return any(known.startswith(path + "/") for known in self._work_baseline)

    def export_results(self, dest: Path) -> int:
        """Move or copy ``output``, ``checkpoints``, ``work`` and ``logs`` into ``dest``; return the entries left out.

        ``work`` holds the files of the working directory the job created or changed (a bundle file
        of the same size and modification time is not copied; dot-folders at its top that the bundle
        did not bring, caches under ``$HOME``, are passed over); it is left out when there are none.
        A mounted space is copied (regular files and directories only, holes kept, at most
        ``capacity_bytes`` in all); a directory space on the same filesystem is renamed.
        """
        dest.mkdir(parents=True, exist_ok=True)
        skipped = 0
        budget = self.capacity_bytes
        for name in ("output", "checkpoints", "logs", "work"):
            source = self.work if name == "work" else self.result / name
            target = dest / name
            shutil.rmtree(target, ignore_errors=True)
            if name == "work":
                skipped += _copy_tree(source, target, budget, keep=self._work_changed)
                _prune_empty(target)
                continue
            if not self.mounted and source.stat().st_dev == dest.stat().st_dev:
                os.rename(source, target)
                continue
            skipped += _copy_tree(source, target, budget)
            budget -= _apparent_size(target)
        if skipped:
            log.warning(
                "space %s: %d entries of the results were left out (links, devices, too deep)", self.root, skipped
            )
        return skipped

    def release(self) -> None:
        """Unmount and remove the space and give its uid back (idempotent)."""
        with self._lock:
            if self._released:
                return
            self._released = True
        clean = True
        if self._input is not None and _is_mountpoint(self._input):
            clean = _umount(self._input)
        for mount in self._data_mounts:
            if _is_mountpoint(mount):
                clean = _umount(mount) and clean
        if self.mounted and _is_mountpoint(self.root):
            clean = _umount(self.root) and clean
        if clean:
            if self.mounted:
                with contextlib.suppress(OSError):
                    shutil.rmtree(self.root)
            else:
                shutil.rmtree(self.root, ignore_errors=True)
        else:
            log.warning("space %s left in place: it could not be unmounted", self.root)
        if self._image is not None:
            self._image.unlink(missing_ok=True)
        if self._uid is not None:
            self._uid.release()


# -- the host side ---------------------------------------------------------------------------------


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _tag_alive(tag: str) -> bool:
    match = _TAG.match(tag)
    if match is None:
        return True  # not ours: leave it alone
    return _start_time(int(match.group(1))) == int(match.group(2))


def _remove_tree(folder: Path) -> bool:
    for point in mountpoints_under(folder):
        _umount(point)
    if mountpoints_under(folder):
        log.warning("stale sandbox directory %s still has mounts; left in place", folder)
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True


def sweep_stale(run_root: Path = RUN_ROOT, work_roots: Iterable[Path] = ()) -> int:
    """Unmount and remove what workers that are gone left under ``run_root`` and ``work_roots``; return the count."""
    removed = 0
    for base in (run_root, *work_roots):
        if not base.is_dir():
            continue
        for folder in base.iterdir():
            if folder.is_dir() and _TAG.match(folder.name) and not _tag_alive(folder.name):
                removed += _remove_tree(folder)
    if removed:
        log.warning("removed %d stale sandbox directories of workers that are gone", removed)
    return removed


class Spaces:
    """Creates :class:`JobSpace` objects for one sandbox, and holds the host set-up they need.

    ``mount`` says whether this process may mount (root with CAP_SYS_ADMIN); ``drop_uid`` whether
    jobs get a uid of their own. ``tmpfs_max_bytes`` is the largest disk limit served by a tmpfs;
    ``backend`` forces one (``tmpfs``, ``ext4``, ``dir``).
    """

    def __init__(
        self,
        *,
        mount: bool,
        drop_uid: bool,
        work_root: Path | None = None,
        run_root: Path = RUN_ROOT,
        tmpfs_max_bytes: int = 256 << 20,
        backend: str = "auto",
        uid_base: int = JOB_UID_BASE,
    ) -> None:
        if backend not in ("auto", "tmpfs", "ext4", "dir"):
            raise ValueError(f"sandbox: unknown space backend {backend!r}")
        self.mount = mount
        self.drop_uid = drop_uid
        self.backend = backend
        self.tmpfs_max_bytes = tmpfs_max_bytes
        self.uid_base = uid_base
        start = _start_time(os.getpid())
        self.tag = f"{os.getpid()}-{start}-{next(_tags)}"
        if work_root is None:
            work_root = Path("/var/tmp/flopex") if os.geteuid() == 0 else Path(f"/var/tmp/flopex-{os.geteuid()}")
        self.work_root = work_root
        self.run_root = run_root
        self.run_dir = run_root / self.tag
        self.data_dir = work_root / self.tag
        self._ro: dict[Path, Path] = {}
        self._spares: dict[tuple[int, int], list[Path]] = {}
        self._formatting: set[tuple[int, int]] = set()
        self._spare_lock = threading.Lock()

    def setup(self) -> None:
        """Create this sandbox's directories (and sweep what dead workers left), once per worker start."""
        for base in (self.run_root, self.work_root):
            base.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                base.chmod(0o711)
        if self.mount or os.geteuid() == 0:
            sweep_stale(self.run_root, [self.work_root])
        for folder in (self.run_dir, self.run_dir / "ro", self.run_dir / "jobs", self.data_dir):
            folder.mkdir(mode=0o711, exist_ok=True)
            folder.chmod(0o711)

    def readable_source(self, path: Path) -> Path:
        """A path the job's uid can bind ``path`` from: itself, or a read-only bind under the run dir.

        bubblewrap resolves bind sources as the job's uid, which cannot pass a 0700 directory such as
        ``/root`` (where pyenv puts Python); binding it once at ``/run/flopex/<tag>/ro/<n>`` gets round it.
        """
        if not self.drop_uid or reachable_by_others(path):
            return path
        with self._spare_lock:
            if path not in self._ro:
                target = self.run_dir / "ro" / str(len(self._ro))
                target.mkdir(mode=0o755, exist_ok=True)
                _bind_read_only(path, target)
                self._ro[path] = target
            return self._ro[path]

    def pick_backend(self, disk_bytes: int) -> str:
        """The backend a space with this disk limit gets."""
        if not self.mount:
            return "dir"
        if self.backend != "auto":
            return self.backend
        return "tmpfs" if disk_bytes <= self.tmpfs_max_bytes else "ext4"

    def create(self, disk_bytes: int, inodes: int) -> JobSpace:
        """A new, empty space for a job that may hold ``disk_bytes`` in ``inodes`` files."""
        backend = self.pick_backend(disk_bytes)
        headroom = max(4 << 20, disk_bytes // 32)  # logs, directories; the watchdog kills past the limit
        capacity = disk_bytes + headroom
        uid = lease_uid(self.uid_base, run_root=self.run_root) if self.drop_uid else None
        name = secrets.token_hex(12)
        image: Path | None = None
        if backend == "dir":
            root = self.data_dir / name
        else:
            root = self.run_dir / "jobs" / name
        space: JobSpace | None = None
        try:
            root.mkdir(mode=0o700)
            if backend == "tmpfs":
                options = f"size={capacity},nr_inodes={inodes + 64},mode=0700"
                _mount(NEUTRAL_SOURCE, root, "tmpfs", _MS_NOSUID | _MS_NODEV, options)
            elif backend == "ext4":
                image = self._ext4_image((capacity + 256 * inodes + capacity // 50, inodes + 320 + inodes // 100))
                done = subprocess.run(
                    ["mount", "-o", "loop,nosuid,nodev,noatime", str(image), str(root)], capture_output=True, text=True
                )
                if done.returncode != 0:
                    raise OSError(f"mount {image}: {done.stderr.strip()}")
                with contextlib.suppress(OSError):
                    (root / "lost+found").rmdir()
            os.chmod(root, 0o700)
            if uid is not None:
                os.chown(root, uid.uid, uid.uid)
            space = JobSpace(root, backend, capacity_bytes=capacity, uid=uid, image=image)
            space._layout()
        except BaseException as exc:
            if space is None:
                space = JobSpace(root, backend, capacity_bytes=capacity, uid=uid, image=image)
            space.release()
            if isinstance(exc, OSError | subprocess.SubprocessError):
                raise SandboxError(f"sandbox: cannot create the job's {backend} space: {exc}") from None
            raise
        return space

    def _ext4_image(self, key: tuple[int, int]) -> Path:
        """A freshly formatted image of ``key`` = (bytes, inodes): a spare formatted ahead, or a new one.

        mkfs is most of an ext4 space's set-up time, so after each use a spare of the same shape
        is formatted in the background for the next job.
        """
        with self._spare_lock:
            spares = self._spares.get(key, [])
            image = spares.pop() if spares else None
        if image is None:
            image = self.data_dir / f"{secrets.token_hex(12)}.img"
            self._format_ext4(image, *key)
        with self._spare_lock:
            if key not in self._formatting and not self._spares.get(key):
                self._formatting.add(key)
                threading.Thread(target=self._format_spare, args=(key,), name="ext4-spare", daemon=True).start()
        return image

    def _format_spare(self, key: tuple[int, int]) -> None:
        image = self.data_dir / f"spare-{secrets.token_hex(12)}.img"
        try:
            self._format_ext4(image, *key)
        except OSError as exc:
            log.info("no spare ext4 image: %s", exc)
            image.unlink(missing_ok=True)
            return
        finally:
            with self._spare_lock:
                self._formatting.discard(key)
        with self._spare_lock:
            self._spares.setdefault(key, []).append(image)

    @staticmethod
    def _format_ext4(image: Path, size: int, inodes: int, owner: int = 0) -> None:
        with open(image, "wb") as fh:
            fh.truncate(size)
        done = subprocess.run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-m",
                "0",
                "-N",
                str(inodes),
                "-O",
                "^has_journal",
                "-E",
                f"root_owner={owner}:{owner},lazy_itable_init=1,nodiscard",
                str(image),
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise OSError(f"mkfs.ext4: {done.stderr.strip()}")

    def close(self) -> None:
        """Unmount the read-only binds and remove this sandbox's directories (spare images included)."""
        with self._spare_lock:
            self._spares.clear()
        for target in self._ro.values():
            _umount(target)
        self._ro.clear()
        for folder in (self.run_dir, self.data_dir):
            if folder.exists():
                _remove_tree(folder)


def probe_mount(folder: Path) -> bool:
    """Whether this process can mount a tmpfs (root with CAP_SYS_ADMIN in the host's mount namespace)."""
    if os.geteuid() != 0:
        return False
    target = folder / f"probe-{secrets.token_hex(4)}"
    try:
        target.mkdir(mode=0o700)
    except OSError:
        return False
    try:
        _mount(NEUTRAL_SOURCE, target, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=4096,nr_inodes=16")
    except OSError as exc:
        log.warning("the worker cannot mount filesystems (%s): job spaces are plain directories", exc)
        with contextlib.suppress(OSError):
            target.rmdir()
        return False
    _umount(target)
    with contextlib.suppress(OSError):
        target.rmdir()
    return True
