"""Re-running (part of) a job in the sandbox for a verifier: one replay segment, the tail, or all of it.

A verifier holds a job's bundle (checked against the bundle hash on chain) and its committed
results. :func:`run_replay` runs the job's entrypoint in the same bubblewrap sandbox a worker uses,
with the job's seed and:

- ``start_step`` given: the committed checkpoint of that step is copied into the fresh checkpoint
  directory and ``FLOPEX_REPLAY_FROM`` names it (the SDK's ``resume``);
- ``until_step`` given: ``FLOPEX_REPLAY_UNTIL`` makes the SDK end the run right after writing that
  step's checkpoint; without it the job runs to its end and writes its outputs.

Neither given is a full re-run. The run is timed; its checkpoints and outputs are left in the
replay's directory for the caller to compare.

A bundle that declares an environment runs with the environment of the same key
(:mod:`worker.node.environments`), built in the verifier's own cache from the same files: the
``environments`` cache must be given for one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from marketplace.protocol.bundle import expand_args, launcher_steps, load_bundle
from marketplace.sdk import REPLAY_FROM, REPLAY_UNTIL, checkpoint_name
from worker.node.environments import EnvironmentBuildError, EnvironmentCache, needs_environment
from worker.sandbox.runner import Limits, Sandbox, SandboxRequest

__all__ = ["ReplayRun", "run_replay"]


@dataclass(frozen=True, slots=True)
class ReplayRun:
    """A finished replay: its directory, how it ended and how long it took."""

    directory: Path
    exit_code: int
    reason: str | None
    wall_s: float

    @property
    def ok(self) -> bool:
        """True when the run ended normally."""
        return self.exit_code == 0 and self.reason is None

    @property
    def output_dir(self) -> Path:
        """What the run wrote to ``FLOPEX_OUTPUT_DIR``."""
        return self.directory / "output"

    @property
    def checkpoint_dir(self) -> Path:
        """What the run wrote to ``FLOPEX_CHECKPOINT_DIR``."""
        return self.directory / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        """The checkpoint file the run wrote for ``step``."""
        return self.checkpoint_dir / checkpoint_name(step)

    def log(self) -> str:
        """The run's standard error (the end of it), for error messages."""
        path = self.directory / "logs" / "stderr.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def _drain(pipe: IO[bytes], path: Path) -> None:
    with open(path, "wb") as sink:
        for block in iter(lambda: pipe.read(1 << 16), b""):
            sink.write(block)


def run_replay(
    sandbox: Sandbox,
    bundle_dir: Path,
    directory: Path,
    *,
    seed: int,
    job_id: int = 0,
    start_step: int | None = None,
    start_checkpoint: Path | None = None,
    until_step: int | None = None,
    limits: Limits | None = None,
    threads: int | None = None,
    datasets: Mapping[str, Path] | None = None,
    environments: EnvironmentCache | None = None,
) -> ReplayRun:
    """Run the job of ``bundle_dir`` in ``directory`` (created fresh) and wait for it to end.

    The datasets the job reads (``job.datasets``) are ``datasets`` (name -> folder), by default the
    folders ``<bundle_dir>/../datasets/<name>`` the verifier fetched them to (checked by hash).

    Raises :class:`EnvironmentBuildError` when the bundle's environment cannot be built here.
    """
    bundle = load_bundle(bundle_dir)
    if needs_environment(bundle):
        if environments is None:
            raise EnvironmentBuildError("environment: the bundle declares one and this replay has no environment cache")
        held: contextlib.AbstractContextManager[object] = environments.use(bundle)
    else:
        held = contextlib.nullcontext()
    with held as environment:
        python = getattr(environment, "python", None)
        return _run(
            sandbox,
            bundle_dir,
            directory,
            python,
            seed,
            job_id,
            start_step,
            start_checkpoint,
            until_step,
            limits,
            threads,
            datasets,
        )


def _run(
    sandbox: Sandbox,
    bundle_dir: Path,
    directory: Path,
    python: Path | None,
    seed: int,
    job_id: int,
    start_step: int | None,
    start_checkpoint: Path | None,
    until_step: int | None,
    limits: Limits | None,
    threads: int | None,
    datasets: Mapping[str, Path] | None,
) -> ReplayRun:
    bundle = load_bundle(bundle_dir)
    if datasets is None:
        datasets = {name: Path(bundle_dir).parent / "datasets" / name for name, _ in bundle.spec.job.datasets}
    shutil.rmtree(directory, ignore_errors=True)
    env = {"FLOPEX_SEED": str(seed), "FLOPEX_JOB_ID": str(job_id)}
    if start_step is not None and start_checkpoint is None:
        raise ValueError("replay: a start step needs its committed checkpoint")
    if start_step is not None:
        env[REPLAY_FROM] = str(start_step)
    if until_step is not None:
        env[REPLAY_UNTIL] = str(until_step)
    count = str(threads or max(1, os.cpu_count() or 1))
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = count
    given = limits or Limits()
    capped = replace(given, timeout_s=min(float(bundle.spec.resources.timeout_s), given.timeout_s))
    space = sandbox.create_space(capped, bundle.root, bundle.spec.job.inputs, datasets)
    try:
        if start_step is not None and start_checkpoint is not None:
            space.copy_in(start_checkpoint, space.checkpoints / checkpoint_name(start_step))
        req = SandboxRequest(
            name=f"replay{job_id}-{os.getpid()}-{time.monotonic_ns()}",
            space=space,
            entrypoint=bundle.spec.job.entrypoint,
            args=expand_args(bundle.spec.job.args, sandbox.job_folders(space)),
            env=env,
            job_env=dict(bundle.spec.job.env),
            device_kind="cpu",
            limits=capped,
            steps=launcher_steps(bundle.spec, sandbox.job_folders(space)),
            python=python,
        )
        proc = sandbox.start(req)
        readers = [
            threading.Thread(target=_drain, args=(proc.stdout, space.logs / "stdout.log"), daemon=True),
            threading.Thread(target=_drain, args=(proc.stderr, space.logs / "stderr.log"), daemon=True),
        ]
        for reader in readers:
            reader.start()
        outcome = proc.wait()
        for reader in readers:
            reader.join(timeout=10)
        space.export_results(directory)
    finally:
        space.release()
    return ReplayRun(directory, outcome.exit_code, outcome.reason, outcome.wall_s)
