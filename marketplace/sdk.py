"""The SDK for job authors: where to read and write, checkpoints, tensors and determinism.

Import it inside a job (``from marketplace import sdk``). It is light: torch and safetensors are
imported only when a function needs them. Outside a worker the directories default to
``./flopex-input`` (the current directory), ``./flopex-output`` and ``./flopex-checkpoints``,
so a job runs the same on a laptop.

Checkpoints are the basis of replay verification: each :func:`checkpoint` call writes the state
as safetensors and appends ``{"step", "file", "sha256", "time"}`` as one JSON line to
``checkpoints.jsonl`` in the checkpoint directory; a verifier later replays a segment from one
checkpoint and compares with the next. Progress lines (``flopex:progress {...}`` on stdout) are
turned into progress events by the worker.

Replay: a verifier re-runs one segment of a job with ``FLOPEX_REPLAY_FROM=<step>`` (the committed
checkpoint of that step is placed in the checkpoint directory) and ``FLOPEX_REPLAY_UNTIL=<step>``
(the next committed checkpoint's step). A job that calls :func:`resume` starts from that
checkpoint; :func:`checkpoint` ends the process right after writing the checkpoint of step
``FLOPEX_REPLAY_UNTIL``. Without ``FLOPEX_REPLAY_UNTIL`` the job runs from the checkpoint to its
end (the verifier compares the final outputs). A job that never calls :func:`resume` still
replays correctly, only at the cost of recomputing the steps before the segment.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "CHECKPOINT_LOG",
    "PROGRESS_PREFIX",
    "REPLAY_FROM",
    "REPLAY_UNTIL",
    "checkpoint",
    "checkpoint_dir",
    "checkpoint_name",
    "deterministic",
    "device",
    "input_dir",
    "latest_checkpoint",
    "load_tensors",
    "output_dir",
    "progress",
    "replaying",
    "resume",
    "save_tensors",
    "seed",
]

CHECKPOINT_LOG = "checkpoints.jsonl"
PROGRESS_PREFIX = "flopex:progress "
REPLAY_FROM = "FLOPEX_REPLAY_FROM"
REPLAY_UNTIL = "FLOPEX_REPLAY_UNTIL"


def checkpoint_name(step: int) -> str:
    """The file name of the checkpoint of ``step``."""
    return f"ckpt-{step:08d}.safetensors"


def _dir(var: str, default: str, create: bool) -> Path:
    path = Path(os.environ.get(var) or default)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def input_dir() -> Path:
    """The read-only directory holding the bundle's files (``FLOPEX_INPUT_DIR``)."""
    return _dir("FLOPEX_INPUT_DIR", ".", create=False)


def output_dir() -> Path:
    """The directory whose files are the job's result (``FLOPEX_OUTPUT_DIR``), created if needed."""
    return _dir("FLOPEX_OUTPUT_DIR", "flopex-output", create=True)


def checkpoint_dir() -> Path:
    """The directory of checkpoints and their log (``FLOPEX_CHECKPOINT_DIR``), created if needed."""
    return _dir("FLOPEX_CHECKPOINT_DIR", "flopex-checkpoints", create=True)


def seed() -> int:
    """The job's seed (``FLOPEX_SEED``; 0 outside a worker)."""
    return int(os.environ.get("FLOPEX_SEED", "0"))


def device() -> str:
    """The torch device the worker gave the job (``FLOPEX_DEVICE``: ``cuda`` or ``cpu``)."""
    return os.environ.get("FLOPEX_DEVICE", "cpu")


def deterministic(seed_value: int | None = None) -> int:
    """Make torch deterministic: seed every generator, deterministic kernels, fixed cuBLAS workspace.

    Returns the seed used (the job's seed when none is given).
    """
    import random

    import torch

    value = seed() if seed_value is None else seed_value
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(value)
    torch.manual_seed(value)
    torch.use_deterministic_algorithms(True)
    if hasattr(torch.backends, "cudnn"):
        torch.backends.cudnn.benchmark = False
    try:
        import numpy as np

        np.random.seed(value % (1 << 32))
    except ImportError:  # numpy is optional for jobs
        pass
    return value


def save_tensors(name: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Save ``tensors`` as ``<output dir>/<name>.safetensors``; return the path."""
    from safetensors.torch import save_file

    if "/" in name or name.startswith("."):
        raise ValueError(f"sdk: invalid tensor file name {name!r}")
    path = output_dir() / (name if name.endswith(".safetensors") else f"{name}.safetensors")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=dict(metadata or {}))
    return path


def load_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a safetensors file (relative paths are taken from the input directory)."""
    from safetensors.torch import load_file

    full = Path(path)
    if not full.is_absolute():
        full = input_dir() / full
    return load_file(str(full))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def checkpoint(state: Mapping[str, torch.Tensor], step: int) -> Path:
    """Write a checkpoint of ``state`` at ``step`` and log its hash; return the file's path.

    The file is ``ckpt-<step>.safetensors`` in the checkpoint directory; its sha256 is appended to
    ``checkpoints.jsonl`` there, and a progress line announces it.
    """
    from safetensors.torch import save_file

    if step < 0:
        raise ValueError("sdk: step must be non-negative")
    folder = checkpoint_dir()
    path = folder / checkpoint_name(step)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata={"step": str(step)})
    os.replace(tmp, path)
    digest = _sha256(path)
    with open(folder / CHECKPOINT_LOG, "a", encoding="utf-8") as log:
        log.write(json.dumps({"step": step, "file": path.name, "sha256": digest, "time": time.time()}) + "\n")
    progress(message=f"checkpoint step {step}", step=step, checkpoint_sha256=digest)
    until = os.environ.get(REPLAY_UNTIL)
    if until is not None and step >= int(until):
        # A verifier's replay of one segment ends with the segment's checkpoint.
        sys.stdout.flush()
        sys.exit(0)
    return path


def replaying() -> bool:
    """True when a verifier is replaying a segment of this job."""
    return os.environ.get(REPLAY_FROM) is not None


def resume() -> tuple[int, dict[str, torch.Tensor]] | None:
    """Return ``(step, state)`` of the checkpoint a replay starts from, or None for a fresh run.

    A job resumes by loading ``state`` and continuing with the step after ``step``; everything a
    step depends on (optimizer moments, the data order of later steps) must be in the
    checkpoint or derived from the seed and the step number.
    """
    from safetensors.torch import load_file

    start = os.environ.get(REPLAY_FROM)
    if start is None:
        return None
    step = int(start)
    return step, load_file(str(checkpoint_dir() / checkpoint_name(step)))


def latest_checkpoint() -> tuple[int, dict[str, torch.Tensor]] | None:
    """Return ``(step, state)`` of the last logged checkpoint, or None when there is none."""
    from safetensors.torch import load_file

    log = checkpoint_dir() / CHECKPOINT_LOG
    if not log.exists():
        return None
    lines = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        return None
    last = lines[-1]
    return int(last["step"]), load_file(str(checkpoint_dir() / last["file"]))


def progress(fraction: float | None = None, message: str = "", **fields: Any) -> None:
    """Report progress; the worker streams it to the requester as a progress event."""
    record: dict[str, Any] = {"message": message, **fields}
    if fraction is not None:
        record["fraction"] = max(0.0, min(1.0, float(fraction)))
    sys.stdout.write(PROGRESS_PREFIX + json.dumps(record) + "\n")
    sys.stdout.flush()
