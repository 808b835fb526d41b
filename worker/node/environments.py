"""The provider's cache of declared environments: built once with uv, in the sandbox, over its own torch.

A bundle may declare packages (``[environment]`` in job.toml, see
:mod:`marketplace.protocol.environment`). The worker builds them into a virtual environment with
`uv <https://docs.astral.sh/uv/>`_ and runs the job with that environment's interpreter:

- **Content-addressed.** An environment's key is the sha256 of its dependency files' bytes (the
  requirements file, or the pyproject.toml and uv.lock), the Python version that runs jobs, the
  provider's torch version and the build rules (:data:`BUILD_VERSION`, wheels only or not). The
  same declaration on the same provider always maps to the same folder; a verifier computes the
  same key and builds the same environment on its side.
- **Layered over the provider's torch.** The venv is made from the Python that runs the worker, and
  a ``.pth`` file adds the worker's own site-packages *after* the environment's: the job imports
  the provider's torch (whose CUDA build matches the driver) and everything else the worker has,
  unless the environment installs its own version of a package. torch is never installed: it is
  excluded from resolution (``uv pip install --excludes``), and a torch range the provider's torch
  does not satisfy is refused before anything is built.
- **Wheels only** by default (``--only-binary :all:``): no package's build script runs.
- **Sandboxed.** uv runs in bubblewrap with the host read-only, the build folder the only writable
  place, a private /tmp, and network only when the provider configured a package index; a local
  wheelhouse (``find_links``) is bound read-only. The build has a time limit and a size limit.
- **Atomic.** A build happens in a scratch folder and is renamed into place with its metadata once
  complete; a failed or killed build leaves nothing behind. One lock file per key serializes
  builders (threads and processes alike) and is held shared by every job using the environment.
- **LRU.** After each build, environments not used for longest are removed until the cache fits
  ``max_cache_bytes``; an environment in use is never removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import secrets
import shutil
import site
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from marketplace.errors import WorkerError
from marketplace.protocol.bundle import Bundle
from marketplace.protocol.environment import PROVIDED, EnvironmentSection, serves
from worker.sandbox.runner import Sandbox
from worker.sandbox.seccomp import program_fd
from worker.sandbox.space import _MS_BIND, _mount, _umount, lease_uid, reachable_by_others

__all__ = [
    "BUILD_VERSION",
    "DEFAULT_PACKAGE_INDEX",
    "Environment",
    "EnvironmentBuildError",
    "EnvironmentCache",
    "EnvironmentSettings",
    "environment_key",
    "needs_environment",
    "provider_versions",
]

log = logging.getLogger(__name__)

BUILD_VERSION = "flopex-env-v1"
"""Part of every key: changes when the way environments are built changes."""
DEFAULT_PACKAGE_INDEX = "https://pypi.org/simple"
"""uv's default index (PyPI)."""
META = ".flopex-env.json"
"""Written last into a complete environment: its key, versions, size and build time."""


_NETWORK_ENV = (
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "https_proxy",
    "http_proxy",
    "all_proxy",
    "no_proxy",
)
"""The worker's variables a build with network keeps: where certificates are, and its proxy."""


class EnvironmentBuildError(WorkerError):
    """An environment cannot be built or served; the message is one line for the requester."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="FAILED_PRECONDITION")


def needs_environment(bundle: Bundle) -> bool:
    """Whether a bundle declares packages or a Python or torch range (and so goes through the cache)."""
    spec = bundle.spec
    return spec.environment.declared or bool(spec.resources.python) or bool(bundle.torch_ranges)


def provider_versions() -> tuple[str, str]:
    """The Python and torch versions this process offers jobs (torch ``""`` when it has none)."""
    from importlib import metadata

    try:  # the installed distribution's version, as GetInfo reports it (no import of torch itself)
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = ""
    return platform.python_version(), torch_version


@dataclass(frozen=True, slots=True)
class EnvironmentSettings:
    """What a provider configures: where environments live, where packages come from, the limits.

    ``package_index`` is the only host a build may reach (None: no network at all); ``find_links``
    are local folders of wheels. ``only_binary`` False lets packages build from source (their
    build scripts run, sandboxed).
    """

    root: Path
    package_index: str | None = DEFAULT_PACKAGE_INDEX
    find_links: tuple[Path, ...] = ()
    only_binary: bool = True
    max_cache_bytes: int = 20 << 30
    max_env_bytes: int = 4 << 30
    build_timeout_s: float = 900.0
    tmp_bytes: int = 1 << 30


@dataclass(frozen=True, slots=True)
class Environment:
    """A complete environment: its key, folder, interpreter and what building it took (0 when cached)."""

    key: str
    path: Path
    build_s: float
    cached: bool

    @property
    def python(self) -> Path:
        """The environment's interpreter (the one jobs run)."""
        return self.path / "bin" / "python"


def environment_key(
    section: EnvironmentSection, files: Mapping[str, bytes], python: str, torch: str, *, only_binary: bool
) -> str:
    """The hex sha256 naming the environment of these dependency files on this Python and torch."""
    h = hashlib.sha256(f"{BUILD_VERSION}\0python={python}\0torch={torch}\0only_binary={only_binary}\0".encode())
    kind = "requirements" if section.requirements is not None else "lock"
    h.update(kind.encode() + b"\0")
    for name in section.files:
        data = files[name]
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


def _tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.lchown(path, uid, gid)
    for dirpath, dirs, names in os.walk(path):
        for name in [*dirs, *names]:
            os.lchown(os.path.join(dirpath, name), uid, gid)


class EnvironmentCache:
    """Builds, caches and evicts environments under ``settings.root`` (see the module docstring).

    ``sandbox`` runs the builds; a sandbox without bubblewrap builds unconfined only when it allows
    unsandboxed jobs (tests, ``--unsafe-no-sandbox``), and refuses otherwise.
    """

    def __init__(self, settings: EnvironmentSettings, sandbox: Sandbox) -> None:
        self.settings = settings
        self.sandbox = sandbox
        self.python, self.torch = provider_versions()
        self.envs = settings.root / "envs"
        self.building = settings.root / "building"
        self.locks = settings.root / "locks"
        for folder in (self.envs, self.building, self.locks):
            folder.mkdir(parents=True, exist_ok=True)
        settings.root.chmod(0o755)
        self.envs.chmod(0o755)
        self.building.chmod(0o755)
        for stale in self.building.iterdir():  # what a killed build left
            shutil.rmtree(stale, ignore_errors=True)
        self._evict_lock = threading.Lock()

    # -- what a bundle needs ------------------------------------------------------------------

    def refusal(self, bundle: Bundle) -> str | None:
        """Why this provider cannot serve the bundle's Python and torch ranges, or None."""
        return serves(self.python, self.torch, bundle.spec.resources.python, bundle.torch_ranges)

    def key_of(self, bundle: Bundle) -> str | None:
        """The bundle's environment key, or None when it declares no packages."""
        section = bundle.spec.environment
        if not section.declared:
            return None
        files = {name: (bundle.root / name).read_bytes() for name in section.files}
        return environment_key(section, files, self.python, self.torch, only_binary=self.settings.only_binary)

    # -- use ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def use(self, bundle: Bundle) -> Iterator[Environment | None]:
        """The bundle's environment, built first if need be, held (never evicted) until the block ends.

        None when the bundle declares no packages. Raises :class:`EnvironmentBuildError` with one
        line when it cannot be served or built.
        """
        why = self.refusal(bundle)
        if why is not None:
            raise EnvironmentBuildError(f"environment: this provider cannot run the bundle: it {why}")
        key = self.key_of(bundle)
        if key is None:
            yield None
            return
        fd = os.open(self.locks / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            env = self._acquire(fd, key, bundle)
            yield env
        finally:
            os.close(fd)

    def _acquire(self, fd: int, key: str, bundle: Bundle) -> Environment:
        while True:
            fcntl.flock(fd, fcntl.LOCK_EX)
            built: Environment | None = None
            if not (self.envs / key / META).exists():
                built = self._build(key, bundle)
            fcntl.flock(fd, fcntl.LOCK_SH)
            meta = self.envs / key / META
            if meta.exists():  # an evicter may have slipped in while the lock was converted
                os.utime(meta)
                if built is not None:
                    threading.Thread(target=self.evict, args=(key,), name="env-evict", daemon=True).start()
                    return built
                return Environment(key, self.envs / key, 0.0, True)

    def entries(self) -> list[tuple[str, int, float]]:
        """Each complete environment: (key, bytes, last use as a timestamp), least recently used first."""
        found = []
        for folder in self.envs.iterdir():
            meta = folder / META
            try:
                size = int(json.loads(meta.read_text())["bytes"])
                found.append((folder.name, size, meta.stat().st_mtime))
            except (OSError, ValueError, KeyError):
                continue
        return sorted(found, key=lambda item: item[2])

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used environments until the cache fits; return the keys removed."""
        removed: list[str] = []
        with self._evict_lock:
            entries = self.entries()
            total = sum(size for _key, size, _used in entries)
            for key, size, _used in entries:
                if total <= self.settings.max_cache_bytes:
                    break
                if key == keep:
                    continue
                fd = os.open(self.locks / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # in use (or being built)
                    doomed = self.building / f"evicted-{key}-{secrets.token_hex(4)}"
                    os.rename(self.envs / key, doomed)
                    shutil.rmtree(doomed, ignore_errors=True)
                    total -= size
                    removed.append(key)
                    log.info("environment %s evicted (%d bytes)", key[:12], size)
                finally:
                    os.close(fd)
        return removed

    # -- build --------------------------------------------------------------------------------

    def _build(self, key: str, bundle: Bundle) -> Environment:
        section = bundle.spec.environment
        started = time.monotonic()
        scratch = self.building / f"{key}-{secrets.token_hex(4)}"
        scratch.mkdir(mode=0o755)
        try:
            spec_dir = scratch / "spec"
            spec_dir.mkdir()
            for name in section.files:
                shutil.copyfile(bundle.root / name, spec_dir / Path(name).name)
            (scratch / "excludes.txt").write_text("".join(f"{name}\n" for name in sorted(PROVIDED)))
            self._run_uv(scratch, section)
            env = scratch / "env"
            self._layer(env)
            size = _tree_bytes(env)
            if size > self.settings.max_env_bytes:
                raise EnvironmentBuildError(
                    f"environment: {size} bytes installed, more than this provider's limit of "
                    f"{self.settings.max_env_bytes}"
                )
            build_s = time.monotonic() - started
            meta = {
                "key": key,
                "python": self.python,
                "torch": self.torch,
                "files": list(section.files),
                "bytes": size,
                "build_s": round(build_s, 3),
                "built": time.time(),
            }
            (env / META).write_text(json.dumps(meta, indent=1))
            os.rename(env, self.envs / key)
            log.info("environment %s built in %.1f s (%d bytes)", key[:12], build_s, size)
            return Environment(key, self.envs / key, build_s, False)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _uv_commands(self, scratch: Path, section: EnvironmentSection) -> list[list[str]]:
        from uv import find_uv_bin

        uv = os.path.realpath(find_uv_bin())
        env = str(scratch / "env")
        python = os.path.realpath(sys.executable)
        source: list[str] = []
        if self.settings.package_index is not None:
            source += ["--index-url", self.settings.package_index]
        else:
            source.append("--no-index")
        for folder in self.settings.find_links:
            source += ["--find-links", str(folder)]
        binary = ["--only-binary", ":all:"] if self.settings.only_binary else []
        commands = [[uv, "venv", "--quiet", "--no-project", "--python", python, env]]
        requirements = str(scratch / "spec" / Path(section.requirements or "requirements.txt").name)
        deps: list[str] = []
        if section.lock is not None:
            # A lock is fully resolved: export it to pinned requirements and install exactly those.
            requirements = str(scratch / "locked.txt")
            deps = ["--no-deps"]
            commands.append(
                [
                    uv,
                    "export",
                    "--quiet",
                    "--frozen",
                    "--no-hashes",
                    "--no-emit-project",
                    "--no-header",
                    "--format",
                    "requirements.txt",
                    "--project",
                    str(scratch / "spec"),
                    "--output-file",
                    requirements,
                ]
            )
        commands.append(
            [
                uv,
                "pip",
                "install",
                "--quiet",
                "--python",
                f"{env}/bin/python",
                *binary,
                *source,
                *deps,
                "--excludes",
                str(scratch / "excludes.txt"),
                "--requirements",
                requirements,
            ]
        )
        return commands

    def _run_uv(self, scratch: Path, section: EnvironmentSection) -> None:
        commands = self._uv_commands(scratch, section)
        script = " && ".join(" ".join(_quote(word) for word in command) for command in commands)
        tool_env = {
            "UV_CACHE_DIR": "/tmp/uv-cache",
            "UV_PYTHON_DOWNLOADS": "never",
            "UV_NO_CONFIG": "1",
            "UV_LINK_MODE": "copy",
            "UV_NO_PROGRESS": "1",
        }
        if self.settings.package_index is not None:
            # The host's certificate store (bound read-only) and proxy settings reach the index.
            tool_env["UV_SYSTEM_CERTS"] = "1"
            for name in _NETWORK_ENV:
                if name in os.environ:
                    tool_env[name] = os.environ[name]
        uid = None
        lease = None
        bound: Path | None = None
        fds: tuple[int, ...] = ()
        if self.sandbox.sandboxed:
            spaces = self.sandbox._spaces
            if self.sandbox.mode == "drop" and spaces is not None:
                lease = lease_uid(spaces.uid_base, run_root=spaces.run_root)
                uid = lease.uid
                _chown_tree(scratch, uid, uid)
                if not reachable_by_others(scratch):
                    # bubblewrap resolves binds as the build's uid: give it a path it can reach.
                    bound = spaces.run_dir / f"env-build-{scratch.name}"
                    bound.mkdir(mode=0o755)
                    _mount(str(scratch), bound, None, _MS_BIND)
                    script = script.replace(str(scratch), str(bound))
            if self.sandbox.seccomp:
                fds = (program_fd(),)
            argv = self.sandbox.tool_argv(
                ["/bin/sh", "-c", script],
                writable=bound or scratch,
                readable=self.settings.find_links,
                network=self.settings.package_index is not None,
                env=tool_env,
                tmp_bytes=self.settings.tmp_bytes,
                uid=uid,
                seccomp_fd=fds[0] if fds else None,
            )
            run_env = {"PATH": "/usr/bin:/bin"}
        elif self.sandbox.allow_unsandboxed:
            log.warning("building an environment WITHOUT a sandbox (allow_unsandboxed is set)")
            argv = ["/bin/sh", "-c", script]
            run_env = {
                "PATH": "/usr/bin:/bin",
                "HOME": str(scratch),
                **tool_env,
                "UV_CACHE_DIR": str(scratch / "cache"),
            }
        else:
            raise EnvironmentBuildError("environment: bubblewrap is not available here, so no environment is built")
        try:
            self._supervise(argv, run_env, scratch, fds)
        finally:
            for fd in fds:
                os.close(fd)
            if bound is not None:
                _umount(bound)
                with contextlib.suppress(OSError):
                    bound.rmdir()
            if lease is not None:
                _chown_tree(scratch, 0, 0)
                lease.release()

    def _supervise(self, argv: list[str], env: dict[str, str], scratch: Path, fds: tuple[int, ...]) -> None:
        limit = self.settings.max_env_bytes
        deadline = time.monotonic() + self.settings.build_timeout_s
        with open(scratch / "build.log", "wb") as log_file:
            proc = subprocess.Popen(
                argv, stdout=log_file, stderr=subprocess.STDOUT, env=env, pass_fds=fds, start_new_session=True
            )
            reason = None
            next_walk = 0.0
            while proc.poll() is None:
                time.sleep(0.2)
                now = time.monotonic()
                if now > deadline:
                    reason = f"took longer than {self.settings.build_timeout_s:g} s"
                elif now >= next_walk:
                    if _tree_bytes(scratch) > limit + (64 << 20):
                        reason = f"wrote more than this provider's limit of {limit} bytes"
                    # A walk of a large environment costs: pace the next one by what this one took.
                    next_walk = now + 4 * (time.monotonic() - now)
                if reason is not None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, 9)
                    proc.wait()
                    raise EnvironmentBuildError(f"environment: the build {reason}")
        if proc.returncode != 0:
            text = (scratch / "build.log").read_text(errors="replace")
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            detail = " / ".join(lines[-3:])[-400:] or f"exit status {proc.returncode}"
            raise EnvironmentBuildError(f"environment: uv could not install the packages: {detail}")

    def _layer(self, env: Path) -> None:
        """Add the worker's own site-packages after the environment's; check no torch was installed."""
        found = sorted(env.glob("lib/python*/site-packages"))
        if len(found) != 1:
            raise EnvironmentBuildError("environment: the build made no site-packages folder")
        own = found[0]
        for name in PROVIDED:
            if (own / name).exists():
                raise EnvironmentBuildError(f"environment: {name} was installed into the environment; it is refused")
        lines = [f"import site; site.addsitedir({os.path.realpath(path)!r})\n" for path in site.getsitepackages()]
        (own / "_flopex_provider.pth").write_text("".join(lines))


def _quote(word: str) -> str:
    import shlex

    return shlex.quote(word)
