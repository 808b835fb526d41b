"""Job bundles: the ``job.toml`` format, its validation, the bundle hash and archives.

A bundle is a directory with a ``job.toml`` at its root (see DESIGN.md), or a ``.tar.gz`` of
one. :func:`load_bundle` parses and validates a directory; :func:`pack_bundle` writes a
canonical archive of it (sorted members, zeroed owners and times, so the same tree always
packs to the same bytes); :func:`unpack_bundle` extracts an untrusted archive, refusing links,
devices, absolute or ``..`` members and anything beyond a byte limit counted while extracting.

The *bundle hash* (what the requester posts on chain and the worker recomputes) is::

    sha256( b"flopex-bundle-v1\\0"
            ‖ for each regular file, in sorted order of its relative POSIX path (UTF-8 bytes):
                  path ‖ b"\\0" ‖ uint64_be(size) ‖ file bytes )
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
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path, PurePosixPath
from typing import Any, Literal, cast, get_args

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
    "MAX_ARGS",
    "MAX_ARGS_BYTES",
    "MAX_ENTRIES",
    "MAX_EXTENDED_HEADER_BYTES",
    "MAX_GPUS",
    "MAX_GPU_HOURS",
    "MAX_JOB_TOML_BYTES",
    "MAX_MIN_MEMORY_GB",
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "MAX_REDUNDANCY",
    "MAX_TIMEOUT_S",
    "TOKEN_DECIMALS",
    "Auction",
    "Bundle",
    "Device",
    "EnvironmentSection",
    "JobSection",
    "JobSpec",
    "MarketSection",
    "Policy",
    "ResourcesSection",
    "VerificationSection",
    "bundle_hash",
    "check_path_length",
    "expand_args",
    "load_bundle",
    "pack_bundle",
    "parse_job_toml",
    "parse_price",
    "safe_relpath",
    "unpack_bundle",
]

TOKEN_DECIMALS = 18
"""Decimals of the compute token: prices are integers in units of 10**-18 tokens."""

Device = Literal["cuda", "cpu"]
Policy = Literal["none", "redundant", "replay", "freivalds", "optimistic"]
Auction = Literal["sealed", "instant"]

_HASH_DOMAIN = b"flopex-bundle-v1\0"
_READ = 1 << 20

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
ARG_PLACEHOLDERS = ("input_dir", "output_dir", "checkpoint_dir", "work_dir")
"""What ``{name}`` in a ``job.args`` entry may name: the folders of ``FLOPEX_INPUT_DIR``,
``FLOPEX_OUTPUT_DIR``, ``FLOPEX_CHECKPOINT_DIR`` and the working directory, as the job sees them."""
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
class JobSection:
    """``[job]``: what to run. ``entrypoint`` runs as ``python entrypoint *args`` with ``env`` set."""

    entrypoint: str
    args: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    """``job.env``: environment variables for the job, as (name, value) pairs sorted by name."""


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
    _check_keys("[job]", job, {"entrypoint", "args", "inputs", "env"})
    if "entrypoint" not in job:
        raise BundleError("job.entrypoint: required (the Python script to run)")
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
    environment = parse_environment(_table(data, "environment", False), safe_relpath)
    return JobSpec(JobSection(entry, args, inputs, env), resources, verification, market, environment)


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


def bundle_hash(directory: str | os.PathLike[str]) -> bytes:
    """Return the 32-byte bundle hash of a bundle directory (see the module docstring)."""
    h = hashlib.sha256(_HASH_DOMAIN)
    for rel, full in _walk_regular(Path(directory)):
        size = full.stat().st_size
        h.update(rel.encode("utf-8") + b"\0" + size.to_bytes(8, "big"))
        with open(full, "rb") as fh:
            while block := fh.read(_READ):
                h.update(block)
    return h.digest()


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


def load_bundle(directory: str | os.PathLike[str]) -> Bundle:
    """Parse and validate the bundle directory: its ``job.toml``, entrypoint and inputs, no links."""
    root = Path(directory)
    if not root.is_dir():
        raise BundleError(f"bundle: not a directory: {root}")
    files = dict(_walk_regular(root))
    if "job.toml" not in files:
        raise BundleError("bundle: no job.toml at its root")
    if files["job.toml"].stat().st_size > MAX_JOB_TOML_BYTES:
        raise BundleError(f"job.toml: longer than the limit of {MAX_JOB_TOML_BYTES} bytes")
    try:
        text = files["job.toml"].read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BundleError("job.toml: not UTF-8 text") from None
    spec = parse_job_toml(text)
    if spec.job.entrypoint not in files:
        raise BundleError(f"job.entrypoint: {spec.job.entrypoint!r} is not a file in the bundle")
    for name in spec.job.inputs:
        if name not in files:
            raise BundleError(f"job.inputs: {name!r} is not a file in the bundle")
    return Bundle(root, spec, bundle_hash(root), _environment_ranges(spec, files))


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


def pack_bundle(directory: str | os.PathLike[str], archive: str | os.PathLike[str] | None = None) -> bytes:
    """Write the canonical ``.tar.gz`` of a bundle directory; return its bytes.

    The archive holds only regular files (mode 0644), sorted, with owner, group and times zeroed,
    so its bytes depend on the tree alone. The directory is validated first.
    """
    root = Path(directory)
    load_bundle(root)
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for rel, full in _walk_regular(root):
                info = tarfile.TarInfo(rel)
                info.size = full.stat().st_size
                info.mode = 0o644
                info.mtime = 0
                with open(full, "rb") as fh:
                    tar.addfile(info, fh)
    data = raw.getvalue()
    if archive is not None:
        Path(archive).write_bytes(data)
    return data


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
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    max_bytes: int,
    max_files: int = MAX_ENTRIES,
) -> Bundle:
    """Extract an untrusted bundle archive into the new directory ``dest`` and validate it.

    Refuses links, devices, FIFOs, sparse files, absolute or ``..`` member names, duplicate
    members, more than ``max_files`` members (directories count), paths longer than
    :data:`MAX_PATH_BYTES` (or a name longer than :data:`MAX_NAME_BYTES`), extended headers over
    :data:`MAX_EXTENDED_HEADER_BYTES` (checked on the header block, before tarfile reads them)
    and more than ``max_bytes`` of content; bytes are counted as they are written (a header's size
    is never trusted). The archive is read as a stream, once. On any error ``dest`` is left partial
    and the caller discards it.
    """
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=False)
    total = 0
    entries = 0
    seen: set[str] = set()
    try:
        tar = tarfile.open(archive, mode="r|gz", tarinfo=_BoundedTarInfo)
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
                target = out / name
                target.parent.mkdir(parents=True, exist_ok=True)
                parent = target.parent
                if not parent.resolve().is_relative_to(out.resolve()):
                    raise BundleError(f"bundle archive: member {member.name!r} escapes the bundle")
                src = tar.extractfile(member)
                if src is None:
                    raise BundleError(f"bundle archive: member {member.name!r} has no content")
                with src, open(target, "xb") as fh:
                    while block := src.read(_READ):
                        total += len(block)
                        if total > max_bytes:
                            raise BundleError(f"bundle archive: content exceeds the limit of {max_bytes} bytes")
                        fh.write(block)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise BundleError(f"bundle archive: corrupt: {exc}") from None
        except RecursionError:
            raise BundleError("bundle archive: extended headers nested too deeply") from None
        except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
            raise BundleError(f"bundle archive: a member clashes with another: {exc.strerror}") from None
    return load_bundle(out)
