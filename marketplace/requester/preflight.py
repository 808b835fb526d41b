"""What a requester should know before a job's money moves: checks made at submit, before posting.

:func:`preflight` looks at a bundle, the policy it will run under and the market, and returns a
:class:`Preflight`: the challenge window the job will ask for, and one line per thing that would
make "verified" mean less than it says:

- the policy needs a verifier (redundant, replay, freivalds, optimistic) and no verifier is
  registered and staked on this market: results would be paid after the challenge window, unchecked;
- the checks cannot finish inside the challenge window (estimated from the job's timeout): a result
  whose check is still running when the window closes is paid on its claim;
- the job has nothing to compare: its code never writes a file (to ``FLOPEX_OUTPUT_DIR``, its
  working directory or through the SDK), and verification compares files, not what a job prints;
- the bundle puts a range on Python or torch (``[resources] python``/``torch``, a torch pin in its
  requirements) and registered providers whose workers answer cannot serve it: each worker says
  its versions in ``GetInfo`` and refuses such a bundle at upload (:func:`environment_warnings`).

It also says what the policy can judge of this job (:func:`policy_check`): a policy whose
preconditions the job does not meet is refused in one line (Freivalds on a job that claims no
matrix product) or runs as a stated weaker check (replay of a job that saves no SDK checkpoints is
a full re-run compared on the declared outputs).

By default the challenge window is sized from the job's limits: long enough for the checks its
policy needs (see :func:`check_estimate_s`) plus a margin, within the market's
``window_bounds()``. A window the requester chose is kept and warned about when it is too short.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from marketplace.errors import ConfigError
from marketplace.types import Policy

if TYPE_CHECKING:
    from marketplace.contracts.deployment import Contracts
    from marketplace.protocol.bundle import Bundle

__all__ = [
    "MIN_CHALLENGE_WINDOW_S",
    "PROVIDERS_LONGEST_WINDOW_S",
    "PolicyCheck",
    "Preflight",
    "active_verifiers",
    "check_estimate_s",
    "default_challenge_window",
    "environment_warnings",
    "policy_check",
    "preflight",
    "saves_sdk_checkpoints",
    "writes_files",
]

MIN_CHALLENGE_WINDOW_S = 60
"""The shortest window sized by default (the window a job of policy ``none`` gets)."""
PROVIDERS_LONGEST_WINDOW_S = 86_400
"""The longest challenge window providers bid for by default (``flopex provider start --max-challenge-hours 24``)."""
QUICK_CHECK_S = 60
"""What a check that does not re-run the job takes at most: downloads, a Freivalds product."""
NEEDS_VERIFIER = frozenset({Policy.REDUNDANT, Policy.REPLAY, Policy.FREIVALDS, Policy.OPTIMISTIC})
COMPARES_FILES = frozenset({Policy.REDUNDANT, Policy.REPLAY, Policy.OPTIMISTIC})
_SOURCE_BYTES = 1 << 20
_SOURCE_FILES = 500
# What writing a file looks like in a job's Python: the flopex folders and SDK, the usual save
# calls of torch, safetensors, numpy, pandas, matplotlib and json, and open(...) for writing.
_WRITES = re.compile(
    r"FLOPEX_OUTPUT_DIR|FLOPEX_CHECKPOINT_DIR|marketplace\.sdk|from marketplace import sdk|\bsdk\.\w+"
    r"|torch\.save\(|save_file\(|save_model\(|np\.save[z]?\(|numpy\.save[z]?\(|\.to_(csv|json|parquet)\("
    r"|savefig\(|json\.dump\(|pickle\.dump\(|\.write_(text|bytes)\("
    r"|open\([^)\n]*?['\"](w|a|x)b?\+?['\"]|open\([^)\n]*?mode\s*=\s*['\"](w|a|x)"
)


# An SDK checkpoint in a job's Python: sdk.checkpoint(...) or checkpoint imported from marketplace.sdk.
_SDK_CHECKPOINT = re.compile(
    r"\bsdk\.checkpoint\(|from\s+marketplace\.sdk\s+import\s[^\n]*\bcheckpoint\b"
    r"|from\s+marketplace\s+import\s+sdk\b[\s\S]*\bsdk\.checkpoint\("
)
_FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
_MAX_HEADER = 1 << 20


@dataclass(frozen=True, slots=True)
class PolicyCheck:
    """What a policy can judge of a job: ``method`` (``segments``, ``full-rerun``, ``compare-runs``,
    ``freivalds``, ``none``), what it compares, whether it is weaker than the policy promises
    (``degraded``) and one line saying so."""

    method: str
    compares: tuple[str, ...]
    degraded: bool
    line: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {"method": self.method, "compares": list(self.compares), "degraded": self.degraded, "line": self.line}


@dataclass(frozen=True, slots=True)
class Preflight:
    """The result of :func:`preflight`: the window to ask for, the estimate behind it and the warnings."""

    policy: Policy
    redundancy: int
    challenge_window_s: int
    window_sized: bool
    """True when the window was sized here (the requester gave none)."""
    check_estimate_s: int
    active_verifiers: int
    warnings: tuple[str, ...] = field(default=())
    check: PolicyCheck | None = None
    """What the policy can judge of this job (see :func:`policy_check`)."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "policy": self.policy.name.lower(),
            "challenge_window_s": self.challenge_window_s,
            "window_sized": self.window_sized,
            "check_estimate_s": self.check_estimate_s,
            "active_verifiers": self.active_verifiers,
            "warnings": list(self.warnings),
            "check": None if self.check is None else self.check.to_json(),
        }


def check_estimate_s(policy: Policy, timeout_s: int) -> int:
    """How long after a slot's commit its check may need, from the job's ``timeout_s``.

    A replay may re-run the whole job (a full re-run, or segments adding up to it); an optimistic
    job's challenger re-runs it before disputing; a redundant job's slots commit as their providers
    finish, up to a whole run apart, and are compared once all are in. A Freivalds check and a
    job with no verification need no re-run.
    """
    if policy in (Policy.REPLAY, Policy.OPTIMISTIC, Policy.REDUNDANT):
        return timeout_s + QUICK_CHECK_S
    if policy == Policy.FREIVALDS:
        return QUICK_CHECK_S
    return 0


def default_challenge_window(policy: Policy, timeout_s: int, longest: int) -> int:
    """The window a job asks for when the requester gives none: its checks' estimate plus a quarter,
    at least :data:`MIN_CHALLENGE_WINDOW_S`, at most ``longest`` (the market's bound) and
    :data:`PROVIDERS_LONGEST_WINDOW_S` (what providers bid for by default)."""
    estimate = check_estimate_s(policy, timeout_s)
    wanted = max(MIN_CHALLENGE_WINDOW_S, estimate + estimate // 4)
    return max(1, min(wanted, longest, PROVIDERS_LONGEST_WINDOW_S))


def active_verifiers(contracts: Contracts) -> int:
    """How many accounts are registered verifiers with enough stake on this market's registry."""
    registry = contracts.registry
    with registry.chain.locked():
        logs = registry.contract.events.VerifierRegistered().get_logs(from_block=contracts.deployment.start_block)
    accounts = {str(log["args"]["verifier"]) for log in logs}
    return sum(1 for account in accounts if registry.is_active_verifier(account))


def writes_files(bundle: Bundle) -> bool:
    """Whether the job looks like it writes a file verification can compare.

    True when an argument names the output or working folder, or a Python file of the bundle uses
    the flopex folders or SDK, a usual save call or ``open(..., "w")``. A heuristic for a warning:
    it never refuses a job.
    """
    args = [*bundle.spec.job.args, *(arg for step in bundle.spec.job.steps for arg in step.command)]
    if any("{output_dir}" in arg or "{work_dir}" in arg for arg in args):
        return True
    for count, path in enumerate(sorted(bundle.root.rglob("*.py"))):
        if count >= _SOURCE_FILES:
            return True  # too many to read: assume it does
        try:
            with open(path, "rb") as fh:
                text = fh.read(_SOURCE_BYTES).decode("utf-8", "replace")
        except OSError:
            continue
        if _WRITES.search(text):
            return True
    return False


def _python_sources(bundle: Bundle) -> list[str]:
    texts = []
    for path in sorted(bundle.root.rglob("*.py"))[:_SOURCE_FILES]:
        try:
            with open(path, "rb") as fh:
                texts.append(fh.read(_SOURCE_BYTES).decode("utf-8", "replace"))
        except OSError:
            continue
    return texts


def saves_sdk_checkpoints(bundle: Bundle) -> bool:
    """Whether a Python file of the bundle checkpoints through the SDK (``sdk.checkpoint(state, step)``),
    which replay needs to re-run sampled segments instead of the whole job."""
    return any(_SDK_CHECKPOINT.search(text) for text in _python_sources(bundle))


def _safetensors_shapes(path: Any) -> dict[str, tuple[str, list[int]]] | None:
    """The tensors (dtype, shape) named in a safetensors file's header, or None if it is not one."""
    try:
        with open(path, "rb") as fh:
            size = struct.unpack("<Q", fh.read(8))[0]
            if size > _MAX_HEADER:
                return None
            header = json.loads(fh.read(size))
    except (OSError, struct.error, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    return {
        k: (str(v.get("dtype")), list(v.get("shape", [])))
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict)
    }


def _matrix_product_problem(bundle: Bundle) -> str | None:
    """Why the job makes no matrix-product claim Freivalds can check, or None when it does: an
    entrypoint job whose ``job.inputs`` hold a safetensors file with float matrices ``a`` (n×k)
    and ``b`` (k×m), the product written as ``c`` in ``product.safetensors`` (see examples/matmul)."""
    job = bundle.spec.job
    if job.steps:
        return "Freivalds checks one matrix-product entrypoint, not commands or steps"
    inputs = [name for name in job.inputs if name.endswith(".safetensors")]
    if not inputs:
        return "no job.inputs .safetensors file holds the matrices a and b"
    tensors = _safetensors_shapes(bundle.root / inputs[0])
    if tensors is None:
        return f"{inputs[0]} is not a readable safetensors file"
    a, b = tensors.get("a"), tensors.get("b")
    if a is None or b is None:
        return f"{inputs[0]} holds no tensors named a and b"
    if a[0] not in _FLOAT_DTYPES or b[0] not in _FLOAT_DTYPES:
        return f"{inputs[0]}: a and b are not floating-point matrices"
    if len(a[1]) != 2 or len(b[1]) != 2 or a[1][1] != b[1][0]:
        return f"{inputs[0]}: a {a[1]} and b {b[1]} are not matrices that multiply"
    return None


def policy_check(bundle: Bundle, policy: Policy, redundancy: int = 1) -> PolicyCheck:
    """What ``policy`` can judge of ``bundle``'s job; :class:`ConfigError` (one line) when it cannot judge it at all.

    - freivalds needs a matrix-product claim (:func:`_matrix_product_problem`), else it is refused;
    - replay re-runs sampled segments between SDK checkpoints; a job that saves none is re-run
      whole and compared on its declared outputs (``verification.outputs``; none declared: every
      output file): a weaker, stated check. Either way a file that differs between two re-runs is
      not judged, and a re-run that cannot decide voids the slot, never slashes;
    - redundant and optimistic compare runs on the declared outputs (every file when none).
    """
    outputs = bundle.spec.verification.outputs
    compares = outputs or ("every output file",)
    on = ", ".join(outputs) if outputs else "every output file (declare the answer in [verification] outputs)"
    if policy == Policy.NONE:
        return PolicyCheck("none", (), False, "no verification: results are paid on their claim")
    if policy == Policy.FREIVALDS:
        problem = _matrix_product_problem(bundle)
        if problem is not None:
            raise ConfigError(
                f"freivalds: the job makes no matrix-product claim ({problem}); use --verify replay or redundant"
            )
        return PolicyCheck("freivalds", ("product.safetensors",), False, "Freivalds' check of the product c = a @ b")
    if policy == Policy.REPLAY:
        if saves_sdk_checkpoints(bundle):
            return PolicyCheck(
                "segments",
                compares,
                False,
                f"replay of sampled segments between SDK checkpoints, then the outputs compared on {on}",
            )
        return PolicyCheck(
            "full-rerun",
            compares,
            True,
            "replay: the job saves no SDK checkpoints (marketplace.sdk.checkpoint), so the verifier re-runs it "
            f"whole and compares {on}; files that differ between two re-runs are not judged, and a re-run "
            "that cannot decide voids the slot (docs/porting.md adds checkpoints in a few lines)",
        )
    if policy == Policy.REDUNDANT:
        return PolicyCheck("compare-runs", compares, False, f"{max(2, redundancy)} runs compared on {on}")
    return PolicyCheck("compare-runs", compares, False, f"a challenger's re-run compared on {on}")


def preflight(
    contracts: Contracts,
    bundle: Bundle,
    *,
    policy: Policy | None = None,
    redundancy: int | None = None,
    challenge_window_s: int | None = None,
) -> Preflight:
    """Check ``bundle`` under ``policy`` (default: its job.toml's) on this market before it is posted.

    ``challenge_window_s`` None sizes the window (:func:`default_challenge_window`); a window above
    the market's bound is a :class:`ConfigError`, since the market would refuse the job.
    """
    spec = bundle.spec
    policy = policy if policy is not None else Policy[spec.verification.policy.upper()]
    k = redundancy if redundancy is not None else spec.verification.redundancy
    if policy == Policy.REDUNDANT:
        k = max(k, 2)
    check = policy_check(bundle, policy, k)
    timeout_s = spec.resources.timeout_s
    longest = contracts.market.window_bounds()[2]
    estimate = check_estimate_s(policy, timeout_s)
    sized = challenge_window_s is None
    if challenge_window_s is None:
        window = default_challenge_window(policy, timeout_s, longest)
    elif challenge_window_s > longest:
        raise ConfigError(
            f"--challenge-window {challenge_window_s} is above this market's longest challenge window of {longest} s"
        )
    else:
        window = challenge_window_s
    name = policy.name.lower()
    warnings: list[str] = []
    verifiers = active_verifiers(contracts) if policy in NEEDS_VERIFIER else 0
    if policy in NEEDS_VERIFIER and verifiers == 0:
        warnings.append(
            f"the {name} policy needs a verifier and none is registered and staked on this market: "
            f"results will be paid on their claim after the {window} s challenge window, unchecked"
        )
    if estimate > window:
        cause = (
            f"windows are sized up to {min(longest, PROVIDERS_LONGEST_WINDOW_S)} s, what this market allows and "
            "providers bid for by default"
            if sized
            else f"give --challenge-window {estimate + estimate // 4} or more, up to {longest}"
        )
        warnings.append(
            f"the {name} checks may take up to {estimate} s (the job's timeout of {timeout_s} s and a margin), "
            f"longer than the {window} s challenge window: a result still being checked when it closes is paid "
            f"unchecked ({cause})"
        )
    if window > PROVIDERS_LONGEST_WINDOW_S:
        warnings.append(
            f"a challenge window of {window} s is longer than providers bid for by default "
            f"({PROVIDERS_LONGEST_WINDOW_S} s, `flopex provider start --max-challenge-hours 24`): "
            "the job may draw no bids"
        )
    if policy in COMPARES_FILES and not writes_files(bundle):
        what = f"{k} runs" if policy == Policy.REDUNDANT else "the re-run and the result"
        warnings.append(
            f"nothing to compare: the job's code writes no file that was found (FLOPEX_OUTPUT_DIR, its working "
            f"directory, the SDK, a save call) and verification compares {what} by their files, not by what they "
            f"print; write the answer to FLOPEX_OUTPUT_DIR"
        )
    if spec.resources.python or bundle.torch_ranges:
        warnings.extend(environment_warnings(contracts, bundle))
    return Preflight(policy, k, window, sized, estimate, verifiers, tuple(warnings), check)


def environment_warnings(contracts: Contracts, bundle: Bundle, timeout_s: float = 2.0) -> list[str]:
    """Lines about providers that cannot serve the bundle's Python and torch ranges.

    Every registered provider of the job's device kind is asked for ``GetInfo`` (all at once, each
    within ``timeout_s``); those that do not answer are not judged.
    """
    from concurrent.futures import ThreadPoolExecutor

    from marketplace.protocol.environment import serves
    from marketplace.requester.client import WorkerClient
    from marketplace.types import DeviceKind

    kind = DeviceKind.CUDA if bundle.spec.resources.device == "cuda" else DeviceKind.CPU
    registry = contracts.registry
    endpoints = {
        str(e.provider): str(e.endpoint)
        for e in registry.get_events("ProviderRegistered", contracts.deployment.start_block)
        if DeviceKind(e.device_kind) == kind
    }
    if not endpoints:
        return []

    def versions(endpoint: str) -> tuple[str, str] | None:
        try:
            with WorkerClient(endpoint, timeout_s=timeout_s, retries=1) as client:
                info = client.info()
        except Exception:  # not answering: not judged
            return None
        return info.python_version, info.torch_version

    with ThreadPoolExecutor(max_workers=min(16, len(endpoints)), thread_name_prefix="env-probe") as pool:
        answers = dict(zip(endpoints, pool.map(versions, endpoints.values()), strict=True))
    spec = bundle.spec
    refusals = {
        provider: why
        for provider, got in answers.items()
        if got is not None and (why := serves(got[0], got[1], spec.resources.python, bundle.torch_ranges))
    }
    answered = sum(got is not None for got in answers.values())
    if not refusals:
        return []
    example = next(iter(refusals.items()))
    head = (
        "no provider that answered can run this bundle"
        if len(refusals) == answered
        else f"{len(refusals)} of {answered} providers that answered cannot run this bundle"
    )
    return [
        f"{head} (provider {example[0]} {example[1]}); a worker that cannot serve its Python or torch range "
        "refuses it at upload"
    ]
