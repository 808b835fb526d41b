"""Dishonest workers and providers, for tests and benchmarks ONLY: never run these against a real market.

Each cheat is a way a provider could try to be paid for work it did not do:

- ``random``: outputs are random tensors of the right names and shapes (no work at all);
- ``skip`` (fraction ``f``): a fraction ``f`` of the training segments is skipped — the state is
  carried over unchanged, as if the steps had been run, and training goes on from there;
- ``half``: the job asked for float32 and got float16 (about half the device time on a GPU);
- ``inflate`` (factor 3): honest results, 3× the metered GPU-seconds claimed;
- ``capacity`` (factor 10): the registry offer claims 10× the throughput the device has.

:class:`CheatingProvider` is a :class:`~worker.provider.daemon.ProviderDaemon` that applies a cheat to
the results its worker produces before the worker hashes them, so the results it serves, its
signed receipt and the root it commits agree: only verification can tell. The ``*_run``
functions produce honest and cheating checkpoint sequences of ``examples/replay_mlp``
in-process, for the benchmark's many trials.

:class:`CheatingMember` is a pool's :class:`~worker.pool.operator.MemberDaemon` that commits,
through the pool, a root its worker did not produce (the requester's check catches it).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eth_utils.crypto import keccak

from marketplace.protocol.merkle import EMPTY_ROOT
from marketplace.sdk import CHECKPOINT_LOG
from marketplace.types import JobStatus
from worker.pool.operator import MemberDaemon
from worker.provider.daemon import ProviderDaemon

if TYPE_CHECKING:
    import torch

__all__ = [
    "CHEATS",
    "Cheat",
    "CheatingMember",
    "CheatingProvider",
    "cheat_run",
    "honest_run",
    "load_replay_mlp",
    "tamper_results",
]


@dataclass(frozen=True)
class Cheat:
    """A cheat and its strength: ``kind`` in ``random | skip | half | inflate | capacity | none``."""

    kind: str
    fraction: float = 0.0  # skip: share of segments skipped
    factor: float = 1.0  # inflate: claim multiplier; capacity: throughput multiplier

    @property
    def label(self) -> str:
        """A short name for tables."""
        if self.kind == "skip":
            return f"skip f={self.fraction:g}"
        if self.kind in ("inflate", "capacity"):
            return f"{self.kind} {self.factor:g}x"
        return self.kind


CHEATS = (
    Cheat("random"),
    Cheat("skip", fraction=0.1),
    Cheat("skip", fraction=0.5),
    Cheat("skip", fraction=1.0),
    Cheat("half"),
    Cheat("inflate", factor=3.0),
    Cheat("capacity", factor=10.0),
)


# ------------------------------------------------------------------ tampering with real results


def _rewrite_tensors(path: Path, change: Callable[[str, torch.Tensor], torch.Tensor]) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata() or {}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    save_file({k: change(k, v).contiguous() for k, v in tensors.items()}, str(path), metadata=meta)


def _relog(ckpt_dir: Path) -> None:
    import hashlib

    log = ckpt_dir / CHECKPOINT_LOG
    if not log.exists():
        return
    lines = []
    for line in log.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            entry["sha256"] = hashlib.sha256((ckpt_dir / entry["file"]).read_bytes()).hexdigest()
            lines.append(json.dumps(entry))
    log.write_text("\n".join(lines) + "\n")


def tamper_results(result_dir: Path, cheat: Cheat, rng: random.Random) -> None:
    """Apply ``cheat`` to a finished job's result directory (``output/``, ``checkpoints/``) in place."""
    import torch

    gen = torch.Generator().manual_seed(rng.randrange(1 << 62))
    outputs = sorted((result_dir / "output").glob("*.safetensors"))
    ckpt_dir = result_dir / "checkpoints"
    ckpts = sorted(ckpt_dir.glob("ckpt-*.safetensors"))
    if cheat.kind == "random":
        for path in [*outputs, *ckpts]:
            _rewrite_tensors(
                path, lambda _k, v: torch.randn(v.shape, generator=gen).to(v.dtype) if v.is_floating_point() else v
            )
    elif cheat.kind == "half":
        for path in [*outputs, *ckpts]:
            _rewrite_tensors(path, lambda _k, v: v.to(torch.float16).to(v.dtype) if v.is_floating_point() else v)
    elif cheat.kind == "skip":
        # Segment i skipped: its checkpoint holds the state before it (segment 0: the first state, halved).
        count = max(1, round(cheat.fraction * len(ckpts))) if ckpts else 0
        for i in sorted(rng.sample(range(len(ckpts)), count), reverse=True):
            if i > 0:
                (ckpts[i]).write_bytes(ckpts[i - 1].read_bytes())
            else:
                _rewrite_tensors(ckpts[0], lambda _k, v: v * 0.5 if v.is_floating_point() else v)
    _relog(ckpt_dir)


class CheatingProvider(ProviderDaemon):
    """A provider daemon whose worker cheats on the results it produces. Tests only.

    Output cheats are applied inside the worker, right after the job's process ends and before the
    worker hashes the results, so the files it serves, its receipt and the root it commits agree:
    only verification can tell.
    """

    def __init__(self, *args: Any, cheat: Cheat, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cheat = cheat
        self.rng = random.Random(seed)
        if cheat.kind in ("random", "half", "skip"):
            sandbox = self.worker.manager.sandbox
            honest_start = sandbox.start

            def start(req: Any) -> Any:
                return _TamperingRun(honest_start(req), req.space.result, cheat, self.rng)

            sandbox.start = start  # type: ignore[method-assign]

    def _maybe_commit(self, job_id: int, index: int, spec: Any, now: int) -> None:
        record = self.worker.manager.store.get(job_id)
        if self.cheat.kind != "inflate" or record is None or not record.terminal:
            super()._maybe_commit(job_id, index, spec, now)
            return
        market = self.contracts.market
        job = market.job(job_id)
        if job.status != JobStatus.LEASED:
            return  # the lease has not started: every slot must be taken first
        lease_start = job.lease_start
        honest = math.ceil(int((record.metering or {}).get("device_millis", 0)) / 1000)
        claim = min(spec.max_gpu_seconds, math.ceil(honest * self.cheat.factor))
        held = max(0, now - lease_start) * spec.gpus
        if held < claim and now < lease_start + spec.run_duration * 3 // 4:
            self.nudge_clock()  # as an honest provider does while the chain's clock lags
            return  # wait until the chain believes the inflated claim
        market.commit_result(self.account, job_id, index, record.result_root or EMPTY_ROOT, min(claim, held))


class CheatingMember(MemberDaemon):
    """A pool member that commits a root its worker did not produce. Tests only: never on a real market."""

    def _commit(self, job_id: int, index: int, root: bytes, claimed: int) -> None:
        super()._commit(job_id, index, keccak(b"not the result" + root), claimed)


class _TamperingRun:
    """A running job whose results are tampered with when it ends."""

    def __init__(self, real: Any, result_dir: Path, cheat: Cheat, rng: random.Random) -> None:
        self._real, self._dir, self._cheat, self._rng = real, result_dir, cheat, rng

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def wait(self) -> Any:
        outcome = self._real.wait()
        tamper_results(self._dir, self._cheat, self._rng)
        return outcome


# ------------------------------------------------------------------ in-process runs for the benchmark


def load_replay_mlp() -> Any:
    """The training module of examples/replay_mlp (imported from its file)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[2] / "examples" / "replay_mlp" / "train.py"
    name = "flopex_example_replay_mlp"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def honest_run(seed: int, segments: int, steps: int) -> list[dict[str, torch.Tensor]]:
    """An honest training run: the state after each segment (the committed checkpoints)."""
    return cheat_run(seed, segments, steps, Cheat("none"), random.Random(0))


def cheat_run(seed: int, segments: int, steps: int, cheat: Cheat, rng: random.Random) -> list[dict[str, torch.Tensor]]:
    """A run under ``cheat``: ``skip`` carries the state over a random ``fraction`` of segments and trains on
    from there; ``half`` trains in float16 arithmetic (bfloat16 on CPUs without float16 kernels);
    ``random`` reports random states."""
    import torch

    mlp = load_replay_mlp()
    data = mlp.make_data(seed)
    state = mlp.init_state(seed)
    skipped: set[int] = set()
    if cheat.kind == "skip":
        skipped = set(rng.sample(range(segments), max(1, round(cheat.fraction * segments))))
    dtype = torch.bfloat16 if cheat.kind == "half" else torch.float32
    gen = torch.Generator().manual_seed(rng.randrange(1 << 62))
    out = []
    for segment in range(segments):
        if cheat.kind == "random":
            state = {k: torch.randn(v.shape, generator=gen) for k, v in state.items()}
        elif segment not in skipped:
            state = mlp.run_segment(state, segment, seed, data, steps=steps, dtype=dtype)
        out.append(state)
    return out
