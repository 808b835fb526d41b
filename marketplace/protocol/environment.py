"""Declared environments: what Python packages a bundle needs, and which Python and torch it runs on.

A bundle names its dependencies in ``job.toml``::

    [environment]
    requirements = "requirements.txt"      # pip-style requirement lines, or:
    # lock = "uv.lock"                     # a uv lock file beside its pyproject.toml
    # project = "pyproject.toml"           # (default: pyproject.toml in the lock's folder)

    [resources]
    python = ">=3.10,<3.14"                # PEP 440 ranges; default: any
    torch = ">=2.4"

A provider builds the environment once over its own torch (see ``worker.node.environments``); this
module only reads and checks the declaration, so a bad one is a single :class:`BundleError` line at
submit and again on the worker. It also says whether a given Python and torch can serve a bundle
(:func:`serves`): the worker refuses at upload what it cannot serve, and a requester skips providers
whose advertised versions are outside the ranges.

Requirement lines are deliberately plain: names, extras, version specifiers and markers (plus the
``--hash`` option). Options that change where packages come from (``--index-url``, ``-e``, ``-r``,
URLs and paths) are refused: the provider decides where packages come from. A ``torch`` line is
not installed: it is a range the provider's own torch must satisfy.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from marketplace.errors import BundleError

__all__ = [
    "MAX_REQUIREMENT_LINES",
    "MAX_SPEC_FILE_BYTES",
    "PROVIDED",
    "EnvironmentSection",
    "parse_environment",
    "parse_requirements",
    "parse_version_range",
    "serves",
    "torch_pins",
]

MAX_SPEC_FILE_BYTES = 4 << 20
"""Largest requirements, pyproject or lock file read."""
MAX_REQUIREMENT_LINES = 2000
"""Most requirement lines."""
PROVIDED = frozenset({"torch"})
"""Packages a provider supplies itself (its own build, matched to its driver): never installed into an env."""


@dataclass(frozen=True, slots=True)
class EnvironmentSection:
    """``[environment]``: the bundle's dependency files (relative paths in the bundle), or none."""

    requirements: str | None = None
    lock: str | None = None
    project: str | None = None

    @property
    def declared(self) -> bool:
        """Whether the bundle declares packages to install."""
        return self.requirements is not None or self.lock is not None

    @property
    def files(self) -> tuple[str, ...]:
        """The bundle files the environment is built from, in the order they are hashed."""
        if self.requirements is not None:
            return (self.requirements,)
        if self.lock is not None and self.project is not None:
            return (self.project, self.lock)
        return ()


def parse_version_range(where: str, value: object) -> str:
    """A PEP 440 version range (``">=2.4,<3"``), checked; ``""`` means any."""
    if not isinstance(value, str):
        raise BundleError(f'{where}: expected a version range such as ">=2.4", got {value!r}')
    text = value.strip()
    if len(text) > 200:
        raise BundleError(f"{where}: a version range of at most 200 characters")
    try:
        SpecifierSet(text)
    except InvalidSpecifier:
        raise BundleError(f'{where}: not a version range: {value!r} (write e.g. ">=2.4,<3" or "==3.11.*")') from None
    return text


def parse_environment(table: Mapping[str, Any], safe_relpath: Any) -> EnvironmentSection:
    """``[environment]`` of a job.toml, checked (the files' existence is checked by ``load_bundle``)."""
    allowed = {"requirements", "lock", "project"}
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise BundleError(f"[environment]: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    paths: dict[str, str] = {}
    for key in sorted(allowed & set(table)):
        value = table[key]
        if not isinstance(value, str):
            raise BundleError(f"environment.{key}: expected a path in the bundle, got {value!r}")
        paths[key] = safe_relpath(f"environment.{key}", value)
    if "requirements" in paths and ("lock" in paths or "project" in paths):
        raise BundleError("[environment]: give either requirements or lock (with its project), not both")
    if "project" in paths and "lock" not in paths:
        raise BundleError("environment.project: only with environment.lock (the uv.lock it was locked into)")
    project = paths.get("project")
    if "lock" in paths and project is None:
        folder = paths["lock"].rpartition("/")[0]
        project = f"{folder}/pyproject.toml" if folder else "pyproject.toml"
    return EnvironmentSection(requirements=paths.get("requirements"), lock=paths.get("lock"), project=project)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    lines: list[tuple[int, str]] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        line = raw
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append((start, pending + line))
        pending = ""
    if pending:
        lines.append((start, pending))
    return lines


def parse_requirements(where: str, data: bytes) -> tuple[Requirement, ...]:
    """The requirements of a requirements.txt, checked: plain PEP 508 lines (with ``--hash`` options)."""
    if len(data) > MAX_SPEC_FILE_BYTES:
        raise BundleError(f"{where}: longer than the limit of {MAX_SPEC_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"{where}: not UTF-8 text") from None
    found: list[Requirement] = []
    for number, line in _logical_lines(text):
        body = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if not body:
            continue
        words = body.split()
        kept = [w for w in words if not w.startswith("--hash")]
        if kept and kept[0].startswith("-"):
            raise BundleError(
                f"{where}:{number}: option {kept[0]!r} is not allowed (the provider chooses the package "
                "index; list packages only)"
            )
        spec = " ".join(kept)
        try:
            req = Requirement(spec)
        except InvalidRequirement as exc:
            raise BundleError(f"{where}:{number}: not a requirement: {spec[:80]!r} ({exc})") from None
        if req.url:
            raise BundleError(f"{where}:{number}: {req.name} @ URL is not allowed (packages come from the index)")
        found.append(req)
        if len(found) > MAX_REQUIREMENT_LINES:
            raise BundleError(f"{where}: more than {MAX_REQUIREMENT_LINES} requirements")
    return tuple(found)


def parse_lock(where: str, data: bytes) -> dict[str, str]:
    """The packages a ``uv.lock`` pins: canonical name -> version."""
    if len(data) > MAX_SPEC_FILE_BYTES:
        raise BundleError(f"{where}: longer than the limit of {MAX_SPEC_FILE_BYTES} bytes")
    try:
        lock = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BundleError(f"{where}: not a uv lock file (TOML): {exc}") from None
    packages = lock.get("package", [])
    if not isinstance(packages, list) or "version" not in lock:
        raise BundleError(f"{where}: not a uv lock file (no version and [[package]] tables)")
    pins: dict[str, str] = {}
    for item in packages:
        if isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("version"), str):
            pins[canonicalize_name(item["name"])] = item["version"]
    return pins


def check_project(where: str, data: bytes) -> None:
    """A ``pyproject.toml`` a lock was made from: TOML with a ``[project]`` table."""
    if len(data) > MAX_SPEC_FILE_BYTES:
        raise BundleError(f"{where}: longer than the limit of {MAX_SPEC_FILE_BYTES} bytes")
    try:
        project = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BundleError(f"{where}: not valid TOML: {exc}") from None
    if not isinstance(project.get("project"), dict):
        raise BundleError(f"{where}: no [project] table (uv locks a project)")


def torch_pins(section: EnvironmentSection, files: Mapping[str, bytes]) -> tuple[str, ...]:
    """The ranges the bundle's dependency files put on torch (each a specifier string; ``""``: any)."""
    pins: list[str] = []
    if section.requirements is not None:
        for req in parse_requirements(f"environment.requirements {section.requirements}", files[section.requirements]):
            if canonicalize_name(req.name) in PROVIDED:
                pins.append(str(req.specifier))
    elif section.lock is not None:
        version = parse_lock(f"environment.lock {section.lock}", files[section.lock]).get("torch")
        if version is not None:
            pins.append(f"=={version.split('+', 1)[0]}")
    return tuple(pins)


def serves(python: str, torch: str, python_range: str, torch_ranges: tuple[str, ...]) -> str | None:
    """Why a provider with this Python and torch cannot serve the ranges, or None when it can.

    An empty version (a provider that did not say) serves any range that is empty itself.
    """
    for what, version, ranges in (("Python", python, (python_range,)), ("torch", torch, torch_ranges)):
        for text in ranges:
            if not text:
                continue
            if not version:
                return f"needs {what} {text}; the provider does not say which it has"
            try:
                ok = SpecifierSet(text).contains(Version(version), prereleases=True)
            except (InvalidSpecifier, InvalidVersion):
                return f"needs {what} {text}; the provider's {what} {version!r} cannot be compared"
            if not ok:
                return f"needs {what} {text}; the provider has {version}"
    return None
