"""Job bundles: the ``job.toml`` format, its validation, the bundle hash and archives.

A bundle is a directory with a ``job.toml`` at its root (see DESIGN.md), or a ``.tar.gz`` of
one. :func:`load_bundle` parses and validates a directory; :func:`pack_bundle` writes a
canonical archive of it (sorted members, zeroed owners and times, so the same tree always
packs to the same bytes); :func:`unpack_bundle` extracts an untrusted archive, refusing links,
devices, absolute or ``..`` members and anything beyond a byte limit counted while extracting.

The *bundle hash* (what the requester posts on chain and the worker recomputes) is::

    blake3( b"flopex-bundle-v2\\0"
            ‖ for each regular file, in sorted order of its relative POSIX path (UTF-8 bytes):
                  path ‖ b"\\0" ‖ uint64_be(size) ‖ file bytes )

BLAKE3 (32-byte output) is a tree hash with a SIMD implementation; the framing is
the same as the earlier sha256 ``flopex-bundle-v1`` hash. The canonical archive lists its members in
that same order, so :func:`unpack_bundle` computes the hash while it extracts (:class:`BundleHasher`)
and never reads the files back.

The canonical archive is a gzip file of several members (RFC 1952 allows any number, and ``tar
xzf`` reads them as one stream): the tar stream is cut into :data:`PACK_BLOCK` blocks, each its own
gzip member, compressed in parallel; a block whose sample does not shrink (tensors, safetensors,
``.pt``, ``.npz``, zip, images: data that is already dense) is *stored* in deflate's uncompressed
block format instead, so packing and unpacking it costs a copy and a CRC32.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import posixpath
import re
import tarfile
import tomllib
import zlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal, cast, get_args

import blake3

from marketplace.errors import BundleError
from marketplace.protocol.environment import (
    EnvironmentSection,
    check_project,
    parse_environment,
    parse_lock,
    parse_requirements,
    parse_version_range,
    torch_pins,
)

__all__ = [
    "ARG_PLACEHOLDERS",
    "DATASET_NAME",
    "DATASET_PREFIX",
    "MAX_ARGS",
    "MAX_ARGS_BYTES",
    "MAX_DATASETS",
    "MAX_ENTRIES",
    "MAX_EXTENDED_HEADER_BYTES",
    "MAX_GPUS",
    "MAX_GPU_HOURS",
    "MAX_JOB_TOML_BYTES",
    "MAX_MIN_MEMORY_GB",
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "MAX_REDUNDANCY",
    "MAX_STEPS",
    "MAX_TIMEOUT_S",
    "PACK_BLOCK",
    "TOKEN_DECIMALS",
    "Auction",
    "Bundle",
    "BundleHasher",
    "Device",
    "EnvironmentSection",
    "JobSection",
    "JobSpec",
    "LaunchStep",
    "MarketSection",
    "PackedArchive",
    "Policy",
    "ResourcesSection",
    "StepSection",
    "VerificationSection",
    "bundle_hash",
    "check_path_length",
    "expand_args",
    "launch_steps",
    "launcher_steps",
    "load_bundle",
    "pack_bundle",
    "pack_tree",
    "parse_dataset",
    "parse_datasets_table",
    "parse_job_toml",
    "parse_price",
    "regular_files",
    "safe_relpath",
    "unpack_bundle",
    "unpack_tree",
]

TOKEN_DECIMALS = 18
"""Decimals of the compute token: prices are integers in units of 10**-18 tokens."""

Device = Literal["cuda", "cpu"]
Policy = Literal["none", "redundant", "replay", "freivalds", "optimistic"]
Auction = Literal["sealed", "instant"]

_HASH_DOMAIN = b"flopex-bundle-v2\0"
_READ = 1 << 20
PACK_BLOCK = 1 << 20
"""Bytes of the tar stream in one gzip member of a packed archive."""
_SAMPLE = 16 << 10
_STORE_RATIO = 0.9
"""A block whose first :data:`_SAMPLE` bytes deflate (level 1) to more than this fraction is stored."""
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"

# Bounds of a job.toml: each is checked at submit (the requester's load_bundle) and again on the
# worker, and each breach is one BundleError line naming the key.
MAX_JOB_TOML_BYTES = 256 << 10
"""Largest job.toml read (its text is parsed whole)."""
MAX_TIMEOUT_S = 7 * 24 * 3600
"""Largest ``resources.timeout_s``: 7 days."""
MAX_GPUS = 1024
"""Largest ``resources.gpus`` (devices on one provider)."""
MAX_MIN_MEMORY_GB = 16384.0
"""Largest ``resources.min_memory_gb`` per device: 16 TiB."""
MAX_GPU_HOURS = 1_000_000.0
"""Largest ``resources.max_gpu_hours``."""
MAX_REDUNDANCY = 5
"""Most providers running one job (the market contract's ``MAX_REDUNDANCY``)."""
MAX_ARGS = 1024
"""Most ``job.args``."""
MAX_ARGS_BYTES = 64 << 10
"""Most bytes of ``job.args`` together (UTF-8)."""
ARG_PLACEHOLDERS = ("input_dir", "output_dir", "checkpoint_dir", "work_dir", "data_dir")
"""What ``{name}`` in a ``job.args`` entry may name: the folders of ``FLOPEX_INPUT_DIR``,
``FLOPEX_OUTPUT_DIR``, ``FLOPEX_CHECKPOINT_DIR``, the working directory and ``FLOPEX_DATA_DIR``
(where each of ``job.datasets`` is a folder), as the job sees them."""
_PLACEHOLDER = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
MAX_ENV = 64
"""Most ``job.env`` variables."""
MAX_ENV_BYTES = 16 << 10
"""Most bytes of ``job.env`` names and values together (UTF-8)."""
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
"""What a ``job.env`` name looks like."""
RESERVED_ENV = frozenset(
    {"PATH", "HOME", "TMPDIR", "PYTHONPATH", "CUDA_VISIBLE_DEVICES", "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT"}
)
"""Names the sandbox sets (or that change what the loader runs) and ``job.env`` may not."""

# Bounds of an archive, checked while it is read, before anything of a member is kept.
MAX_ENTRIES = 10_000
"""Most archive members, directories included."""
MAX_EXTENDED_HEADER_BYTES = 64 << 10
"""Largest pax or GNU long-name header: tarfile reads one whole into memory, so its size is checked first."""
MAX_PATH_BYTES = 1024
"""Longest member path, in UTF-8 bytes."""
MAX_NAME_BYTES = 255
"""Longest component of a member path, in UTF-8 bytes (the Linux NAME_MAX)."""


@dataclass(frozen=True, slots=True)
class StepSection:
    """One step of a job: its name, its command (``python`` first) and whether torchrun launches it."""

    name: str
    command: tuple[str, ...]
    torchrun: bool | None = None
    """True: launched on every device by torchrun; False: one process; None: torchrun when ``gpus > 1``."""


@dataclass(frozen=True, slots=True)
class JobSection:
    """``[job]``: what to run, with ``env`` set: ``entrypoint`` runs as ``python entrypoint *args``;
    or ``steps`` run in order (one step for ``command``), and ``entrypoint`` is empty."""

    entrypoint: str
    args: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    """``job.env``: environment variables for the job, as (name, value) pairs sorted by name."""
    datasets: tuple[tuple[str, bytes], ...] = ()
    """``job.datasets``: (folder name, 32-byte dataset hash) pairs sorted by name, each read-only at
    ``/job/data/<name>`` (see :mod:`marketplace.protocol.datasets`)."""
    steps: tuple[StepSection, ...] = ()
    """``job.command`` (one step named ``main``) or ``[[job.steps]]``; empty for an entrypoint job."""
    torchrun: bool | None = None
    """``job.torchrun``: whether an entrypoint or command job runs under torchrun (None: when ``gpus > 1``)."""


@dataclass(frozen=True, slots=True)
class ResourcesSection:
    """``[resources]``: the devices a job needs and its limits."""

    device: Device = "cuda"
    gpus: int = 1
    min_memory_gb: float = 0.0
    max_gpu_hours: float = 1.0
    timeout_s: int = 3600
    python: str = ""
    """A PEP 440 range the provider's Python must be in (``""``: any)."""
    torch: str = ""
    """A PEP 440 range the provider's torch must be in (``""``: any)."""


@dataclass(frozen=True, slots=True)
class VerificationSection:
    """``[verification]``: how results are checked (see DESIGN.md, Verification)."""

    policy: Policy = "none"
    redundancy: int = 1
    replay_fraction: float = 0.1
    tolerance: float = 1e-4
    #: The job's answer: glob patterns over the result's files as verification names them
    #: (``loss.json`` in the output folder, ``work/model.pt`` in the working directory). Only these
    #: are compared; none declared: every file of both folders is.
    outputs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MarketSection:
    """``[market]``: ``max_price`` in token units (10**-18 tokens) per GPU-hour, and the auction."""

    max_price: int
    auction: Auction = "sealed"


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A parsed, validated ``job.toml``."""

    job: JobSection
    resources: ResourcesSection
    verification: VerificationSection
    market: MarketSection
    environment: EnvironmentSection = EnvironmentSection()  # noqa: RUF009 (frozen: one shared default is safe)
    """``[environment]``: the packages the job needs beyond the provider's Python and torch."""


@dataclass(frozen=True, slots=True)
class Bundle:
    """A validated bundle directory: its root, its spec and its bundle hash (32 bytes)."""

    root: Path
    spec: JobSpec
    hash: bytes
    torch_ranges: tuple[str, ...] = ()
    """Every range put on torch: ``resources.torch`` and any torch pin of the dependency files."""


def parse_price(text: object) -> int:
    """Convert a decimal token amount given as a string (``"2.5"``) to integer token units."""
    if not isinstance(text, str):
        raise BundleError(f'market.max_price: expected a decimal string such as "2.5", got {text!r}')
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise BundleError(f"market.max_price: not a decimal number: {text!r}") from None
    if not value.is_finite() or value <= 0:
        raise BundleError(f"market.max_price: must be a positive number, got {text!r}")
    units = value.scaleb(TOKEN_DECIMALS)
    if units != units.to_integral_value():
        raise BundleError(f"market.max_price: more than {TOKEN_DECIMALS} decimals: {text!r}")
    return int(units)


def _check_keys(section: str, table: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        names = ", ".join(unknown)
        raise BundleError(f"{section}: unknown key(s) {names}; allowed: {', '.join(sorted(allowed))}")


def _table(data: Mapping[str, Any], name: str, required: bool) -> Mapping[str, Any]:
    value = data.get(name)
    if value is None:
        if required:
            raise BundleError(f"job.toml: missing [{name}] section")
        return {}
    if not isinstance(value, dict):
        raise BundleError(f"job.toml: [{name}] must be a table")
    return value


def _short(value: object) -> str:
    """``repr(value)`` cut to 60 characters, so an error about a huge value stays one short line."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _int(where: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BundleError(f"{where}: expected an integer, got {_short(value)}")
    if value < minimum:
        raise BundleError(f"{where}: must be at least {minimum}, got {_short(value)}")
    if maximum is not None and value > maximum:
        raise BundleError(f"{where}: must be at most {maximum}, got {_short(value)}")
    return value


def _float(where: str, value: object, minimum: float, *, strict: bool = False, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BundleError(f"{where}: expected a number, got {_short(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        raise BundleError(f"{where}: must be at most {maximum}, got {_short(value)}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise BundleError(f"{where}: must be finite, got {value!r}")
    if number < minimum or (strict and number == minimum):
        raise BundleError(f"{where}: must be {'above' if strict else 'at least'} {minimum}, got {_short(value)}")
    if maximum is not None and number > maximum:
        raise BundleError(f"{where}: must be at most {maximum:g}, got {_short(value)}")
    return number


def _choice(where: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise BundleError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def _str_list(where: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BundleError(f"{where}: expected a list of strings, got {_short(value)}")
    return tuple(value)


def _env(value: object) -> tuple[tuple[str, str], ...]:
    """``job.env``, checked: a table of at most :data:`MAX_ENV` string variables, :data:`MAX_ENV_BYTES` in all,
    named ``[A-Z_][A-Z0-9_]*``, none ``FLOPEX_*`` (the worker's) nor in :data:`RESERVED_ENV`."""
    if not isinstance(value, dict):
        raise BundleError(f'job.env: expected a table of NAME = "value", got {value!r}')
    if len(value) > MAX_ENV:
        raise BundleError(f"job.env: at most {MAX_ENV} variables, got {len(value)}")
    size = 0
    for name, text in value.items():
        if not ENV_NAME.fullmatch(name):
            raise BundleError(f"job.env: {name!r} is not a variable name (capitals, digits and _, not first a digit)")
        if name.startswith("FLOPEX_") or name in RESERVED_ENV:
            raise BundleError(f"job.env: {name} is set by the worker; choose another name")
        if not isinstance(text, str):
            raise BundleError(f"job.env.{name}: expected a string, got {text!r}")
        if "\0" in text:
            raise BundleError(f"job.env.{name}: holds a NUL character")
        size += len(name) + len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_ENV_BYTES:
        raise BundleError(f"job.env: at most {MAX_ENV_BYTES} bytes of names and values in all, got {size}")
    return tuple(sorted(value.items()))


def _args(value: object) -> tuple[str, ...]:
    args = _str_list("job.args", value)
    if len(args) > MAX_ARGS:
        raise BundleError(f"job.args: at most {MAX_ARGS} arguments, got {len(args)}")
    size = sum(len(a.encode("utf-8", "surrogatepass")) for a in args)
    if size > MAX_ARGS_BYTES:
        raise BundleError(f"job.args: at most {MAX_ARGS_BYTES} bytes in all, got {size}")
    if any("\0" in a for a in args):
        raise BundleError("job.args: an argument holds a NUL character")
    known = ", ".join(f"{{{name}}}" for name in ARG_PLACEHOLDERS)
    for i, arg in enumerate(args):
        for match in _PLACEHOLDER.finditer(arg):
            name = match.group(2)
            if name is not None and name not in ARG_PLACEHOLDERS:
                raise BundleError(
                    f"job.args[{i}]: unknown placeholder {{{name}}} in {arg!r}; known: {known} "
                    f"(write {{{{{name}}}}} for a literal {{{name}}})"
                )
    return args


MAX_STEPS = 64
"""Most ``[[job.steps]]``."""
PYTHON = "python"
"""How a command names the job's Python (the only program outside the bundle a command may run)."""
_STEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _command(where: str, value: object) -> tuple[str, ...]:
    """A checked command: ``python`` or a ``.py`` file of the bundle first (the latter becomes
    ``python FILE``), then arguments; placeholders as in ``job.args``."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise BundleError(
            f'{where}: expected a non-empty list of strings, e.g. ["python", "train.py"], got {_short(value)}'
        )
    argv = list(value)
    program = argv[0]
    if program != PYTHON:
        if program.endswith(".py") and not program.startswith("/"):
            argv = [PYTHON, safe_relpath(where, program), *argv[1:]]
        else:
            raise BundleError(
                f"{where}: cannot run {program!r}: a command starts with python (the job's Python) "
                'or a .py file of the bundle, e.g. ["python", "train.py"]'
            )
    try:
        _args(argv[1:])
    except BundleError as exc:
        raise BundleError(str(exc).replace("job.args", where, 1)) from None
    return tuple(argv)


def _script(argv: tuple[str, ...]) -> str | None:
    """The bundle file a ``python`` command runs (``python [-u] FILE ...``), or None (``-m``, ``-c``)."""
    for arg in argv[1:]:
        if arg in ("-u", "-B", "-O", "-OO"):
            continue
        if arg.startswith("-") or "{" in arg:
            return None
        return safe_relpath("job.command", arg)
    return None


def _steps(job: Mapping[str, Any]) -> tuple[tuple[StepSection, ...], bool | None]:
    """``job.command`` or ``[[job.steps]]`` (at most one of them, and not with ``entrypoint``/``args``)."""
    given = [key for key in ("entrypoint", "command", "steps") if key in job]
    if len(given) > 1:
        raise BundleError(f"[job]: give one of entrypoint, command or steps, not {' and '.join(given)}")
    torchrun = job.get("torchrun")
    if torchrun is not None and not isinstance(torchrun, bool):
        raise BundleError(f"job.torchrun: expected true or false, got {_short(torchrun)}")
    if not given or given[0] == "entrypoint":
        return (), torchrun
    if "args" in job:
        raise BundleError(f"job.args: only with job.entrypoint; put the arguments in job.{given[0]}")
    if given[0] == "command":
        return (StepSection("main", _command("job.command", job["command"]), torchrun),), torchrun
    if torchrun is not None:
        raise BundleError("job.torchrun: with steps, set torchrun on each step")
    raw = job["steps"]
    if not isinstance(raw, list) or not raw or not all(isinstance(t, dict) for t in raw):
        raise BundleError('job.steps: expected [[job.steps]] tables, each with name = "..." and command = [...]')
    if len(raw) > MAX_STEPS:
        raise BundleError(f"job.steps: at most {MAX_STEPS} steps, got {len(raw)}")
    steps: list[StepSection] = []
    for i, table in enumerate(raw):
        where = f"job.steps[{i}]"
        _check_keys(where, table, {"name", "command", "torchrun"})
        name = table.get("name", f"step{i + 1}")
        if not isinstance(name, str) or not _STEP_NAME.fullmatch(name):
            raise BundleError(f"{where}.name: letters, digits, _ . - (at most 64, not first _ . -), got {_short(name)}")
        if any(step.name == name for step in steps):
            raise BundleError(f"{where}.name: {name!r} names two steps")
        if "command" not in table:
            raise BundleError(f'{where}.command: required, e.g. ["python", "train.py"]')
        flag = table.get("torchrun")
        if flag is not None and not isinstance(flag, bool):
            raise BundleError(f"{where}.torchrun: expected true or false, got {_short(flag)}")
        steps.append(StepSection(name, _command(f"{where}.command", table["command"]), flag))
    size = sum(len(a.encode("utf-8", "surrogatepass")) for step in steps for a in step.command)
    if size > MAX_ARGS_BYTES:
        raise BundleError(f"job.steps: at most {MAX_ARGS_BYTES} bytes of commands in all, got {size}")
    return tuple(steps), None


@dataclass(frozen=True, slots=True)
class LaunchStep:
    """A step as it runs: its name, its command with placeholders expanded (``python`` first), and the
    number of processes torchrun starts for it (1: no torchrun)."""

    name: str
    argv: tuple[str, ...]
    nproc: int = 1


def launch_steps(spec: JobSpec, folders: Mapping[str, str]) -> tuple[LaunchStep, ...]:
    """What runs for ``spec``, in order: its steps (or its entrypoint as one step named ``main``) with
    placeholders replaced from ``folders``, each under torchrun on ``resources.gpus`` processes when
    the job has more than one device, unless the step (or ``job.torchrun``) says ``false``."""
    job = spec.job
    gpus = spec.resources.gpus
    sections = job.steps or (StepSection("main", (PYTHON, job.entrypoint, *job.args), job.torchrun),)
    steps = []
    for step in sections:
        distributed = gpus > 1 if step.torchrun is None else step.torchrun
        steps.append(LaunchStep(step.name, expand_args(step.command, folders), gpus if distributed else 1))
    return tuple(steps)


def launcher_steps(spec: JobSpec, folders: Mapping[str, str]) -> tuple[LaunchStep, ...]:
    """:func:`launch_steps` when the job needs the launcher (steps, a command, torchrun), else ``()``:
    an entrypoint job on one device runs as ``python entrypoint *args`` directly."""
    steps = launch_steps(spec, folders)
    if spec.job.steps or any(step.nproc > 1 for step in steps):
        return steps
    return ()


def expand_args(args: tuple[str, ...], folders: Mapping[str, str]) -> tuple[str, ...]:
    """``args`` with each ``{name}`` of :data:`ARG_PLACEHOLDERS` replaced by ``folders[name]``.

    ``{{name}}`` stands for a literal ``{name}``; braces around anything but a name (JSON, say) are
    left as they are. An unknown name is a :class:`BundleError` (a bundle that was read has none).
    """

    def replace(match: re.Match[str]) -> str:
        literal, name = match.group(1), match.group(2)
        if literal is not None:
            return f"{{{literal}}}"
        if name not in folders:
            raise BundleError(f"job.args: unknown placeholder {{{name}}}")
        return folders[name]

    return tuple(_PLACEHOLDER.sub(replace, arg) for arg in args)


def check_path_length(where: str, path: str) -> None:
    """Raise :class:`BundleError` when ``path`` (or one of its components) is too long to create."""
    size = len(path.encode("utf-8", "surrogateescape"))
    if size > MAX_PATH_BYTES:
        raise BundleError(f"{where}: a path of {size} bytes is longer than the limit of {MAX_PATH_BYTES}")
    for part in path.split("/"):
        length = len(part.encode("utf-8", "surrogateescape"))
        if length > MAX_NAME_BYTES:
            raise BundleError(
                f"{where}: the name {part[:40]!r}... is {length} bytes, longer than the limit of {MAX_NAME_BYTES}"
            )


def safe_relpath(where: str, value: str) -> str:
    """Return ``value`` normalized as a relative POSIX path, or raise if it could escape the bundle."""
    if not value or "\0" in value or "\\" in value:
        raise BundleError(f"{where}: invalid path {value!r}")
    pure = PurePosixPath(value)
    if pure.is_absolute():
        raise BundleError(f"{where}: absolute path not allowed: {value!r}")
    if any(part == ".." for part in pure.parts):
        raise BundleError(f"{where}: path escapes the bundle: {value!r}")
    norm = posixpath.normpath(value)
    if norm in (".", ""):
        raise BundleError(f"{where}: invalid path {value!r}")
    return norm


def parse_job_toml(text: str) -> JobSpec:
    """Parse and validate the text of a ``job.toml``; raise :class:`BundleError` naming the problem.

    Every bound (``MAX_*`` of this module) is checked here, so a bad value is one line at submit.
    """
    if len(text) > MAX_JOB_TOML_BYTES:
        raise BundleError(f"job.toml: longer than the limit of {MAX_JOB_TOML_BYTES} bytes")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BundleError(f"job.toml: not valid TOML: {exc}") from None
    except RecursionError:
        raise BundleError("job.toml: arrays or tables nested too deeply") from None
    _check_keys("job.toml", data, {"job", "resources", "verification", "market", "environment"})

    job = _table(data, "job", True)
    _check_keys("[job]", job, {"entrypoint", "args", "inputs", "env", "datasets", "command", "steps", "torchrun"})
    steps, torchrun = _steps(job)
    entry = ""
    if not steps:
        if "entrypoint" not in job:
            raise BundleError(
                "job.entrypoint: required (the Python script to run), "
                'or job.command = ["python", ...], or [[job.steps]]'
            )
        entry = job["entrypoint"]
        if not isinstance(entry, str):
            raise BundleError(f"job.entrypoint: expected a string, got {entry!r}")
        entry = safe_relpath("job.entrypoint", entry)
        if not entry.endswith(".py"):
            raise BundleError(f"job.entrypoint: must be a .py file, got {entry!r}")
    args = _args(job.get("args", []))
    inputs = tuple(safe_relpath("job.inputs", p) for p in _str_list("job.inputs", job.get("inputs", [])))

    res = _table(data, "resources", False)
    _check_keys(
        "[resources]", res, {"device", "gpus", "min_memory_gb", "max_gpu_hours", "timeout_s", "python", "torch"}
    )
    resources = ResourcesSection(
        device=cast(Device, _choice("resources.device", res.get("device", "cuda"), get_args(Device))),
        gpus=_int("resources.gpus", res.get("gpus", 1), 1, MAX_GPUS),
        min_memory_gb=_float("resources.min_memory_gb", res.get("min_memory_gb", 0.0), 0.0, maximum=MAX_MIN_MEMORY_GB),
        max_gpu_hours=_float(
            "resources.max_gpu_hours", res.get("max_gpu_hours", 1.0), 0.0, strict=True, maximum=MAX_GPU_HOURS
        ),
        timeout_s=_int("resources.timeout_s", res.get("timeout_s", 3600), 1, MAX_TIMEOUT_S),
        python=parse_version_range("resources.python", res.get("python", "")),
        torch=parse_version_range("resources.torch", res.get("torch", "")),
    )

    ver = _table(data, "verification", False)
    _check_keys("[verification]", ver, {"policy", "redundancy", "replay_fraction", "tolerance", "outputs"})
    policy = cast(Policy, _choice("verification.policy", ver.get("policy", "none"), get_args(Policy)))
    redundancy = _int(
        "verification.redundancy", ver.get("redundancy", 2 if policy == "redundant" else 1), 1, MAX_REDUNDANCY
    )
    if policy == "redundant" and redundancy < 2:
        raise BundleError("verification.redundancy: the redundant policy needs at least 2 providers")
    fraction = _float("verification.replay_fraction", ver.get("replay_fraction", 0.1), 0.0, strict=True)
    if fraction > 1:
        raise BundleError(f"verification.replay_fraction: must be at most 1, got {fraction}")
    verification = VerificationSection(
        policy=policy,
        redundancy=redundancy,
        replay_fraction=fraction,
        tolerance=_float("verification.tolerance", ver.get("tolerance", 1e-4), 0.0),
        outputs=_answer_patterns(ver.get("outputs", [])),
    )

    mkt = _table(data, "market", True)
    _check_keys("[market]", mkt, {"max_price", "auction"})
    if "max_price" not in mkt:
        raise BundleError("market.max_price: required (tokens per GPU-hour, as a decimal string)")
    market = MarketSection(
        max_price=parse_price(mkt["max_price"]),
        auction=cast(Auction, _choice("market.auction", mkt.get("auction", "sealed"), get_args(Auction))),
    )
    env = _env(job.get("env", {}))
    datasets = parse_datasets_table(job.get("datasets", {}))
    if resources.gpus == 1 and (torchrun or any(step.torchrun for step in steps)):
        raise BundleError("job.torchrun: torchrun needs resources.gpus of 2 or more")
    environment = parse_environment(_table(data, "environment", False), safe_relpath)
    return JobSpec(
        JobSection(entry, args, inputs, env, datasets, steps, torchrun), resources, verification, market, environment
    )


DATASET_PREFIX = "data:"
"""What every dataset name starts with."""
DATASET_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
"""What the key of a ``job.datasets`` entry looks like (its folder's name under ``/job/data``)."""
MAX_DATASETS = 16
"""Most datasets one job reads."""


def parse_dataset(text: str, where: str = "dataset") -> bytes:
    """The 32-byte hash a ``data:<64 hex>`` name (or bare 64 hex digits) stands for; one-line error otherwise."""
    if not isinstance(text, str):
        raise BundleError(f"{where}: expected a name like data:<64 hex digits>, got {text!r}")
    hexpart = text.removeprefix(DATASET_PREFIX).removeprefix("0x")
    if not re.fullmatch(r"[0-9a-fA-F]{64}", hexpart):
        raise BundleError(f"{where}: {text[:80]!r} is not a dataset name (data:<64 hex digits>)")
    return bytes.fromhex(hexpart)


def parse_datasets_table(value: object) -> tuple[tuple[str, bytes], ...]:
    """``job.datasets``: a table of ``name = "data:<hex>"``; returned sorted by name."""
    if not isinstance(value, dict):
        raise BundleError('job.datasets: a table of name = "data:<hex>", e.g. { train = "data:3f0c…" }')
    if len(value) > MAX_DATASETS:
        raise BundleError(f"job.datasets: at most {MAX_DATASETS} datasets")
    out: list[tuple[str, bytes]] = []
    for name, ref in sorted(value.items()):
        if not DATASET_NAME.fullmatch(name):
            raise BundleError(
                f"job.datasets: {name[:40]!r} is not a dataset folder name (a-z, 0-9, _; a letter first; at most 32)"
            )
        out.append((name, parse_dataset(ref, f"job.datasets.{name}")))
    return tuple(out)


def _walk_regular(root: Path) -> list[tuple[str, Path]]:
    """List the bundle's regular files (sorted); refuse symlinks, special files and what no worker would unpack.

    The archive bounds hold here too (entries, path lengths, UTF-8 names), so a requester learns at
    submit what a worker would refuse.
    """
    found: list[tuple[str, Path]] = []
    entries = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        entries += len(dirnames) + len(filenames)
        if entries > MAX_ENTRIES:
            raise BundleError(f"bundle: more than {MAX_ENTRIES} files and directories")
        for name in [*dirnames, *filenames]:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                raise BundleError(f"bundle: a file name is not valid UTF-8: {rel!r}") from None
            check_path_length("bundle", rel)
            if full.is_symlink():
                raise BundleError(f"bundle: symbolic links are not allowed: {rel}")
        for name in filenames:
            full = Path(dirpath) / name
            if not full.is_file():
                raise BundleError(f"bundle: not a regular file: {full.relative_to(root).as_posix()}")
            found.append((full.relative_to(root).as_posix(), full))
    found.sort(key=lambda item: item[0].encode("utf-8"))
    return found


def regular_files(directory: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """The tree's regular files as (relative POSIX path, path), sorted; links and special files refused."""
    return _walk_regular(Path(directory))


class BundleHasher:
    """The bundle hash computed incrementally: :meth:`file` opens each file (in sorted order), then
    :meth:`update` feeds its bytes; :meth:`digest` gives the 32 bytes :func:`bundle_hash` would."""

    __slots__ = ("_h",)

    def __init__(self) -> None:
        # One thread: BLAKE3's SIMD path alone runs at several GiB/s here, and its multi-threaded
        # mode waits on preempted helper threads when the cores are busy (several times slower here).
        self._h = blake3.blake3(_HASH_DOMAIN)

    def file(self, rel: str, size: int) -> None:
        """Start the file at relative POSIX path ``rel`` of ``size`` bytes."""
        self._h.update(rel.encode("utf-8") + b"\0" + size.to_bytes(8, "big"))

    def update(self, data: bytes | memoryview) -> None:
        """Feed the next bytes of the current file."""
        self._h.update(data)

    def digest(self) -> bytes:
        """The hash of what was fed so far."""
        return self._h.digest()


def _hash_files(files: list[tuple[str, Path]]) -> bytes:
    h = BundleHasher()
    for rel, full in files:
        with open(full, "rb") as fh:
            h.file(rel, os.fstat(fh.fileno()).st_size)
            while block := fh.read(_READ):
                h.update(block)
    return h.digest()


def bundle_hash(directory: str | os.PathLike[str]) -> bytes:
    """Return the 32-byte bundle hash of a bundle directory (see the module docstring)."""
    return _hash_files(_walk_regular(Path(directory)))


def _answer_patterns(value: Any) -> tuple[str, ...]:
    """``verification.outputs``: a list of relative glob patterns naming the job's answer."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BundleError('verification.outputs: a list of file patterns, e.g. ["*.safetensors", "work/model.pt"]')
    for pattern in value:
        parts = pattern.split("/")
        if not pattern or pattern.startswith("/") or ".." in parts or len(pattern) > 256:
            raise BundleError(f"verification.outputs: {pattern!r} is not a relative pattern inside the results")
    if len(value) > 64:
        raise BundleError("verification.outputs: at most 64 patterns")
    return tuple(value)


def load_bundle(directory: str | os.PathLike[str], *, known_hash: bytes | None = None) -> Bundle:
    """Parse and validate the bundle directory: its ``job.toml``, entrypoint and inputs, no links.

    ``known_hash`` is the bundle hash when the caller computed it from the very bytes it wrote
    (:func:`unpack_bundle` does, while extracting); otherwise the files are hashed here.
    """
    spec, walked, torch_ranges = _validate(Path(directory))
    return Bundle(Path(directory), spec, known_hash if known_hash is not None else _hash_files(walked), torch_ranges)


def _validate(root: Path) -> tuple[JobSpec, list[tuple[str, Path]], tuple[str, ...]]:
    """The bundle's spec, its regular files and its torch ranges, checked as :func:`load_bundle` describes."""
    if not root.is_dir():
        raise BundleError(f"bundle: not a directory: {root}")
    walked = _walk_regular(root)
    files = dict(walked)
    if "job.toml" not in files:
        raise BundleError("bundle: no job.toml at its root")
    if files["job.toml"].stat().st_size > MAX_JOB_TOML_BYTES:
        raise BundleError(f"job.toml: longer than the limit of {MAX_JOB_TOML_BYTES} bytes")
    try:
        text = files["job.toml"].read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BundleError("job.toml: not UTF-8 text") from None
    spec = parse_job_toml(text)
    if spec.job.entrypoint and spec.job.entrypoint not in files:
        raise BundleError(f"job.entrypoint: {spec.job.entrypoint!r} is not a file in the bundle")
    for i, step in enumerate(spec.job.steps):
        script = _script(step.command)
        if script is not None and script not in files:
            raise BundleError(f"job step {i + 1} ({step.name}): {script!r} is not a file in the bundle")
    for name in spec.job.inputs:
        if name not in files:
            raise BundleError(f"job.inputs: {name!r} is not a file in the bundle")
    return spec, walked, _environment_ranges(spec, files)


def _environment_ranges(spec: JobSpec, files: Mapping[str, Path]) -> tuple[str, ...]:
    """Check the ``[environment]`` files (present, readable, well formed); return the bundle's torch ranges."""
    section = spec.environment
    data: dict[str, bytes] = {}
    for key, name in (("requirements", section.requirements), ("lock", section.lock), ("project", section.project)):
        if name is None:
            continue
        if name not in files:
            raise BundleError(f"environment.{key}: {name!r} is not a file in the bundle")
        data[name] = files[name].read_bytes()
    if section.requirements is not None:
        parse_requirements(f"environment.requirements {section.requirements}", data[section.requirements])
    if section.lock is not None and section.project is not None:
        parse_lock(f"environment.lock {section.lock}", data[section.lock])
        check_project(f"environment.project {section.project}", data[section.project])
    ranges = torch_pins(section, data)
    return ((spec.resources.torch,) if spec.resources.torch else ()) + ranges


def _stored(data: bytes) -> bytes:
    """``data`` as raw deflate in stored (uncompressed) blocks, the last one final."""
    parts: list[bytes | memoryview] = []
    view = memoryview(data)
    for pos in range(0, len(data), 0xFFFF):
        piece = view[pos : pos + 0xFFFF]
        n = len(piece)
        parts.append(b"\x00" + n.to_bytes(2, "little") + (n ^ 0xFFFF).to_bytes(2, "little"))
        parts.append(piece)
    parts.append(b"\x01\x00\x00\xff\xff")
    return b"".join(parts)


def _gzip_member(block: bytes, level: int = 6) -> bytes:
    """One gzip member of ``block``: deflated at ``level``, or stored when a sample of it does not shrink."""
    sample = block[:_SAMPLE]
    if len(zlib.compress(sample, 1)) > _STORE_RATIO * len(sample):
        body = _stored(block)
    else:
        deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        body = deflate.compress(block) + deflate.flush()
    tail = zlib.crc32(block).to_bytes(4, "little") + (len(block) & 0xFFFFFFFF).to_bytes(4, "little")
    return b"".join((_GZIP_HEADER, body, tail))


class PackedArchive(bytes):
    """A packed archive's bytes with their sha256 (:attr:`sha256`), hashed while packing.

    It is ``bytes`` everywhere bytes are expected; :meth:`WorkerClient.upload_bundle
    <marketplace.requester.client.WorkerClient.upload_bundle>` takes the digest from it instead of
    hashing the archive again.
    """

    sha256: bytes


def _packed(data: Any, sha256: bytes) -> PackedArchive:
    packed = PackedArchive(data)
    packed.sha256 = sha256
    return packed


class _BlockWriter(io.RawIOBase):
    """Collects a tar stream and cuts it into :data:`PACK_BLOCK` blocks, compressed by a thread pool."""

    def __init__(self, out: IO[bytes], pool: ThreadPoolExecutor, window: int, level: int = 6) -> None:
        super().__init__()
        self._level = level
        self._out = out
        self._pool = pool
        self._window = window
        self._buf = bytearray()
        self._pending: list[Any] = []
        self._written = 0
        self.sha256 = hashlib.sha256()
        """The archive's running sha256 (each member hashed as it is written, while others compress)."""

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._written

    def write(self, data: Any) -> int:
        self._written += len(data)
        self._buf += data
        while len(self._buf) >= PACK_BLOCK:
            self._submit(bytes(self._buf[:PACK_BLOCK]))
            del self._buf[:PACK_BLOCK]
        return len(data)

    def _submit(self, block: bytes) -> None:
        self._pending.append(self._pool.submit(_gzip_member, block, self._level))
        while len(self._pending) > self._window:
            self._emit(self._pending.pop(0).result())

    def _emit(self, member: bytes) -> None:
        self.sha256.update(member)
        self._out.write(member)

    def finish(self) -> None:
        if self._buf or not self._pending:
            self._submit(bytes(self._buf))
            self._buf.clear()
        for future in self._pending:
            self._emit(future.result())
        self._pending.clear()


def pack_bundle(
    directory: str | os.PathLike[str],
    archive: str | os.PathLike[str] | None = None,
    *,
    threads: int | None = None,
) -> PackedArchive:
    """Write the canonical ``.tar.gz`` of a bundle directory; return its bytes.

    The archive holds only regular files (mode 0644), sorted, with owner, group and times zeroed,
    so its bytes depend on the tree alone (never on ``threads``). The tar stream is compressed in
    :data:`PACK_BLOCK` blocks, each a gzip member, by ``threads`` threads (default: every core);
    a block that does not shrink is stored (see the module docstring). The directory is validated
    first. The bytes returned are a :class:`PackedArchive`: they carry their sha256, hashed while
    packing.
    """
    _spec, walked, _ranges = _validate(Path(directory))
    return _pack_files(walked, archive, threads, 6)


def pack_tree(
    directory: str | os.PathLike[str],
    archive: str | os.PathLike[str] | None = None,
    *,
    compresslevel: int = 6,
    threads: int | None = None,
) -> PackedArchive:
    """The canonical ``.tar.gz`` of any tree of regular files (what :func:`pack_bundle` writes, unchecked)."""
    return _pack_files(_walk_regular(Path(directory)), archive, threads, compresslevel)


def _pack_files(
    walked: list[tuple[str, Path]], archive: str | os.PathLike[str] | None, threads: int | None, level: int
) -> PackedArchive:
    workers = max(1, threads or os.cpu_count() or 1)
    raw = io.BytesIO()
    with ThreadPoolExecutor(workers, thread_name_prefix="pack") as pool:
        blocks = _BlockWriter(raw, pool, 2 * workers, level)
        with tarfile.TarFile(
            fileobj=cast(IO[bytes], blocks), mode="w", format=tarfile.PAX_FORMAT, copybufsize=_READ
        ) as tar:
            for rel, full in walked:
                info = tarfile.TarInfo(rel)
                info.size = full.stat().st_size
                info.mode = 0o644
                info.mtime = 0
                with open(full, "rb") as fh:
                    tar.addfile(info, fh)
        blocks.finish()
    data = _packed(raw.getbuffer(), blocks.sha256.digest())
    if archive is not None:
        Path(archive).write_bytes(data)
    return data


class _GzipStream(io.RawIOBase):
    """Decompresses a gzip file of one or more members from ``source``, a little at a time.

    Each member's CRC32 and length are checked by zlib; at most ``_READ`` bytes are inflated per
    call, so a small input that would expand enormously never sits whole in memory.
    """

    def __init__(self, source: IO[bytes]) -> None:
        super().__init__()
        self._src = source
        self._d: Any = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._tail = b""
        self._started = False
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        want = _READ if size is None or size < 0 else min(size, _READ)
        while not self._ended:
            if self._d.eof:
                rest = self._d.unused_data
                self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._tail = rest
                if not rest:
                    rest = self._src.read(_READ)
                    if not rest:
                        self._ended = True
                        break
                    self._tail = rest
                continue
            if not self._tail:
                self._tail = self._d.unconsumed_tail or self._src.read(_READ)
                if not self._tail:
                    raise EOFError("the gzip stream ends inside a member")
            out = self._d.decompress(self._tail, want)
            self._tail = self._d.unconsumed_tail
            self._started = True
            if out:
                return bytes(out)
        if not self._started:
            raise EOFError("empty archive")
        return b""


class _ForwardReader:
    """The tar stream of an archive as :mod:`tarfile` reads it (``read``, ``tell``, forward ``seek``),
    with members' content taken out by :meth:`blocks` as the inflated blocks themselves.

    tarfile's own stream reader joins and slices its buffer for every read (three copies of each
    byte, and two more through ``extractfile``); headers still go through tarfile here, while a
    member's bytes are handed on as (views of) the blocks :class:`_GzipStream` produced. Only forward
    seeks are served: tarfile asks for nothing else when each member's content is read before the
    next header.
    """

    def __init__(self, source: _GzipStream) -> None:
        self._src = source
        self._buf = b""
        self._off = 0
        self._pos = 0  # position in the tar stream of self._buf[0]

    def _fill(self) -> bool:
        block = self._src.read(_READ)
        if not block:
            return False
        rest = self._buf[self._off :]  # a header's bytes split across blocks: under 512 bytes, as a rule
        self._pos += self._off
        self._buf, self._off = (rest + block if rest else block), 0
        return True

    def tell(self) -> int:
        return self._pos + self._off

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            size = len(self._buf) - self._off
        while len(self._buf) - self._off < size and self._fill():
            pass
        data = self._buf[self._off : self._off + size]
        self._off += len(data)
        return data

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET or pos < self.tell():
            raise io.UnsupportedOperation("a bundle archive is read forward only")
        skip = pos - self.tell()
        while skip:
            if self._off >= len(self._buf) and not self._fill():
                break  # past the end: the read that follows finds nothing
            step = min(skip, len(self._buf) - self._off)
            self._off += step
            skip -= step
        return self.tell()

    def blocks(self, size: int) -> Any:
        """The stream's next ``size`` bytes as bytes or memoryviews (fewer at the stream's end)."""
        while size > 0:
            if self._off >= len(self._buf) and not self._fill():
                return
            n = min(size, len(self._buf) - self._off)
            if self._off == 0 and n == len(self._buf):
                piece: bytes | memoryview = self._buf
            else:
                piece = memoryview(self._buf)[self._off : self._off + n]
            self._off += n
            size -= n
            yield piece


_EXTENDED = frozenset(
    {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
)
_KEPT = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE})
_MAX_CHAINED_HEADERS = 8


class _BoundedTarInfo(tarfile.TarInfo):
    """A tar header checked before :mod:`tarfile` acts on it.

    tarfile reads a pax or GNU long-name header's payload whole into memory, follows chains of them
    recursively and builds sparse maps of any length; here the header block's size field is checked
    first (at most :data:`MAX_EXTENDED_HEADER_BYTES`), chains are cut at a few headers, sparse
    members are refused, and links, devices and FIFOs are refused before their payload is read.
    """

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        chained = getattr(tarfile_, "_flopex_chained", 0)
        if self.type in _EXTENDED:
            if self.size > MAX_EXTENDED_HEADER_BYTES:
                raise BundleError(
                    f"bundle archive: an extended (pax or GNU long-name) header of {self.size} bytes "
                    f"exceeds the limit of {MAX_EXTENDED_HEADER_BYTES}"
                )
            if chained >= _MAX_CHAINED_HEADERS:
                raise BundleError(f"bundle archive: more than {_MAX_CHAINED_HEADERS} extended headers in a row")
            tarfile_._flopex_chained = chained + 1  # type: ignore[attr-defined]
        else:
            tarfile_._flopex_chained = 0  # type: ignore[attr-defined]
            if self.type not in _KEPT:
                raise BundleError(
                    f"bundle archive: member {self.name[:80]!r} is not a regular file (links, devices, "
                    "FIFOs and sparse files are refused)"
                )
        result: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        return result

    def _refuse_sparse(self, *args: object) -> None:
        raise BundleError("bundle archive: sparse members are refused")

    _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _refuse_sparse


def unpack_bundle(
    archive: str | os.PathLike[str] | IO[bytes],
    dest: str | os.PathLike[str],
    *,
    max_bytes: int,
    max_files: int = MAX_ENTRIES,
) -> Bundle:
    """Extract an untrusted bundle archive (a path, or a binary stream read once) into the new
    directory ``dest`` and validate it.

    Refuses links, devices, FIFOs, sparse files, absolute or ``..`` member names, duplicate
    members, more than ``max_files`` members (directories count), paths longer than
    :data:`MAX_PATH_BYTES` (or a name longer than :data:`MAX_NAME_BYTES`), extended headers over
    :data:`MAX_EXTENDED_HEADER_BYTES` (checked on the header block, before tarfile reads them)
    and more than ``max_bytes`` of content; bytes are counted as they are written (a header's size
    is never trusted). The archive is read as a stream, once; a gzip file of several members (as
    :func:`pack_bundle` writes) is read whole. The bundle hash is computed from the bytes as they
    are written when the members come in canonical (sorted) order, and from the files otherwise.
    On any error ``dest`` is left partial and the caller discards it.
    """
    _total, digest = _open_extract(archive, dest, max_bytes, max_files)
    return load_bundle(dest, known_hash=digest)


def unpack_tree(
    archive: str | os.PathLike[str] | IO[bytes],
    dest: str | os.PathLike[str],
    *,
    max_bytes: int,
    max_files: int = MAX_ENTRIES,
) -> int:
    """Extract an untrusted archive into the new directory ``dest`` as :func:`unpack_bundle` does,
    without reading it as a bundle; return the bytes written."""
    return _open_extract(archive, dest, max_bytes, max_files)[0]


def _open_extract(
    archive: str | os.PathLike[str] | IO[bytes], dest: str | os.PathLike[str], max_bytes: int, max_files: int
) -> tuple[int, bytes | None]:
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=False)
    if isinstance(archive, str | os.PathLike):
        try:
            source: IO[bytes] = open(archive, "rb")
        except OSError as exc:
            raise BundleError(f"bundle archive: not a readable .tar.gz: {exc}") from None
        with source:
            return _extract(source, out, max_bytes, max_files)
    return _extract(archive, out, max_bytes, max_files)


def _extract(source: IO[bytes], out: Path, max_bytes: int, max_files: int) -> tuple[int, bytes | None]:
    """Extract the archive into ``out``; the content bytes written, and the bundle hash when the
    members came in canonical order (``None`` otherwise)."""
    total = 0
    entries = 0
    seen: set[str] = set()
    hasher: BundleHasher | None = BundleHasher()
    previous = b""
    try:
        reader = _ForwardReader(_GzipStream(source))
        tar = tarfile.open(fileobj=cast(IO[bytes], reader), mode="r:", tarinfo=_BoundedTarInfo)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BundleError(f"bundle archive: not a readable .tar.gz: {exc}") from None
    except RecursionError:
        raise BundleError("bundle archive: extended headers nested too deeply") from None
    with tar:
        try:
            for member in tar:
                entries += 1
                if entries > max_files:
                    raise BundleError(f"bundle archive: more than {max_files} entries (files and directories)")
                tar.members.clear()  # type: ignore[attr-defined]  # a stream needs no index of what it passed
                where = f"bundle archive member {member.name[:80]!r}"
                check_path_length(where, member.name)
                name = safe_relpath(where, member.name)
                if member.isdir():
                    continue  # counted, never created: a bundle is its regular files (their parents are made)
                if not member.isreg():
                    raise BundleError(
                        f"bundle archive: member {member.name!r} is not a regular file (links, "
                        "devices and FIFOs are refused)"
                    )
                if name in seen:
                    raise BundleError(f"bundle archive: duplicate member {name!r}")
                seen.add(name)
                key = name.encode("utf-8", "surrogateescape")
                if hasher is not None and key <= previous:
                    hasher = None  # not in canonical order: hashed from the files at the end
                previous = key
                target = out / name
                target.parent.mkdir(parents=True, exist_ok=True)
                parent = target.parent
                if not parent.resolve().is_relative_to(out.resolve()):
                    raise BundleError(f"bundle archive: member {member.name!r} escapes the bundle")
                if hasher is not None:
                    hasher.file(name, member.size)
                written = 0
                reader.seek(member.offset_data)
                with open(target, "xb") as fh:
                    for block in reader.blocks(member.size):
                        total += len(block)
                        written += len(block)
                        if total > max_bytes:
                            raise BundleError(f"bundle archive: content exceeds the limit of {max_bytes} bytes")
                        fh.write(block)
                        if hasher is not None:
                            hasher.update(block)
                if written != member.size:
                    raise BundleError(f"bundle archive: member {member.name!r} is cut short")
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise BundleError(f"bundle archive: corrupt: {exc}") from None
        except RecursionError:
            raise BundleError("bundle archive: extended headers nested too deeply") from None
        except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
            raise BundleError(f"bundle archive: a member clashes with another: {exc.strerror}") from None
    return total, None if hasher is None else hasher.digest()
