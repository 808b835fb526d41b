"""The environment a benchmark ran on, for the ``environment`` field of its JSON, how it prints,
and the worker process a benchmark runs against."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["emit", "environment", "start_worker_process", "worker_process"]

_ROOT = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=_ROOT, capture_output=True, text=True, check=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def environment() -> dict[str, object]:
    """Returns python, numpy, torch, cpu model, cores, platform and git commit of this run."""
    try:
        import numpy

        numpy_version: str | None = numpy.__version__
    except ImportError:
        numpy_version = None
    from importlib import metadata

    try:
        torch_version: str | None = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    return {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "numpy": numpy_version,
        "torch": torch_version,
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
    }


def emit(document: dict[str, object], out: str | None = None) -> None:
    """Print a benchmark's JSON document on stdout and, with ``out``, write it to that file too."""
    text = json.dumps(document, indent=2)
    if out:
        Path(out).write_text(text + "\n")
    print(text)


def start_worker_process(
    data_dir: str | os.PathLike[str],
    leases: str | os.PathLike[str],
    key_file: str | os.PathLike[str],
    market: str,
    *extra_flags: str,
    stderr: int | IO[Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start ``python -m worker.serve`` from the repository on a free loopback port and wait until it serves.

    Returns the process and its ``--print-port`` hello line (``{"port": N, "provider": "0x..."}``);
    the caller stops it (:func:`worker_process` does). ``extra_flags`` follow the data folder,
    leases, key file, market and ``--log-level WARNING``. Raises RuntimeError when the worker exits
    before it serves.
    """
    command = [
        *(sys.executable, "-m", "worker.serve", "--data-dir", str(data_dir), "--leases", str(leases)),
        *("--key-file", str(key_file), "--market", market, "--print-port", "--log-level", "WARNING"),
        *extra_flags,
    ]
    proc = subprocess.Popen(command, cwd=_ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=10)
        proc.stdout.close()
        raise RuntimeError(f"the worker exited with status {proc.returncode} before it served")
    return proc, json.loads(line)


@contextmanager
def worker_process(
    data_dir: str | os.PathLike[str],
    leases: str | os.PathLike[str],
    key_file: str | os.PathLike[str],
    market: str,
    *extra_flags: str,
) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """A worker process (:func:`start_worker_process`) and its hello line, terminated and waited for on exit."""
    proc, hello = start_worker_process(data_dir, leases, key_file, market, *extra_flags)
    try:
        yield proc, hello
    finally:
        stop_process(proc)
        assert proc.stdout is not None
        proc.stdout.close()


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 30.0) -> None:
    """Terminate ``proc`` and wait for it; kill it when it is still running after ``timeout_s``."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
