"""Control groups for a job's process tree, where the host lets the worker create them.

A job's cgroup caps its memory and number of processes and reports its peak memory and whether
the kernel's OOM killer struck. Both layouts are handled: cgroup v2 (one unified tree) and v1
(one tree per controller). Creating cgroups needs write access to the worker's own cgroup —
root on most hosts, or a delegated subtree under systemd. :func:`JobCgroup.create` returns None
when that is not possible; the sandbox then falls back to rlimits (see docs/security.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

__all__ = ["JobCgroup"]

log = logging.getLogger(__name__)

_ROOT = Path("/sys/fs/cgroup")


def _own_paths() -> dict[str, str]:
    """Map each controller (``""`` for v2) to this process's cgroup path."""
    paths: dict[str, str] = {}
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return paths
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(","):
            paths[controller] = parts[2]
    return paths


class JobCgroup:
    """The cgroup(s) of one job: memory and pids limits, peak memory, OOM events, kill-all."""

    def __init__(self, dirs: dict[str, Path], unified: bool) -> None:
        self._dirs = dirs
        self._unified = unified

    @classmethod
    def create(cls, name: str, *, memory_bytes: int | None, max_pids: int | None) -> JobCgroup | None:
        """Create a cgroup named ``name`` under the worker's own, with the limits; None if not possible."""
        own = _own_paths()
        try:
            if (_ROOT / "cgroup.controllers").exists():
                return cls._create_v2(own.get("", "/"), name, memory_bytes, max_pids)
            return cls._create_v1(own, name, memory_bytes, max_pids)
        except OSError as exc:
            log.info("cgroups unavailable (%s); the sandbox uses rlimits only", exc)
            return None

    @classmethod
    def _create_v2(cls, own: str, name: str, memory_bytes: int | None, max_pids: int | None) -> JobCgroup | None:
        parent = _ROOT / own.lstrip("/")
        enabled = set((parent / "cgroup.subtree_control").read_text().split())
        wanted = {"memory", "pids"} - enabled
        if wanted:
            (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in sorted(wanted)))
        path = parent / name
        path.mkdir()
        group = cls({"memory": path, "pids": path}, unified=True)
        if memory_bytes is not None:
            (path / "memory.max").write_text(str(memory_bytes))
            with contextlib.suppress(OSError):
                (path / "memory.swap.max").write_text("0")
        if max_pids is not None:
            (path / "pids.max").write_text(str(max_pids))
        return group

    @classmethod
    def _create_v1(
        cls, own: dict[str, str], name: str, memory_bytes: int | None, max_pids: int | None
    ) -> JobCgroup | None:
        dirs: dict[str, Path] = {}
        try:
            for controller in ("memory", "pids"):
                mount = _ROOT / controller
                if not mount.is_dir() or controller not in own:
                    raise OSError(f"cgroup v1 controller {controller} is not mounted")
                path = mount / own[controller].lstrip("/") / name
                path.mkdir()
                dirs[controller] = path
            if memory_bytes is not None:
                (dirs["memory"] / "memory.limit_in_bytes").write_text(str(memory_bytes))
                with contextlib.suppress(OSError):
                    (dirs["memory"] / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
            if max_pids is not None:
                (dirs["pids"] / "pids.max").write_text(str(max_pids))
            for mount_name in ("cpuacct", "cpu,cpuacct"):
                mount = _ROOT / mount_name
                if (mount / "cpuacct.usage").exists() and "cpuacct" in own:
                    with contextlib.suppress(OSError):
                        path = mount / own["cpuacct"].lstrip("/") / name
                        path.mkdir()
                        dirs["cpuacct"] = path
                    break
        except OSError:
            for path in dirs.values():
                with contextlib.suppress(OSError):
                    path.rmdir()
            raise
        return cls(dirs, unified=False)

    def add(self, pid: int) -> None:
        """Move process ``pid`` (and so all its future children) into the cgroup."""
        for path in {p for p in self._dirs.values()}:
            (path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        """The processes in the cgroup now."""
        found: set[int] = set()
        for path in self._dirs.values():
            with contextlib.suppress(OSError):
                found.update(int(x) for x in (path / "cgroup.procs").read_text().split())
        return sorted(found)

    def cpu_millis(self) -> int | None:
        """CPU time (user + system) the cgroup's processes used, in milliseconds, when known."""
        try:
            if self._unified:
                for line in (self._dirs["memory"] / "cpu.stat").read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "usage_usec":
                        return int(value) // 1000
                return None
            if "cpuacct" in self._dirs:
                return int((self._dirs["cpuacct"] / "cpuacct.usage").read_text()) // 1_000_000
        except (OSError, ValueError):
            return None
        return None

    def peak_memory(self) -> int | None:
        """Peak memory use of the tree in bytes, when the kernel reports it."""
        path = self._dirs["memory"]
        name = "memory.peak" if self._unified else "memory.max_usage_in_bytes"
        try:
            return int((path / name).read_text().strip())
        except (OSError, ValueError):
            return None

    def oom_killed(self) -> bool:
        """Whether the OOM killer killed a process of the cgroup."""
        path = self._dirs["memory"]
        try:
            if self._unified:
                text = (path / "memory.events").read_text()
            else:
                text = (path / "memory.oom_control").read_text()
                if "oom_kill " not in text:
                    return int((path / "memory.failcnt").read_text()) > 0
        except (OSError, ValueError):
            return False
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and int(value) > 0:
                return True
        return False

    def kill_all(self, timeout_s: float = 5.0) -> None:
        """SIGKILL every process of the cgroup until it is empty (or ``timeout_s`` passes)."""
        if self._unified:
            with contextlib.suppress(OSError):
                (self._dirs["pids"] / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + timeout_s
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)

    def remove(self) -> None:
        """Kill what is left and remove the cgroup directories."""
        self.kill_all()
        for path in {p for p in self._dirs.values()}:
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
