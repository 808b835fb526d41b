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
import tarfile
import tomllib
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path, PurePosixPath
from typing import Any, Literal, cast, get_args

from marketplace.errors import BundleError

__all__ = [
    "TOKEN_DECIMALS",
    "Auction",
    "Bundle",
    "Device",
    "JobSection",
    "JobSpec",
    "MarketSection",
    "Policy",
    "ResourcesSection",
    "VerificationSection",
    "bundle_hash",
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


@dataclass(frozen=True, slots=True)
class JobSection:
    """``[job]``: what to run. ``entrypoint`` runs as ``python entrypoint *args``."""

    entrypoint: str
    args: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ResourcesSection:
    """``[resources]``: the devices a job needs and its limits."""

    device: Device = "cuda"
    gpus: int = 1
    min_memory_gb: float = 0.0
    max_gpu_hours: float = 1.0
    timeout_s: int = 3600


@dataclass(frozen=True, slots=True)
class VerificationSection:
    """``[verification]``: how results are checked (see DESIGN.md, Verification)."""

    policy: Policy = "none"
    redundancy: int = 1
    replay_fraction: float = 0.1
    tolerance: float = 1e-4


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


@dataclass(frozen=True, slots=True)
class Bundle:
    """A validated bundle directory: its root, its spec and its bundle hash (32 bytes)."""

    root: Path
    spec: JobSpec
    hash: bytes


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


def _int(where: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BundleError(f"{where}: expected an integer, got {value!r}")
    if value < minimum:
        raise BundleError(f"{where}: must be at least {minimum}, got {value}")
    return value


def _float(where: str, value: object, minimum: float, *, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BundleError(f"{where}: expected a number, got {value!r}")
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise BundleError(f"{where}: must be finite, got {value!r}")
    if number < minimum or (strict and number == minimum):
        raise BundleError(f"{where}: must be {'above' if strict else 'at least'} {minimum}, got {value!r}")
    return number


def _choice(where: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise BundleError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def _str_list(where: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BundleError(f"{where}: expected a list of strings, got {value!r}")
    return tuple(value)


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
    """Parse and validate the text of a ``job.toml``; raise :class:`BundleError` naming the problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BundleError(f"job.toml: not valid TOML: {exc}") from None
    _check_keys("job.toml", data, {"job", "resources", "verification", "market"})

    job = _table(data, "job", True)
    _check_keys("[job]", job, {"entrypoint", "args", "inputs"})
    if "entrypoint" not in job:
        raise BundleError("job.entrypoint: required (the Python script to run)")
    entry = job["entrypoint"]
    if not isinstance(entry, str):
        raise BundleError(f"job.entrypoint: expected a string, got {entry!r}")
    entry = safe_relpath("job.entrypoint", entry)
    if not entry.endswith(".py"):
        raise BundleError(f"job.entrypoint: must be a .py file, got {entry!r}")
    args = _str_list("job.args", job.get("args", []))
    inputs = tuple(safe_relpath("job.inputs", p) for p in _str_list("job.inputs", job.get("inputs", [])))

    res = _table(data, "resources", False)
    _check_keys("[resources]", res, {"device", "gpus", "min_memory_gb", "max_gpu_hours", "timeout_s"})
    resources = ResourcesSection(
        device=cast(Device, _choice("resources.device", res.get("device", "cuda"), get_args(Device))),
        gpus=_int("resources.gpus", res.get("gpus", 1), 1),
        min_memory_gb=_float("resources.min_memory_gb", res.get("min_memory_gb", 0.0), 0.0),
        max_gpu_hours=_float("resources.max_gpu_hours", res.get("max_gpu_hours", 1.0), 0.0, strict=True),
        timeout_s=_int("resources.timeout_s", res.get("timeout_s", 3600), 1),
    )

    ver = _table(data, "verification", False)
    _check_keys("[verification]", ver, {"policy", "redundancy", "replay_fraction", "tolerance"})
    policy = cast(Policy, _choice("verification.policy", ver.get("policy", "none"), get_args(Policy)))
    redundancy = _int("verification.redundancy", ver.get("redundancy", 2 if policy == "redundant" else 1), 1)
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
    )

    mkt = _table(data, "market", True)
    _check_keys("[market]", mkt, {"max_price", "auction"})
    if "max_price" not in mkt:
        raise BundleError("market.max_price: required (tokens per GPU-hour, as a decimal string)")
    market = MarketSection(
        max_price=parse_price(mkt["max_price"]),
        auction=cast(Auction, _choice("market.auction", mkt.get("auction", "sealed"), get_args(Auction))),
    )
    return JobSpec(JobSection(entry, args, inputs), resources, verification, market)


def _walk_regular(root: Path) -> list[tuple[str, Path]]:
    """List the bundle's regular files (sorted); refuse symlinks and special files anywhere."""
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in [*dirnames, *filenames]:
            full = Path(dirpath) / name
            if full.is_symlink():
                rel = full.relative_to(root).as_posix()
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


def load_bundle(directory: str | os.PathLike[str]) -> Bundle:
    """Parse and validate the bundle directory: its ``job.toml``, entrypoint and inputs, no links."""
    root = Path(directory)
    if not root.is_dir():
        raise BundleError(f"bundle: not a directory: {root}")
    files = dict(_walk_regular(root))
    if "job.toml" not in files:
        raise BundleError("bundle: no job.toml at its root")
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
    return Bundle(root, spec, bundle_hash(root))


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


def unpack_bundle(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    max_bytes: int,
    max_files: int = 10_000,
) -> Bundle:
    """Extract an untrusted bundle archive into the new directory ``dest`` and validate it.

    Refuses links, devices, FIFOs, absolute or ``..`` member names, duplicate members, more than
    ``max_files`` files and more than ``max_bytes`` of content; bytes are counted as they are
    written (a header's size is never trusted). On any error ``dest`` is left partial and the
    caller discards it.
    """
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=False)
    total = 0
    seen: set[str] = set()
    try:
        tar = tarfile.open(archive, mode="r:gz")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"bundle archive: not a readable .tar.gz: {exc}") from None
    with tar:
        try:
            for member in tar:
                name = safe_relpath(f"bundle archive member {member.name!r}", member.name)
                if member.isdir():
                    (out / name).mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isreg():
                    raise BundleError(
                        f"bundle archive: member {member.name!r} is not a regular file (links, "
                        "devices and FIFOs are refused)"
                    )
                if name in seen:
                    raise BundleError(f"bundle archive: duplicate member {name!r}")
                seen.add(name)
                if len(seen) > max_files:
                    raise BundleError(f"bundle archive: more than {max_files} files")
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
    return load_bundle(out)
