"""Tolerant comparison of two runs' results, and the majority of k results.

Two runs agree when every safetensors tensor is within ``|a - b| <= atol + rtol * |b|``
elementwise (same names, shapes and dtypes) and every other file is byte-for-byte equal. The
defaults (:data:`RTOL`, :data:`ATOL`) are calibrated on honest reruns (docs/verification.md).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from eth_hash.auto import keccak

from marketplace.errors import VerificationError

if TYPE_CHECKING:
    import torch

__all__ = [
    "ANSWER_DIRS",
    "ATOL",
    "RTOL",
    "Comparison",
    "Judgement",
    "Mismatch",
    "compare_results",
    "compare_tensors",
    "judge_by_reruns",
    "majority",
]


#: Relative tolerance of tensor comparisons. Honest reruns of the example jobs on this machine
#: differ by at most ~1e-6 relative when the thread count changes (0 when it does not); a run in
#: half precision differs by more than 1e-3. See docs/verification.md.
RTOL = 1e-4


#: Absolute tolerance of tensor comparisons (for entries near zero).
ATOL = 1e-6


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One difference between two results: the file, the tensor (or ``""``) and why."""

    path: str
    tensor: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.tensor}" if self.tensor else self.path
        return f"{where}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Comparison:
    """The outcome of comparing two results; truthy when they agree."""

    mismatches: tuple[Mismatch, ...] = ()
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    compared_files: tuple[str, ...] = field(default=())

    @property
    def agree(self) -> bool:
        """True when nothing differs beyond the tolerances."""
        return not self.mismatches

    def __bool__(self) -> bool:
        return self.agree

    def describe(self) -> str:
        """One line: agreement, or the first few mismatches."""
        if self.agree:
            return f"agree (max abs diff {self.max_abs_diff:.3g}, max rel diff {self.max_rel_diff:.3g})"
        return "; ".join(str(m) for m in self.mismatches[:3]) + (
            f" (+{len(self.mismatches) - 3} more)" if len(self.mismatches) > 3 else ""
        )


def compare_tensors(
    got: Mapping[str, torch.Tensor],
    want: Mapping[str, torch.Tensor],
    *,
    rtol: float = RTOL,
    atol: float = ATOL,
    path: str = "",
) -> Comparison:
    """Compare two name→tensor maps: same names, shapes, dtypes; values within the tolerances.

    Non-finite values must sit at the same places (NaN equals NaN here; a job that diverges
    diverges the same way on a rerun).
    """
    import torch

    mismatches: list[Mismatch] = []
    max_abs = max_rel = 0.0
    for name in sorted(set(got) | set(want)):
        if name not in got or name not in want:
            mismatches.append(Mismatch(path, name, "missing in one result"))
            continue
        a, b = got[name], want[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            mismatches.append(Mismatch(path, name, f"{a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"))
            continue
        if not (a.is_floating_point() or a.is_complex()):
            if not torch.equal(a, b):
                mismatches.append(Mismatch(path, name, "integer tensors differ"))
            continue
        a64, b64 = a.double(), b.double()
        finite_a, finite_b = torch.isfinite(a64), torch.isfinite(b64)
        if not torch.equal(finite_a, finite_b) or not torch.equal(
            torch.nan_to_num(a64[~finite_a], nan=0.0), torch.nan_to_num(b64[~finite_b], nan=0.0)
        ):
            mismatches.append(Mismatch(path, name, "non-finite values differ"))
            continue
        if a64.numel() == 0:
            continue
        diff = (a64[finite_a] - b64[finite_b]).abs()
        scale = b64[finite_b].abs()
        if diff.numel():
            max_abs = max(max_abs, float(diff.max()))
            max_rel = max(max_rel, float((diff / scale.clamp_min(atol if atol > 0 else 1e-300)).max()))
            bad = diff > atol + rtol * scale
            if bool(bad.any()):
                mismatches.append(
                    Mismatch(
                        path,
                        name,
                        f"{int(bad.sum())} of {diff.numel()} values beyond rtol={rtol:g} atol={atol:g} "
                        f"(max abs diff {float(diff.max()):.3g})",
                    )
                )
    return Comparison(tuple(mismatches), max_abs, max_rel, (path,) if path else ())


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise VerificationError(f"verify: {path.name} is not a valid safetensors file: {exc}") from None


def _files(root: Path) -> dict[str, Path]:
    from marketplace.protocol.merkle import list_files

    return dict(list_files(root)) if root.is_dir() else {}


ANSWER_DIRS = ("output", "work")
"""The result folders compared as a job's answer: what it wrote to ``FLOPEX_OUTPUT_DIR``, and the
files it created or changed in its working directory (``work/``; see docs/protocol.md)."""


def compare_results(
    got: str | Path,
    want: str | Path,
    *,
    subdir: str | tuple[str, ...] = ANSWER_DIRS,
    rtol: float = RTOL,
    atol: float = ATOL,
    answer: Sequence[str] = (),
) -> Comparison:
    """Compare the ``subdir`` files of two downloaded results (default: the job's answer, :data:`ANSWER_DIRS`).

    ``.safetensors`` files are compared tensor by tensor with the tolerances, every other file
    exactly. Logs and checkpoints are not part of a job's answer and are not compared here. Files
    are named relative to ``output/``, and with their folder for the other folders (``work/model.pt``).
    ``answer`` (the bundle's ``verification.outputs``) limits the comparison to the files whose
    name matches one of its glob patterns; empty: every file.
    """
    from marketplace.protocol.merkle import file_sha256

    folders = (subdir,) if isinstance(subdir, str) else subdir
    # Keyed by (folder index, path): an output file named work/x is not the working directory's x.
    a_files: dict[tuple[int, str], Path] = {}
    b_files: dict[tuple[int, str], Path] = {}
    for i, folder in enumerate(folders):
        a_files.update({(i, rel): p for rel, p in _files(Path(got) / folder).items()})
        b_files.update({(i, rel): p for rel, p in _files(Path(want) / folder).items()})
    names = {key: key[1] if key[0] == 0 else f"{folders[key[0]]}/{key[1]}" for key in {*a_files, *b_files}}
    if answer:
        names = {key: name for key, name in names.items() if any(fnmatch.fnmatchcase(name, p) for p in answer)}
    mismatches: list[Mismatch] = []
    max_abs = max_rel = 0.0
    for key in sorted(names):
        rel = names[key]
        if key not in a_files or key not in b_files:
            mismatches.append(Mismatch(rel, "", "present in only one result"))
            continue
        if rel.endswith(".safetensors"):
            try:
                cmp = compare_tensors(
                    _load_safetensors(a_files[key]), _load_safetensors(b_files[key]), rtol=rtol, atol=atol, path=rel
                )
            except VerificationError as exc:
                mismatches.append(Mismatch(rel, "", str(exc)))
                continue
            mismatches.extend(cmp.mismatches)
            max_abs, max_rel = max(max_abs, cmp.max_abs_diff), max(max_rel, cmp.max_rel_diff)
        elif file_sha256(a_files[key]) != file_sha256(b_files[key]):
            mismatches.append(Mismatch(rel, "", "files differ"))
    return Comparison(tuple(mismatches), max_abs, max_rel, tuple(names[key] for key in sorted(names)))


@dataclass(frozen=True, slots=True)
class Judgement:
    """A provider's results judged by two re-runs of the verifier's own.

    ``verdict`` is ``"match"`` (every file the job reproduces agrees), ``"differs"`` (a file both
    re-runs reproduce identically differs in the provider's results: ``decisive``) or
    ``"undecidable"`` (only files that differ between the re-runs themselves differ, and nothing
    reproducible is left to compare). ``unstable`` names the files the job does not reproduce.
    """

    verdict: str
    decisive: tuple[Mismatch, ...]
    unstable: tuple[str, ...]
    checked: tuple[str, ...]

    def describe(self) -> str:
        """One line for the ruling's reason."""
        skipped = (
            f"; {len(self.unstable)} file(s) differ between two re-runs here and were not judged "
            f"({', '.join(self.unstable[:3])}{', …' if len(self.unstable) > 3 else ''})"
            if self.unstable
            else ""
        )
        if self.verdict == "differs":
            return Comparison(self.decisive).describe() + skipped
        if self.verdict == "undecidable":
            return "nothing the job writes re-runs identically here" + skipped
        return f"{len(self.checked)} reproducible file(s) match" + skipped


def judge_by_reruns(
    rerun: str | Path,
    control: str | Path,
    provided: str | Path,
    *,
    rtol: float = RTOL,
    atol: float = ATOL,
    answer: Sequence[str] = (),
) -> Judgement:
    """Judge the ``provided`` results by the verifier's ``rerun`` and an independent ``control`` re-run.

    A file the two re-runs disagree on (a timestamp in a PDF, a random temporary name) says nothing
    about the provider: it is left out. The provider is found wrong only on a file the job
    reproduces; a job that reproduces nothing cannot be judged, which must never cost an honest
    provider its stake.
    """
    unstable = {m.path for m in compare_results(rerun, control, rtol=rtol, atol=atol, answer=answer).mismatches}
    against = compare_results(rerun, provided, rtol=rtol, atol=atol, answer=answer)
    decisive = tuple(m for m in against.mismatches if m.path not in unstable)
    checked = tuple(f for f in against.compared_files if f not in unstable)
    verdict = "differs" if decisive else ("match" if checked else "undecidable")
    return Judgement(verdict, decisive, tuple(sorted(unstable)), checked)


def majority(
    results: Sequence[str | Path], *, answer: Sequence[str] = (), **tolerances: float
) -> tuple[list[int] | None, list[list[int]]]:
    """Group results by agreement; return ``(winners, groups)``.

    Each result joins the first group whose first member it agrees with. ``winners`` is the
    indices of the group holding a strict majority, or None (no majority: void the job).
    """
    groups: list[list[int]] = []
    for i, path in enumerate(results):
        for group in groups:
            if compare_results(path, results[group[0]], answer=answer, **tolerances).agree:  # type: ignore[arg-type]
                group.append(i)
                break
        else:
            groups.append([i])
    best = max(groups, key=len) if groups else []
    return (best if 2 * len(best) > len(results) else None), groups


def stable_hash(parts: Iterable[bytes]) -> bytes:
    """keccak256 of the concatenation (a helper for seeds)."""
    return bytes(keccak(b"".join(parts)))
